package pg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// account is the operating-system account restored servers run as.
type account struct {
	name     string
	uid, gid int
}

func lookupAccount(name string) (account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return account{}, fmt.Errorf("restore: account %q (restore.osUser) for the restored servers: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return account{name: name, uid: uid, gid: gid}, nil
}

// runAs runs one of the PostgreSQL programs in binDir as acct (PostgreSQL
// refuses to run as root) and returns its output; a failure's error holds
// the output.
func runAs(ctx context.Context, acct account, binDir, prog string, args ...string) (string, error) {
	full := append([]string{"-u", acct.name, "--", filepath.Join(binDir, prog)}, args...)
	cmd := exec.CommandContext(ctx, "runuser", full...)
	cmd.Dir = "/"
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", prog, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// server is a restored cluster's server, controlled with pg_ctl.
type server struct {
	acct    account
	binDir  string
	dataDir string
	logFile string
}

// running reports whether a postmaster runs on the data directory.
func (s server) running(ctx context.Context) (bool, error) {
	_, err := runAs(ctx, s.acct, s.binDir, "pg_ctl", "status", "-D", s.dataDir)
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 3:
		return false, nil
	}
	return false, err
}

// start starts the server and waits until it accepts connections (for an
// archive recovery: until it is consistent and accepts read-only ones).
func (s server) start(ctx context.Context) error {
	if _, err := runAs(ctx, s.acct, s.binDir, "pg_ctl", "start", "-D", s.dataDir, "-l", s.logFile, "-w", "-t", "3600"); err != nil {
		return fmt.Errorf("start restored server: %w%s", err, s.logTail())
	}
	return nil
}

// stop stops the server (fast shutdown) if it runs.
func (s server) stop(ctx context.Context) error {
	if up, err := s.running(ctx); err != nil || !up {
		return err
	}
	_, err := runAs(ctx, s.acct, s.binDir, "pg_ctl", "stop", "-D", s.dataDir, "-m", "fast", "-w", "-t", "600")
	return err
}

// waitPromoted waits until a server in archive recovery has reached its
// target and promoted: it then removes recovery.signal. A server that
// stops meanwhile failed its recovery; the log says why.
func (s server) waitPromoted(ctx context.Context) error {
	signal := filepath.Join(s.dataDir, "recovery.signal")
	for {
		if _, err := os.Stat(signal); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		up, err := s.running(ctx)
		if err != nil {
			return err
		}
		if !up {
			return fmt.Errorf("the restored server stopped before it reached the recovery target%s", s.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logTail is the end of the server's log, for errors.
// It is read only if it is the regular file of the account's that the
// restore made, never through a link.
func (s server) logTail() string {
	f, err := os.OpenFile(s.logFile, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Sys().(*syscall.Stat_t).Uid != uint32(s.acct.uid) {
		return ""
	}
	if fi.Size() > maxLogTail {
		if _, err := f.Seek(-maxLogTail, io.SeekEnd); err != nil {
			return ""
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, maxLogTail))
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return "\nserver log (" + s.logFile + "):\n" + strings.Join(lines, "\n")
}

// maxLogTail is what an error reads of the end of a server's log.
const maxLogTail = 64 << 10

// portFree reports whether addr:port can be listened on now.
func portFree(addr string, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

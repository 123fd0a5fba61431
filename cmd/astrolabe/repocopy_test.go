package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// TestRepoCopyBetweenTwoS3Servers replicates between two versitygw
// servers (two ports, two buckets, two passwords, two keys, each in a
// profile of the AWS shared credentials file): 3 PEs backed up 5
// times each into the first; a copy after 2 rounds, another after 3 more
// sends about what the source stored for those (the new chunks only); a
// copy killed with SIGKILL mid-way and run again sends what is missing;
// the target passes check --read-data and every replica snapshot
// restores as what was backed up.
func TestRepoCopyBetweenTwoS3Servers(t *testing.T) {
	const diskSize, bigSize = 32 * mib, 256 * mib
	dir := t.TempDir()
	s1, s2 := startSite(t, dir, "site1"), startSite(t, dir, "site2")
	pw1, pw2 := filepath.Join(dir, "pw1"), filepath.Join(dir, "pw2")
	os.WriteFile(pw1, []byte("first site\n"), 0o600)
	os.WriteFile(pw2, []byte("second site\n"), 0o600)
	const prefix = "astrolabe"
	r1 := "s3+http://" + s1.endpoint + "/site1/" + prefix
	r2 := "s3+http://" + s2.endpoint + "/site2/" + prefix
	one := []string{"--repo", r1, "--password-file", pw1, "--s3-profile", "site1"}
	two := []string{"--repo", r2, "--password-file", pw2, "--s3-profile", "site2"}
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	mustRun(t, cfg, append([]string{"repo", "init"}, one...)...)
	mustRun(t, cfg, append([]string{"repo", "init"}, two...)...)
	from := []string{"repo", "copy", "--from", r1, "--from-password-file", pw1, "--from-s3-profile", "site1"}
	copyArgs := append(from, two...)

	mustFail(t, cfg, "give --from", append([]string{"repo", "copy"}, two...)...)
	badPW := filepath.Join(dir, "bad")
	os.WriteFile(badPW, []byte("not it\n"), 0o600)
	mustFail(t, cfg, "wrong password", append([]string{"repo", "copy", "--from", r1, "--from-password-file", badPW, "--from-s3-profile", "site1"}, two...)...)
	// Each repository's keys are its own; wrong ones are told with the
	// repository they are for.
	mustFail(t, cfg, "source repository "+r1+": S3 keys: set AWS_ACCESS_KEY_ID",
		append([]string{"repo", "copy", "--from", r1, "--from-password-file", pw1}, two...)...)
	mustFail(t, cfg, "source repository "+r1+": S3 bucket site1",
		append([]string{"repo", "copy", "--from", r1, "--from-password-file", pw1, "--from-s3-profile", "site2"}, two...)...)
	mustFail(t, cfg, "target repository "+r2+": S3 bucket site2",
		append(append([]string{}, from...), "--repo", r2, "--password-file", pw2, "--s3-profile", "site1")...)
	mustFail(t, cfg, `source repository `+r1+`: S3 keys: profile "site3"`,
		append([]string{"repo", "copy", "--from", r1, "--from-password-file", pw1, "--from-s3-profile", "site3"}, two...)...)

	g := newGen(stressSeed(t))
	data := &stressData{g: g, shared: g.bytes(mib), mtime: time.Now().Add(time.Hour).Truncate(time.Second)}
	pes := []stressPE{
		{id: "disk:a.img", path: filepath.Join(cfg, "disk", "a.img")},
		{id: "disk:b.img", path: filepath.Join(cfg, "disk", "b.img")},
		{id: "fs:home", path: filepath.Join(cfg, "fs", "home")},
	}
	for _, p := range pes {
		if p.disk() {
			data.writeDisk(t, p.path, diskSize)
		} else {
			data.writeTree(t, p.path)
		}
	}
	var backups []backedUp
	backup := func(p stressPE) {
		t.Helper()
		want := contentOf(t, p)
		snap := mustRun(t, cfg, append([]string{"backup", p.id}, one...)...).lastLine()
		backups = append(backups, backedUp{snap: snap, pe: p, want: want})
	}
	round := func() {
		t.Helper()
		for _, p := range pes {
			data.mutate(t, p, pes)
			backup(p)
		}
	}
	copied := func(res result, want int) {
		t.Helper()
		if n := len(strings.Fields(res.stdout)); n != want {
			t.Fatalf("repo copy printed %d snapshots, want %d:\n%s\n%s", n, want, res.stdout, res.stderr)
		}
		t.Logf("repo copy: %s", strings.TrimSpace(res.stderr))
	}

	for _, p := range pes {
		backup(p)
	}
	round()
	copied(mustRun(t, cfg, copyArgs...), 6)
	copied(mustRun(t, cfg, copyArgs...), 0)

	// Three more rounds; the copy sends what the source stored for them.
	src, dst := s1.packBytes(t, "site1", prefix), s2.packBytes(t, "site2", prefix)
	for range 3 {
		round()
	}
	srcNew := s1.packBytes(t, "site1", prefix) - src
	t.Setenv("ASTROLABE_FROM_PASSWORD", "first site")
	copied(mustRun(t, cfg, append([]string{"repo", "copy", "--from", r1, "--from-s3-profile", "site1"}, two...)...), 9)
	dstTotal := s2.packBytes(t, "site2", prefix)
	sent := dstTotal - dst
	t.Logf("second copy: sent %d bytes for the %d the source stored in its 9 backups; the target holds %d", sent, srcNew, dstTotal)
	if sent > srcNew+srcNew/20+64*kib || sent < srcNew-srcNew/20-64*kib || sent*3 > dstTotal {
		t.Errorf("second copy sent %d bytes; the source stored %d new, the target holds %d", sent, srcNew, dstTotal)
	}

	// A big disk: kill -9 the copy after two packs landed, run it again.
	big := stressPE{id: "disk:big.img", path: filepath.Join(cfg, "disk", "big.img")}
	data.writeDisk(t, big.path, bigSize)
	backup(big)
	dst = s2.packBytes(t, "site2", prefix)
	run, err := startCLI(t.Context(), cfg, copyArgs...)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for s2.packBytes(t, "site2", prefix)-dst < 2*16*mib {
		select {
		case <-run.done:
			t.Fatalf("repo copy of %d MiB ended before it could be killed: %v\n%s", bigSize/mib, run.err, run.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("repo copy stored no two packs in 3 minutes")
		}
	}
	run.cmd.Process.Kill()
	<-run.done
	if !run.killed() {
		t.Fatalf("repo copy was not killed: %v", run.err)
	}
	before := s2.packBytes(t, "site2", prefix) - dst
	res := mustRun(t, cfg, copyArgs...)
	copied(res, 1)
	after := s2.packBytes(t, "site2", prefix) - dst - before
	t.Logf("kill -9 after %d bytes of packs; the copy run again sent %d more (of a %d byte disk)", before, after, int64(bigSize))
	if before+after > bigSize+bigSize/50 || after > bigSize-before+mib || !strings.Contains(res.stderr, "already present") {
		t.Errorf("after kill -9 at %d bytes sent, the copy run again sent %d: %s", before, after, res.stderr)
	}

	// The replica: check --read-data, and every snapshot restores as it was
	// backed up.
	mustRun(t, cfg, append([]string{"repo", "check", "--read-data"}, two...)...)
	if n := strings.Count(mustRun(t, cfg, append([]string{"repo", "snapshots"}, two...)...).stdout, "\n") - 1; n != len(backups) {
		t.Errorf("the target lists %d snapshots, want %d", n, len(backups))
	}
	for _, b := range backups {
		id := mustRun(t, cfg, append([]string{"restore", b.snap}, two...)...).lastLine()
		checkRestored(t, cfg, b, id)
	}
	t.Logf("%d snapshots restored from the replica", len(backups))

	// Mounted, the replica reads as the primary: each disk's data and
	// each tree's files (names, modes, contents) the same through both.
	start := time.Now()
	primary, replica := filepath.Join(dir, "mnt1"), filepath.Join(dir, "mnt2")
	startMount(t, cfg, primary, one...)
	startMount(t, cfg, replica, two...)
	for _, b := range backups {
		if b.pe == big {
			continue // restored above; 256 MiB more through FUSE twice is long
		}
		want := mountedSnapshot(t, snapPath(primary, b.snap), b.pe)
		if got := mountedSnapshot(t, snapPath(replica, b.snap), b.pe); got != want {
			t.Errorf("%s reads otherwise from the replica's mount:\n%s\nthe primary's:\n%s", b.snap, got, want)
		}
		if b.pe.disk() && want != b.want.digest {
			t.Errorf("%s reads otherwise through the mounts than it was backed up", b.snap)
		}
	}
	t.Logf("%d snapshots read the same through mounts of the primary and the replica, in %s", len(backups)-1, time.Since(start).Round(time.Millisecond))

	// A replicate job of the appliance, with each repository's profile
	// in jobs.json, and one with the source's profile wrong.
	r3 := "s3+http://" + s2.endpoint + "/site2/job"
	mustRun(t, cfg, "repo", "init", "--repo", r3, "--password-file", pw2, "--s3-profile", "site2")
	creds := os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none")) // the jobs name theirs
	location := func(loc, pw, profile string) string {
		return fmt.Sprintf(`{"location": %q, "passwordFile": %q, "s3Profile": %q, "s3CredentialsFile": %q}`, loc, pw, profile, creds)
	}
	os.WriteFile(filepath.Join(cfg, "jobs.json"), []byte(`[
  {"name": "replicate", "kind": "replicate", "schedule": "@daily", "from": `+location(r1, pw1, "site1")+`, "repository": `+location(r3, pw2, "site2")+`},
  {"name": "wrong-keys", "kind": "replicate", "schedule": "@daily", "from": `+location(r1, pw1, "site2")+`, "repository": `+location(r3, pw2, "site2")+`}]`), 0o600)
	history := filepath.Join(cfg, "jobs-history.json")
	os.WriteFile(history, []byte(`{"replicate": {"last": "2020-01-01T00:00:00Z"}, "wrong-keys": {"last": "2020-01-01T00:00:00Z"}}`), 0o600)
	a := startServe(t, cfg)
	type jobRun struct{ Status, Error string }
	var runs map[string]struct{ Runs []jobRun }
	finished := func(rs []jobRun) bool { return len(rs) > 0 && rs[len(rs)-1].Status != "running" }
	for range 1200 { // bounded: both run at start
		b, _ := os.ReadFile(history)
		runs = nil
		json.Unmarshal(b, &runs)
		if finished(runs["replicate"].Runs) && finished(runs["wrong-keys"].Runs) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	a.stop()
	t.Logf("replicate job runs: %+v", runs)
	if rs := runs["replicate"].Runs; len(rs) != 1 || rs[0].Status != "success" {
		t.Errorf("replicate job: %+v; stderr: %s", rs, a.stderr)
	}
	if rs := runs["wrong-keys"].Runs; len(rs) != 1 || rs[0].Status != "failed" || !strings.Contains(rs[0].Error, "repository "+r1+": S3 bucket site1") {
		t.Errorf("replicate job with the wrong keys for its source: %+v", rs)
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	if n := strings.Count(mustRun(t, cfg, "repo", "snapshots", "--repo", r3, "--password-file", pw2, "--s3-profile", "site2").stdout, "\n") - 1; n != len(backups) {
		t.Errorf("the replicate job's target lists %d snapshots, want %d", n, len(backups))
	}
}

// mountedSnapshot describes a snapshot as a mount shows it: a disk's
// data's digest, or a tree's files, each with its mode and content's
// digest.
func mountedSnapshot(t *testing.T, dir string, p stressPE) string {
	t.Helper()
	if p.disk() {
		d, err := fileSHA(filepath.Join(dir, "data"))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	var out strings.Builder
	root := filepath.Join(dir, "files")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		sum := ""
		if fi.Mode().IsRegular() {
			if sum, err = fileSHA(path); err != nil {
				return err
			}
		}
		fmt.Fprintf(&out, "%s %s %d %s\n", rel, fi.Mode(), fi.Size(), sum)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// startSite starts a versitygw server with keys of its own, written as
// profile name of the AWS shared credentials file in dir; the
// environment has no keys, so that a command takes the right profile or
// fails.
func startSite(t *testing.T, dir, name string) versitygw {
	t.Helper()
	access, secret := name+"-access", name+"-secret-"+strings.Repeat("x", 8)
	t.Setenv("S3_TEST_ACCESS_KEY", access)
	t.Setenv("S3_TEST_SECRET_KEY", secret)
	s := startVersitygw(t)
	creds := filepath.Join(dir, "aws-credentials")
	f, err := os.OpenFile(creds, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\n\n", name, access, secret)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-aws-config"))
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	return s
}

// TestRepoCopyFromReadOnlyS3Key copies from an S3 repository through a
// key whose bucket policy allows reading only (versitygw's own IAM): the
// copy reads it without a lock, says so, and writes nothing there; with
// the owner's key the source is locked as usual.
func TestRepoCopyFromReadOnlyS3Key(t *testing.T) {
	dir := t.TempDir()
	endpoint := startVersitygwIAM(t, dir, "owner-access", "owner-secret-key", map[string]string{"reader-access": "reader-secret-key"})
	creds := filepath.Join(dir, "aws-credentials")
	os.WriteFile(creds, []byte("[owner]\naws_access_key_id = owner-access\naws_secret_access_key = owner-secret-key\n\n"+
		"[reader]\naws_access_key_id = reader-access\naws_secret_access_key = reader-secret-key\n"), 0o600)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-aws-config"))
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("ASTROLABE_PASSWORD", "pw")
	t.Setenv("ASTROLABE_FROM_PASSWORD", "pw")
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	src := "s3+http://" + endpoint + "/site/astrolabe"
	mustRun(t, cfg, "repo", "init", "--repo", src, "--s3-profile", "owner")
	snap := mustRun(t, cfg, "backup", "--repo", src, "--s3-profile", "owner", "fs:sample").lastLine()

	// The bucket's policy: the reader may list and get, nothing more.
	mc, err := minio.New(endpoint, &minio.Options{Creds: credentials.NewStaticV4("owner-access", "owner-secret-key", ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	policy := `{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": ["reader-access"]},
  "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"], "Resource": ["arn:aws:s3:::site", "arn:aws:s3:::site/*"]}]}`
	if err := mc.SetBucketPolicy(t.Context(), "site", policy); err != nil {
		t.Fatal(err)
	}
	objects := func() int {
		n := 0
		for o := range mc.ListObjects(t.Context(), "site", minio.ListObjectsOptions{Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			n++
		}
		return n
	}
	before := objects()

	dst := filepath.Join(dir, "replica")
	mustRun(t, cfg, "repo", "init", "--repo", dst)
	res := mustRun(t, cfg, "repo", "copy", "--from", src, "--from-s3-profile", "reader", "--repo", dst)
	t.Logf("repo copy with a read-only key: %s", strings.TrimSpace(res.stderr))
	if strings.TrimSpace(res.stdout) != snap || !strings.Contains(res.stderr, "read without a lock") {
		t.Errorf("repo copy with a read-only key: %s\n%s", res.stdout, res.stderr)
	}
	if after := objects(); after != before {
		t.Errorf("the source holds %d objects after a copy with a read-only key, %d before", after, before)
	}
	restored := mustRun(t, cfg, "restore", "--repo", dst, snap).lastLine()
	if got, want := treeDigest(t, filepath.Join(cfg, "fs", strings.TrimPrefix(restored, "fs:"))), treeDigest(t, filepath.Join(cfg, "fs", "sample")); got != want {
		t.Errorf("restored from the replica: %s, want %s", got, want)
	}
	// With the owner's key the source is locked while read.
	dst2 := filepath.Join(dir, "replica2")
	mustRun(t, cfg, "repo", "init", "--repo", dst2)
	if res := mustRun(t, cfg, "repo", "copy", "--from", src, "--from-s3-profile", "owner", "--repo", dst2); strings.Contains(res.stderr, "without a lock") {
		t.Errorf("repo copy with the owner's key: %s", res.stderr)
	}
}

// startVersitygwIAM runs versitygw with its own IAM: the root's keys, and
// users (access key → secret) of role "user", who reach only what bucket
// policies allow them.
func startVersitygwIAM(t *testing.T, dir, rootAccess, rootSecret string, users map[string]string) string {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		bin = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "versitygw")
		if _, err := os.Stat(bin); err != nil {
			t.Fatal("versitygw missing: run scripts/s3-server.sh install (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
		}
	}
	port, admin := freePort(t), freePort(t)
	for _, d := range []string{"data", "iam"} {
		os.MkdirAll(filepath.Join(dir, "s3", d), 0o700)
	}
	var log bytes.Buffer
	cmd := exec.Command(bin, "--port", port, "--admin-port", admin, "--iam-dir", filepath.Join(dir, "s3", "iam"), "posix", filepath.Join(dir, "s3", "data"))
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+rootAccess, "ROOT_SECRET_KEY="+rootSecret)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ { // bounded: 100 tries
		c, err := net.Dial("tcp", admin)
		if err == nil {
			c.Close()
			break
		}
		if i == 100 {
			t.Fatalf("versitygw did not listen on %s: %s", admin, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for access, secret := range users {
		out, err := exec.Command(bin, "admin", "--access", rootAccess, "--secret", rootSecret, "--endpoint-url", "http://"+admin,
			"create-user", "--access", access, "--secret", secret, "--role", "user").CombinedOutput()
		if err != nil {
			t.Fatalf("versitygw admin create-user: %v: %s", err, out)
		}
	}
	return port
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestRepoCopyFromUnwritableDirectory copies, as nobody, from a
// repository directory nobody owns but made unwritable (chmod -R a-w;
// root would write there all the same): read without a lock, left as it
// was, and the copy restores.
func TestRepoCopyFromUnwritableDirectory(t *testing.T) {
	needPrivilegeTools(t)
	dir := t.TempDir()
	openTree(t, dir)
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("pw\n"), 0o644)
	src := filepath.Join(dir, "src")
	mustRun(t, cfg, "repo", "init", "--repo", src, "--password-file", pw)
	snap := mustRun(t, cfg, "backup", "--repo", src, "--password-file", pw, "fs:sample").lastLine()
	runTool(t, "chown", "-R", "nobody:nogroup", src)
	runTool(t, "chmod", "-R", "a-w", src)
	before := describeTree(t, src)

	bin := filepath.Join(dir, "astrolabe")
	runTool(t, "cp", astrolabeBin, bin)
	ncfg := filepath.Join(dir, "nobody")
	os.Mkdir(ncfg, 0o755)
	runTool(t, "chown", "nobody:nogroup", ncfg)
	asNobody := func(args ...string) (string, error) {
		out, err := exec.Command("runuser", append([]string{"-u", "nobody", "--", bin, "--config", ncfg}, args...)...).CombinedOutput()
		return string(out), err
	}
	replica := filepath.Join(ncfg, "replica")
	for _, args := range [][]string{
		{"init", ncfg},
		{"repo", "init", "--repo", replica, "--password-file", pw},
	} {
		if out, err := asNobody(args...); err != nil {
			t.Fatalf("%s as nobody: %v\n%s", args, err, out)
		}
	}
	out, err := asNobody("repo", "copy", "--from", src, "--from-password-file", pw, "--repo", replica, "--password-file", pw)
	t.Logf("repo copy as nobody from an unwritable directory: %s", strings.TrimSpace(out))
	if err != nil || !strings.Contains(out, snap) || !strings.Contains(out, "read without a lock") {
		t.Fatalf("repo copy as nobody from an unwritable directory: %v\n%s", err, out)
	}
	if after := describeTree(t, src); after != before {
		t.Errorf("the source changed under the copy:\n%s\nbefore:\n%s", after, before)
	}
	out, err = asNobody("restore", "--repo", replica, "--password-file", pw, snap)
	if err != nil {
		t.Fatalf("restore from the replica as nobody: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	restored := filepath.Join(ncfg, "fs", strings.TrimPrefix(lines[len(lines)-1], "fs:"))
	if got, want := treeDigest(t, restored), treeDigest(t, filepath.Join(cfg, "fs", "sample")); got != want {
		t.Errorf("restored from the replica: %s, want %s", got, want)
	}
}

// TestS3LocationAsGiven: the messages naming an s3+http:// repository
// print it as given, not as s3:// (TLS), which would not open it.
func TestS3LocationAsGiven(t *testing.T) {
	s3 := startVersitygw(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg, "--samples")
	loc := "s3+http://" + s3.endpoint + "/given/astrolabe"
	local := filepath.Join(dir, "local")
	r := mustRun(t, cfg, "repo", "init", "--repo", loc, "--insecure-no-password")
	if !strings.Contains(r.stderr, "created repository "+loc+"\n") {
		t.Errorf("repo init: %q, want the location %s", r.stderr, loc)
	}
	mustRun(t, cfg, "repo", "init", "--repo", local, "--insecure-no-password")
	r = mustRun(t, cfg, "backup", "fs:sample", "--repo", loc, "--insecure-no-password")
	if !strings.Contains(r.stderr, " to "+loc+":") {
		t.Errorf("backup: %q, want the location %s", r.stderr, loc)
	}
	mustRun(t, cfg, "backup", "disk:sample.img", "--repo", local, "--insecure-no-password")
	r = mustRun(t, cfg, "repo", "copy", "--from", local, "--to", loc, "--insecure-no-password")
	if !strings.Contains(r.stderr, " to "+loc+",") {
		t.Errorf("copy into it: %q, want the location %s", r.stderr, loc)
	}
	r = mustRun(t, cfg, "repo", "copy", "--from", loc, "--to", local, "--insecure-no-password")
	if !strings.Contains(r.stderr, " from "+loc+" to ") {
		t.Errorf("copy from it: %q, want the location %s", r.stderr, loc)
	}
}

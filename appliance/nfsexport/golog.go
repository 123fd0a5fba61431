package nfsexport

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	nfs "github.com/willscott/go-nfs"
)

// go-nfs logs through one package-level logger (nfs.Log), by default to
// stderr at info level, with an [ERROR] line for every client call that
// fails. The first Server made routes it to its own logger at debug level
// (what go-nfs reports is the client's doing, or said again by this
// package); a process serves NFS once, so one destination is enough.
var routeGoNFSLog sync.Once

func routeGoNFS(log *slog.Logger) {
	routeGoNFSLog.Do(func() { nfs.Log = &goNFSLog{log: log.With("component", "go-nfs")} })
}

// goNFSLog is an nfs.Logger writing to slog. It never panics or exits,
// whatever the level of the call.
type goNFSLog struct {
	log *slog.Logger
}

var _ nfs.Logger = (*goNFSLog)(nil)

// logp and logf log at debug level, noting the level go-nfs gave; they
// format only when debug is on.
func (l *goNFSLog) logp(level slog.Level, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.emit(level, fmt.Sprint(args...))
	}
}

func (l *goNFSLog) logf(level slog.Level, format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.emit(level, fmt.Sprintf(format, args...))
	}
}

func (l *goNFSLog) emit(level slog.Level, msg string) {
	l.log.Debug(msg, "go_nfs_level", level.String())
}

func (l *goNFSLog) SetLevel(nfs.LogLevel)                   {}
func (l *goNFSLog) GetLevel() nfs.LogLevel                  { return nfs.DebugLevel }
func (l *goNFSLog) ParseLevel(string) (nfs.LogLevel, error) { return nfs.DebugLevel, nil }

func (l *goNFSLog) Panic(args ...any) { l.logp(slog.LevelError, args...) }
func (l *goNFSLog) Fatal(args ...any) { l.logp(slog.LevelError, args...) }
func (l *goNFSLog) Error(args ...any) { l.logp(slog.LevelError, args...) }
func (l *goNFSLog) Warn(args ...any)  { l.logp(slog.LevelWarn, args...) }
func (l *goNFSLog) Info(args ...any)  { l.logp(slog.LevelInfo, args...) }
func (l *goNFSLog) Debug(args ...any) { l.logp(slog.LevelDebug, args...) }
func (l *goNFSLog) Trace(args ...any) {}
func (l *goNFSLog) Print(args ...any) { l.logp(slog.LevelInfo, args...) }

func (l *goNFSLog) Panicf(f string, args ...any) { l.logf(slog.LevelError, f, args...) }
func (l *goNFSLog) Fatalf(f string, args ...any) { l.logf(slog.LevelError, f, args...) }
func (l *goNFSLog) Errorf(f string, args ...any) { l.logf(slog.LevelError, f, args...) }
func (l *goNFSLog) Warnf(f string, args ...any)  { l.logf(slog.LevelWarn, f, args...) }
func (l *goNFSLog) Infof(f string, args ...any)  { l.logf(slog.LevelInfo, f, args...) }
func (l *goNFSLog) Debugf(f string, args ...any) { l.logf(slog.LevelDebug, f, args...) }
func (l *goNFSLog) Tracef(string, ...any)        {}
func (l *goNFSLog) Printf(f string, args ...any) { l.logf(slog.LevelInfo, f, args...) }

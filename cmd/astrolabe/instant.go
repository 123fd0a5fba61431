package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/daemon"
	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// instantRestore is restore --instant: the PE is made and served over NBD
// at once, filled while served, and served on until interrupted.
func instantRestore(c *cli.Context, r *repo.Repository, id pe.ID, typ string, opts pe.CopyOptions) error {
	switch addr := c.String("listen"); {
	case c.String("server") != "":
		return usagef("restore --instant: not through --server; ask the appliance's API for an instant restore")
	case !daemon.IsLoopback(addr):
		return usagef("restore --instant: --listen %s is not loopback: anyone could write; use the appliance's API (NBD over TLS with client certificates)", addr)
	}
	m, err := loadManager(c)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return err
	}
	defer l.Close()
	src := nbdexport.NewSource(m, filepath.Join(c.String("config"), config.StateDir, daemon.OverlayDir))
	uc, err := usecase.New(usecase.Config{Manager: m, Repository: r, Exports: src, Logger: slog.Default(),
		ExportURI: func(name string, _ bool) string { return fmt.Sprintf("nbd://%s/%s", l.Addr(), name) }})
	if err != nil {
		return err
	}
	start := time.Now()
	ir, err := uc.RestoreInstant(c.Context, id, typ, opts)
	if err != nil {
		return err
	}
	fmt.Fprintln(c.App.Writer, ir.Export.URI)
	fmt.Fprintf(c.App.ErrWriter, "%s serves %s in %s while it is filled from %s\n", ir.Export.URI, ir.Target, time.Since(start).Round(time.Millisecond), id)
	serving, stop := context.WithCancel(c.Context)
	defer stop()
	served := make(chan error, 1)
	go func() {
		served <- nbd.NewServer(src, nbd.Options{Logger: slog.Default(), Anonymous: nbd.AnonymousReadWrite}).Serve(serving, l)
	}()
	prog := newProgress(c.App.ErrWriter)
	err = ir.Fill(c.Context, prog)
	prog.Done()
	if err != nil {
		// Clients must be gone before the PE is.
		stop()
		<-served
		if aerr := ir.Abort(context.WithoutCancel(c.Context)); aerr != nil {
			return fmt.Errorf("instant restore of %s stopped before %s was full (%v), and removing it failed: %v", id, ir.Target, err, aerr)
		}
		if c.Context.Err() != nil {
			return fmt.Errorf("instant restore of %s interrupted before %s was full: it was removed, with what clients wrote", id, ir.Target)
		}
		return fmt.Errorf("instant restore of %s stopped before %s was full: it was removed, with what clients wrote: %v", id, ir.Target, err)
	}
	fmt.Fprintf(c.App.ErrWriter, "restored %s as %s in %s; still serving it at %s until interrupted\n", id, ir.Target, time.Since(start).Round(time.Millisecond), ir.Export.URI)
	fmt.Fprintln(c.App.Writer, ir.Target)
	err = <-served
	return errors.Join(err, src.Close())
}

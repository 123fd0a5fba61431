package daemon

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/walarchive"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// factories are the PE types, the pg type's restores reading the WAL
// archived in r (if any).
func factories(r *repo.Repository) map[string]config.Factory {
	if r == nil {
		return config.Factories()
	}
	return config.Factories(config.PGWAL(walarchive.Source{Repo: r}))
}

// walReceivers archive the WAL of the configured PostgreSQL clusters
// into the repository while the daemon runs.
type walReceivers struct {
	list []*walarchive.Receiver
	wg   sync.WaitGroup
}

// startWAL starts a receiver per cluster of pes/pg.pe.json, if a
// repository is configured; they stop with ctx, each after storing the
// segment it was receiving as a partial one (wait waits for that).
func startWAL(ctx context.Context, opts Options) (*walReceivers, error) {
	w := &walReceivers{}
	if opts.Repository == nil {
		return w, nil
	}
	clusters, err := walarchive.LoadClusters(opts.ConfigDir)
	if err != nil {
		return nil, err
	}
	for _, c := range clusters {
		rc := walarchive.NewReceiver(opts.Repository, c, opts.Logger, walarchive.ReceiverOptions{})
		w.list = append(w.list, rc)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rc.Run(ctx)
		}()
	}
	if len(clusters) > 0 {
		opts.Logger.Info("archiving WAL", "clusters", len(clusters), "repository", opts.Repository.Location())
	}
	return w, nil
}

func (w *walReceivers) wait() { w.wg.Wait() }

// register adds each receiver's state to the metrics.
func (w *walReceivers) register(reg *prometheus.Registry) {
	gauges := []struct {
		name, help string
		value      func(walarchive.Status) float64
	}{
		{"astrolabe_wal_archived_lsn", "End of the WAL archived in the repository (complete segments), as a byte position.", func(s walarchive.Status) float64 { return float64(s.ArchivedLSN) }},
		{"astrolabe_wal_server_lsn", "End of the server's WAL, as it last said.", func(s walarchive.Status) float64 { return float64(s.ServerLSN) }},
		{"astrolabe_wal_lag_bytes", "Bytes of the server's WAL not yet archived.", func(s walarchive.Status) float64 {
			return float64(s.ServerLSN - min(s.ArchivedLSN, s.ServerLSN))
		}},
		{"astrolabe_wal_connected", "1 while the receiver streams from its cluster.", func(s walarchive.Status) float64 {
			if s.Connected {
				return 1
			}
			return 0
		}},
		{"astrolabe_wal_gaps", "WAL ranges found lost since the daemon started (a slot invalidated, the archive behind the slot).", func(s walarchive.Status) float64 { return float64(len(s.Gaps)) }},
		{"astrolabe_wal_segments_archived", "Segments archived since the daemon started.", func(s walarchive.Status) float64 { return float64(s.Segments) }},
	}
	for _, rc := range w.list {
		for _, g := range gauges {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: g.name, Help: g.help, ConstLabels: prometheus.Labels{"cluster": rc.Status().Cluster},
			}, func() float64 { return g.value(rc.Status()) }))
		}
	}
}

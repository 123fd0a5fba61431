package daemon

import (
	"context"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/s3export"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
)

// metrics are the appliance's Prometheus metrics, in a registry of its
// own (no global state).
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
}

func newMetrics(tm *tasks.Manager, exports *nbdexport.Source, s3h *s3export.Handler) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "astrolabe_api_requests_total",
			Help: "REST API requests by method, route and status code.",
		}, []string{"method", "route", "code"}),
	}
	m.reg.MustRegister(m.requests, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, st := range []tasks.Status{tasks.Running, tasks.Success, tasks.Failed, tasks.Cancelled} {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "astrolabe_tasks",
			Help:        "Tasks kept by the appliance, by status.",
			ConstLabels: prometheus.Labels{"status": string(st)},
		}, func() float64 { return float64(tm.Counts()[st]) }))
	}
	if exports != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "astrolabe_data_bytes_served_total",
			Help:        "Bytes of PE data served, by data path.",
			ConstLabels: prometheus.Labels{"path": "nbd"},
		}, func() float64 { return float64(exports.BytesRead()) }))
	}
	if s3h != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "astrolabe_data_bytes_served_total",
			Help:        "Bytes of PE data served, by data path.",
			ConstLabels: prometheus.Labels{"path": "s3"},
		}, func() float64 { return float64(s3h.BytesServed()) }))
	}
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// instrument counts requests by their route pattern, not their path, so
// PE IDs do not become label values.
func (m *metrics) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		rctx := chi.NewRouteContext()
		r = r.WithContext(context.WithValue(r.Context(), chi.RouteCtxKey, rctx))
		h.ServeHTTP(sw, r)
		route := rctx.RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		m.requests.WithLabelValues(r.Method, route, strconv.Itoa(sw.code)).Inc()
	})
}

// instrumentS3 counts S3 requests by method and status.
func (m *metrics) instrumentS3(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		m.requests.WithLabelValues(r.Method, "s3", strconv.Itoa(sw.code)).Inc()
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

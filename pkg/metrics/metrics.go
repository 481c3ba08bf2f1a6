// Package metrics holds relinkd's Prometheus metrics, one registry per
// daemon instance (nothing is registered globally), and serves them.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

const namespace = "relinkd"

// Metrics are the daemon's counters and gauges.
type Metrics struct {
	Registry *prometheus.Registry

	Sweeps        *prometheus.CounterVec   // kind: full, event
	SweepDuration *prometheus.HistogramVec // kind: full, event
	Candidates    prometheus.Counter       // candidates seen (every sweep, before dedupe)
	Rescues       *prometheus.CounterVec   // method: link, reflink, copy
	RescuedBytes  prometheus.Counter
	Failures      prometheus.Counter
	Skips         *prometheus.CounterVec // reason
	Reports       prometheus.Counter     // report-only rules: deleted file open
	PinsHeld      prometheus.Gauge
	PinnedBytes   prometheus.Gauge
	Watches       prometheus.Gauge   // updated whenever a watch is added or dropped
	Events        prometheus.Counter // directory removal events received
	Overflows     prometheus.Counter // inotify queue overflows (events lost)
	Unresponsive  prometheus.Gauge   // filesystems whose files are skipped: a call on them is stuck
	// DeletedOpen is what deleted-but-open files hold on disk, by
	// mountpoint; set at each full sweep (SetDeletedOpen).
	DeletedOpen *prometheus.GaugeVec

	mu          sync.Mutex
	deletedOpen map[string]bool // mu guards it: the mount points DeletedOpen has a series for
}

// New returns a fresh set of metrics in their own registry, with the Go
// runtime and process collectors beside them.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Sweeps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "sweeps_total",
			Help: "Sweeps of /proc, by kind (full: periodic; event: one chunk of an event-driven sweep, likeliest holders first).",
		}, []string{"kind"}),
		SweepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "sweep_duration_seconds",
			Help:    "Wall time of a sweep, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms … 4 s
		}, []string{"kind"}),
		Candidates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "candidates_seen_total",
			Help: "Descriptors of deleted regular files seen by sweeps (the same file counts once per sweep).",
		}),
		Rescues: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "rescues_total",
			Help: "Files rescued, by method.",
		}, []string{"method"}),
		RescuedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "rescued_bytes_total",
			Help: "Bytes of rescued files (size at publication, plus growth followed).",
		}),
		Failures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "rescue_failures_total",
			Help: "Rescues that failed (rescue failed events).",
		}),
		Skips: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "rescue_skips_total",
			Help: "Files not rescued on purpose, by reason (rescue skipped events).",
		}, []string{"reason"}),
		Reports: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "reports_total",
			Help: "Deleted open files matched by a report-only rule (deleted file open events).",
		}),
		PinsHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "pins_held",
			Help: "Deleted inodes pinned by the daemon, waiting for or under rescue.",
		}),
		PinnedBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "pinned_bytes",
			Help: "Size of the pinned inodes.",
		}),
		Watches: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "inotify_watches",
			Help: "Directories watched with inotify.",
		}),
		Events: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "removal_events_total",
			Help: "Removals reported by inotify in watched directories.",
		}),
		Overflows: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "inotify_overflows_total",
			Help: "inotify event queue overflows (fs.inotify.max_queued_events reached, events lost); each triggers a rescan of the watched trees and a full sweep.",
		}),
		Unresponsive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "filesystems_unresponsive",
			Help: "Filesystems (mounts) on which a call did not return in time (filesystem unresponsive events); their files are skipped until it returns.",
		}),
		DeletedOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "deleted_open_bytes",
			Help: "Bytes on disk (st_blocks*512, each inode once) held by deleted files that are still open, by the filesystem's mount point, as of the last full sweep. " +
				"Only the last close frees them: compare with node_filesystem_size_bytes to alert before a disk fills.",
		}, []string{"mountpoint"}),
	}
	m.Registry.MustRegister(
		m.Sweeps, m.SweepDuration, m.Candidates, m.Rescues, m.RescuedBytes, m.Failures,
		m.Skips, m.Reports, m.PinsHeld, m.PinnedBytes, m.Watches, m.Events, m.Overflows, m.Unresponsive,
		m.DeletedOpen,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// SetDeletedOpen replaces the deleted_open_bytes series with bytes, by
// mount point: a filesystem that no longer holds any deleted-but-open file
// loses its series rather than keeping a stale value.
// The new values are set before the stale series go, so that a scrape
// in between never misses a filesystem that still has some.
func (m *Metrics) SetDeletedOpen(bytes map[string]uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for mp, n := range bytes {
		m.DeletedOpen.WithLabelValues(mp).Set(float64(n))
	}
	for mp := range m.deletedOpen {
		if _, ok := bytes[mp]; !ok {
			m.DeletedOpen.DeleteLabelValues(mp)
		}
	}
	m.deletedOpen = make(map[string]bool, len(bytes))
	for mp := range bytes {
		m.deletedOpen[mp] = true
	}
}

// Server serves a registry at /metrics.
type Server struct {
	srv *http.Server
	ln  net.Listener
	log *zap.Logger
}

// Listen binds addr (host:port) for reg. The listener is open when Listen
// returns, so a bad address is reported at start-up.
func Listen(addr string, reg *prometheus.Registry, log *zap.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte("relinkd: see /metrics\n"))
	})
	return &Server{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		ln:  ln,
		log: log,
	}, nil
}

// Addr is the address actually bound (useful with port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until ctx is done.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	})
	defer stop()
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

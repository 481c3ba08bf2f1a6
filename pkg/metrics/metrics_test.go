package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

func TestServe(t *testing.T) {
	m := New()
	m.Rescues.WithLabelValues("reflink").Add(2)
	m.Skips.WithLabelValues("size").Inc()
	m.SweepDuration.WithLabelValues("full").Observe(0.003)
	m.Watches.Set(7)
	m.Overflows.Inc()

	s, err := Listen("127.0.0.1:0", m.Registry, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	resp, err := http.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`relinkd_rescues_total{method="reflink"} 2`,
		`relinkd_rescue_skips_total{reason="size"} 1`,
		`relinkd_sweep_duration_seconds_count{kind="full"} 1`,
		`relinkd_inotify_watches 7`,
		`relinkd_inotify_overflows_total 1`,
		`relinkd_removal_events_total 0`,
		`relinkd_pins_held 0`,
		"go_goroutines",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestSetDeletedOpen: each call replaces the series; a mount point that
// is no longer given loses its series.
func TestSetDeletedOpen(t *testing.T) {
	m := New()
	m.SetDeletedOpen(map[string]uint64{"/": 4096, "/srv": 8192})
	m.SetDeletedOpen(map[string]uint64{"/srv": 12288})
	mf, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range mf {
		if f.GetName() != "relinkd_deleted_open_bytes" {
			continue
		}
		for _, mt := range f.GetMetric() {
			got[mt.GetLabel()[0].GetValue()] = mt.GetGauge().GetValue()
		}
	}
	if len(got) != 1 || got["/srv"] != 12288 {
		t.Errorf("relinkd_deleted_open_bytes = %v, want only /srv = 12288", got)
	}
}

func TestInstancesAreIndependent(t *testing.T) {
	a, b := New(), New()
	a.Failures.Inc()
	mf, err := b.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range mf {
		if f.GetName() == "relinkd_rescue_failures_total" && f.GetMetric()[0].GetCounter().GetValue() != 0 {
			t.Error("a counter of one instance shows in another")
		}
	}
}

func TestListenBadAddress(t *testing.T) {
	if _, err := Listen("not-an-address", New().Registry, zaptest.NewLogger(t)); err == nil {
		t.Error("Listen accepted a bad address")
	}
}

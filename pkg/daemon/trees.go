package daemon

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/pkg/watch"
)

// trees is the directory watcher and the trees it is given: the rules'
// roots and their views in other mount namespaces. The main loop (new
// namespaces), the full pass (namespaces gone) and reload all set them;
// mu makes that one SetRoots at a time, in the order they were decided.
type trees struct {
	log    *zap.Logger
	views  *views
	mounts *mountChanges // nil: views are walked only when they are added

	w  atomic.Pointer[watch.Watcher] // nil until Run made one (or without events)
	mu sync.Mutex                    // held across each SetRoots
}

// watcher returns the running watcher, nil if there is none.
func (t *trees) watcher() *watch.Watcher { return t.w.Load() }

func (t *trees) setWatcher(w *watch.Watcher) { t.w.Store(w) }

// update decides the roots (decide reports whether they changed) and
// gives changed ones to the watcher, if there is one and events are on,
// under one lock: a namespace look and a full pass that race reach the
// watcher in the order they decided.
func (t *trees) update(events bool, decide func() (roots []string, changed bool)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	roots, changed := decide()
	w := t.watcher()
	if !changed || w == nil || !events {
		return
	}
	w.SetRoots(roots)
	if t.mounts != nil {
		t.mounts.sync(t.views.representatives())
	}
	t.log.Debug("watched trees", zap.Int("roots", len(roots)), zap.Strings("mntns", t.views.namespaces()),
		zap.Int("watches", w.Watches()))
}

// followMounts walks a view's trees again whenever mounts change in its
// namespace (see mountChanges), until ctx ends.
func (t *trees) followMounts(ctx context.Context) {
	if t.mounts == nil {
		return
	}
	defer t.mounts.close()
	t.mounts.run(ctx, 20*time.Millisecond, time.Second, func(nss []string) {
		w := t.watcher()
		if w == nil {
			return
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		for _, ns := range nss {
			prefix := t.views.viewPrefix(ns)
			if prefix == "" {
				continue
			}
			added := w.RescanUnder(prefix)
			t.log.Debug("mounts changed in a watched view; its trees walked again", zap.String("mntns", ns),
				zap.String("view", prefix), zap.Int("added", added), zap.Int("watches", w.Watches()))
		}
	})
}

// reload gives the watcher the trees of new rules (base, and their views
// in the namespaces known), or none when events were turned off.
func (t *trees) reload(base []string, events bool) {
	w := t.watcher()
	if w == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !events {
		w.SetRoots(nil)
		return
	}
	roots, _, _ := t.views.add(nil, base)
	w.SetRoots(roots)
}

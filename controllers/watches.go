package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/render"
)

// kindWatches says which managed kinds the MeshControlPlane controller watches, and starts
// the watch of an optional kind (render.Kind.Optional) when it is first needed.
//
// Every other kind is watched from the start. An optional kind is watched from the first
// time a render contains it, or the cluster is found to hold an object of it that Capstan
// owns, and from then on for the operator's life. Until then it costs nothing: no
// informer, no cache, no watch connection. What makes this safe is one invariant:
// Capstan owns objects only of kinds it watches. So prune and uninstall list owned objects
// from the cache alone, and the cluster is checked once, before the first of them, for
// objects of optional kinds that an earlier run of the operator (or an earlier leader)
// created. That look is taken as soon as the operator leads (Start, a leader-only
// runnable), off the path of the first reconcile.
type kindWatches struct {
	// start registers the watch of a kind and returns once its cache has synced.
	start func(ctx context.Context, k render.Kind) error
	// reader reads past the cache, for the check of the kinds not watched.
	reader client.Reader

	mu      sync.Mutex
	watched map[schema.GroupVersionKind]bool
	// found holds the optional kinds of which the cluster held an owned object when it was
	// looked at; nil until then.
	found map[schema.GroupVersionKind]bool
}

func newKindWatches(reader client.Reader, start func(context.Context, render.Kind) error) *kindWatches {
	w := &kindWatches{start: start, reader: reader, watched: map[schema.GroupVersionKind]bool{}}
	for _, k := range render.Kinds {
		if !k.Optional() {
			w.watched[k.GroupVersionKind] = true
		}
	}
	return w
}

// kinds lists the managed kinds watched now, in render.Kinds order.
func (w *kindWatches) kinds() []render.Kind {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []render.Kind
	for _, k := range render.Kinds {
		if w.watched[k.GroupVersionKind] {
			out = append(out, k)
		}
	}
	return out
}

// ensure watches every kind of objs that is not watched yet.
func (w *kindWatches) ensure(ctx context.Context, objs []render.Object) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, o := range objs {
		k, ok := render.Lookup(o.GroupVersionKind())
		if !ok || w.watched[k.GroupVersionKind] {
			continue
		}
		if err := w.startLocked(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// checkCluster watches, once per process, each optional kind of which the cluster already
// holds an object Capstan owns. The lookup itself (see find) is normally done already, by
// Start, when the first prune or uninstall calls this.
func (w *kindWatches) checkCluster(ctx context.Context) error {
	w.mu.Lock()
	checked := w.found != nil
	w.mu.Unlock()
	if !checked {
		if err := w.find(ctx); err != nil {
			return err
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range render.Kinds {
		if w.found[k.GroupVersionKind] && !w.watched[k.GroupVersionKind] {
			if err := w.startLocked(ctx, k); err != nil {
				return err
			}
		}
	}
	return nil
}

// find asks the apiserver, for each optional kind not watched, for at most one object of it
// that Capstan owns, and remembers the kinds that have one. A kind the cluster does not
// serve has no objects to find.
func (w *kindWatches) find(ctx context.Context) error {
	w.mu.Lock()
	var unwatched []render.Kind
	for _, k := range render.Kinds {
		if !w.watched[k.GroupVersionKind] {
			unwatched = append(unwatched, k)
		}
	}
	w.mu.Unlock()
	found := map[schema.GroupVersionKind]bool{}
	for _, k := range unwatched {
		l := &metav1.PartialObjectMetadataList{}
		l.SetGroupVersionKind(k.GroupVersion().WithKind(k.Kind + "List"))
		err := w.reader.List(ctx, l, client.MatchingLabels{apply.ManagedByLabel: apply.ManagedByValue}, client.Limit(1))
		switch {
		case meta.IsNoMatchError(err):
		case err != nil:
			return fmt.Errorf("looking for %s objects Capstan owns: %w", k.Kind, err)
		case len(l.Items) > 0:
			found[k.GroupVersionKind] = true
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.found == nil {
		w.found = found
	}
	return nil
}

// Start looks for owned objects of the optional kinds as soon as the operator leads, so
// that the first reconcile does not wait for it. It retries until it succeeds.
func (w *kindWatches) Start(ctx context.Context) error {
	_ = wait.PollUntilContextCancel(ctx, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		if err := w.find(ctx); err != nil {
			log.FromContext(ctx).Error(err, "looking for objects of optional kinds; retrying")
			return false, nil
		}
		return true, nil
	})
	return nil
}

// NeedLeaderElection: only the leader reconciles, so only the leader looks.
func (w *kindWatches) NeedLeaderElection() bool { return true }

func (w *kindWatches) startLocked(ctx context.Context, k render.Kind) error {
	if err := w.start(ctx, k); err != nil {
		return fmt.Errorf("watching %s: %w", k.Kind, err)
	}
	w.watched[k.GroupVersionKind] = true
	log.FromContext(ctx).Info("watching an optional kind", "kind", k.Kind)
	return nil
}

package controllers

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/capstan-mesh/capstan/internal/render"
)

// KindWatches exposes kindWatches to the integration suite, with start replaced by the
// test's own recorder.
type KindWatches struct{ w *kindWatches }

func NewKindWatches(reader client.Reader, start func(context.Context, render.Kind) error) KindWatches {
	return KindWatches{newKindWatches(reader, start)}
}

func (k KindWatches) CheckCluster(ctx context.Context) error { return k.w.checkCluster(ctx) }

func (k KindWatches) Kinds() []render.Kind { return k.w.kinds() }

func (k KindWatches) Start(ctx context.Context) error { return k.w.Start(ctx) }

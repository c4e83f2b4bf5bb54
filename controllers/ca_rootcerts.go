package controllers

import (
	"context"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/capstan-mesh/capstan/internal/ca"
	"github.com/capstan-mesh/capstan/internal/values"
)

// NewRootCertCache builds the cache the CA controller reads istiod's istio-ca-root-cert
// ConfigMaps from (CAReconciler.RootCerts), and adds it to mgr, which starts it once the
// operator leads. The manager's own cache holds only Capstan's objects, and istiod, not
// Capstan, writes these: this one holds ConfigMaps of that name alone, in every namespace
// (a field selector), without their managed fields. A rotation is then woken by istiod
// publishing its bundle instead of listing every namespace's ConfigMap every few seconds.
func NewRootCertCache(mgr ctrl.Manager) (cache.Cache, error) {
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		HTTPClient:       mgr.GetHTTPClient(),
		Scheme:           mgr.GetScheme(),
		Mapper:           mgr.GetRESTMapper(),
		DefaultTransform: cache.TransformStripManagedFields(),
		// Only ConfigMaps are read from it: any other read is a mistake, not a new informer.
		ReaderFailOnMissingInformer: true,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.ConfigMap{}: {
				Field: fields.OneTermEqualSelector("metadata.name", RootCertConfigMap),
				// published only reads them: one copy of each, the informer's, is enough.
				UnsafeDisableDeepCopy: ptr.To(true),
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("the %s ConfigMap cache: %w", RootCertConfigMap, err)
	}
	return c, mgr.Add(c)
}

// rootCertSource wakes the CA controller when an istio-ca-root-cert ConfigMap is created,
// deleted or given other data.
func rootCertSource(c cache.Cache) source.Source {
	toSingleton := handler.TypedEnqueueRequestsFromMapFunc(func(context.Context, *corev1.ConfigMap) []reconcile.Request {
		return []reconcile.Request{singletonRequest}
	})
	dataChanged := predicate.TypedFuncs[*corev1.ConfigMap]{
		UpdateFunc: func(e event.TypedUpdateEvent[*corev1.ConfigMap]) bool {
			return !maps.Equal(e.ObjectOld.Data, e.ObjectNew.Data)
		},
	}
	return source.Kind(c, &corev1.ConfigMap{}, toSingleton, dataChanged)
}

// published says whether istiod has published exactly the roots want: every
// istio-ca-root-cert ConfigMap in a namespace it serves (see ca.Served) holds them, and
// there is at least one. The ConfigMaps come from the root-cert cache, the namespaces'
// metadata from the manager's.
func (r *CAReconciler) published(ctx context.Context, served ca.Served, want []string) (bool, error) {
	l := &corev1.ConfigMapList{}
	if err := r.RootCerts.List(ctx, l); err != nil {
		return false, fmt.Errorf("reading the %s ConfigMaps: %w", RootCertConfigMap, err)
	}
	seen := 0
	// istiod writes the same bytes everywhere: each distinct bundle is parsed once.
	holds := map[string]bool{}
	for i := range l.Items {
		cm := &l.Items[i]
		ns := metadataOf(namespaceGVK)
		err := r.Get(ctx, client.ObjectKey{Name: cm.Namespace}, ns) // every namespace is cached
		if apierrors.IsNotFound(err) {
			continue // the namespace is gone; its ConfigMap goes with it
		}
		if err != nil {
			return false, err
		}
		if !served.Counts(ns.Name, ns.Labels, !ns.DeletionTimestamp.IsZero()) {
			continue
		}
		bundle := cm.Data["root-cert.pem"]
		ok, parsed := holds[bundle]
		if !parsed {
			roots, err := ca.ParseBundle([]byte(bundle))
			ok = err == nil && slices.Equal(ca.Fingerprints(roots), want)
			holds[bundle] = ok
		}
		if !ok {
			return false, nil
		}
		seen++
	}
	return seen > 0, nil
}

// served is the namespaces istiod serves, from spec.values' meshConfig.discoverySelectors.
// Selectors that do not parse count every namespace: a rotation may then wait on a
// namespace istiod does not serve, which delays it but never breaks trust.
func (s *caScope) served(ctx context.Context) ca.Served {
	var raw []byte
	if v := s.mcp.Spec.Values; v != nil {
		raw = v.Raw
	}
	sels, err := values.DiscoverySelectors(raw)
	if err != nil {
		log.FromContext(ctx).Error(err, "counting every namespace's istio-ca-root-cert ConfigMap in the rotation")
		sels = nil
	}
	return ca.Served{ControlPlane: s.ns, Selectors: sels}
}

package controllers

import (
	"context"
	"errors"
	"maps"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/ca"
)

// Names of the objects the CA controller keeps in the control-plane namespace.
const (
	// CAStateSecret holds the whole CA state: active and next key material and the
	// rotation's record. Only Capstan reads it.
	CAStateSecret = "capstan-ca"
	// CACertsSecret is the Secret istiod mounts and signs from.
	CACertsSecret = "cacerts"
	// CertManagerCertificate is the Certificate Capstan asks cert-manager for.
	CertManagerCertificate = "capstan-ca"
	// CertManagerSecret is where cert-manager stores the issued intermediate.
	CertManagerSecret = "capstan-ca-cert-manager"
	// CAComponent is the inventory component label of the CA's objects.
	CAComponent = "ca"
	// CAFieldManager is the field manager of the CA controller's status.
	CAFieldManager = "capstan-ca"
	// RootCertConfigMap is the ConfigMap istiod publishes its trust bundle in, in every
	// namespace.
	RootCertConfigMap = "istio-ca-root-cert"
)

// DefaultCAPropagation is the default allowance for a change to cacerts to reach istiod
// through the kubelet's Secret volume sync (a minute or so) and for a new trust bundle to
// reach every sidecar, with clock skew on top.
const DefaultCAPropagation = 3 * time.Minute

// DefaultCAPollInterval is how often a rotation waiting on other components looks again
// without being woken. Its signals are watched (istiod's istio-ca-root-cert ConfigMaps,
// its Deployment, the namespaces): this is only a backstop.
const DefaultCAPollInterval = time.Minute

// DefaultCASourcePollInterval is how often a Provided CA's Secret, which the user owns and
// Capstan does not cache, and cert-manager's Certificate are read again.
const DefaultCASourcePollInterval = 30 * time.Second

// RBAC of the CA controller. Secrets are granted in the control-plane namespace only (see
// docs/rbac.md for other namespaces and OLM); ConfigMaps are already readable cluster-wide
// for the charts' objects, and the CA watches istiod's istio-ca-root-cert ones with them.
//
// Nothing is deleted: the CA's objects are owned by the MeshControlPlane and go with it.
//
// +kubebuilder:rbac:groups="",namespace=istio-system,resources=secrets,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups=cert-manager.io,namespace=istio-system,resources=certificates,verbs=get;create;patch

// CAReconciler runs the mesh CA: it issues the CA, hands it to istiod through the cacerts
// Secret, renews the intermediate and rotates the root. It is a separate loop from the
// install, meeting it only through the cacerts Secret.
type CAReconciler struct {
	client.Client
	// APIReader reads what is not cached: the user's provided Secret and cert-manager's
	// Certificate.
	APIReader client.Reader
	// RootCerts caches istiod's istio-ca-root-cert ConfigMaps, the signal that istiod
	// published a trust bundle; build it with NewRootCertCache.
	RootCerts cache.Cache
	Recorder  events.EventRecorder
	// Clock is the time source; a fake one in tests.
	Clock clock.PassiveClock
	// Generator makes keys and certificates; ca.X509Generator{} outside tests.
	Generator ca.Generator
	// Propagation is the allowance for cacerts changes to reach istiod and trust bundle
	// changes to reach sidecars; DefaultCAPropagation when zero.
	Propagation time.Duration
	// SecretNamespaces are the namespaces the operator may manage Secrets in; empty means
	// any.
	SecretNamespaces []string
	// Metrics receives the CA's expiry times; nil for none.
	Metrics *CAMetrics
	// PollInterval and SourcePollInterval override DefaultCAPollInterval and
	// DefaultCASourcePollInterval (tests shorten them).
	PollInterval, SourcePollInterval time.Duration
}

// SetupWithManager registers the CA controller. It watches the MeshControlPlane's spec,
// Capstan's own Secrets (the state, cacerts and cert-manager's issued Secret, which
// cert-manager labels as Capstan's at Capstan's request), and a rotation's signals:
// istiod's istio-ca-root-cert ConfigMaps, istiod's Deployment, and the namespaces' labels
// and deletion, which say which ConfigMaps count.
func (r *CAReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.RootCerts == nil {
		return errors.New("CAReconciler.RootCerts: required; build it with NewRootCertCache")
	}
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.Generator == nil {
		r.Generator = ca.X509Generator{}
	}
	if r.Propagation == 0 {
		r.Propagation = DefaultCAPropagation
	}
	if r.PollInterval == 0 {
		r.PollInterval = DefaultCAPollInterval
	}
	if r.SourcePollInterval == 0 {
		r.SourcePollInterval = DefaultCASourcePollInterval
	}
	caSecret := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return apply.Owned(o.GetLabels()) && o.GetLabels()[apply.ComponentLabel] == CAComponent
	})
	istiod := &unstructured.Unstructured{}
	istiod.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("Deployment"))
	isIstiod := predicate.NewPredicateFuncs(func(o client.Object) bool {
		inv, ok := apply.InventoryOf(o.GetLabels())
		return ok && installsIstiod(inv)
	})
	// A namespace that starts terminating or changes labels may stop or start counting;
	// new namespaces count only once istiod wrote their ConfigMap, itself an event.
	servedChanged := predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
		UpdateFunc: func(e event.UpdateEvent) bool {
			return e.ObjectOld.GetDeletionTimestamp().IsZero() != e.ObjectNew.GetDeletionTimestamp().IsZero() ||
				!maps.Equal(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels())
		},
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("meshca").
		For(&meshv1.MeshControlPlane{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Secret{}, toSingleton, builder.WithPredicates(caSecret)).
		Watches(istiod, toSingleton, builder.WithPredicates(isIstiod)).
		WatchesMetadata(metadataOf(namespaceGVK), toSingleton, builder.WithPredicates(servedChanged)).
		WatchesRawSource(rootCertSource(r.RootCerts)).
		Complete(r)
}

// Reconcile drives the CA's state machine one decision at a time and reports it in
// status.ca and the CAReady and CARotating conditions.
func (r *CAReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	mcp := &meshv1.MeshControlPlane{}
	if err := r.Get(ctx, req.NamespacedName, mcp); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !mcp.DeletionTimestamp.IsZero() {
		// The CA's Secrets are owned by the MeshControlPlane and go with it.
		return ctrl.Result{}, nil
	}
	s := newCAScope(mcp, r.Clock.Now())
	s.pollRotation = r.PollInterval
	res, err := r.run(ctx, s)
	serr := r.applyStatus(ctx, s)
	r.Metrics.observe(s.mcp.Status.CA)
	if serr != nil && err == nil {
		err = serr
	}
	return res, err
}

func (r *CAReconciler) run(ctx context.Context, s *caScope) (ctrl.Result, error) {
	for _, phase := range []caPhaseFunc{
		r.checkNamespace,
		r.loadState,
		r.resolveSource,
		r.checkCACerts,
		r.drive,
	} {
		res, err := phase(ctx, s)
		if err != nil || s.stop || !res.IsZero() {
			return res, err
		}
	}
	return ctrl.Result{}, nil
}

// secretsAllowed says whether the operator was granted Secrets in ns.
func (r *CAReconciler) secretsAllowed(ns string) bool {
	return len(r.SecretNamespaces) == 0 || slices.Contains(r.SecretNamespaces, ns)
}

// applyStatus writes status.ca and the CA's two conditions with server-side apply under
// the CA's own field manager, so that the install controller's status writes and these
// never overwrite each other; and only when they changed.
func (r *CAReconciler) applyStatus(ctx context.Context, s *caScope) error {
	s.summarize()
	if equality.Semantic.DeepEqual(s.before.Status.CA, s.mcp.Status.CA) &&
		equality.Semantic.DeepEqual(caConditions(s.before.Status.Conditions), caConditions(s.mcp.Status.Conditions)) {
		return nil
	}
	return client.IgnoreNotFound(applyStatusFields(ctx, r.Client, s.mcp, CAFieldManager, map[string]any{
		"ca":         s.mcp.Status.CA,
		"conditions": caConditions(s.mcp.Status.Conditions),
	}))
}

package controllers

import (
	"context"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/render"
	"github.com/capstan-mesh/capstan/internal/revision"
)

// NewScheme returns the types the operator reads and writes as typed objects: its own
// resource, and the Secrets, Namespaces, ConfigMaps, workloads, PodDisruptionBudgets and
// CRDs it reads. What the charts render is handled as unstructured objects and needs no
// registration. It is
// kept this small because every registered group costs memory for the operator's life, and
// client-go already holds a scheme of every built-in type; tests that create other kinds
// as typed objects use NewTestScheme.
func NewScheme() (*runtime.Scheme, error) {
	return newScheme(corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, apiextensionsv1.AddToScheme, meshv1.AddToScheme)
}

// NewTestScheme is NewScheme with every built-in Kubernetes type, for tests.
func NewTestScheme() (*runtime.Scheme, error) {
	return newScheme(clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, meshv1.AddToScheme)
}

func newScheme(adds ...func(*runtime.Scheme) error) (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range adds {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// ManagerOptions is the manager configuration the reconcilers rely on, shared by the
// operator binary and the integration tests. The cache is declared kind by kind (see
// CacheByObject); the managed-by filter stays as the default only as a safety net for a
// kind someone forgets to declare.
func ManagerOptions(scheme *runtime.Scheme, secretNamespaces ...string) ctrl.Options {
	return ctrl.Options{
		Scheme: scheme,
		Cache: cache.Options{
			DefaultLabelSelector: ownedSelector,
			ByObject:             CacheByObject(secretNamespaces...),
		},
		Client: client.Options{Cache: &client.CacheOptions{Unstructured: true}},
	}
}

// ownedSelector selects the objects Capstan wrote.
var ownedSelector = labels.SelectorFromSet(labels.Set{apply.ManagedByLabel: apply.ManagedByValue})

// CacheByObject says, for every kind the operator reads through its cache, which objects
// the cache holds and in what shape:
//
//   - every kind Istio's charts render (render.Kinds): Capstan's objects only, by the
//     managed-by label, so memory does not grow with the cluster; read as unstructured
//     objects, the shape the charts render to (CRDs as metadata only);
//   - Namespaces: every one, as metadata only: the control-plane namespace may be one the
//     user made, the CA reads whether a namespace is terminating, and the data plane reads
//     their labels; a few hundred bytes a namespace keeps large clusters cheap;
//   - Pods: every one that has not terminated, as metadata only, cut down by dataPlanePod
//     to the labels, annotations and owner the data plane reads. The field selector on the
//     phase keeps terminated pods out (a pod that terminates leaves the watch as a
//     deletion), so the phase need not be read, and the apiserver sends no pod specs,
//     which an injected pod makes several KB: decoding them was most of what the operator
//     spent on a large cluster;
//   - the MeshControlPlane, which the user creates: all of them (there is one);
//   - Secrets: Capstan's own, in secretNamespaces only (every namespace when none is
//     given), the namespaces the operator is granted Secrets in.
func CacheByObject(secretNamespaces ...string) map[client.Object]cache.ByObject {
	secrets := cache.ByObject{Label: ownedSelector}
	if len(secretNamespaces) > 0 {
		secrets.Namespaces = map[string]cache.Config{}
		for _, ns := range secretNamespaces {
			secrets.Namespaces[ns] = cache.Config{}
		}
	}
	everything := cache.ByObject{Label: labels.Everything(), Transform: cache.TransformStripManagedFields()}
	by := map[client.Object]cache.ByObject{
		&meshv1.MeshControlPlane{}: {Label: labels.Everything()},
		&corev1.Secret{}:           secrets,
		metadataOf(podGVK):         {Label: labels.Everything(), Field: runningPods, Transform: dataPlanePod},
		metadataOf(namespaceGVK):   everything,
	}
	for _, k := range render.Kinds {
		if k.GroupVersionKind == namespaceGVK {
			continue
		}
		by[watchedObject(k)] = cache.ByObject{Label: ownedSelector}
	}
	return by
}

var podGVK = corev1.SchemeGroupVersion.WithKind("Pod")

// runningPods selects the pods that have not terminated: the data plane counts no other.
var runningPods = fields.AndSelectors(
	fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
	fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed)))

// dataPlanePodLabels and dataPlanePodAnnotations are the only labels and annotations of a
// pod the data plane reads: which revision its labels ask for, its Deployment's template
// hash, and what the injector wrote.
var (
	dataPlanePodLabels      = []string{revision.RevLabel, revision.InjectLabel, podTemplateHashLabel}
	dataPlanePodAnnotations = []string{revision.StatusAnnotation, dataplane.ProxyVersionAnnotation, dataplane.ProxyConfigAnnotation}
)

// dataPlanePod is the cache's transform of a pod's metadata: its identity, the labels and
// annotations the data plane reads, and its controller reference. Any other object (a
// tombstone) passes unchanged.
func dataPlanePod(obj any) (any, error) {
	p, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil
	}
	m := metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
		Labels: pick(p.Labels, dataPlanePodLabels), Annotations: pick(p.Annotations, dataPlanePodAnnotations)}
	if ref := metav1.GetControllerOfNoCopy(p); ref != nil {
		m.OwnerReferences = []metav1.OwnerReference{*ref}
	}
	return &metav1.PartialObjectMetadata{TypeMeta: p.TypeMeta, ObjectMeta: m}, nil
}

// pick is the entries of m under keys; nil when there is none.
func pick(m map[string]string, keys []string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := m[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keys))
			}
			out[k] = v
		}
	}
	return out
}

// singletonRequest is the one request every watch of Capstan's controllers maps to: a
// cluster runs one MeshControlPlane, and each controller reconciles all of it at once.
var singletonRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: meshv1.SingletonName}}

// toSingleton maps any watched object to singletonRequest.
var toSingleton = handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
	return []reconcile.Request{singletonRequest}
})

// installsIstiod says whether an object Capstan wrote is one of the install's istiod
// objects, whatever its revision (the CA waits on every istiod, each signing with cacerts).
func installsIstiod(inv apply.Inventory) bool {
	return inv.Writer == apply.WriterInstall && inv.Component == render.Istiod.Name
}

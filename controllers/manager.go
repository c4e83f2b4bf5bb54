package controllers

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
)

// NewScheme returns the types the operator reads and writes as typed objects: its own
// resource, and the Secrets, Namespaces, ConfigMaps, Deployments and CRDs it reads. What
// the charts render is handled as unstructured objects and needs no registration. It is
// kept this small because every registered group costs memory for the operator's life, and
// client-go already holds a scheme of every built-in type; tests that create other kinds
// as typed objects use NewTestScheme.
func NewScheme() (*runtime.Scheme, error) {
	return newScheme(corev1.AddToScheme, appsv1.AddToScheme, apiextensionsv1.AddToScheme, meshv1.AddToScheme)
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
// operator binary and the integration tests. The cache holds only objects Capstan owns
// (by its managed-by label), so its memory does not grow with the cluster; the
// MeshControlPlane, which the user creates, is the exception. Owned kinds are read as
// unstructured objects, the shape the charts render to.
//
// Namespaces are cached as metadata only, all of them: the control-plane namespace may be
// one the user made, and a few hundred bytes a namespace keeps even large clusters cheap.
//
// Secrets are cached only in secretNamespaces (all namespaces when none is given), the
// namespaces the operator is granted Secrets in.
func ManagerOptions(scheme *runtime.Scheme, secretNamespaces ...string) ctrl.Options {
	secrets := cache.ByObject{}
	if len(secretNamespaces) > 0 {
		secrets.Namespaces = map[string]cache.Config{}
		for _, ns := range secretNamespaces {
			secrets.Namespaces[ns] = cache.Config{}
		}
	}
	return ctrl.Options{
		Scheme: scheme,
		Cache: cache.Options{
			DefaultLabelSelector: labels.SelectorFromSet(labels.Set{apply.ManagedByLabel: apply.ManagedByValue}),
			ByObject: map[client.Object]cache.ByObject{
				&meshv1.MeshControlPlane{}: {Label: labels.Everything()},
				&corev1.Secret{}:           secrets,
				// Every namespace, as metadata only: the control-plane namespace may be the
				// user's, and whether it exists is read on every reconcile.
				metadataOf(namespaceGVK): {Label: labels.Everything(), Transform: cache.TransformStripManagedFields()},
			},
		},
		Client: client.Options{Cache: &client.CacheOptions{Unstructured: true}},
	}
}

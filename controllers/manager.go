package controllers

import (
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

// NewScheme returns the types the operator reads and writes.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, meshv1.AddToScheme} {
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
			},
		},
		Client: client.Options{Cache: &client.CacheOptions{Unstructured: true}},
	}
}

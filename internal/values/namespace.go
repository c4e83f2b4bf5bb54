package values

import (
	"fmt"
	"slices"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
)

// DefaultNamespace is where the control plane runs when spec.namespace is empty: the CRD's
// default, for objects read without it.
const DefaultNamespace = "istio-system"

// ReservedNamespaces are Kubernetes' own namespaces, which never hold the control plane.
// The CRD refuses them too (a CEL rule on spec.namespace lists the same three).
var ReservedNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}

// Namespace is the control plane's namespace that spec declares.
func Namespace(spec *meshv1.MeshControlPlaneSpec) string {
	if spec.Namespace == "" {
		return DefaultNamespace
	}
	return spec.Namespace
}

// CheckNamespace refuses a control-plane namespace that is one of Kubernetes' own, or the
// operator's own namespace (operatorNamespace; "" when unknown, which skips that check).
// Admission refuses both, through the CRD and the validating webhook; this is for objects
// stored before it did, so that the controller reports the field and changes nothing.
func CheckNamespace(spec *meshv1.MeshControlPlaneSpec, operatorNamespace string) error {
	ns := Namespace(spec)
	switch {
	case slices.Contains(ReservedNamespaces, ns):
		return &FieldError{Field: "spec.namespace", Detail: fmt.Sprintf("%s is one of Kubernetes' own namespaces (kube-system, kube-public, kube-node-lease), which cannot hold the control plane; use a namespace of its own, such as %s", ns, DefaultNamespace)}
	case operatorNamespace != "" && ns == operatorNamespace:
		return &FieldError{Field: "spec.namespace", Detail: fmt.Sprintf("%s is the Capstan operator's own namespace; the control plane needs one of its own, such as %s, so that its Secrets, RBAC and uninstall stay apart from the operator's", ns, DefaultNamespace)}
	}
	return nil
}

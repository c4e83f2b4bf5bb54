package render

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Kind is a kind of object Istio's charts render and Capstan therefore manages: it is
// watched for drift, listed for pruning and named in the operator's RBAC.
type Kind struct {
	schema.GroupVersionKind
	Namespaced bool
	// rank orders applies in waves: identities, permissions and configuration, then
	// workloads, and last the webhooks and policies that call them or gate admission.
	// Objects of one rank are applied together. The namespace comes first. Istio's CRDs
	// are written beside the waves, not before them: nothing Capstan installs is an Istio
	// resource, so nothing waits for them.
	rank int
	// optional: the charts render objects of this kind only when a value turns them on.
	optional bool
}

// Optional says whether Istio's charts render objects of this kind only when a value turns
// them on: autoscaling, disruption budgets, network policies and validating admission
// policies. Capstan watches such a kind only from the moment it has objects of it, so a
// control plane that renders none of them pays for no informer of theirs.
func (k Kind) Optional() bool { return k.optional }

// Kinds is the closed list of kinds Capstan manages. A chart that renders any other kind
// fails to render, so RBAC never needs a wildcard.
var Kinds = []Kind{
	{gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"), false, 1, false},
	{gvk("", "v1", "Namespace"), false, 0, false},
	{gvk("", "v1", "ServiceAccount"), true, 1, false},
	{gvk("rbac.authorization.k8s.io", "v1", "ClusterRole"), false, 1, false},
	{gvk("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"), false, 1, false},
	{gvk("rbac.authorization.k8s.io", "v1", "Role"), true, 1, false},
	{gvk("rbac.authorization.k8s.io", "v1", "RoleBinding"), true, 1, false},
	{gvk("", "v1", "ConfigMap"), true, 1, false},
	{gvk("", "v1", "Service"), true, 1, false},
	{gvk("apps", "v1", "Deployment"), true, 2, false},
	{gvk("autoscaling", "v2", "HorizontalPodAutoscaler"), true, 2, true},
	{gvk("policy", "v1", "PodDisruptionBudget"), true, 2, true},
	{gvk("networking.k8s.io", "v1", "NetworkPolicy"), true, 2, true},
	{gvk("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration"), false, 3, false},
	{gvk("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration"), false, 3, false},
	{gvk("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy"), false, 3, true},
	{gvk("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding"), false, 3, true},
}

func gvk(g, v, k string) schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: g, Version: v, Kind: k}
}

// Lookup finds a managed kind.
func Lookup(g schema.GroupVersionKind) (Kind, bool) {
	for _, k := range Kinds {
		if k.GroupVersionKind == g {
			return k, true
		}
	}
	return Kind{}, false
}

// Rank orders kinds for apply: a lower rank is applied earlier and deleted later.
func Rank(g schema.GroupVersionKind) int {
	k, _ := Lookup(g)
	return k.rank
}

func applyRank(o Object) int { return Rank(o.GroupVersionKind()) }

// Package config_test checks the deployment manifests in config/ for the properties a
// platform team relies on: least-privilege RBAC and a manager that runs under the
// "restricted" Pod Security Standard.
package config_test

import (
	"bytes"
	"context"
	"github.com/capstan-mesh/capstan/internal/manifestcheck"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"

	"github.com/capstan-mesh/capstan/internal/values"
)

// rendered returns the objects of a kustomization, rendered with the project's kubectl.
func rendered(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	kubectl := filepath.Join("..", "bin", "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Fatalf("bin/kubectl is missing (make tools builds it): %v", err)
	}
	data, err := exec.Command(kubectl, "kustomize", dir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			break
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	if len(objs) == 0 {
		t.Fatalf("%s renders nothing", dir)
	}
	return objs
}

func convert[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	b, err := u.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	out := new(T)
	if err := yaml.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRBACNamesEveryResourceAndVerb protects least privilege: no rule of any role Capstan
// ships may use a wildcard.
func TestRBACNamesEveryResourceAndVerb(t *testing.T) {
	var rules int
	for _, o := range rendered(t, "default") {
		var rs []rbacv1.PolicyRule
		switch o.GetKind() {
		case "ClusterRole":
			rs = convert[rbacv1.ClusterRole](t, o).Rules
		case "Role":
			rs = convert[rbacv1.Role](t, o).Rules
		default:
			continue
		}
		for _, r := range rs {
			rules++
			for _, list := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames, r.NonResourceURLs} {
				if slices.ContainsFunc(list, func(s string) bool { return strings.Contains(s, "*") }) {
					t.Errorf("%s %s has a wildcard rule: %+v", o.GetKind(), o.GetName(), r)
				}
			}
		}
	}
	if rules < 10 {
		t.Fatalf("found only %d RBAC rules; is config/rbac rendered?", rules)
	}
}

// TestManagerIsRestricted protects the manager Deployment's security posture: the
// "restricted" Pod Security Standard (evaluated by the apiserver's own checks), no pinned
// UID (OpenShift assigns one), a read-only root filesystem, resources, probes and leader
// election.
func TestManagerIsRestricted(t *testing.T) {
	var dep *appsv1.Deployment
	for _, o := range rendered(t, "default") {
		if o.GetKind() == "Deployment" {
			dep = convert[appsv1.Deployment](t, o)
		}
	}
	if dep == nil {
		t.Fatal("config/default has no Deployment")
	}
	eval, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pod := dep.Spec.Template
	for _, r := range eval.EvaluatePod(api.LevelVersion{Level: api.LevelRestricted, Version: api.LatestVersion()}, &pod.ObjectMeta, &pod.Spec) {
		if !r.Allowed {
			t.Errorf("restricted Pod Security Standard: %s: %s", r.ForbiddenReason, r.ForbiddenDetail)
		}
	}
	if sc := pod.Spec.SecurityContext; sc != nil && sc.RunAsUser != nil {
		t.Error("the pod pins a UID; OpenShift assigns one from the namespace's range")
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.RunAsUser != nil {
		t.Error("the manager needs a read-only root filesystem and no pinned UID")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("requests and a memory limit must be set: %+v", c.Resources)
	}
	if c.LivenessProbe == nil || c.ReadinessProbe == nil {
		t.Error("liveness and readiness probes must be set")
	}
	if !slices.Contains(c.Args, "--leader-elect") {
		t.Errorf("args %v lack --leader-elect", c.Args)
	}
	if !slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--metrics-bind-address=:8443") }) {
		t.Errorf("args %v do not serve metrics on :8443", c.Args)
	}
}

// TestSecretsOnlyInControlPlaneNamespace protects the mesh CA's least privilege: Secrets and
// cert-manager Certificates are granted by a namespaced Role in the control-plane namespace
// (the CRD's default spec.namespace), bound to the operator's ServiceAccount there, never
// by a ClusterRole; the namespace ships with the Role (a Role needs its namespace to exist);
// and the operator caches Secrets in exactly that namespace (--secret-namespaces).
func TestSecretsOnlyInControlPlaneNamespace(t *testing.T) {
	objs := rendered(t, "default")
	controlPlane := crdDefaultNamespace(t, objs)
	var dep *appsv1.Deployment
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			dep = convert[appsv1.Deployment](t, o)
		}
	}
	if dep == nil {
		t.Fatal("config/default has no Deployment")
	}
	sa := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: dep.Spec.Template.Spec.ServiceAccountName, Namespace: dep.Namespace}

	sensitive := []struct{ group, resource string }{{"", "secrets"}, {"cert-manager.io", "certificates"}}
	grants := func(rules []rbacv1.PolicyRule, group, resource string) bool {
		return slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool {
			return slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource)
		})
	}
	granted := map[string]string{} // "group/resource" -> namespace of the Role
	var namespaces []string
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace":
			namespaces = append(namespaces, o.GetName())
		case "ClusterRole":
			cr := convert[rbacv1.ClusterRole](t, o)
			for _, s := range sensitive {
				if grants(cr.Rules, s.group, s.resource) {
					t.Errorf("ClusterRole %s grants %q %s cluster-wide; grant them with a Role in %s", cr.Name, s.group, s.resource, controlPlane)
				}
			}
		case "Role":
			r := convert[rbacv1.Role](t, o)
			var sensitiveRole bool
			for _, s := range sensitive {
				if !grants(r.Rules, s.group, s.resource) {
					continue
				}
				sensitiveRole = true
				if r.Namespace != controlPlane {
					t.Errorf("Role %s/%s grants %q %s outside the control-plane namespace %s", r.Namespace, r.Name, s.group, s.resource, controlPlane)
				}
				granted[s.group+"/"+s.resource] = r.Namespace
			}
			if sensitiveRole && !boundTo(t, objs, r, sa) {
				t.Errorf("Role %s/%s is not bound to the operator's ServiceAccount %s/%s in its namespace", r.Namespace, r.Name, sa.Namespace, sa.Name)
			}
		}
	}
	for _, s := range sensitive {
		if granted[s.group+"/"+s.resource] == "" {
			t.Errorf("no Role grants %q %s: the mesh CA controller needs them in %s", s.group, s.resource, controlPlane)
		}
	}
	if !slices.Contains(namespaces, controlPlane) {
		t.Errorf("config/default ships no Namespace %s, so its Role cannot be created; it ships %v", controlPlane, namespaces)
	}
	want := "--secret-namespaces=" + controlPlane
	if args := dep.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, want) {
		t.Errorf("manager args %v lack %s: the operator would cache Secrets where it is not granted them", args, want)
	}
}

// crdDefaultNamespace is the default of the MeshControlPlane's spec.namespace: the
// control-plane namespace.
func crdDefaultNamespace(t *testing.T, objs []*unstructured.Unstructured) string {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		versions, _, _ := unstructured.NestedSlice(o.Object, "spec", "versions")
		for _, v := range versions {
			def, ok, _ := unstructured.NestedString(v.(map[string]any), "schema", "openAPIV3Schema", "properties", "spec", "properties", "namespace", "default")
			if ok && def != "" {
				return def
			}
		}
	}
	t.Fatal("the MeshControlPlane CRD has no default spec.namespace")
	return ""
}

// boundTo reports whether a RoleBinding in the Role's namespace binds it to subject.
func boundTo(t *testing.T, objs []*unstructured.Unstructured, role *rbacv1.Role, subject rbacv1.Subject) bool {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "RoleBinding" || o.GetNamespace() != role.Namespace {
			continue
		}
		b := convert[rbacv1.RoleBinding](t, o)
		if b.RoleRef.Kind == "Role" && b.RoleRef.Name == role.Name && slices.Contains(b.Subjects, subject) {
			return true
		}
	}
	return false
}

// TestManagerEnvFromDownwardAPI protects two variables the operator reads from its pod:
// GOMEMLIMIT, the container's memory limit, under which Go's garbage collector keeps the
// heap (the operator's only memory tuning), and POD_NAMESPACE, the operator's own
// namespace, which the webhook refuses for the control plane.
func TestManagerEnvFromDownwardAPI(t *testing.T) {
	for _, o := range rendered(t, "default") {
		if o.GetKind() != "Deployment" {
			continue
		}
		for _, p := range manifestcheck.ManagerEnv(convert[appsv1.Deployment](t, o).Spec.Template.Spec.Containers[0]) {
			t.Error(p)
		}
		return
	}
	t.Fatal("config/default has no Deployment")
}

// TestLeaderElectionRole protects leader election under controller-runtime's default
// lock, and nothing more: Leases, and the core Events it records on them ("became
// leader"), in the operator's namespace only.
func TestLeaderElectionRole(t *testing.T) {
	for _, o := range rendered(t, "default") {
		if o.GetKind() != "Role" || o.GetName() != "capstan-leader-election" {
			continue
		}
		want := []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		}
		if got := convert[rbacv1.Role](t, o).Rules; !reflect.DeepEqual(got, want) {
			t.Errorf("rules %+v, want %+v", got, want)
		}
		if o.GetNamespace() != "capstan-system" {
			t.Errorf("the Role is in %q, not the operator's namespace", o.GetNamespace())
		}
		return
	}
	t.Fatal("config/default has no Role capstan-leader-election")
}

// TestCRDDeclaresOwnedValues protects the CEL rules that refuse the Helm values Capstan
// owns: CEL sees only declared fields, and controller-gen cannot declare them inside
// spec.values, so make manifests adds them after it (hack/crdvalues). A CRD regenerated
// without that step fails here.
func TestCRDDeclaresOwnedValues(t *testing.T) {
	got, err := os.ReadFile(filepath.Join("..", values.CRDPath))
	if err != nil {
		t.Fatal(err)
	}
	want, err := values.WithOwnedSchema(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s lacks the owned values' schema and rules: run make manifests", values.CRDPath)
	}
}

// TestCRDPassesAPIServerValidation runs the apiserver's own CRD validation, so that a CEL
// rule that does not compile, or costs more than the apiserver allows, fails here rather
// than at install.
func TestCRDPassesAPIServerValidation(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", values.CRDPath))
	if err != nil {
		t.Fatal(err)
	}
	var v1 apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(b, &v1); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := apiextensions.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	var crd apiextensions.CustomResourceDefinition
	if err := s.Convert(&v1, &crd, nil); err != nil {
		t.Fatal(err)
	}
	crd.Status.StoredVersions = []string{"v1alpha1"} // as the apiserver records once it stores one
	for _, e := range apiextensionsvalidation.ValidateCustomResourceDefinition(context.Background(), &crd) {
		t.Error(e)
	}
	rules := 0
	var count func(p *apiextensions.JSONSchemaProps)
	count = func(p *apiextensions.JSONSchemaProps) {
		rules += len(p.XValidations)
		for _, c := range p.Properties {
			count(&c)
		}
		if p.Items != nil && p.Items.Schema != nil {
			count(p.Items.Schema)
		}
	}
	for _, v := range crd.Spec.Versions {
		if v.Schema != nil {
			count(v.Schema.OpenAPIV3Schema)
		}
	}
	if crd.Spec.Validation != nil { // the internal form's schema shared by every version
		count(crd.Spec.Validation.OpenAPIV3Schema)
	}
	if rules < len(values.OwnedValues) {
		t.Errorf("only %d CEL rules in the CRD; is it the one make manifests writes?", rules)
	}
}

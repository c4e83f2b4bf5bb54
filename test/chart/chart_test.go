package chart

// Unit tests of charts/capstan: no cluster, no network. They run with `go test ./test/chart`.

import (
	"bytes"
	"encoding/json"
	"flag"
	"github.com/capstan-mesh/capstan/internal/manifestcheck"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "copy config/crd/bases into charts/capstan/crds instead of failing when they differ")

const (
	fullname       = "capstan" // the chart's name prefix for release "capstan"
	webhookPath    = "/validate-mesh-capstan-dev-v1alpha1-meshcontrolplane"
	webhookCertDir = "/tmp/k8s-webhook-server/serving-certs"
)

// A cert Secret and CA for the variants without cert-manager.
var byoCert = map[string]any{"webhook": map[string]any{
	"certManager":    map[string]any{"enabled": false},
	"certSecretName": "my-webhook-tls",
	"caBundle":       "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
}}

// variant is one set of values and what its render must and must not hold.
type variant struct {
	name   string
	values map[string]any
	// present and absent are "Kind/name" of objects.
	present, absent []string
	// args the manager container must have, and must not have.
	args, noArgs []string
	// certSecret is the Secret mounted at the webhook cert dir; "" for no mount.
	certSecret string
	// controlPlaneNS is the namespace of the mesh CA's Role; "" for the default, istio-system.
	controlPlaneNS string
}

// controlPlaneNS is the variant's control-plane namespace.
func (v variant) controlPlaneNamespace() string {
	if v.controlPlaneNS != "" {
		return v.controlPlaneNS
	}
	return "istio-system"
}

var variants = []variant{
	{
		name: "defaults",
		present: []string{"ServiceAccount/capstan", "ClusterRole/capstan-manager", "ClusterRoleBinding/capstan-manager",
			"Role/capstan-leader-election", "RoleBinding/capstan-leader-election", "Deployment/capstan",
			"Service/capstan-metrics", "ClusterRole/capstan-metrics-reader", "Service/capstan-webhook",
			"ValidatingWebhookConfiguration/capstan-validating", "Issuer/capstan-selfsigned", "Certificate/capstan-webhook-cert",
			"Namespace/istio-system", "Role/capstan-manager", "RoleBinding/capstan-manager"},
		args: []string{"--health-probe-bind-address=:8081", "--metrics-bind-address=:8443", "--leader-elect",
			"--webhook-cert-dir=" + webhookCertDir, "--zap-log-level=info", "--secret-namespaces=istio-system"},
		noArgs:     []string{"--enable-webhooks=false", "--metrics-bind-address=0"},
		certSecret: "capstan-webhook-cert",
	},
	{
		name: "another control-plane namespace, existing, and a CA propagation allowance",
		values: map[string]any{"controlPlaneNamespace": "mesh-system", "createControlPlaneNamespace": false,
			"caPropagation": "90s"},
		present:        []string{"Role/capstan-manager", "RoleBinding/capstan-manager"},
		absent:         []string{"Namespace/mesh-system", "Namespace/istio-system"},
		args:           []string{"--secret-namespaces=mesh-system", "--ca-propagation=90s"},
		noArgs:         []string{"--secret-namespaces=istio-system"},
		certSecret:     "capstan-webhook-cert",
		controlPlaneNS: "mesh-system",
	},
	{
		name:       "webhook certificate supplied, no cert-manager",
		values:     byoCert,
		present:    []string{"Service/capstan-webhook", "ValidatingWebhookConfiguration/capstan-validating"},
		absent:     []string{"Issuer/capstan-selfsigned", "Certificate/capstan-webhook-cert"},
		args:       []string{"--webhook-cert-dir=" + webhookCertDir},
		noArgs:     []string{"--enable-webhooks=false"},
		certSecret: "my-webhook-tls",
	},
	{
		name:    "webhook disabled",
		values:  map[string]any{"webhook": map[string]any{"enabled": false}},
		present: []string{"Deployment/capstan"},
		absent: []string{"Service/capstan-webhook", "ValidatingWebhookConfiguration/capstan-validating",
			"Issuer/capstan-selfsigned", "Certificate/capstan-webhook-cert"},
		args:   []string{"--enable-webhooks=false"},
		noArgs: []string{"--webhook-cert-dir=" + webhookCertDir},
	},
	{
		name:       "metrics disabled",
		values:     map[string]any{"metrics": map[string]any{"enabled": false}},
		absent:     []string{"Service/capstan-metrics", "ClusterRole/capstan-metrics-reader"},
		args:       []string{"--metrics-bind-address=0"},
		noArgs:     []string{"--metrics-bind-address=:8443"},
		certSecret: "capstan-webhook-cert",
	},
	{
		name:       "leader election disabled",
		values:     map[string]any{"leaderElection": map[string]any{"enabled": false}, "logLevel": "debug"},
		present:    []string{"ClusterRole/capstan-manager"},
		absent:     []string{"Role/capstan-leader-election", "RoleBinding/capstan-leader-election"},
		args:       []string{"--zap-log-level=debug"},
		noArgs:     []string{"--leader-elect"},
		certSecret: "capstan-webhook-cert",
	},
	{
		name: "existing ServiceAccount, scheduling and pod values",
		values: map[string]any{
			"serviceAccount": map[string]any{"create": false, "name": "ops-capstan"},
			"replicas":       2,
			"image":          map[string]any{"repository": "registry.example/capstan", "tag": "dev"},
			"nodeSelector":   map[string]any{"kubernetes.io/os": "linux"},
			"tolerations":    []any{map[string]any{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}},
			"affinity":       map[string]any{"nodeAffinity": map[string]any{}},
			"podAnnotations": map[string]any{"example.com/scrape": "true"},
		},
		absent:     []string{"ServiceAccount/capstan", "ServiceAccount/ops-capstan"},
		certSecret: "capstan-webhook-cert",
	},
}

func TestRenderVariants(t *testing.T) {
	ch := loadChart(t)
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			objs, err := renderChart(ch, v.values, "v1.37.1")
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			var have []string
			for _, o := range objs {
				have = append(have, o.GetKind()+"/"+o.GetName())
				checkObject(t, o, v.controlPlaneNamespace())
			}
			for _, p := range v.present {
				if !slices.Contains(have, p) {
					t.Errorf("%s is missing; rendered %v", p, have)
				}
			}
			for _, a := range v.absent {
				if slices.Contains(have, a) {
					t.Errorf("%s is rendered and should not be", a)
				}
			}

			dep := deployment(t, objs)
			checkRestricted(t, &dep.Spec.Template.Spec)
			mgr := dep.Spec.Template.Spec.Containers[0]
			for _, a := range v.args {
				if !slices.Contains(mgr.Args, a) {
					t.Errorf("manager args %q lack %s", mgr.Args, a)
				}
			}
			for _, a := range v.noArgs {
				if slices.Contains(mgr.Args, a) {
					t.Errorf("manager args %q have %s", mgr.Args, a)
				}
			}
			checkProbes(t, mgr)
			checkEnv(t, mgr)
			checkCertMount(t, &dep.Spec.Template.Spec, v.certSecret)
			if sa := dep.Spec.Template.Spec.ServiceAccountName; sa != subjectOf(t, objs, "ClusterRoleBinding", "capstan-manager") {
				t.Errorf("the Deployment runs as %q, the ClusterRoleBinding binds %q", sa, subjectOf(t, objs, "ClusterRoleBinding", "capstan-manager"))
			}
			if find(objs, "Role", "capstan-leader-election") != nil {
				if got := subjectOf(t, objs, "RoleBinding", "capstan-leader-election"); got != dep.Spec.Template.Spec.ServiceAccountName {
					t.Errorf("the leader-election RoleBinding binds %q, the Deployment runs as %q", got, dep.Spec.Template.Spec.ServiceAccountName)
				}
			}
			checkServices(t, objs, dep)
			checkWebhook(t, objs)
			checkControlPlaneRBAC(t, objs, dep, v.controlPlaneNamespace())
			if slices.ContainsFunc(mgr.Args, func(a string) bool { return strings.HasPrefix(a, "--ca-propagation") }) !=
				slices.ContainsFunc(v.args, func(a string) bool { return strings.HasPrefix(a, "--ca-propagation") }) {
				t.Errorf("manager args %q: --ca-propagation only when caPropagation is set", mgr.Args)
			}
		})
	}
}

// checkEnv checks what the manager reads from its pod: GOMEMLIMIT, the container's memory
// limit, under which Go's garbage collector keeps the heap, and POD_NAMESPACE, the
// operator's namespace, which the webhook refuses for the control plane.
func checkEnv(t *testing.T, c corev1.Container) {
	t.Helper()
	for _, p := range manifestcheck.ManagerEnv(c) {
		t.Error(p)
	}
}

// checkControlPlaneRBAC checks the mesh CA's Secrets permissions: a Role and RoleBinding in
// the control-plane namespace that bind the operator's ServiceAccount, the operator told to
// cache Secrets in exactly that namespace, no Secrets in any ClusterRole, and the namespace,
// when the chart creates it, kept on uninstall.
func checkControlPlaneRBAC(t *testing.T, objs []*unstructured.Unstructured, dep *appsv1.Deployment, ns string) {
	t.Helper()
	role, binding := find(objs, "Role", fullname+"-manager"), find(objs, "RoleBinding", fullname+"-manager")
	if role == nil || binding == nil {
		t.Fatalf("no Role and RoleBinding %s-manager", fullname)
	}
	if role.GetNamespace() != ns || binding.GetNamespace() != ns {
		t.Errorf("Role in %q, RoleBinding in %q; want both in the control-plane namespace %q", role.GetNamespace(), binding.GetNamespace(), ns)
	}
	var b rbacv1.RoleBinding
	toTyped(t, binding, &b)
	if b.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.GetName()}) {
		t.Errorf("RoleBinding roleRef %+v, want Role %s", b.RoleRef, role.GetName())
	}
	if want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: dep.Spec.Template.Spec.ServiceAccountName, Namespace: releaseNamespace}}; !reflect.DeepEqual(b.Subjects, want) {
		t.Errorf("RoleBinding subjects %+v, want the operator's ServiceAccount %+v", b.Subjects, want)
	}
	var secretArgs []string
	for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
		if strings.HasPrefix(a, "--secret-namespaces") {
			secretArgs = append(secretArgs, a)
		}
	}
	if want := []string{"--secret-namespaces=" + ns}; !slices.Equal(secretArgs, want) {
		t.Errorf("manager Secret namespaces %q, want %q: the operator must cache Secrets only where it is granted them", secretArgs, want)
	}
	for _, o := range objs {
		if o.GetKind() != "ClusterRole" {
			continue
		}
		var cr rbacv1.ClusterRole
		toTyped(t, o, &cr)
		for _, r := range cr.Rules {
			if (slices.Contains(r.APIGroups, "") && slices.Contains(r.Resources, "secrets")) ||
				(slices.Contains(r.APIGroups, "cert-manager.io") && slices.Contains(r.Resources, "certificates")) {
				t.Errorf("ClusterRole %s grants %v %v cluster-wide", cr.Name, r.APIGroups, r.Resources)
			}
		}
	}
	if n := find(objs, "Namespace", ns); n != nil && n.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
		t.Errorf("Namespace %s lacks helm.sh/resource-policy: keep; helm uninstall would delete the control plane in it", ns)
	}
}

// TestValuesReachTheDeployment checks that every scheduling and pod value is used.
func TestValuesReachTheDeployment(t *testing.T) {
	ch := loadChart(t)
	v := variants[len(variants)-1]
	objs, err := renderChart(ch, v.values, "")
	if err != nil {
		t.Fatal(err)
	}
	dep := deployment(t, objs)
	pod := dep.Spec.Template.Spec
	checks := []struct {
		what      string
		got, want any
	}{
		{"replicas", *dep.Spec.Replicas, int32(2)},
		{"image", pod.Containers[0].Image, "registry.example/capstan:dev"},
		{"serviceAccountName", pod.ServiceAccountName, "ops-capstan"},
		{"nodeSelector", pod.NodeSelector, map[string]string{"kubernetes.io/os": "linux"}},
		{"tolerations", pod.Tolerations, []corev1.Toleration{{Key: "infra", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}},
		{"affinity", pod.Affinity != nil && pod.Affinity.NodeAffinity != nil, true},
		{"podAnnotations", dep.Spec.Template.Annotations["example.com/scrape"], "true"},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.what, c.got, c.want)
		}
	}
}

// TestDefaultImageMatchesKustomize keeps the chart's default image the one `make deploy`
// (config/manager) runs.
func TestDefaultImageMatchesKustomize(t *testing.T) {
	objs, err := renderChart(loadChart(t), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Images []struct{ Name, NewName, NewTag string } `json:"images"`
	}
	b, err := os.ReadFile(repoFile(t, "config/manager/kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	if len(k.Images) != 1 {
		t.Fatalf("config/manager/kustomization.yaml has %d images, want 1", len(k.Images))
	}
	want := k.Images[0].NewName + ":" + k.Images[0].NewTag
	if got := deployment(t, objs).Spec.Template.Spec.Containers[0].Image; got != want {
		t.Errorf("the chart's default image is %s, config/manager deploys %s", got, want)
	}
}

// TestClusterRoleMatchesConfig keeps the chart's RBAC equal to the rules controller-gen
// writes from the +kubebuilder:rbac markers (config/rbac/role.yaml).
func TestClusterRoleMatchesConfig(t *testing.T) {
	objs, err := renderChart(loadChart(t), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	var want, got rbacv1.ClusterRole
	toTyped(t, configObject(t, "config/rbac/role.yaml", "ClusterRole"), &want)
	toTyped(t, find(objs, "ClusterRole", fullname+"-manager"), &got)
	if len(want.Rules) == 0 {
		t.Fatal("config/rbac/role.yaml has no rules")
	}
	if !reflect.DeepEqual(got.Rules, want.Rules) {
		b, _ := yaml.Marshal(map[string]any{"rules": want.Rules})
		t.Errorf("the rules of charts/capstan/templates/clusterrole.yaml differ from config/rbac/role.yaml "+
			"(regenerated by make manifests); replace the template's rules with:\n%s", b)
	}
}

// TestControlPlaneRoleMatchesConfig keeps the chart's Role for the mesh CA (Secrets and
// cert-manager Certificates in the control-plane namespace) equal to the namespaced Role
// controller-gen writes into config/rbac/role.yaml, in the same namespace by default.
func TestControlPlaneRoleMatchesConfig(t *testing.T) {
	objs, err := renderChart(loadChart(t), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	var want, got rbacv1.Role
	toTyped(t, configObject(t, "config/rbac/role.yaml", "Role"), &want)
	toTyped(t, find(objs, "Role", fullname+"-manager"), &got)
	if len(want.Rules) == 0 {
		t.Fatal("config/rbac/role.yaml's Role has no rules")
	}
	if !reflect.DeepEqual(got.Rules, want.Rules) {
		b, _ := yaml.Marshal(map[string]any{"rules": want.Rules})
		t.Errorf("the rules of the Role in charts/capstan/templates/control-plane-rbac.yaml differ from config/rbac/role.yaml's Role "+
			"(regenerated by make manifests); replace the template's rules with:\n%s", b)
	}
	if got.Namespace != want.Namespace {
		t.Errorf("the chart's default controlPlaneNamespace is %q, config/rbac grants the Role in %q", got.Namespace, want.Namespace)
	}
}

// configObject is the only object of a kind in a (multi-document) YAML file of the repository.
func configObject(t *testing.T, rel, kind string) *unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(repoFile(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	var found *unstructured.Unstructured
	for _, doc := range strings.Split(string(b), "\n---") {
		o, err := parseObject([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		if o == nil || o.GetKind() != kind {
			continue
		}
		if found != nil {
			t.Fatalf("%s has more than one %s", rel, kind)
		}
		found = o
	}
	if found == nil {
		t.Fatalf("%s has no %s", rel, kind)
	}
	return found
}

// TestLeaderElectionRoleMatchesConfig keeps the chart's leader-election Role equal to config/rbac's.
func TestLeaderElectionRoleMatchesConfig(t *testing.T) {
	objs, err := renderChart(loadChart(t), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	var want, got rbacv1.Role
	readYAML(t, "config/rbac/leader_election_role.yaml", &want)
	toTyped(t, find(objs, "Role", fullname+"-leader-election"), &got)
	if len(want.Rules) == 0 || !reflect.DeepEqual(got.Rules, want.Rules) {
		t.Errorf("the leader-election Role's rules %+v differ from config/rbac/leader_election_role.yaml's %+v", got.Rules, want.Rules)
	}
}

// TestCRDsMatchConfig keeps charts/capstan/crds a copy of config/crd/bases (written by
// controller-gen). Run with -update to copy them.
func TestCRDsMatchConfig(t *testing.T) {
	src, dst := repoFile(t, "config/crd/bases"), repoFile(t, "charts/capstan/crds")
	want := yamlFiles(t, src)
	if len(want) == 0 {
		t.Fatalf("no CRDs in %s", src)
	}
	if *update {
		for name := range yamlFiles(t, dst) {
			if _, ok := want[name]; !ok {
				if err := os.Remove(filepath.Join(dst, name)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for name, b := range want {
			if err := os.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := yamlFiles(t, dst)
	for name, b := range want {
		if !bytes.Equal(got[name], b) {
			t.Errorf("charts/capstan/crds/%s differs from config/crd/bases/%s: run go test ./test/chart -run TestCRDsMatchConfig -update", name, name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("charts/capstan/crds/%s is not in config/crd/bases: run go test ./test/chart -run TestCRDsMatchConfig -update", name)
		}
	}
	// Helm loads them as the chart's CRDs, and they parse.
	crds := loadChart(t).CRDObjects()
	if len(crds) != len(want) {
		t.Fatalf("Helm loads %d CRDs from crds/, want %d", len(crds), len(want))
	}
	for _, c := range crds {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.UnmarshalStrict(c.File.Data, &crd); err != nil {
			t.Errorf("%s: %v", c.Filename, err)
		}
	}
}

func TestSchemaRejectsBadValues(t *testing.T) {
	ch := loadChart(t)
	cases := []struct {
		name   string
		values map[string]any
		// want are substrings of the error.
		want []string
	}{
		{"replicas as a word", map[string]any{"replicas": "two"}, []string{"/replicas", "got string, want integer"}},
		{"negative replicas", map[string]any{"replicas": -1}, []string{"/replicas", "minimum"}},
		{"unknown top-level key", map[string]any{"replica": 2}, []string{"additional properties 'replica' not allowed"}},
		{"unknown nested key", map[string]any{"webhook": map[string]any{"certmanager": true}}, []string{"/webhook", "'certmanager' not allowed"}},
		{"enabled as a string", map[string]any{"metrics": map[string]any{"enabled": "yes"}}, []string{"/metrics/enabled", "want boolean"}},
		{"bad pull policy", map[string]any{"image": map[string]any{"pullPolicy": "Sometimes"}}, []string{"/image/pullPolicy", "Always"}},
		{"bad log level", map[string]any{"logLevel": "verbose"}, []string{"/logLevel", "debug"}},
		{"toleration as a string", map[string]any{"tolerations": []any{"infra"}}, []string{"/tolerations/0", "want object"}},
		{"control-plane namespace not a DNS label", map[string]any{"controlPlaneNamespace": "Istio_System"}, []string{"/controlPlaneNamespace", "does not match pattern"}},
		{"empty control-plane namespace", map[string]any{"controlPlaneNamespace": ""}, []string{"/controlPlaneNamespace", "minLength"}},
		{"CA propagation not a duration", map[string]any{"caPropagation": "3 minutes"}, []string{"/caPropagation", "does not match pattern"}},
		{"create namespace as a string", map[string]any{"createControlPlaneNamespace": "yes"}, []string{"/createControlPlaneNamespace", "want boolean"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := renderChart(ch, c.values, "")
			if err == nil {
				t.Fatalf("values %v rendered; want a schema error", c.values)
			}
			if !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
				t.Errorf("error is not the schema's: %v", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestRequiredWebhookCertificate protects the renders that must fail with a message naming
// the value: a webhook certificate or ServiceAccount that is needed and not given, and a
// control-plane namespace the operator would refuse.
func TestRequiredWebhookCertificate(t *testing.T) {
	ch := loadChart(t)
	cases := []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"no Secret", map[string]any{"webhook": map[string]any{"certManager": map[string]any{"enabled": false}, "caBundle": "Zm9v"}},
			"webhook.certSecretName is required"},
		{"no CA", map[string]any{"webhook": map[string]any{"certManager": map[string]any{"enabled": false}, "certSecretName": "tls"}},
			"webhook.caBundle is required"},
		{"no ServiceAccount name", map[string]any{"serviceAccount": map[string]any{"create": false}},
			"serviceAccount.name is required"},
		// The operator refuses a MeshControlPlane in these; a chart installed so would be
		// of no use.
		{"control plane in the release namespace", map[string]any{"controlPlaneNamespace": releaseNamespace},
			"controlPlaneNamespace " + releaseNamespace + " is the release namespace, where the operator runs"},
		{"control plane in kube-system", map[string]any{"controlPlaneNamespace": "kube-system"},
			"controlPlaneNamespace kube-system is one of Kubernetes' own namespaces"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := renderChart(ch, c.values, "")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("render = %v, want an error with %q", err, c.want)
			}
		})
	}
}

// checkObject checks what every rendered object must have: the chart's labels, and a
// namespace exactly when it is namespaced (the release's, or for the mesh CA's Role and
// RoleBinding the control-plane namespace); it decodes known kinds strictly (no unknown fields).
func checkObject(t *testing.T, o *unstructured.Unstructured, controlPlaneNS string) {
	t.Helper()
	id := o.GetKind() + "/" + o.GetName()
	l := o.GetLabels()
	for k, want := range map[string]string{
		"app.kubernetes.io/name":       "capstan",
		"app.kubernetes.io/instance":   releaseName,
		"app.kubernetes.io/version":    "0.1.0",
		"app.kubernetes.io/managed-by": "Helm",
	} {
		if l[k] != want {
			t.Errorf("%s: label %s = %q, want %q", id, k, l[k], want)
		}
	}
	clusterScoped := map[string]bool{"ClusterRole": true, "ClusterRoleBinding": true, "ValidatingWebhookConfiguration": true, "Namespace": true}
	ns := o.GetNamespace()
	inControlPlane := ns == controlPlaneNS && (o.GetKind() == "Role" || o.GetKind() == "RoleBinding") && o.GetName() == fullname+"-manager"
	if clusterScoped[o.GetKind()] != (ns == "") || (ns != "" && ns != releaseNamespace && !inControlPlane) {
		t.Errorf("%s: namespace %q", id, ns)
	}
	typed := map[string]any{
		"Namespace":      &corev1.Namespace{},
		"ServiceAccount": &corev1.ServiceAccount{}, "Service": &corev1.Service{}, "Deployment": &appsv1.Deployment{},
		"ClusterRole": &rbacv1.ClusterRole{}, "ClusterRoleBinding": &rbacv1.ClusterRoleBinding{},
		"Role": &rbacv1.Role{}, "RoleBinding": &rbacv1.RoleBinding{},
		"ValidatingWebhookConfiguration": &admissionv1.ValidatingWebhookConfiguration{},
	}
	into, ok := typed[o.GetKind()]
	switch {
	case ok:
		b, _ := o.MarshalJSON()
		if err := yaml.UnmarshalStrict(b, into); err != nil {
			t.Errorf("%s does not decode strictly: %v", id, err)
		}
	case o.GetAPIVersion() == "cert-manager.io/v1" && (o.GetKind() == "Issuer" || o.GetKind() == "Certificate"):
	default:
		t.Errorf("%s: unexpected kind %s", id, o.GroupVersionKind())
	}
}

// checkRestricted checks the pod against the restricted Pod Security Standard
// (https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted), field by field.
func checkRestricted(t *testing.T, pod *corev1.PodSpec) {
	t.Helper()
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod securityContext.seccompProfile.type is not RuntimeDefault")
	}
	if psc != nil && psc.RunAsUser != nil {
		t.Errorf("pod securityContext.runAsUser is pinned to %d; leave it to the platform", *psc.RunAsUser)
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Error("the pod uses host namespaces")
	}
	for _, v := range pod.Volumes {
		if v.Secret == nil && v.ConfigMap == nil && v.Projected == nil && v.EmptyDir == nil {
			t.Errorf("volume %s is of a kind the restricted standard does not allow", v.Name)
		}
	}
	if len(pod.Containers) != 1 || pod.Containers[0].Name != "manager" {
		t.Fatalf("containers %v, want one named manager", pod.Containers)
	}
	all := append(slices.Clone(pod.InitContainers), pod.Containers...)
	for _, c := range all {
		sc := c.SecurityContext
		if sc == nil {
			t.Fatalf("container %s has no securityContext", c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s is privileged", c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
		}
		if sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Errorf("container %s: capabilities %+v, want drop [ALL] and no add", c.Name, sc.Capabilities)
		}
		if sc.RunAsUser != nil {
			t.Errorf("container %s: runAsUser is pinned to %d", c.Name, *sc.RunAsUser)
		}
		if sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot {
			t.Errorf("container %s: runAsNonRoot false", c.Name)
		}
		if sc.SeccompProfile != nil && sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault && sc.SeccompProfile.Type != corev1.SeccompProfileTypeLocalhost {
			t.Errorf("container %s: seccompProfile %s", c.Name, sc.SeccompProfile.Type)
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				t.Errorf("container %s: hostPort %d", c.Name, p.HostPort)
			}
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("container %s: resources %+v, want cpu and memory requests and a memory limit", c.Name, c.Resources)
		}
	}
}

func checkProbes(t *testing.T, c corev1.Container) {
	t.Helper()
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != intstr.FromInt32(8081) {
			t.Errorf("%s probe %+v, want GET %s on 8081", p.name, p.probe, p.path)
		}
	}
}

func checkCertMount(t *testing.T, pod *corev1.PodSpec, secret string) {
	t.Helper()
	var mounted string
	for _, m := range pod.Containers[0].VolumeMounts {
		if m.MountPath != webhookCertDir {
			continue
		}
		if !m.ReadOnly {
			t.Errorf("the webhook certificate is mounted writable")
		}
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.Secret != nil {
				mounted = v.Secret.SecretName
			}
		}
	}
	if mounted != secret {
		t.Errorf("Secret mounted at %s = %q, want %q", webhookCertDir, mounted, secret)
	}
}

// checkServices checks the metrics and webhook Services: ports, and that they select the
// operator's pods.
func checkServices(t *testing.T, objs []*unstructured.Unstructured, dep *appsv1.Deployment) {
	t.Helper()
	ports := map[string]int32{}
	for _, p := range dep.Spec.Template.Spec.Containers[0].Ports {
		ports[p.Name] = p.ContainerPort
	}
	for _, s := range []struct {
		name, port string
		number     int32
		target     int32
	}{{"capstan-metrics", "https", 8443, 8443}, {"capstan-webhook", "webhook", 443, 9443}} {
		o := find(objs, "Service", s.name)
		if o == nil {
			continue // the variant has none; TestRenderVariants checks presence
		}
		var svc corev1.Service
		toTyped(t, o, &svc)
		for k, v := range svc.Spec.Selector {
			if dep.Spec.Template.Labels[k] != v {
				t.Errorf("Service %s selects %s=%s, which the operator's pods lack", s.name, k, v)
			}
		}
		if len(svc.Spec.Selector) == 0 {
			t.Errorf("Service %s has no selector", s.name)
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != s.port || svc.Spec.Ports[0].Port != s.number {
			t.Errorf("Service %s ports %+v, want %s %d", s.name, svc.Spec.Ports, s.port, s.number)
			continue
		}
		tp := svc.Spec.Ports[0].TargetPort
		if got := tp.IntVal; tp.Type == intstr.String {
			got = ports[tp.StrVal]
			if got != s.target {
				t.Errorf("Service %s targets port %q = %d, want container port %d", s.name, tp.StrVal, got, s.target)
			}
		} else if got != s.target {
			t.Errorf("Service %s targets %d, want %d", s.name, got, s.target)
		}
		if !slices.Contains(slices.Collect(maps.Values(ports)), s.target) {
			t.Errorf("the manager container does not declare port %d for Service %s", s.target, s.name)
		}
	}
}

// checkWebhook checks the ValidatingWebhookConfiguration, if rendered, and its certificate.
func checkWebhook(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	o := find(objs, "ValidatingWebhookConfiguration", "capstan-validating")
	if o == nil {
		return
	}
	var cfg admissionv1.ValidatingWebhookConfiguration
	toTyped(t, o, &cfg)
	if len(cfg.Webhooks) != 1 {
		t.Fatalf("%d webhooks, want 1", len(cfg.Webhooks))
	}
	w := cfg.Webhooks[0]
	svc := w.ClientConfig.Service
	if svc == nil || svc.Name != "capstan-webhook" || svc.Namespace != releaseNamespace || svc.Path == nil || *svc.Path != webhookPath ||
		svc.Port == nil || *svc.Port != 443 {
		t.Errorf("webhook clientConfig.service %+v, want capstan-webhook.%s:443%s", svc, releaseNamespace, webhookPath)
	}
	if !reflect.DeepEqual(w.AdmissionReviewVersions, []string{"v1"}) || w.SideEffects == nil || *w.SideEffects != admissionv1.SideEffectClassNone ||
		w.FailurePolicy == nil || *w.FailurePolicy != admissionv1.Fail {
		t.Errorf("webhook %s: admissionReviewVersions %v, sideEffects %v, failurePolicy %v; want [v1], None, Fail",
			w.Name, w.AdmissionReviewVersions, w.SideEffects, w.FailurePolicy)
	}
	if len(w.Rules) != 1 || !reflect.DeepEqual(w.Rules[0].Operations, []admissionv1.OperationType{admissionv1.Create, admissionv1.Update}) ||
		!reflect.DeepEqual(w.Rules[0].APIGroups, []string{"mesh.capstan.dev"}) || !reflect.DeepEqual(w.Rules[0].APIVersions, []string{"v1alpha1"}) ||
		!reflect.DeepEqual(w.Rules[0].Resources, []string{"meshcontrolplanes"}) {
		t.Errorf("webhook rules %+v, want CREATE and UPDATE of mesh.capstan.dev/v1alpha1 meshcontrolplanes", w.Rules)
	}
	inject := cfg.Annotations["cert-manager.io/inject-ca-from"]
	cert := find(objs, "Certificate", "capstan-webhook-cert")
	if cert == nil {
		if inject != "" || len(w.ClientConfig.CABundle) == 0 {
			t.Errorf("without cert-manager: inject-ca-from %q, caBundle %d bytes; want none and the supplied CA", inject, len(w.ClientConfig.CABundle))
		}
		return
	}
	if want := cert.GetNamespace() + "/" + cert.GetName(); inject != want {
		t.Errorf("inject-ca-from = %q, want %q", inject, want)
	}
	spec, _, _ := unstructured.NestedMap(cert.Object, "spec")
	dns, _, _ := unstructured.NestedStringSlice(spec, "dnsNames")
	if !slices.Contains(dns, "capstan-webhook."+releaseNamespace+".svc") {
		t.Errorf("Certificate dnsNames %v lack the webhook Service's name", dns)
	}
	issuer, _, _ := unstructured.NestedString(spec, "issuerRef", "name")
	if iss := find(objs, "Issuer", issuer); iss == nil || iss.GetNamespace() != cert.GetNamespace() {
		t.Errorf("Certificate issuerRef %q names no Issuer of the chart", issuer)
	} else if _, ok, _ := unstructured.NestedMap(iss.Object, "spec", "selfSigned"); !ok {
		t.Errorf("Issuer %s is not self-signed", issuer)
	}
	if s, _, _ := unstructured.NestedString(spec, "secretName"); s != "capstan-webhook-cert" {
		t.Errorf("Certificate secretName %q, want the mounted capstan-webhook-cert", s)
	}
}

func deployment(t *testing.T, objs []*unstructured.Unstructured) *appsv1.Deployment {
	t.Helper()
	o := find(objs, "Deployment", fullname)
	if o == nil {
		t.Fatal("no Deployment capstan rendered")
	}
	dep := &appsv1.Deployment{}
	toTyped(t, o, dep)
	return dep
}

// subjectOf is the ServiceAccount a (Cluster)RoleBinding binds, checked to be in the release namespace.
func subjectOf(t *testing.T, objs []*unstructured.Unstructured, kind, name string) string {
	t.Helper()
	o := find(objs, kind, name)
	if o == nil {
		t.Fatalf("no %s %s rendered", kind, name)
	}
	var b rbacv1.RoleBinding // the fields a ClusterRoleBinding shares
	toTyped(t, o, &b)
	if len(b.Subjects) != 1 || b.Subjects[0].Kind != "ServiceAccount" || b.Subjects[0].Namespace != releaseNamespace {
		t.Fatalf("%s %s subjects %+v, want one ServiceAccount in %s", kind, name, b.Subjects, releaseNamespace)
	}
	return b.Subjects[0].Name
}

func toTyped(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if o == nil {
		t.Fatalf("no object to decode into %T", into)
	}
	b, err := o.MarshalJSON()
	if err == nil {
		err = json.Unmarshal(b, into)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
}

func readYAML(t *testing.T, rel string, into any) {
	t.Helper()
	b, err := os.ReadFile(repoFile(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

// yamlFiles reads the *.yaml files of a directory by name.
func yamlFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if e.IsDir() || filepath.Ext(e.Name()) != ".yaml" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

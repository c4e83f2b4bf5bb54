package apply

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

// istiodInv is the inventory of the default revision's istiod unit.
var istiodInv = Inventory{Component: "istiod", Revision: DefaultRevision, Writer: WriterInstall}

func obj(t *testing.T, y string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(y), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

const deployment = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: istiod, namespace: istio-system}
spec:
  replicas: 1
  template:
    spec:
      containers:
      - name: discovery
        image: docker.io/istio/pilot:1.31.1
        resources: {requests: {cpu: 500m, memory: 2048Mi}}
        env: [{name: EMPTY, value: ""}]
`

func TestCompare(t *testing.T) {
	desired := obj(t, deployment)
	Stamp(desired, istiodInv)
	hash := desired.GetAnnotations()[ConfigHashAnnot]
	live := func(body string) *unstructured.Unstructured {
		u := obj(t, body)
		u.SetLabels(desired.GetLabels())
		u.SetAnnotations(map[string]string{ConfigHashAnnot: hash, "deployment.kubernetes.io/revision": "3"})
		return u
	}
	tests := map[string]struct {
		live *unstructured.Unstructured
		want Drift
	}{
		"missing": {nil, Missing},
		"as applied, with server defaults and canonical quantities": {live(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: istiod, namespace: istio-system}
spec:
  replicas: 1
  progressDeadlineSeconds: 600
  template:
    spec:
      containers:
      - name: discovery
        image: docker.io/istio/pilot:1.31.1
        imagePullPolicy: IfNotPresent
        resources: {requests: {cpu: 500m, memory: 2Gi}}
        env: [{name: EMPTY}]
status: {replicas: 1}
`), InSync},
		"an empty env value set by hand": {live(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: istiod, namespace: istio-system}
spec:
  replicas: 1
  template:
    spec:
      containers:
      - name: discovery
        image: docker.io/istio/pilot:1.31.1
        resources: {requests: {cpu: 500m, memory: 2Gi}}
        env: [{name: EMPTY, value: "set"}]
`), Modified},
		"image edited": {live(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: istiod, namespace: istio-system}
spec:
  replicas: 1
  template: {spec: {containers: [{name: discovery, image: other, resources: {requests: {cpu: 500m, memory: 2Gi}}, env: [{name: EMPTY}]}]}}
`), Modified},
		"replicas scaled by hand": {live(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: istiod, namespace: istio-system}
spec:
  replicas: 4
  template: {spec: {containers: [{name: discovery, image: docker.io/istio/pilot:1.31.1, resources: {requests: {cpu: 500m, memory: 2Gi}}, env: [{name: EMPTY}]}]}}
`), Modified},
		"a container added": {live(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: istiod, namespace: istio-system}
spec:
  replicas: 1
  template: {spec: {containers: [{name: discovery, image: docker.io/istio/pilot:1.31.1, resources: {requests: {cpu: 500m, memory: 2Gi}}, env: [{name: EMPTY}]}, {name: extra, image: x}]}}
`), Modified},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := Compare(desired, tc.live); got != tc.want {
				t.Errorf("Compare = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestCompareOnMetadata(t *testing.T) {
	desired := obj(t, `{apiVersion: v1, kind: ConfigMap, metadata: {name: istio, namespace: istio-system}, data: {mesh: "a: 1"}}`)
	Stamp(desired, istiodInv)
	tests := map[string]struct {
		mutate func(*unstructured.Unstructured)
		want   Drift
	}{
		"unchanged":             {func(*unstructured.Unstructured) {}, InSync},
		"inventory label gone":  {func(u *unstructured.Unstructured) { u.SetLabels(map[string]string{ManagedByLabel: ManagedByValue}) }, Modified},
		"hash of an older spec": {func(u *unstructured.Unstructured) { u.SetAnnotations(map[string]string{ConfigHashAnnot: "old"}) }, Outdated},
		"data edited":           {func(u *unstructured.Unstructured) { _ = unstructured.SetNestedField(u.Object, "a: 2", "data", "mesh") }, Modified},
		"a key added by someone else": {func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedField(u.Object, "x", "data", "extra")
		}, InSync},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			live := desired.DeepCopy()
			tc.mutate(live)
			if got := Compare(desired, live); got != tc.want {
				t.Errorf("Compare = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestStampLeavesIstiodsWebhookFieldsAlone(t *testing.T) {
	u := obj(t, `
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: istio-validator-istio-system}
webhooks:
- name: rev.validation.istio.io
  failurePolicy: Ignore
  clientConfig: {caBundle: "", service: {name: istiod, namespace: istio-system}}
`)
	Stamp(u, istiodInv)
	hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
	cc := hooks[0].(map[string]any)["clientConfig"].(map[string]any)
	if _, ok := cc["caBundle"]; ok {
		t.Error("an empty caBundle is applied, which would take istiod's CA bundle back")
	}
	// istiod turns Ignore into Fail once it serves; that is not drift to revert.
	live := u.DeepCopy()
	lh, _, _ := unstructured.NestedSlice(live.Object, "webhooks")
	lh[0].(map[string]any)["failurePolicy"] = "Fail"
	lh[0].(map[string]any)["clientConfig"].(map[string]any)["caBundle"] = "LS0t"
	_ = unstructured.SetNestedSlice(live.Object, lh, "webhooks")
	if Compare(u, live) != InSync {
		t.Error("istiod's own webhook updates were taken for drift")
	}
}

func TestStampIsStable(t *testing.T) {
	a, b := obj(t, deployment), obj(t, deployment)
	Stamp(a, istiodInv)
	Stamp(b, istiodInv)
	Stamp(b, istiodInv) // stamping twice must not change the hash
	if a.GetAnnotations()[ConfigHashAnnot] != b.GetAnnotations()[ConfigHashAnnot] {
		t.Error("the configuration hash depends on more than the object")
	}
	c := obj(t, deployment)
	_ = unstructured.SetNestedField(c.Object, int64(2), "spec", "replicas")
	Stamp(c, istiodInv)
	if a.GetAnnotations()[ConfigHashAnnot] == c.GetAnnotations()[ConfigHashAnnot] {
		t.Error("a different object has the same hash")
	}
}

// The hash is stored on every object Capstan applied; if its input changed between
// versions of Capstan, an upgraded operator would take every object for outdated and
// write the whole control plane again. (The values changed once, on purpose, when the
// objects gained the writer label: an upgrade to that version re-applies each object once.)
func TestConfigHashIsTheOneEarlierVersionsStored(t *testing.T) {
	tests := map[string]struct {
		annotations map[string]string
		want        string
	}{
		"no annotations":    {nil, "25a0391961fd242a7fccd24e"},
		"other annotations": {map[string]string{"x": "y"}, "7832730486ecaa59aeb46c44"},
		"a stale hash":      {map[string]string{ConfigHashAnnot: "old"}, "25a0391961fd242a7fccd24e"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			u := obj(t, deployment)
			if tc.annotations != nil {
				u.SetAnnotations(tc.annotations)
			}
			Stamp(u, istiodInv)
			if got := u.GetAnnotations()[ConfigHashAnnot]; got != tc.want {
				t.Errorf("hash = %s, want %s", got, tc.want)
			}
		})
	}
}

func ref(kind, ns, name string) Ref {
	g := map[string]string{"CustomResourceDefinition": "apiextensions.k8s.io", "Deployment": "apps", "MutatingWebhookConfiguration": "admissionregistration.k8s.io"}[kind]
	return Ref{GVK: schema.GroupVersionKind{Group: g, Version: "v1", Kind: kind}, NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}
}

func TestPrunable(t *testing.T) {
	rank := func(r Ref) int {
		return map[string]int{"CustomResourceDefinition": 0, "ConfigMap": 5, "Deployment": 7, "MutatingWebhookConfiguration": 9}[r.GVK.Kind]
	}
	cm, dep, hook, crd := ref("ConfigMap", "istio-system", "istio"), ref("Deployment", "istio-system", "istiod"), ref("MutatingWebhookConfiguration", "", "inj"), ref("CustomResourceDefinition", "", "x.istio.io")
	install := func(r Ref) Live { return Live{Ref: r, Inventory: istiodInv} }
	base := func(r Ref, rev string) Live {
		return Live{Ref: r, Inventory: Inventory{Component: "base", Revision: rev, Writer: WriterInstall}}
	}
	canary := Live{Ref: ref("Deployment", "istio-system", "istiod-canary"), Inventory: Inventory{Component: "istiod", Revision: "canary", Writer: WriterInstall}}
	otherWriter := Live{Ref: ref("ConfigMap", "istio-system", "theirs"), Inventory: Inventory{Component: "istiod", Revision: DefaultRevision, Writer: "mtls"}}
	istiodUnit := []Unit{{Component: "istiod", Revision: DefaultRevision}}
	tests := map[string]struct {
		desired []Ref
		live    []Live
		opts    PruneOptions
		want    []Ref
	}{
		"nothing to prune when live matches the render": {desired: []Ref{cm, dep}, live: []Live{install(cm), install(dep)}, want: nil},
		"an object the render dropped is pruned":        {desired: []Ref{dep}, live: []Live{install(cm), install(dep)}, want: []Ref{cm}},
		"same name in another namespace is a different object": {
			desired: []Ref{cm}, live: []Live{install(ref("ConfigMap", "old-ns", "istio"))}, want: []Ref{ref("ConfigMap", "old-ns", "istio")},
		},
		"CRDs are kept unless asked":        {live: []Live{base(crd, ""), install(cm)}, opts: PruneOptions{KeepCRDs: true}, want: []Ref{cm}},
		"CRDs go when asked, deleted last":  {live: []Live{base(crd, ""), install(cm)}, want: []Ref{cm, crd}},
		"webhooks go before their backends": {live: []Live{install(cm), install(dep), install(hook)}, want: []Ref{hook, dep, cm}},
		"another writer's object is never pruned, even in the same unit": {
			desired: []Ref{dep}, live: []Live{install(dep), otherWriter}, opts: PruneOptions{Units: istiodUnit}, want: nil,
		},
		"another writer's object survives an uninstall": {live: []Live{otherWriter, install(cm)}, want: []Ref{cm}},
		"pruning one revision leaves another revision's objects": {
			desired: []Ref{dep}, live: []Live{install(dep), canary}, opts: PruneOptions{Units: istiodUnit}, want: nil,
		},
		"a shared unit holds its component's objects of every revision label": {
			live: []Live{base(crd, ""), base(cm, DefaultRevision), install(dep)}, opts: PruneOptions{Units: []Unit{{Component: "base"}}}, want: []Ref{cm, crd},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.opts.Writer = WriterInstall
			got := Prunable(tc.desired, tc.live, rank, tc.opts)
			if len(got) != len(tc.want) {
				t.Fatalf("Prunable = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("Prunable = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// Objects written before the writer label existed are read as the writer that made them
// then, so that an upgraded operator still prunes its own and only its own.
func TestInventoryOfObjectsWithoutAWriterLabel(t *testing.T) {
	tests := map[string]struct {
		labels map[string]string
		want   Inventory
		owned  bool
	}{
		"a chart object":          {map[string]string{ManagedByLabel: ManagedByValue, ComponentLabel: "istiod", RevisionLabel: "default"}, Inventory{"istiod", "default", WriterInstall}, true},
		"a CA Secret":             {map[string]string{ManagedByLabel: ManagedByValue, ComponentLabel: "ca"}, Inventory{"ca", "", WriterCA}, true},
		"a labelled writer wins":  {map[string]string{ManagedByLabel: ManagedByValue, ComponentLabel: "istiod", WriterLabel: "mtls"}, Inventory{"istiod", "", "mtls"}, true},
		"another manager's":       {map[string]string{ManagedByLabel: "Helm", ComponentLabel: "istiod"}, Inventory{}, false},
		"managed-by alone is not": {map[string]string{ManagedByLabel: ManagedByValue}, Inventory{}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, owned := InventoryOf(tc.labels)
			if got != tc.want || owned != tc.owned {
				t.Errorf("InventoryOf = %+v, %t; want %+v, %t", got, owned, tc.want, tc.owned)
			}
		})
	}
}

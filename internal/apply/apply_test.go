package apply

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

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
	Stamp(desired, "istiod", DefaultRevision)
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
	Stamp(desired, "istiod", DefaultRevision)
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
	Stamp(u, "istiod", DefaultRevision)
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
	Stamp(a, "istiod", "default")
	Stamp(b, "istiod", "default")
	Stamp(b, "istiod", "default") // stamping twice must not change the hash
	if a.GetAnnotations()[ConfigHashAnnot] != b.GetAnnotations()[ConfigHashAnnot] {
		t.Error("the configuration hash depends on more than the object")
	}
	c := obj(t, deployment)
	_ = unstructured.SetNestedField(c.Object, int64(2), "spec", "replicas")
	Stamp(c, "istiod", "default")
	if a.GetAnnotations()[ConfigHashAnnot] == c.GetAnnotations()[ConfigHashAnnot] {
		t.Error("a different object has the same hash")
	}
}

// The hash is stored on every object Capstan applied; if its input changed between
// versions of Capstan, an upgraded operator would take every object for outdated and
// write the whole control plane again.
func TestConfigHashIsTheOneEarlierVersionsStored(t *testing.T) {
	tests := map[string]struct {
		annotations map[string]string
		want        string
	}{
		"no annotations":    {nil, "149b5bedfac0a23b4465f510"},
		"other annotations": {map[string]string{"x": "y"}, "d82c05f48a5a4d8381a93f75"},
		"a stale hash":      {map[string]string{ConfigHashAnnot: "old"}, "149b5bedfac0a23b4465f510"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			u := obj(t, deployment)
			if tc.annotations != nil {
				u.SetAnnotations(tc.annotations)
			}
			Stamp(u, "istiod", "default")
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
	tests := map[string]struct {
		desired, live []Ref
		opts          PruneOptions
		want          []Ref
	}{
		"nothing to prune when live matches the render": {desired: []Ref{cm, dep}, live: []Ref{cm, dep}, want: nil},
		"an object the render dropped is pruned":        {desired: []Ref{dep}, live: []Ref{cm, dep}, want: []Ref{cm}},
		"same name in another namespace is a different object": {
			desired: []Ref{cm}, live: []Ref{ref("ConfigMap", "old-ns", "istio")}, want: []Ref{ref("ConfigMap", "old-ns", "istio")},
		},
		"CRDs are kept unless asked":        {desired: nil, live: []Ref{crd, cm}, opts: PruneOptions{KeepCRDs: true}, want: []Ref{cm}},
		"CRDs go when asked, deleted last":  {desired: nil, live: []Ref{crd, cm}, want: []Ref{cm, crd}},
		"webhooks go before their backends": {desired: nil, live: []Ref{cm, dep, hook}, want: []Ref{hook, dep, cm}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
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

package controllers_test

import (
	"encoding/json"
	"slices"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/values"
)

// The CRD's CEL rules, enforced by envtest's kube-apiserver from config/crd/bases: the
// Helm values Capstan owns, which CEL sees only because the CRD declares them inside the
// preserve-unknown-fields spec.values, where the control plane may run, and the limits of
// spec.upgrade.

// rawAt is a spec.values document that sets one dotted path.
func rawAt(path string, val any) map[string]any {
	parts := strings.Split(path, ".")
	doc := map[string]any{parts[len(parts)-1]: val}
	for _, p := range slices.Backward(parts[:len(parts)-1]) {
		doc = map[string]any{p: doc}
	}
	return doc
}

// sampleFor is a value of the type the charts read at an owned path.
func sampleFor(o values.OwnedValue) any {
	return map[string]any{"string": "canary", "boolean": true, "array": []any{"prod"}, "object": map[string]any{"enabled": true}}[o.Type]
}

func withValues(m *meshv1.MeshControlPlane, doc map[string]any) *meshv1.MeshControlPlane {
	GinkgoHelper()
	b, err := json.Marshal(doc)
	Expect(err).NotTo(HaveOccurred())
	m.Spec.Values = &apiextensionsv1.JSON{Raw: b}
	return m
}

// patchSpec merge-patches the stored MeshControlPlane's spec: no resourceVersion, so that
// the controller's own writes to it do not conflict.
func patchSpec(spec map[string]any) error {
	b, err := json.Marshal(map[string]any{"spec": spec})
	Expect(err).NotTo(HaveOccurred())
	return k8sClient.Patch(ctx, mcp(""), client.RawPatch(types.MergePatchType, b))
}

// expectForbidden checks that err is the apiserver's refusal naming field and saying why.
func expectForbidden(err error, field, why string) {
	GinkgoHelper()
	Expect(err).To(HaveOccurred())
	Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want Invalid, got %v", err)
	Expect(err.Error()).To(ContainSubstring(field + ": Forbidden"))
	Expect(err.Error()).To(ContainSubstring(why))
}

var ownedEntries = func() []TableEntry {
	var out []TableEntry
	for _, o := range values.OwnedValues {
		out = append(out, Entry(o.Path, o))
	}
	return out
}()

var _ = Describe("admission of what Capstan owns", func() {
	DescribeTable("refuses an owned Helm value in spec.values at create, naming its path and what to do instead",
		func(o values.OwnedValue) {
			err := k8sClient.Create(ctx, withValues(mcp("adm-create"), rawAt(o.Path, sampleFor(o))), client.DryRunAll)
			expectForbidden(err, o.Field(), o.Message())
		},
		ownedEntries,
	)

	It("admits other values beside and under an owned value's parents, and keeps them", func() {
		m := withValues(mcp("adm-create"), map[string]any{
			"global":  map[string]any{"hub": "registry.corp/istio", "logging": map[string]any{"level": "default:debug"}},
			"pilot":   map[string]any{"env": map[string]any{"PILOT_TRACE_SAMPLING": "5"}, "global": map[string]any{"logAsJson": true}},
			"base":    map[string]any{"excludedCRDs": []any{"wasmplugins.extensions.istio.io"}},
			"meshID":  "corp",
			"profile": nil, // a null is no value: Helm drops it
		})
		Expect(k8sClient.Create(ctx, m, client.DryRunAll)).To(Succeed())
		var got map[string]any
		Expect(json.Unmarshal(m.Spec.Values.Raw, &got)).To(Succeed())
		Expect(got).To(HaveKeyWithValue("global", HaveKeyWithValue("hub", "registry.corp/istio")))
		Expect(got).To(HaveKeyWithValue("pilot", HaveKeyWithValue("global", HaveKeyWithValue("logAsJson", true))))
		Expect(got).To(HaveKeyWithValue("meshID", "corp"))
	})

	DescribeTable("refuses Kubernetes' own namespaces for the control plane",
		func(ns string) {
			m := mcp(ns)
			err := k8sClient.Create(ctx, m, client.DryRunAll)
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want Invalid, got %v", err)
			Expect(err.Error()).To(ContainSubstring("spec.namespace: Kubernetes' own namespaces"))
		},
		Entry("kube-system", "kube-system"),
		Entry("kube-public", "kube-public"),
		Entry("kube-node-lease", "kube-node-lease"),
	)

	Describe("a stored control plane whose namespace was defaulted", Ordered, func() {
		BeforeAll(func() {
			m := withValues(&meshv1.MeshControlPlane{}, map[string]any{"pilot": map[string]any{"env": map[string]any{"A": "b"}}})
			m.Name = meshv1.SingletonName
			Expect(k8sClient.Create(ctx, m)).To(Succeed())
			Expect(getMCP().Spec.Namespace).To(Equal(values.DefaultNamespace))
		})
		AfterAll(deleteMCPAndWait)

		It("refuses an update that adds an owned Helm value, naming its path", func() {
			for _, o := range values.OwnedValues {
				expectForbidden(patchSpec(map[string]any{"values": rawAt(o.Path, sampleFor(o))}), o.Field(), o.Message())
			}
		})

		It("refuses a namespace change, saying how to move the control plane", func() {
			err := patchSpec(map[string]any{"namespace": "adm-moved"})
			expectForbidden(err, "spec.namespace", "spec.namespace: cannot be changed; to move the control plane, delete this MeshControlPlane")
			Expect(err.Error()).To(ContainSubstring("create it again with the new spec.namespace"))
			Expect(getMCP().Spec.Namespace).To(Equal(values.DefaultNamespace))
		})

		It("admits unrelated edits, and one that unsets the namespace (the default again)", func() {
			Expect(patchSpec(map[string]any{"profile": "demo", "values": map[string]any{"global": map[string]any{"hub": "registry.corp/istio"}}})).To(Succeed())
			Expect(patchSpec(map[string]any{"namespace": nil})).To(Succeed())
			m := getMCP()
			Expect(m.Spec.Profile).To(Equal("demo"))
			Expect(m.Spec.Namespace).To(Equal(values.DefaultNamespace))
		})
	})
})

// withUpgrade is a MeshControlPlane whose spec.upgrade is the raw document upgrade, as a
// user's YAML would send it: the typed struct cannot carry a batchSize of 0 (omitempty).
func withUpgrade(upgrade map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"name": meshv1.SingletonName},
		"spec":     map[string]any{"namespace": "adm-create", "upgrade": upgrade},
	}}
	u.SetGroupVersionKind(meshv1.GroupVersion.WithKind("MeshControlPlane"))
	return u
}

// fullUpgrade is a spec.upgrade that sets every field, each well inside its limits.
func fullUpgrade() map[string]any {
	return map[string]any{
		"strategy": "RevisionBased",
		"canary": map[string]any{
			"batchSize":           int64(5),
			"readinessTimeout":    "15m",
			"pauseBetweenBatches": "2m30s",
			"autoPromote":         true,
			"rollbackOnFailure":   false,
		},
		"promote":                     "2026-06-01T10:00:00Z",
		"abort":                       "2026-06-01T11:00:00Z",
		"inactiveRevisionGracePeriod": "24h",
	}
}

var _ = Describe("admission of spec.upgrade", func() {
	DescribeTable("refuses an upgrade outside its limits, naming the field and why",
		func(upgrade map[string]any, field, why string) {
			err := k8sClient.Create(ctx, withUpgrade(upgrade), client.DryRunAll)
			Expect(err).To(HaveOccurred())
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want Invalid, got %v", err)
			Expect(err.Error()).To(ContainSubstring(field + ": "))
			Expect(err.Error()).To(ContainSubstring(why))
		},
		Entry("a batch of no namespaces would never move one",
			map[string]any{"canary": map[string]any{"batchSize": int64(0)}},
			"spec.upgrade.canary.batchSize", "should be greater than or equal to 1"),
		// The three duration limits are CEL rules on their parent object: the apiserver puts
		// the error at the parent, and the rule's message names the field itself.
		Entry("a readiness timeout under 10s fails every batch before its pods can be Ready",
			map[string]any{"canary": map[string]any{"readinessTimeout": "5s"}},
			"spec.upgrade.canary", "spec.upgrade.canary.readinessTimeout: must be at least 10s; restarted pods need time to become Ready"),
		Entry("a negative pause between batches",
			map[string]any{"canary": map[string]any{"pauseBetweenBatches": "-1m"}},
			"spec.upgrade.canary", "spec.upgrade.canary.pauseBetweenBatches: must not be negative"),
		Entry("a negative grace period for inactive revisions",
			map[string]any{"inactiveRevisionGracePeriod": "-10m"},
			"spec.upgrade", "spec.upgrade.inactiveRevisionGracePeriod: must not be negative"),
		Entry("a duration that is not one is refused by its form, not by a rule that cannot read it",
			map[string]any{"canary": map[string]any{"readinessTimeout": "soon"}},
			"spec.upgrade.canary.readinessTimeout", "should match"),
		Entry("a strategy Capstan does not know",
			map[string]any{"strategy": "BlueGreen"},
			"spec.upgrade.strategy", `Unsupported value: "BlueGreen": supported values: "RevisionBased", "InPlace"`),
	)

	DescribeTable("admits an upgrade within its limits, and keeps every field",
		func(upgrade map[string]any) {
			u := withUpgrade(upgrade)
			Expect(k8sClient.Create(ctx, u, client.DryRunAll)).To(Succeed())
			got, _, err := unstructured.NestedMap(u.Object, "spec", "upgrade")
			Expect(err).NotTo(HaveOccurred())
			Expect(got).To(Equal(upgrade))
		},
		Entry("a full spec.upgrade", fullUpgrade()),
		Entry("the limits themselves: batches of one, a 10s readiness timeout, no pause, no grace period",
			map[string]any{
				"strategy": "InPlace",
				"canary": map[string]any{
					"batchSize":           int64(1),
					"readinessTimeout":    "10s",
					"pauseBetweenBatches": "0s",
					"autoPromote":         false,
					"rollbackOnFailure":   true,
				},
				"inactiveRevisionGracePeriod": "0s",
			}),
	)

	It("defaults a canary to batches of one namespace, rolled back on failure", func() {
		u := withUpgrade(map[string]any{"canary": map[string]any{}})
		Expect(k8sClient.Create(ctx, u, client.DryRunAll)).To(Succeed())
		canary, _, err := unstructured.NestedMap(u.Object, "spec", "upgrade", "canary")
		Expect(err).NotTo(HaveOccurred())
		Expect(canary).To(Equal(map[string]any{"batchSize": int64(1), "rollbackOnFailure": true}))
	})
})

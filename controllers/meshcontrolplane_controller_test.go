package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/render"
)

var ctx = context.Background()

// mcp is an in-place MeshControlPlane in namespace: the install, CA and data-plane specs
// name istiod's objects as the in-place revision does. The canary upgrade's specs make
// their own, RevisionBased.
func mcp(namespace string) *meshv1.MeshControlPlane {
	return &meshv1.MeshControlPlane{
		ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName},
		Spec:       meshv1.MeshControlPlaneSpec{Namespace: namespace, Upgrade: &meshv1.UpgradeSpec{Strategy: meshv1.UpgradeInPlace}},
	}
}

func getMCP() *meshv1.MeshControlPlane {
	GinkgoHelper()
	m := &meshv1.MeshControlPlane{}
	Expect(k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	return m
}

func condition(typ string) func(Gomega) metav1.Condition {
	return func(g Gomega) metav1.Condition {
		m := &meshv1.MeshControlPlane{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
		c := meta.FindStatusCondition(m.Status.Conditions, typ)
		g.Expect(c).NotTo(BeNil(), "condition %s not set", typ)
		g.Expect(c.ObservedGeneration).To(Equal(m.Generation), "condition %s describes an older generation", typ)
		return *c
	}
}

// ownedRefs lists, straight from the apiserver, every object with Capstan's inventory labels.
func ownedRefs() []string {
	GinkgoHelper()
	var out []string
	for _, k := range render.Kinds {
		l := &metav1.PartialObjectMetadataList{}
		l.SetGroupVersionKind(k.GroupVersion().WithKind(k.Kind + "List"))
		Expect(k8sClient.List(ctx, l, client.MatchingLabels{apply.ManagedByLabel: apply.ManagedByValue})).To(Succeed())
		for _, o := range l.Items {
			if o.DeletionTimestamp != nil {
				continue // a namespace stays Terminating in envtest: no namespace controller runs
			}
			out = append(out, fmt.Sprintf("%s %s/%s", k.Kind, o.Namespace, o.Name))
		}
	}
	return out
}

func deleteMCPAndWait() {
	GinkgoHelper()
	m := &meshv1.MeshControlPlane{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m); apierrors.IsNotFound(err) {
		return
	}
	Expect(k8sClient.Delete(ctx, m)).To(Succeed())
	Eventually(func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, &meshv1.MeshControlPlane{}))
	}).Should(BeTrue())
}

// markAvailable writes the status the Deployment controller would write once every
// replica of the in-place istiod runs: envtest has no controller-manager.
func markAvailable(namespace string) {
	GinkgoHelper()
	markDeploymentAvailable(namespace, "istiod")
}

// markDeploymentAvailable is markAvailable for Deployment name, such as a revision's
// istiod-<revision>.
func markDeploymentAvailable(namespace, name string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		d := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, d)).To(Succeed())
		n := ptr.Deref(d.Spec.Replicas, 1)
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
		g.Expect(k8sClient.Status().Update(ctx, d)).To(Succeed())
	}).Should(Succeed())
}

func events(reason string) []eventsv1.Event {
	GinkgoHelper()
	l := &eventsv1.EventList{}
	Expect(k8sClient.List(ctx, l)).To(Succeed())
	var out []eventsv1.Event
	for _, e := range l.Items {
		if e.Reason == reason && e.Regarding.Kind == "MeshControlPlane" {
			out = append(out, e)
		}
	}
	return out
}

var _ = Describe("admission (CEL and schema)", func() {
	DescribeTable("rejects a bad MeshControlPlane with a message naming the field",
		func(mutate func(*meshv1.MeshControlPlane), field string) {
			m := mcp("cel-ns")
			mutate(m)
			err := k8sClient.Create(ctx, m)
			Expect(err).To(HaveOccurred())
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want Invalid, got %v", err)
			Expect(err.Error()).To(ContainSubstring(field))
		},
		Entry("a second MeshControlPlane (any name but default)", func(m *meshv1.MeshControlPlane) { m.Name = "second" }, "must be named default"),
		Entry("a malformed version", func(m *meshv1.MeshControlPlane) { m.Spec.Version = "1.31" }, "spec.version"),
		Entry("a version with a v prefix", func(m *meshv1.MeshControlPlane) { m.Spec.Version = "v1.31.1" }, "spec.version"),
		Entry("pilot replicas of -1", func(m *meshv1.MeshControlPlane) {
			m.Spec.Components = &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](-1)}}
		}, "spec.components.pilot.replicas"),
		Entry("replicas and autoscale together", func(m *meshv1.MeshControlPlane) {
			m.Spec.Components = &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](2), Autoscale: &meshv1.AutoscaleSpec{Min: 1, Max: 2}}}
		}, "set either replicas or autoscale"),
		Entry("autoscale min above max", func(m *meshv1.MeshControlPlane) {
			m.Spec.Components = &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Autoscale: &meshv1.AutoscaleSpec{Min: 4, Max: 2}}}
		}, "min must not exceed max"),
		Entry("an unknown profile", func(m *meshv1.MeshControlPlane) { m.Spec.Profile = "huge" }, "spec.profile"),
		Entry("an invalid namespace name", func(m *meshv1.MeshControlPlane) { m.Spec.Namespace = "Istio_System" }, "spec.namespace"),
		Entry("an unknown CA type", func(m *meshv1.MeshControlPlane) { caSpec(m).Type = "Vault" }, "spec.security.ca.type"),
		Entry("a Provided CA without its Secret", func(m *meshv1.MeshControlPlane) { caSpec(m).Type = meshv1.CAProvided }, "spec.security.ca.provided: required"),
		Entry("a CertManager CA without an issuer", func(m *meshv1.MeshControlPlane) { caSpec(m).Type = meshv1.CACertManager }, "spec.security.ca.certManager: required"),
		Entry("an unknown key algorithm", func(m *meshv1.MeshControlPlane) { caSpec(m).KeyAlgorithm = "DSA" }, "spec.security.ca.keyAlgorithm"),
		Entry("a workload TTL of 1s", func(m *meshv1.MeshControlPlane) {
			caSpec(m).WorkloadCertTTL = &metav1.Duration{Duration: time.Second}
		}, "spec.security.ca.workloadCertTTL: must be at least 10s"),
		Entry("a workload TTL beyond the intermediate's", func(m *meshv1.MeshControlPlane) {
			caSpec(m).WorkloadCertTTL = &metav1.Duration{Duration: 9000 * time.Hour}
		}, "spec.security.ca.workloadCertTTL: must be shorter than intermediateTTL"),
		Entry("an intermediate outliving the root", func(m *meshv1.MeshControlPlane) {
			caSpec(m).RootTTL = &metav1.Duration{Duration: 1000 * time.Hour}
		}, "spec.security.ca.intermediateTTL: must not exceed rootTTL"),
		Entry("a root rotation that cannot finish before expiry", func(m *meshv1.MeshControlPlane) {
			caSpec(m).Rotation = &meshv1.CARotationSpec{RootRenewBefore: &metav1.Duration{Duration: time.Hour}}
		}, "spec.security.ca.rotation.rootRenewBefore: must be longer than workloadCertTTL"),
		Entry("an intermediate renewed as soon as made", func(m *meshv1.MeshControlPlane) {
			caSpec(m).Rotation = &meshv1.CARotationSpec{IntermediateRenewBefore: &metav1.Duration{Duration: 9000 * time.Hour}}
		}, "spec.security.ca.rotation.intermediateRenewBefore"),
	)

	It("fills in the CA defaults: SelfSigned, ECDSA P-256, 10 years, 1 year, 24 hours, automatic", func() {
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
		Expect(k8sClient.Create(ctx, m, client.DryRunAll)).To(Succeed())
		c := m.Spec.Security.CA
		Expect(c.Type).To(Equal(meshv1.CASelfSigned))
		Expect(c.KeyAlgorithm).To(Equal("ECDSAP256"))
		Expect(c.RootTTL.Duration).To(Equal(87600 * time.Hour))
		Expect(c.IntermediateTTL.Duration).To(Equal(8760 * time.Hour))
		Expect(c.WorkloadCertTTL.Duration).To(Equal(24 * time.Hour))
		Expect(*c.Rotation.Automatic).To(BeTrue())
	})

	It("fills in the defaults: the embedded version, istio-system, the default profile", func() {
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
		Expect(k8sClient.Create(ctx, m, client.DryRunAll)).To(Succeed())
		Expect(m.Spec.Version).To(Equal("1.31.1"))
		Expect(m.Spec.Namespace).To(Equal("istio-system"))
		Expect(m.Spec.Profile).To(Equal("default"))
	})
})

var _ = Describe("MeshControlPlane lifecycle", Ordered, func() {
	const ns = "mesh-a"
	AfterAll(deleteMCPAndWait)

	It("installs Istio's base and istiod charts, labelled as Capstan's", func() {
		Expect(k8sClient.Create(ctx, mcp(ns))).To(Succeed())
		Eventually(ownedRefs).Should(ContainElements(
			"Namespace /"+ns,
			"CustomResourceDefinition /peerauthentications.security.istio.io",
			"Deployment "+ns+"/istiod",
			"ConfigMap "+ns+"/istio",
			"ConfigMap "+ns+"/istio-sidecar-injector",
			"MutatingWebhookConfiguration /istio-sidecar-injector-"+ns,
			"Service "+ns+"/istiod",
		))
		d := &appsv1.Deployment{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, d)).To(Succeed())
		Expect(d.Labels).To(HaveKeyWithValue(apply.ComponentLabel, "istiod"))
		Expect(d.Labels).To(HaveKeyWithValue(apply.RevisionLabel, "default"))
		Expect(d.Labels).To(HaveKeyWithValue(apply.WriterLabel, apply.WriterInstall))
		Expect(d.Spec.Template.Spec.Containers[0].Image).To(Equal("docker.io/istio/pilot:1.31.1"))
		Expect(d.ManagedFields).To(ContainElement(HaveField("Manager", apply.FieldManager)))
		Expect(getMCP().Finalizers).To(ContainElement("mesh.capstan.dev/cleanup"))
	})

	It("reports istiod not ready until its Deployment is available, then Ready", func() {
		Eventually(condition(meshv1.ConditionReady)).Should(And(
			HaveField("Status", metav1.ConditionFalse), HaveField("Reason", meshv1.ReasonComponentsNotReady)))
		Expect(condition(meshv1.ConditionProgressing)(Default)).To(HaveField("Status", metav1.ConditionTrue))
		Expect(condition(meshv1.ConditionDegraded)(Default)).To(HaveField("Status", metav1.ConditionFalse))

		markAvailable(ns)
		Eventually(condition(meshv1.ConditionReady)).Should(HaveField("Status", metav1.ConditionTrue))
		m := getMCP()
		Expect(m.Status.Version).To(Equal("1.31.1"))
		Expect(m.Status.ObservedGeneration).To(Equal(m.Generation))
		Expect(m.Status.Components).To(ConsistOf(meshv1.ComponentStatus{Name: "istiod", Ready: true, DesiredReplicas: 1, ReadyReplicas: 1}))
		Expect(condition(meshv1.ConditionProgressing)(Default)).To(HaveField("Status", metav1.ConditionFalse))
		Expect(events(meshv1.ReasonInstalled)).NotTo(BeEmpty())
	})

	It("restores an owned ConfigMap that was edited or deleted", func() {
		cm := &corev1.ConfigMap{}
		key := client.ObjectKey{Namespace: ns, Name: "istio"}
		Expect(k8sClient.Get(ctx, key, cm)).To(Succeed())
		want := cm.Data["mesh"]
		cm.Data["mesh"] = "defaultConfig: {}\n"
		Expect(k8sClient.Update(ctx, cm)).To(Succeed())
		Eventually(func(g Gomega) string {
			g.Expect(k8sClient.Get(ctx, key, cm)).To(Succeed())
			return cm.Data["mesh"]
		}).Should(Equal(want))

		Expect(k8sClient.Delete(ctx, cm)).To(Succeed())
		Eventually(func(g Gomega) string {
			g.Expect(k8sClient.Get(ctx, key, cm)).To(Succeed())
			return cm.Data["mesh"]
		}).Should(Equal(want))
		Eventually(func() []eventsv1.Event { return events(meshv1.ReasonDriftReverted) }).ShouldNot(BeEmpty())
	})

	It("reverts a change to the istiod Deployment made by someone else", func() {
		d := &appsv1.Deployment{}
		key := client.ObjectKey{Namespace: ns, Name: "istiod"}
		Expect(k8sClient.Get(ctx, key, d)).To(Succeed())
		d.Spec.Template.Spec.Containers[0].Image = "example.com/not-istio:latest"
		Expect(k8sClient.Update(ctx, d)).To(Succeed())
		Eventually(func(g Gomega) string {
			g.Expect(k8sClient.Get(ctx, key, d)).To(Succeed())
			return d.Spec.Template.Spec.Containers[0].Image
		}).Should(Equal("docker.io/istio/pilot:1.31.1"))
	})

	It("restores a deleted CRD", func() {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		key := client.ObjectKey{Name: "telemetries.telemetry.istio.io"}
		Expect(k8sClient.Get(ctx, key, crd)).To(Succeed())
		uid := crd.UID
		Expect(k8sClient.Delete(ctx, crd)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, key, crd)).To(Succeed())
			g.Expect(crd.UID).NotTo(Equal(uid))
			g.Expect(crd.DeletionTimestamp).To(BeNil())
		}).Should(Succeed())
	})

	// CRDs are cached as metadata only, so an edit of a CRD's spec shows only as a new
	// generation, compared with the generation the apiserver answered Capstan's apply with
	// (an answer Capstan asks for as metadata only).
	It("reverts an edit of a CRD's spec that leaves its labels and annotations alone", func() {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		key := client.ObjectKey{Name: "wasmplugins.extensions.istio.io"}
		Expect(k8sClient.Get(ctx, key, crd)).To(Succeed())
		Expect(crd.Spec.Names.Categories).To(Equal([]string{"istio-io", "extensions-istio-io"}))
		generation := crd.Generation
		crd.Spec.Names.Categories = []string{"istio-io"}
		Expect(k8sClient.Update(ctx, crd)).To(Succeed())
		Eventually(func(g Gomega) []string {
			g.Expect(k8sClient.Get(ctx, key, crd)).To(Succeed())
			g.Expect(crd.Generation).To(BeNumerically(">", generation+1), "the edit and the repair are both new generations")
			return crd.Spec.Names.Categories
		}).Should(Equal([]string{"istio-io", "extensions-istio-io"}))
	})

	It("applies a replica change, prunes the autoscaler it no longer renders, and repairs the disruption budget it now does", func() {
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, &autoscalingv2.HorizontalPodAutoscaler{})).To(Succeed())
		// An object without Capstan's labels in the same namespace must survive pruning.
		foreign := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "users-own"}}
		Expect(k8sClient.Create(ctx, foreign)).To(Succeed())

		m := getMCP()
		m.Spec.Components = &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](2)}}
		Expect(k8sClient.Update(ctx, m)).To(Succeed())
		Eventually(func(g Gomega) int32 {
			d := &appsv1.Deployment{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, d)).To(Succeed())
			return ptr.Deref(d.Spec.Replicas, 0)
		}).Should(Equal(int32(2)))
		Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, &autoscalingv2.HorizontalPodAutoscaler{}))
		}).Should(BeTrue())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(foreign), foreign)).To(Succeed())
		// Nothing has rolled out the second replica (envtest runs no Deployment controller):
		// the new generation must never be reported Ready from a stale view of the old one.
		Consistently(func(g Gomega) metav1.ConditionStatus {
			m := getMCP()
			c := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionReady)
			if c == nil || c.ObservedGeneration != m.Generation {
				return metav1.ConditionUnknown
			}
			return c.Status
		}).WithTimeout(2 * time.Second).ShouldNot(Equal(metav1.ConditionTrue))
		Eventually(condition(meshv1.ConditionReady)).Should(HaveField("Reason", meshv1.ReasonComponentsNotReady))
		markAvailable(ns)
		Eventually(condition(meshv1.ConditionReady)).Should(HaveField("Status", metav1.ConditionTrue))
		// Two replicas render a disruption budget: deleting it, once all is quiet, is drift
		// that is repaired.
		pdb := &policyv1.PodDisruptionBudget{}
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, pdb)
		}).Should(Succeed())
		// A new object of a spec change is an update, not a repair of drift.
		for _, e := range events(meshv1.ReasonDriftReverted) {
			Expect(e.Note).NotTo(ContainSubstring("PodDisruptionBudget"))
		}
		Expect(k8sClient.Delete(ctx, pdb)).To(Succeed())
		Eventually(func(g Gomega) {
			restored := &policyv1.PodDisruptionBudget{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, restored)).To(Succeed())
			g.Expect(restored.UID).NotTo(Equal(pdb.UID))
		}).Should(Succeed())
	})

	It("prunes within its own units and writer only: another controller's object stays", func() {
		// Both carry Capstan's labels and the istiod unit's component and revision, and
		// neither is rendered. The install's own is pruned; the one another of Capstan's
		// controllers wrote is never touched by the install's prune.
		unit := apply.Inventory{Component: "istiod", Revision: apply.DefaultRevision}
		mine, theirs := unit, unit
		mine.Writer, theirs.Writer = apply.WriterInstall, "mtls"
		stale := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "stale-install-object", Labels: mine.Labels()}}
		other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "another-writers-object", Labels: theirs.Labels()}}
		Expect(k8sClient.Create(ctx, other)).To(Succeed())
		Expect(k8sClient.Create(ctx, stale)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(stale), &corev1.ConfigMap{}))
		}).Should(BeTrue(), "the install's own stale object is pruned")
		// The prune that removed the stale object ran after both existed.
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(other), other)).To(Succeed())
		Expect(other.DeletionTimestamp).To(BeNil())
	})

	It("reports an unsupported version as Degraded and leaves what runs untouched", func() {
		before := &appsv1.Deployment{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, before)).To(Succeed())
		m := getMCP()
		m.Spec.Version = "1.99.0"
		Expect(k8sClient.Update(ctx, m)).To(Succeed())
		Eventually(condition(meshv1.ConditionDegraded)).Should(And(
			HaveField("Status", metav1.ConditionTrue),
			HaveField("Reason", meshv1.ReasonInvalidSpec),
			HaveField("Message", ContainSubstring("spec.version"))))
		// istiod as installed still serves: Ready stays True beside Degraded, and says why.
		Expect(condition(meshv1.ConditionReady)(Default)).To(And(
			HaveField("Status", metav1.ConditionTrue), HaveField("Reason", meshv1.ReasonServingPrevious)))
		after := &appsv1.Deployment{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, after)).To(Succeed())
		Expect(after.ResourceVersion).To(Equal(before.ResourceVersion))
		Expect(getMCP().Status.Version).To(Equal("1.31.1"))
	})

	It("reports values the charts reject as Degraded, changes nothing, and recovers when fixed", func() {
		cm := &corev1.ConfigMap{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istio"}, cm)).To(Succeed())
		m := getMCP()
		m.Spec.Version = "1.31.1"
		m.Spec.Values = &apiextensionsv1.JSON{Raw: []byte(`{"global":{"platform":"no-such-platform"}}`)}
		Expect(k8sClient.Update(ctx, m)).To(Succeed())
		Eventually(condition(meshv1.ConditionDegraded)).Should(And(
			HaveField("Status", metav1.ConditionTrue),
			HaveField("Reason", meshv1.ReasonRenderFailed),
			HaveField("Message", And(ContainSubstring("spec.values"), ContainSubstring("no-such-platform")))))
		after := &corev1.ConfigMap{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(cm), after)).To(Succeed())
		Expect(after.ResourceVersion).To(Equal(cm.ResourceVersion))
		Expect(events(meshv1.ReasonRenderFailed)).NotTo(BeEmpty())

		// A field Kubernetes does not know, which the apiserver would drop with a warning
		// only under the default field validation, is refused by the apiserver (every apply
		// asks for strict validation) in the dry run, by its path, before anything is written.
		dep := &appsv1.Deployment{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, dep)).To(Succeed())
		m = getMCP()
		m.Spec.Values = &apiextensionsv1.JSON{Raw: []byte(`{"pilot":{"affinity":{"nodeAfinity":{}}}}`)}
		Expect(k8sClient.Update(ctx, m)).To(Succeed())
		Eventually(condition(meshv1.ConditionDegraded)).Should(And(
			HaveField("Status", metav1.ConditionTrue),
			HaveField("Reason", meshv1.ReasonApplyFailed),
			HaveField("Message", And(ContainSubstring("spec.values"), ContainSubstring("nodeAfinity")))))
		depAfter := &appsv1.Deployment{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(dep), depAfter)).To(Succeed())
		Expect(depAfter.ResourceVersion).To(Equal(dep.ResourceVersion), "a refused render must write nothing")

		// The charts render this, but istiod already has PILOT_TRACE_SAMPLING: the apiserver
		// rejects the Deployment, and the dry run stops every other object too.
		values := &corev1.ConfigMap{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "values"}, values)).To(Succeed())
		m = getMCP()
		m.Spec.Values = &apiextensionsv1.JSON{Raw: []byte(`{"pilot":{"env":{"PILOT_TRACE_SAMPLING":"5"}}}`)}
		Expect(k8sClient.Update(ctx, m)).To(Succeed())
		Eventually(condition(meshv1.ConditionDegraded)).Should(And(
			HaveField("Status", metav1.ConditionTrue),
			HaveField("Reason", meshv1.ReasonApplyFailed),
			HaveField("Message", And(ContainSubstring("spec.values"), ContainSubstring("PILOT_TRACE_SAMPLING")))))
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(values), after)).To(Succeed())
		Expect(after.ResourceVersion).To(Equal(values.ResourceVersion), "a rejected change must write nothing")

		m = getMCP()
		m.Spec.Values = &apiextensionsv1.JSON{Raw: []byte(`{"pilot":{"env":{"PILOT_DEBOUNCE_AFTER":"200ms"}}}`)}
		Expect(k8sClient.Update(ctx, m)).To(Succeed())
		Eventually(condition(meshv1.ConditionDegraded)).Should(HaveField("Status", metav1.ConditionFalse))
		Eventually(func(g Gomega) []corev1.EnvVar {
			d := &appsv1.Deployment{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, d)).To(Succeed())
			return d.Spec.Template.Spec.Containers[0].Env
		}).Should(ContainElement(corev1.EnvVar{Name: "PILOT_DEBOUNCE_AFTER", Value: "200ms"}))
	})

	It("removes everything it installed on deletion, but keeps Istio's CRDs", func() {
		deleteMCPAndWait()
		// What stays: Istio's CRDs, and the object another of Capstan's controllers wrote
		// (see "prunes within its own units and writer only"), which is that writer's to remove.
		Eventually(ownedRefs).Should(HaveEach(Or(HavePrefix("CustomResourceDefinition "), Equal("ConfigMap "+ns+"/another-writers-object"))))
		Expect(ownedRefs()).To(ContainElements("CustomResourceDefinition /peerauthentications.security.istio.io", "ConfigMap "+ns+"/another-writers-object"))
		Expect(k8sClient.Delete(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "another-writers-object"}})).To(Succeed())
		n := &corev1.Namespace{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: ns}, n)).To(Succeed())
		Expect(n.DeletionTimestamp).NotTo(BeNil(), "the namespace Capstan created is deleted with it")
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "users-own"}, &corev1.ConfigMap{})).To(Succeed(),
			"the user's ConfigMap is removed only by the namespace controller, never by Capstan")
		Expect(events(meshv1.ReasonUninstalled)).NotTo(BeEmpty())
	})
})

var _ = Describe("a control plane in a namespace the user created", Ordered, func() {
	const ns = "mesh-b"
	AfterAll(deleteMCPAndWait)

	It("uses the namespace without taking it over, and removes CRDs when asked", func() {
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		m := mcp(ns)
		m.Spec.Uninstall = &meshv1.UninstallSpec{RemoveCRDs: true}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Eventually(ownedRefs).Should(ContainElement("Deployment " + ns + "/istiod"))
		n := &corev1.Namespace{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: ns}, n)).To(Succeed())
		Expect(n.Labels).NotTo(HaveKey(apply.ManagedByLabel))

		deleteMCPAndWait()
		Eventually(ownedRefs).Should(BeEmpty())
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: ns}, n)).To(Succeed())
		Expect(n.DeletionTimestamp).To(BeNil(), "a namespace Capstan did not create is never deleted")
		crds := &unstructured.UnstructuredList{}
		crds.SetAPIVersion("apiextensions.k8s.io/v1")
		crds.SetKind("CustomResourceDefinitionList")
		Expect(k8sClient.List(ctx, crds)).To(Succeed())
		for _, c := range crds.Items {
			Expect(strings.HasSuffix(c.GetName(), ".istio.io") && c.GetDeletionTimestamp() == nil).To(BeFalse(), "CRD %s was kept", c.GetName())
		}
	})
})

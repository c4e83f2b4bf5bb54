package controllers_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/internal/revision"
)

// operatorNamespace is the operator's namespace as the suite's data-plane controller knows
// it: never labelled for injection.
const operatorNamespace = "nl-operator"

// spec.injection.namespaceSelector: Capstan labels the namespaces it selects and takes
// back only the labels it set. No pod is created here: the namespaces get labelled for
// injection, and the injection webhook the install registers is not served in envtest.
var _ = Describe("namespace labelling", Ordered, func() {
	const (
		cpNS      = "nl-istio"   // the control plane's, labelled team=mesh
		revNS     = "nl-rev"     // the user's istio.io/rev=x
		offNS     = "nl-off"     // the user's istio-injection=disabled
		meshNS    = "nl-mesh"    // selected: labelled by Capstan
		leaveNS   = "nl-leave"   // selected, then not
		changedNS = "nl-changed" // selected, its value changed by the user, then not
		lateNS    = "nl-late"    // selected only while the selector is invalid
		signalNS  = "nl-signal"  // labelled by hand: a change the status shows
	)
	all := []string{cpNS, operatorNamespace, revNS, offNS, meshNS, leaveNS, changedNS, lateNS, signalNS}
	team := map[string]string{"team": "mesh"}

	ns := func(g Gomega, name string) *corev1.Namespace {
		n := &corev1.Namespace{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: name}, n)).To(Succeed())
		return n
	}
	// setLabels sets (value not empty) or removes labels of a namespace.
	setSelector := func(sel *metav1.LabelSelector) {
		GinkgoHelper()
		Eventually(func(g Gomega) {
			m := &meshv1.MeshControlPlane{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
			m.Spec.Injection = &meshv1.InjectionSpec{NamespaceSelector: sel}
			g.Expect(k8sClient.Update(ctx, m)).To(Succeed())
		}).Should(Succeed())
	}
	labelledByCapstan := func(name string) func(Gomega) {
		return func(g Gomega) {
			n := ns(g, name)
			g.Expect(n.Labels).To(HaveKeyWithValue(revision.InjectionLabel, "enabled"), name)
			g.Expect(n.Annotations).To(HaveKeyWithValue(controllers.InjectionLabelledAnnotation, revision.InjectionLabel+"=enabled"), name)
		}
	}
	meshed := func(g Gomega) int32 {
		m := &meshv1.MeshControlPlane{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
		g.Expect(m.Status.Injection).NotTo(BeNil())
		return m.Status.Injection.MeshedNamespaces
	}

	BeforeAll(func() {
		// Created in this order: the namespace informer delivers them in order, so once
		// meshNS is seen labelled, the ones before it were seen too.
		create := func(name string, l map[string]string) {
			Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}})).To(Succeed())
		}
		create(cpNS, team)
		create(operatorNamespace, team)
		create(revNS, map[string]string{"team": "mesh", revision.RevLabel: "x"})
		create(offNS, map[string]string{"team": "mesh", revision.InjectionLabel: "disabled"})
		create(lateNS, nil)
		create(signalNS, nil)
		create(leaveNS, team)
		create(changedNS, team)
		create(meshNS, team)
		m := mcp(cpNS)
		m.Spec.Injection = &meshv1.InjectionSpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: team}}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
	})
	AfterAll(func() {
		deleteMCPAndWait()
		// envtest never finishes deleting a namespace: unlabel them, so that no other
		// spec sees them meshed.
		for _, name := range all {
			setNamespaceLabels(name, map[string]string{"team": "", revision.InjectionLabel: "", revision.RevLabel: ""})
		}
	})

	It("labels the selected namespaces istio-injection=enabled with its marker, and no other", func() {
		for _, name := range []string{meshNS, leaveNS, changedNS} {
			Eventually(labelledByCapstan(name)).Should(Succeed())
		}
		// The positive signal: the condition of this generation, from the same pass.
		Eventually(func(g Gomega) {
			c := condition(meshv1.ConditionInjectionConfigured)(g)
			g.Expect(c.Reason).To(Equal(meshv1.ReasonSelectorMatchesControlPlane))
		}).Should(Succeed())
		Expect(ns(Default, revNS).Labels).To(And(HaveKeyWithValue(revision.RevLabel, "x"), Not(HaveKey(revision.InjectionLabel))))
		Expect(ns(Default, offNS).Labels).To(HaveKeyWithValue(revision.InjectionLabel, "disabled"))
		for _, name := range []string{revNS, offNS, cpNS, operatorNamespace, lateNS} {
			Expect(ns(Default, name).Annotations).NotTo(HaveKey(controllers.InjectionLabelledAnnotation), name)
		}
	})

	It("does not label the control-plane or the operator's namespace, and says so in InjectionConfigured", func() {
		Expect(ns(Default, cpNS).Labels).NotTo(HaveKey(revision.InjectionLabel))
		Expect(ns(Default, operatorNamespace).Labels).NotTo(HaveKey(revision.InjectionLabel))
		c := condition(meshv1.ConditionInjectionConfigured)(Default)
		Expect(c.Status).To(Equal(metav1.ConditionFalse))
		Expect(c.Message).To(ContainSubstring("spec.injection.namespaceSelector"))
		Expect(c.Message).To(ContainSubstring(cpNS))
		Expect(c.Message).To(ContainSubstring(operatorNamespace))
	})

	It("removes its label and marker from a namespace that stops matching", func() {
		setNamespaceLabels(leaveNS, map[string]string{"team": ""})
		Eventually(func(g Gomega) {
			n := ns(g, leaveNS)
			g.Expect(n.Labels).NotTo(HaveKey(revision.InjectionLabel))
			g.Expect(n.Annotations).NotTo(HaveKey(controllers.InjectionLabelledAnnotation))
		}).Should(Succeed())
	})

	It("keeps a value the user changed when the namespace stops matching, and drops only the marker", func() {
		setNamespaceLabels(changedNS, map[string]string{revision.InjectionLabel: "disabled"})
		setNamespaceLabels(changedNS, map[string]string{"team": ""})
		Eventually(func(g Gomega) {
			g.Expect(ns(g, changedNS).Annotations).NotTo(HaveKey(controllers.InjectionLabelledAnnotation))
		}).Should(Succeed())
		Expect(ns(Default, changedNS).Labels).To(HaveKeyWithValue(revision.InjectionLabel, "disabled"))
	})

	It("reports an invalid selector as InvalidSelector and labels or unlabels nothing", func() {
		setSelector(&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Near", Values: []string{"mesh"}}}})
		Eventually(func(g Gomega) {
			c := condition(meshv1.ConditionInjectionConfigured)(g)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(meshv1.ReasonInvalidSelector))
			g.Expect(c.Message).To(ContainSubstring("spec.injection.namespaceSelector"))
		}).Should(Succeed())
		before := meshed(Default)
		setNamespaceLabels(lateNS, team)
		setNamespaceLabels(meshNS, map[string]string{"team": ""})
		// The positive signal: a hand-set label the counts show, seen after the two changes
		// above by the same namespace informer, in a reconcile that also ran the labelling.
		setNamespaceLabels(signalNS, map[string]string{revision.InjectionLabel: "enabled"})
		Eventually(meshed).Should(Equal(before + 1))
		Expect(ns(Default, lateNS).Labels).NotTo(HaveKey(revision.InjectionLabel))
		labelledByCapstan(meshNS)(Default)
	})

	It("removes the labels it set when the MeshControlPlane is deleted", func() {
		setSelector(&metav1.LabelSelector{MatchLabels: team})
		Eventually(labelledByCapstan(lateNS)).Should(Succeed())
		deleteMCPAndWait()
		Eventually(func(g Gomega) {
			for _, name := range []string{lateNS, meshNS} {
				n := ns(g, name)
				g.Expect(n.Labels).NotTo(HaveKey(revision.InjectionLabel), name)
				g.Expect(n.Annotations).NotTo(HaveKey(controllers.InjectionLabelledAnnotation), name)
			}
		}).Should(Succeed())
		Expect(ns(Default, signalNS).Labels).To(HaveKeyWithValue(revision.InjectionLabel, "enabled"))
		Expect(ns(Default, offNS).Labels).To(HaveKeyWithValue(revision.InjectionLabel, "disabled"))
	})
})

package controllers_test

import (
	"encoding/json"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/revision"
)

// The data plane's status comes from pods and namespaces alone. envtest has no scheduler
// or kubelet: the specs create Pod objects directly, with the annotations istiod's injector
// would write, and set their phase through the status subresource as a kubelet would.
//
// Istio's injection webhook (installed by the MeshControlPlane) would be called for a pod
// created in a namespace labelled for injection, and nothing serves it here: pods are
// created before their namespace is labelled, and later changes are updates, which the
// webhook does not see.
var _ = Describe("injection status", Ordered, func() {
	const (
		meshNS  = "dp-mesh"  // labelled istio-injection=enabled
		nopeNS  = "dp-nope"  // labelled istio.io/rev=nope, a revision that does not exist
		plainNS = "dp-plain" // not meshed
	)
	var (
		stamp dataplane.Stamp
		pods  []*corev1.Pod
	)

	// pod creates a pod with phase, owned by the ReplicaSet of Deployment deployment
	// (none when empty), carrying a sidecar of the default revision stamped with s when s
	// is not nil.
	pod := func(ns, name, deployment string, s *dataplane.Stamp, phase corev1.PodPhase) *corev1.Pod {
		GinkgoHelper()
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}},
				AutomountServiceAccountToken: ptr.To(false)},
		}
		if deployment != "" {
			const hash = "5d8f7c9b4"
			p.Labels = map[string]string{"pod-template-hash": hash}
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: deployment + "-" + hash,
				UID: types.UID("rs-" + deployment), Controller: ptr.To(true)}}
		}
		if s != nil {
			st, err := json.Marshal(map[string]string{"revision": "default"})
			Expect(err).NotTo(HaveOccurred())
			p.Annotations = map[string]string{
				revision.StatusAnnotation:        string(st),
				dataplane.ProxyVersionAnnotation: s.Version,
				dataplane.ProxyConfigAnnotation:  s.ProxyConfig,
			}
		}
		Expect(k8sClient.Create(ctx, p)).To(Succeed())
		setPhase(p, phase)
		pods = append(pods, p)
		return p
	}
	counts := func(meshed, injected, uninjected, stale int32) func(Gomega) {
		return func(g Gomega) {
			st := injection(g)
			g.Expect([]int32{st.MeshedNamespaces, st.InjectedPods, st.UninjectedPods, st.StalePods}).
				To(Equal([]int32{meshed, injected, uninjected, stale}), "meshedNamespaces, injectedPods, uninjectedPods, stalePods")
		}
	}

	BeforeAll(func() {
		for _, ns := range []string{meshNS, nopeNS, plainNS} {
			Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		}
		Expect(k8sClient.Create(ctx, mcp("dp-istio"))).To(Succeed())
		// The stamps the controller compares with, planned from the spec as the apiserver
		// defaulted it.
		p, err := plan.For(&getMCP().Spec, plan.InstalledFrom(&getMCP().Status))
		Expect(err).NotTo(HaveOccurred())
		stamp = p.Stamps[p.Revision]
		Expect(stamp.Version).NotTo(BeEmpty())
	})
	AfterAll(func() {
		for _, p := range pods {
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, p))).To(Succeed())
		}
		// envtest never finishes deleting a namespace: unlabel them, so that no other
		// spec sees them meshed.
		setNamespaceLabels(meshNS, map[string]string{revision.InjectionLabel: ""})
		setNamespaceLabels(nopeNS, map[string]string{revision.RevLabel: ""})
		deleteMCPAndWait()
	})

	It("counts meshed namespaces and injected and uninjected pods, and reports SidecarsCurrent=True", func() {
		pod(meshNS, "web-1", "web", &stamp, corev1.PodRunning)
		pod(meshNS, "web-2", "web", &stamp, corev1.PodRunning)
		pod(meshNS, "plain-1", "plain", nil, corev1.PodRunning)
		// A finished pod with an old sidecar counts nowhere: not injected, not stale.
		pod(meshNS, "job-1", "", &dataplane.Stamp{Version: "1.0.0", ProxyConfig: "old"}, corev1.PodSucceeded)
		pod(plainNS, "other-1", "other", nil, corev1.PodRunning) // not meshed: not uninjected
		pod(nopeNS, "nope-1", "nope", nil, corev1.PodRunning)    // labelled in a later spec
		setNamespaceLabels(meshNS, map[string]string{revision.InjectionLabel: "enabled"})

		Eventually(counts(1, 2, 1, 0)).Should(Succeed())
		Eventually(func(g Gomega) {
			c := condition(meshv1.ConditionSidecarsCurrent)(g)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Reason).To(Equal(meshv1.ReasonSidecarsCurrent))
			g.Expect(injection(g).Attention).To(BeEmpty())
		}).Should(Succeed())
	})

	It("counts a pod stamped with an older version as stale, and lists its Deployment for attention", func() {
		p := &corev1.Pod{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: meshNS, Name: "web-2"}, p)).To(Succeed())
		p.Annotations[dataplane.ProxyVersionAnnotation] = "1.0.0"
		Expect(k8sClient.Update(ctx, p)).To(Succeed())

		Eventually(counts(1, 2, 1, 1)).Should(Succeed())
		Eventually(func(g Gomega) {
			c := condition(meshv1.ConditionSidecarsCurrent)(g)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(string(dataplane.VersionChanged)))
			g.Expect(c.Message).To(ContainSubstring("1 of 2 running sidecars are stale"))
			g.Expect(c.Message).To(ContainSubstring("Deployment dp-mesh/web"))
			st := injection(g)
			g.Expect(st.Attention).To(HaveLen(1))
			a := st.Attention[0]
			g.Expect([]string{a.Kind, a.Namespace, a.Name}).To(Equal([]string{"Deployment", meshNS, "web"}))
			g.Expect(a.Message).To(ContainSubstring(string(dataplane.VersionChanged)))
			g.Expect(st.MoreNeedingAttention).To(BeZero())
		}).Should(Succeed())
	})

	It("stops counting a pod once it has Succeeded", func() {
		setPhase(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: "web-2"}}, corev1.PodSucceeded)

		Eventually(counts(1, 1, 1, 0)).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(condition(meshv1.ConditionSidecarsCurrent)(g).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(injection(g).Attention).To(BeEmpty())
		}).Should(Succeed())
	})

	It("lists a namespace labelled for a revision that does not exist for attention", func() {
		setNamespaceLabels(nopeNS, map[string]string{revision.RevLabel: "nope"})

		Eventually(counts(2, 1, 2, 0)).Should(Succeed())
		Eventually(func(g Gomega) {
			st := injection(g)
			g.Expect(st.Attention).To(HaveLen(1))
			a := st.Attention[0]
			g.Expect([]string{a.Kind, a.Name, a.Reason}).To(Equal([]string{"Namespace", nopeNS, dataplane.ReasonRevisionMissing}))
			g.Expect(a.Message).To(ContainSubstring(`"nope"`))
		}).Should(Succeed())
	})

	It("leaves the install's conditions to the install controller and the CA's to the CA", func() {
		// Both write status beside this controller, each under its own field manager: the
		// data plane's writes must not have taken their conditions away.
		Eventually(func(g Gomega) {
			m := &meshv1.MeshControlPlane{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
			var got []string
			for _, c := range m.Status.Conditions {
				got = append(got, c.Type)
			}
			g.Expect(got).To(ContainElements(meshv1.ConditionSidecarsCurrent, meshv1.ConditionReady, meshv1.ConditionCAReady))
		}).Should(Succeed())
	})
})

// setPhase writes a pod's phase as its kubelet would.
func setPhase(p *corev1.Pod, phase corev1.PodPhase) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		cur := &corev1.Pod{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(p), cur)).To(Succeed())
		cur.Status.Phase = phase
		g.Expect(k8sClient.Status().Update(ctx, cur)).To(Succeed())
	}).Should(Succeed())
}

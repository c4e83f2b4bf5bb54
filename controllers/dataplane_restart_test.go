package controllers_test

import (
	"encoding/json"
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/revision"
)

// Restarts against a real apiserver. envtest runs no Deployment controller, kubelet or
// disruption controller: the specs write, through the status subresource, what those
// would (a rollout complete and available, a PodDisruptionBudget's allowed disruptions),
// and delete a restarted workload's old pods. Its new pods are not created: the namespace
// is labelled for injection, and nothing serves Istio's injection webhook here (the e2e
// suite restarts onto the real istiod). What is real: Capstan's patches, their effect on
// the stored objects, and its status.
var _ = Describe("restarting workloads with stale sidecars", Ordered, func() {
	const (
		cpNS   = "rs-istio"
		meshNS = "rs-mesh"
	)
	var current, old dataplane.Stamp
	var created []client.Object

	// workload creates a Deployment (or a StatefulSet with OnDelete when sts) with one
	// replica whose rollout is complete, and its pod stamped with s.
	workload := func(name string, sts bool, s dataplane.Stamp, annotations map[string]string) client.Object {
		GinkgoHelper()
		labels := map[string]string{"app": name}
		tpl := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}
		var obj client.Object
		kind := "Deployment"
		if sts {
			kind = "StatefulSet"
			obj = &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: name, Annotations: annotations},
				Spec: appsv1.StatefulSetSpec{Replicas: ptr.To[int32](1), Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: tpl,
					UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}}}
		} else {
			obj = &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: name, Annotations: annotations},
				Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: tpl}}
		}
		Expect(k8sClient.Create(ctx, obj)).To(Succeed())
		created = append(created, obj)
		rolledOut(obj)
		stampedPod(kind, name, "1", s)
		return obj
	}
	BeforeAll(func() {
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: meshNS}})).To(Succeed())
		m := mcp(cpNS)
		m.Spec.Injection = &meshv1.InjectionSpec{Rollout: &meshv1.RolloutSpec{
			RestartStaleWorkloads: meshv1.RestartOnUpgrade, MaxConcurrent: 1, RestartTimeout: &metav1.Duration{Duration: time.Hour}}}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		p, err := plan.For(&getMCP().Spec, plan.InstalledFrom(&getMCP().Status))
		Expect(err).NotTo(HaveOccurred())
		current = p.Stamps[p.Revision]
		old = dataplane.Stamp{Version: "1.31.0", ProxyConfig: current.ProxyConfig}
	})
	AfterAll(func() {
		// envtest never finishes deleting a namespace: its pods, which other specs would
		// count, go one by one, and its label.
		pods := &corev1.PodList{}
		Expect(k8sClient.List(ctx, pods, client.InNamespace(meshNS))).To(Succeed())
		for i := range pods.Items {
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, &pods.Items[i]))).To(Succeed())
		}
		for _, o := range []client.Object{&admissionregistrationv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: "rs-frozen"}},
			&admissionregistrationv1.ValidatingAdmissionPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-frozen"}}} {
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, o))).To(Succeed())
		}
		for _, o := range created {
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, o))).To(Succeed())
		}
		setNamespaceLabels(meshNS, map[string]string{revision.InjectionLabel: ""})
		deleteMCPAndWait()
	})

	It("holds restarts until the control plane is Ready, then restarts one workload at a time with one patch each", func() {
		a := workload("a", false, old, nil)
		b := workload("b", false, old, nil)
		workload("c", false, old, map[string]string{dataplane.RestartAnnotation: "false"})
		workload("d", true, old, nil)
		// e's PodDisruptionBudget allows no disruption (the next spec's).
		workload("e", false, old, nil)
		pdb := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: "e"},
			Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(1)), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "e"}}}}
		Expect(k8sClient.Create(ctx, pdb)).To(Succeed())
		pdb.Status = policyv1.PodDisruptionBudgetStatus{ObservedGeneration: pdb.Generation, DisruptionsAllowed: 0, CurrentHealthy: 1, DesiredHealthy: 1, ExpectedPods: 1}
		Expect(k8sClient.Status().Update(ctx, pdb)).To(Succeed())
		// The apiserver refuses any change to f (the next spec's).
		f := workload("f", false, old, nil)
		Expect(k8sClient.Patch(ctx, f, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"frozen":"true"}}}`)))).To(Succeed())
		freeze := &admissionregistrationv1.ValidatingAdmissionPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-frozen"},
			Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
				FailurePolicy: ptr.To(admissionregistrationv1.Fail),
				MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
					RuleWithOperations: admissionregistrationv1.RuleWithOperations{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
						Rule: admissionregistrationv1.Rule{APIGroups: []string{"apps"}, APIVersions: []string{"v1"}, Resources: []string{"deployments"}}}}}},
				Validations: []admissionregistrationv1.Validation{{Expression: "!has(object.metadata.labels) || !('frozen' in object.metadata.labels)", Message: "frozen Deployments may not change"}},
			}}
		Expect(k8sClient.Create(ctx, freeze)).To(Succeed())
		Expect(k8sClient.Create(ctx, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: "rs-frozen"},
			Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: "rs-frozen",
				ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}}})).To(Succeed())
		setNamespaceLabels(meshNS, map[string]string{revision.InjectionLabel: "enabled"})

		// istiod is not available yet: nothing may be restarted onto it.
		Eventually(func(g Gomega) string { return condition(meshv1.ConditionSidecarsCurrent)(g).Message }).
			Should(ContainSubstring("restarts are held: waiting for the control plane to be Ready"))
		Expect(restartedAt(a)).To(BeEmpty())

		markAvailable(cpNS)
		Eventually(func() string { return restartedAt(a) }).ShouldNot(BeEmpty())
		Consistently(func() string { return restartedAt(b) }, 2*time.Second).Should(BeEmpty(), "b restarted while a's restart is in progress (maxConcurrent 1)")
		dep := &appsv1.Deployment{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(a), dep)).To(Succeed())
		Expect(dep.Spec.Template.Annotations).To(HaveKeyWithValue(dataplane.RestartedAtAnnotation, restartedAt(a)), "the pod template carries the restart")
		Expect(dep.Annotations).To(HaveKeyWithValue(dataplane.RestartedForAnnotation, "default/"+current.Version+"/"+current.ProxyConfig))
		Expect(dep.ManagedFields).To(ContainElement(HaveField("Manager", "capstan-restart")))
		Eventually(func(g Gomega) {
			st := injection(g)
			g.Expect(st.RestartsInProgress).To(Equal(int32(1)))
		}).Should(Succeed())
		Eventually(func() []string { return eventMessages(meshv1.ReasonRestartingWorkloads) }).Should(ContainElement(ContainSubstring("Deployment rs-mesh/a")))
		Expect(attention("Deployment", "c")(Default)).To(HaveField("Reason", string(dataplane.StatusOptedOut)))
		Expect(attention("StatefulSet", "d")(Default)).To(And(HaveField("Reason", string(dataplane.StatusNotRestartable)), HaveField("Message", ContainSubstring("OnDelete"))))

		// a's rollout completes and its stale pod is gone: b is next.
		rolledOut(a)
		Expect(k8sClient.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: "a-1"}})).To(Succeed())
		Eventually(func() string { return restartedAt(b) }).ShouldNot(BeEmpty())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(a), dep)).To(Succeed())
		Expect(dep.Generation).To(Equal(int64(2)), "a was patched again after its restart completed")
	})

	It("lets a workload whose PodDisruptionBudget allows no disruption wait, and goes on past a restart the apiserver refuses", func() {
		e := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: "e"}}
		pdb := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: "e"}}
		// b's restart completes, which frees the one restart slot.
		b := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: "b"}}
		rolledOut(b)
		Expect(k8sClient.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: "b-1"}})).To(Succeed())

		Eventually(attention("Deployment", "e")).Should(HaveField("Reason", string(dataplane.StatusWaitingForPDB)))
		Consistently(func() string { return restartedAt(e) }, 2*time.Second).Should(BeEmpty())
		// Meanwhile f, next, is refused by the apiserver: reported, and the plan goes on.
		Eventually(attention("Deployment", "f")).Should(And(HaveField("Reason", string(dataplane.StatusNotRestartable)),
			HaveField("Message", ContainSubstring("frozen Deployments may not change"))))
		Eventually(func() []string { return eventMessages(meshv1.ReasonRestartRefused) }).Should(ContainElement(ContainSubstring("Deployment rs-mesh/f")))

		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pdb), pdb)).To(Succeed())
		pdb.Status.DisruptionsAllowed = 1
		Expect(k8sClient.Status().Update(ctx, pdb)).To(Succeed())
		Eventually(func() string { return restartedAt(e) }).ShouldNot(BeEmpty())
		Expect(restartedAt(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: "f"}})).To(BeEmpty())
	})

	It("reports each installed revision's use beside the install's version and readiness", func() {
		Eventually(func(g Gomega) {
			m := &meshv1.MeshControlPlane{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
			g.Expect(m.Status.Revisions).To(HaveLen(1))
			r := m.Status.Revisions[0]
			g.Expect(r.Name).To(Equal("default"))
			g.Expect(r.Version).To(Equal(current.Version))
			g.Expect(r.Ready).To(HaveValue(BeTrue()))
			g.Expect(r.InUse).To(Equal(meshv1.RevisionInUse))
			g.Expect(r.Pods).To(HaveValue(Equal(int32(4))), "the pods of c, d, e and f carry the revision's sidecar")
			g.Expect(r.Namespaces).To(HaveValue(Equal(int32(1))))
		}).Should(Succeed())
	})
})

// rolledOut writes the status a workload's controller writes once its current template
// runs on every replica, available: envtest has no controller-manager.
func rolledOut(obj client.Object) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		switch o := obj.(type) {
		case *appsv1.Deployment:
			d := &appsv1.Deployment{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(o), d)).To(Succeed())
			n := ptr.Deref(d.Spec.Replicas, 1)
			d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
			g.Expect(k8sClient.Status().Update(ctx, d)).To(Succeed())
		case *appsv1.StatefulSet:
			s := &appsv1.StatefulSet{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(o), s)).To(Succeed())
			n := ptr.Deref(s.Spec.Replicas, 1)
			s.Status = appsv1.StatefulSetStatus{ObservedGeneration: s.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n, CurrentRevision: "r1", UpdateRevision: "r1"}
			g.Expect(k8sClient.Status().Update(ctx, s)).To(Succeed())
		}
	}).Should(Succeed())
}

// stampedPod creates pod <workload>-<suffix> of a workload in rs-mesh, running, with a
// sidecar of the default revision stamped with s, as istiod's injector would write it.
func stampedPod(kind, workload, suffix string, s dataplane.Stamp) {
	GinkgoHelper()
	injectedPod("rs-mesh", "default", kind, workload, suffix, s)
}

// injectedPod creates pod <workload>-<suffix> of a workload in namespace ns, running, with
// a sidecar of revision rev stamped with s, as that revision's injector would write it.
// Nothing serves the injection webhooks Capstan installs here, and they fail closed: the
// pod is created opted out of injection (which they do not call for), and the opt-out is
// removed at once (they see only creations).
func injectedPod(ns, rev, kind, workload, suffix string, s dataplane.Stamp) {
	GinkgoHelper()
	st, err := json.Marshal(map[string]string{"revision": rev})
	Expect(err).NotTo(HaveOccurred())
	owner := metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: workload, UID: types.UID("uid-" + workload), Controller: ptr.To(true)}
	labels := map[string]string{"app": workload, revision.InjectLabel: "false"}
	if kind == "Deployment" {
		const hash = "7f9c6d5b8"
		owner.Kind, owner.Name, labels["pod-template-hash"] = "ReplicaSet", workload+"-"+hash, hash
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%s", workload, suffix), Labels: labels,
			OwnerReferences: []metav1.OwnerReference{owner},
			Annotations: map[string]string{revision.StatusAnnotation: string(st),
				dataplane.ProxyVersionAnnotation: s.Version, dataplane.ProxyConfigAnnotation: s.ProxyConfig}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}, {Name: "istio-proxy", Image: "proxyv2:" + s.Version}},
			AutomountServiceAccountToken: ptr.To(false)},
	}
	Expect(k8sClient.Create(ctx, p)).To(Succeed())
	Expect(k8sClient.Patch(ctx, p, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"`+revision.InjectLabel+`":null}}}`)))).To(Succeed())
	setPhase(p, corev1.PodRunning)
}

// restartedAt is a workload's capstan.dev/restarted-at, straight from the apiserver.
func restartedAt(obj client.Object) string {
	GinkgoHelper()
	cur := obj.DeepCopyObject().(client.Object)
	Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), cur)).To(Succeed())
	return cur.GetAnnotations()[dataplane.RestartedAtAnnotation]
}

// setNamespaceLabels sets a namespace's labels as kv says, an empty value removing the
// label, retrying on a conflict with Capstan's own writes to the namespace.
func setNamespaceLabels(name string, kv map[string]string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		n := &corev1.Namespace{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: name}, n)).To(Succeed())
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		for k, v := range kv {
			if v == "" {
				delete(n.Labels, k)
			} else {
				n.Labels[k] = v
			}
		}
		g.Expect(k8sClient.Update(ctx, n)).To(Succeed())
	}).Should(Succeed())
}

// injection is the MeshControlPlane's status.injection.
func injection(g Gomega) meshv1.InjectionStatus {
	m := &meshv1.MeshControlPlane{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	g.Expect(m.Status.Injection).NotTo(BeNil(), "status.injection not set")
	return *m.Status.Injection
}

// attention is the status.injection.attention entry of a workload in rs-mesh.
func attention(kind, name string) func(Gomega) meshv1.InjectionAttention {
	return func(g Gomega) meshv1.InjectionAttention {
		for _, a := range injection(g).Attention {
			if a.Kind == kind && a.Namespace == "rs-mesh" && a.Name == name {
				return a
			}
		}
		g.Expect(injection(g).Attention).To(ContainElement(HaveField("Name", name)), "no attention entry for %s %s", kind, name)
		return meshv1.InjectionAttention{}
	}
}

func eventMessages(reason string) []string {
	GinkgoHelper()
	var out []string
	for _, e := range events(reason) {
		out = append(out, e.Note)
	}
	return out
}

//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/test/harness"
)

// The data plane's specs: namespaces selected by the MeshControlPlane, the workloads in
// them, and the knobs of their restarts.
const (
	// dpSelectLabel is the namespace label spec.injection.namespaceSelector selects.
	dpSelectLabel = "e2e.capstan.dev/dataplane"
	// dpWorkloadLabel marks the workloads of these specs, for the watches that record their
	// restarts.
	dpWorkloadLabel = "e2e.capstan.dev/dataplane-workload"
	// dpAlpha and dpBeta are selected for injection; dpOutside is not.
	dpAlpha, dpBeta, dpOutside = "dp-alpha", "dp-beta", "dp-outside"
	// dpStuckNode is a simulated node only the stuck workload may use (dpStuckTaint), so
	// that cordoning it strands that workload's next pods and nobody else's.
	dpStuckNode  = "dp-stuck-pool"
	dpStuckTaint = "e2e.capstan.dev/stuck-pool"
	// dpRestartTimeout is spec.injection.rollout.restartTimeout.
	dpRestartTimeout = 15 * time.Second
	// dpSlack absorbs the delivery lag between two watches when the recorded restarts are
	// checked for overlap: an overlap shorter than this is not counted. A restart made while
	// another is really in progress overlaps it by seconds (every rollout here takes two or
	// more).
	dpSlack = time.Second
)

// dpWorkload is one workload of the data-plane specs.
type dpWorkload struct {
	kind, ns, name string
	replicas       int32
	// minReadySeconds keeps a Deployment's rollout in progress for a while after its new
	// pods are Ready, so that an operator killed just after it restarted the workload is
	// killed mid-restart.
	minReadySeconds int32
	// stuck pins the pods to dpStuckNode.
	stuck bool
}

// The workloads, in the order Capstan restarts them (namespace, kind, name): the stuck one
// is not last, so that the ones after it show the plan going on without it.
var (
	dpAPI   = dpWorkload{kind: "Deployment", ns: dpAlpha, name: "api", replicas: 1, minReadySeconds: 3}
	dpStuck = dpWorkload{kind: "Deployment", ns: dpAlpha, name: "stuck", replicas: 1, stuck: true}
	dpWeb   = dpWorkload{kind: "Deployment", ns: dpAlpha, name: "web", replicas: 2}
	dpDB    = dpWorkload{kind: "StatefulSet", ns: dpBeta, name: "db", replicas: 1}
	// dpPlain runs in a namespace the selector does not select.
	dpPlain = dpWorkload{kind: "Deployment", ns: dpOutside, name: "plain", replicas: 1}
)

// key is how messages and the recorder name the workload: "Kind namespace/name".
func (w dpWorkload) key() string { return w.kind + " " + w.ns + "/" + w.name }

// object is the workload as the specs create it: its pods labelled app=<name>.
func (w dpWorkload) object() client.Object {
	labels := map[string]string{"app": w.name}
	tmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{{Name: w.name, Image: "example.com/" + w.name + ":1"}},
			TerminationGracePeriodSeconds: ptr.To[int64](0),
		},
	}
	if w.stuck {
		tmpl.Spec.NodeSelector = map[string]string{corev1.LabelHostname: dpStuckNode}
		tmpl.Spec.Tolerations = []corev1.Toleration{{Key: dpStuckTaint, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
	}
	om := metav1.ObjectMeta{Namespace: w.ns, Name: w.name, Labels: map[string]string{dpWorkloadLabel: "true"}}
	sel := &metav1.LabelSelector{MatchLabels: labels}
	if w.kind == "StatefulSet" {
		return &appsv1.StatefulSet{ObjectMeta: om, Spec: appsv1.StatefulSetSpec{Replicas: ptr.To(w.replicas), Selector: sel, Template: tmpl, ServiceName: w.name}}
	}
	return &appsv1.Deployment{ObjectMeta: om, Spec: appsv1.DeploymentSpec{Replicas: ptr.To(w.replicas), Selector: sel, Template: tmpl, MinReadySeconds: w.minReadySeconds}}
}

// dpPods are the workload's pods that are not being deleted.
func dpPods(ctx context.Context, g Gomega, w dpWorkload) []corev1.Pod {
	pods := &corev1.PodList{}
	g.Expect(k8s.List(ctx, pods, client.InNamespace(w.ns), client.MatchingLabels{"app": w.name})).To(Succeed())
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

// proxyOf is the pod's istio-proxy container (a native sidecar is an init container).
func proxyOf(p *corev1.Pod) *corev1.Container {
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for i := range cs {
			if cs[i].Name == "istio-proxy" {
				return &cs[i]
			}
		}
	}
	return nil
}

// expectSidecars checks that every pod of w runs, Ready, with the sidecar the real istiod
// injects for stamp: its stamps and its proxy image's tag.
func expectSidecars(ctx context.Context, g Gomega, w dpWorkload, stamp dataplane.Stamp) {
	pods := dpPods(ctx, g, w)
	g.Expect(pods).To(HaveLen(int(w.replicas)), "%s: pods", w.key())
	for _, p := range pods {
		proxy := proxyOf(&p)
		g.Expect(proxy).NotTo(BeNil(), "%s: pod %s has no sidecar", w.key(), p.Name)
		g.Expect(proxy.Image).To(HaveSuffix(":"+stamp.Version), "%s: pod %s runs another proxy image", w.key(), p.Name)
		g.Expect(p.Annotations).To(HaveKeyWithValue(dataplane.ProxyVersionAnnotation, stamp.Version), "%s: pod %s", w.key(), p.Name)
		g.Expect(p.Annotations).To(HaveKeyWithValue(dataplane.ProxyConfigAnnotation, stamp.ProxyConfig), "%s: pod %s", w.key(), p.Name)
		g.Expect(p.Status.Phase).To(Equal(corev1.PodRunning), "%s: pod %s", w.key(), p.Name)
		g.Expect(podReady(&p)).To(BeTrue(), "%s: pod %s is not Ready", w.key(), p.Name)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// dpMesh is the MeshControlPlane as the apiserver has it now.
func dpMesh(ctx context.Context, g Gomega) *meshv1.MeshControlPlane {
	m := &meshv1.MeshControlPlane{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	return m
}

// patchMesh changes the MeshControlPlane's spec with a merge patch.
func patchMesh(ctx context.Context, change func(*meshv1.MeshControlPlane)) {
	GinkgoHelper()
	m := dpMesh(ctx, Default)
	patch := client.MergeFrom(m.DeepCopy())
	change(m)
	Expect(k8s.Patch(ctx, m, patch)).To(Succeed())
}

// reportMeshStatus adds the MeshControlPlane's status to a failed spec's report.
func reportMeshStatus() {
	m := &meshv1.MeshControlPlane{}
	if k8s.Get(context.Background(), client.ObjectKey{Name: meshv1.SingletonName}, m) == nil {
		st, _ := json.MarshalIndent(m.Status, "", "  ")
		AddReportEntry("MeshControlPlane status", string(st))
	}
}

// stampOf is what the injector stamps on pods for the MeshControlPlane's spec, and the
// restart target ("revision/version/proxy-config") that spec makes.
func stampOf(m *meshv1.MeshControlPlane) (dataplane.Stamp, string) {
	GinkgoHelper()
	p, err := plan.For(&m.Spec, plan.InstalledFrom(&m.Status))
	Expect(err).NotTo(HaveOccurred())
	s := p.Stamps[p.Revision]
	return s, p.Revision + "/" + s.Version + "/" + s.ProxyConfig
}

// sidecarsCurrentOf is the SidecarsCurrent condition, which must describe the current spec.
func sidecarsCurrentOf(g Gomega, m *meshv1.MeshControlPlane) *metav1.Condition {
	c := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionSidecarsCurrent)
	g.Expect(c).NotTo(BeNil(), "no SidecarsCurrent condition")
	g.Expect(c.ObservedGeneration).To(Equal(m.Generation), "SidecarsCurrent describes an older spec")
	return c
}

func injectionOf(g Gomega, m *meshv1.MeshControlPlane) meshv1.InjectionStatus {
	g.Expect(m.Status.Injection).NotTo(BeNil(), "no status.injection")
	return *m.Status.Injection
}

// attentionOf lists status.injection.attention as "Kind namespace/name: Reason".
func attentionOf(g Gomega, m *meshv1.MeshControlPlane) []string {
	var out []string
	for _, a := range injectionOf(g, m).Attention {
		out = append(out, a.Kind+" "+a.Namespace+"/"+a.Name+": "+a.Reason)
	}
	return out
}

// injectedVersion asks the real istiod, through the apiserver's admission chain, what it
// injects into a new pod of a selected namespace now: a dry-run create calls the webhook
// and persists nothing.
func injectedVersion(ctx context.Context, g Gomega) string {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: dpAlpha, Name: "injection-probe"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "probe", Image: "example.com/probe:1"}}},
	}
	g.Expect(k8s.Create(ctx, p, client.DryRunAll)).To(Succeed())
	g.Expect(proxyOf(p)).NotTo(BeNil(), "the dry-run pod got no sidecar")
	return p.Annotations[dataplane.ProxyVersionAnnotation]
}

// meshEvents are the notes of the events with this reason on the MeshControlPlane.
func meshEvents(ctx context.Context, g Gomega, reason string) []string {
	evs := &eventsv1.EventList{}
	g.Expect(k8s.List(ctx, evs)).To(Succeed())
	var notes []string
	for _, e := range evs.Items {
		if e.Regarding.Kind == "MeshControlPlane" && e.Reason == reason {
			notes = append(notes, e.Note)
		}
	}
	return notes
}

var _ = Describe("the data plane of a MeshControlPlane with the real istiod", Ordered, func() {
	var (
		op        *harness.Operator
		istiod    *harness.Istiod
		opStarts  int
		workloads = []dpWorkload{dpAPI, dpStuck, dpWeb, dpDB}
	)
	startOperator := func(ctx context.Context) {
		GinkgoHelper()
		op = startOwnOperator(ctx, "capstan-dataplane", &opStarts)
	}

	BeforeAll(func(ctx SpecContext) {
		Expect(operator.Stop()).To(Succeed())
		startOperator(ctx)

		// Status counts are cluster-wide: they are this Describe's own only if no other
		// left a control plane, a meshed namespace or an injected pod behind.
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, &meshv1.MeshControlPlane{}))).
			To(BeTrue(), "another spec left a MeshControlPlane behind")
		Eventually(ctx, func(g Gomega) {
			nss := &corev1.NamespaceList{}
			g.Expect(k8s.List(ctx, nss)).To(Succeed())
			for _, ns := range nss.Items {
				g.Expect(ns.Labels).NotTo(Or(HaveKey("istio-injection"), HaveKey("istio.io/rev")), "namespace %s is meshed", ns.Name)
			}
			pods := &corev1.PodList{}
			g.Expect(k8s.List(ctx, pods)).To(Succeed())
			for _, p := range pods.Items {
				g.Expect(p.Annotations).NotTo(HaveKey("sidecar.istio.io/status"), "pod %s/%s has a sidecar", p.Namespace, p.Name)
			}
		}).Should(Succeed(), "no other spec's meshed namespace or injected pod is left")

		// The stuck workload's own simulated node (kwok plays every Node it sees).
		Expect(k8s.Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        dpStuckNode,
				Labels:      map[string]string{corev1.LabelHostname: dpStuckNode, "type": "kwok"},
				Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
			},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: dpStuckTaint, Value: "true", Effect: corev1.TaintEffectNoSchedule}}},
		})).To(Succeed())
		for _, name := range []string{dpAlpha, dpBeta} {
			Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{dpSelectLabel: "true"}}})).To(Succeed())
		}
		Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: dpOutside}})).To(Succeed())

		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
		m.Spec.Version = "1.31.0"
		m.Spec.Upgrade = inPlace
		m.Spec.Injection = &meshv1.InjectionSpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{dpSelectLabel: "true"}},
			// Never until the specs turn restarts on: the staleness of an upgrade is
			// asserted before any restart can make it go away.
			Rollout: &meshv1.RolloutSpec{
				RestartStaleWorkloads: meshv1.RestartNever,
				MaxConcurrent:         1,
				RestartTimeout:        &metav1.Duration{Duration: dpRestartTimeout},
			},
		}
		Expect(k8s.Create(ctx, m)).To(Succeed())
		// istiod must find cacerts when it starts, as the chart's pod would.
		Eventually(ctx, func(g Gomega) {
			d := istiodDeployment(ctx, g)
			g.Expect(d.Status.AvailableReplicas).To(Equal(int32(1)))
			g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: controllers.CACertsSecret}, &corev1.Secret{})).To(Succeed())
		}).Should(Succeed())
		var err error
		istiod, err = harness.StartIstiod(ctx, cluster, harness.IstiodOptions{})
		Expect(err).NotTo(HaveOccurred())
	}, NodeTimeout(3*time.Minute))

	AfterEach(func() {
		if CurrentSpecReport().Failed() {
			if istiod != nil {
				AddReportEntry("istiod log", istiod.LogTail(4000))
			}
			reportMeshStatus()
		}
	})

	AfterAll(func(ctx SpecContext) {
		if istiod != nil {
			Expect(istiod.Stop()).To(Succeed())
		}
		for _, name := range []string{dpAlpha, dpBeta, dpOutside} {
			Expect(client.IgnoreNotFound(k8s.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}))).To(Succeed())
		}
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
		Expect(client.IgnoreNotFound(k8s.Delete(ctx, m))).To(Succeed())
		Eventually(ctx, func(g Gomega) {
			g.Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(m), m))).To(BeTrue(), "MeshControlPlane: finalizers %v", m.Finalizers)
			for _, name := range []string{dpAlpha, dpBeta, dpOutside} {
				g.Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Name: name}, &corev1.Namespace{}))).To(BeTrue(), "namespace %s", name)
			}
			g.Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: "istiod"}, &appsv1.Deployment{}))).To(BeTrue(), "Deployment istiod")
		}).Should(Succeed(), "the control plane and the data plane are gone, for the specs that install their own")
		Expect(client.IgnoreNotFound(k8s.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: dpStuckNode}}))).To(Succeed())
		restoreSuiteOperator(ctx, op)
	}, NodeTimeout(3*time.Minute))

	It("gives the workloads of the namespaces spec.injection.namespaceSelector selects real sidecars, and counts them", func(ctx SpecContext) {
		Eventually(ctx, func(g Gomega) {
			for _, name := range []string{dpAlpha, dpBeta} {
				ns := &corev1.Namespace{}
				g.Expect(k8s.Get(ctx, client.ObjectKey{Name: name}, ns)).To(Succeed())
				g.Expect(ns.Labels).To(HaveKeyWithValue("istio-injection", "enabled"), "namespace %s is labelled for injection", name)
			}
		}).Should(Succeed())
		ns := &corev1.Namespace{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: dpOutside}, ns)).To(Succeed())
		Expect(ns.Labels).NotTo(HaveKey("istio-injection"), "a namespace the selector does not select is left alone")

		// The stuck workload runs on its node before the node is cordoned (in the
		// restart spec): only its next pods cannot start.
		Eventually(ctx, func(g Gomega) {
			n := &corev1.Node{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Name: dpStuckNode}, n)).To(Succeed())
			g.Expect(n.Status.Conditions).To(ContainElement(And(HaveField("Type", corev1.NodeReady), HaveField("Status", corev1.ConditionTrue))))
		}).Should(Succeed(), "kwok makes node %s Ready", dpStuckNode)
		for _, w := range append(workloads, dpPlain) {
			Expect(k8s.Create(ctx, w.object())).To(Succeed(), w.key())
		}

		m := dpMesh(ctx, Default)
		stamp, _ := stampOf(m)
		Expect(stamp.Version).To(Equal("1.31.0"))
		Eventually(ctx, func(g Gomega) {
			for _, w := range workloads {
				expectSidecars(ctx, g, w, stamp)
			}
			plain := dpPods(ctx, g, dpPlain)
			g.Expect(plain).To(HaveLen(1))
			g.Expect(proxyOf(&plain[0])).To(BeNil(), "a pod of a namespace the selector does not select has a sidecar")
			g.Expect(plain[0].Status.Phase).To(Equal(corev1.PodRunning))
		}).Should(Succeed(), "the real istiod injects the selected namespaces' pods, and kwok runs them")
		Expect(dpPods(ctx, Default, dpStuck)[0].Spec.NodeName).To(Equal(dpStuckNode))

		Eventually(ctx, func(g Gomega) {
			m := dpMesh(ctx, g)
			inj := injectionOf(g, m)
			g.Expect(inj.MeshedNamespaces).To(Equal(int32(2)), "meshedNamespaces")
			g.Expect(inj.InjectedPods).To(Equal(int32(5)), "injectedPods")
			g.Expect(inj.UninjectedPods).To(BeZero(), "uninjectedPods")
			g.Expect(inj.StalePods).To(BeZero(), "stalePods")
			g.Expect(inj.RestartsInProgress).To(BeZero(), "restartsInProgress")
			g.Expect(inj.Attention).To(BeEmpty())
			c := sidecarsCurrentOf(g, m)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "SidecarsCurrent: %s: %s", c.Reason, c.Message)
			g.Expect(m.Status.Revisions).To(ConsistOf(And(
				HaveField("Name", "default"),
				HaveField("Version", "1.31.0"),
				HaveField("Ready", HaveValue(BeTrue())),
				HaveField("InUse", meshv1.RevisionInUse),
				HaveField("Pods", HaveValue(Equal(int32(5)))),
				HaveField("Namespaces", HaveValue(Equal(int32(2)))),
			)), "status.revisions")
		}).Should(Succeed(), "status.injection, SidecarsCurrent and status.revisions count the sidecars")
	}, SpecTimeout(2*time.Minute))

	It("marks every injected pod stale when spec.version changes in place, and restarts nothing under Never", func(ctx SpecContext) {
		patchMesh(ctx, func(m *meshv1.MeshControlPlane) { m.Spec.Version = "1.31.1" })
		Eventually(ctx, func(g Gomega) {
			m := dpMesh(ctx, g)
			inj := injectionOf(g, m)
			c := sidecarsCurrentOf(g, m)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse), "SidecarsCurrent: %s: %s", c.Reason, c.Message)
			g.Expect(c.Reason).To(Equal(string(dataplane.VersionChanged)))
			g.Expect(inj.InjectedPods).To(Equal(int32(5)), "injectedPods")
			g.Expect(inj.StalePods).To(Equal(inj.InjectedPods), "stalePods: every injected pod runs the 1.31.0 proxy")
			g.Expect(attentionOf(g, m)).To(ConsistOf(
				dpAPI.key()+": NotRestarted", dpStuck.key()+": NotRestarted",
				dpWeb.key()+": NotRestarted", dpDB.key()+": NotRestarted",
			), "every stale workload is reported, and none restarted")
			g.Expect(m.Status.Revisions).To(ContainElement(And(HaveField("Name", "default"), HaveField("Version", "1.31.1"))), "status.revisions")
		}).Should(Succeed())
		// The status above is the signal that the data plane saw the new spec; under Never
		// nothing may have touched a workload since.
		for _, w := range workloads {
			obj := w.object()
			Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
			Expect(obj.GetAnnotations()).NotTo(HaveKey(dataplane.RestartedAtAnnotation), "%s was restarted under restartStaleWorkloads: Never", w.key())
		}
		// The real istiod injects 1.31.1 into new pods from now on (it reads the injector's
		// ConfigMap as a mounted file, which the harness keeps in sync).
		Eventually(ctx, func(g Gomega) string { return injectedVersion(ctx, g) }).Should(Equal("1.31.1"))
	}, SpecTimeout(2*time.Minute))

	It("restarts the stale workloads one at a time under OnUpgrade until istiod re-injected them all, and reports the one whose restart never completes", func(ctx SpecContext) {
		// Why not a readiness gate nobody sets: kwok's pod-ready stage (kwok v0.8.0,
		// kustomize/stage/pod/fast/pod-ready.yaml) marks every readiness gate True along
		// with Ready, and a Stage of our own would replace all of kwok's default stages for
		// every test. A restart that can never finish is made instead the way it happens to
		// a pinned workload on a full or cordoned node pool: the stuck workload's only node
		// is cordoned, so its restarted pod is created and injected but never scheduled,
		// never Ready, and its Deployment (maxUnavailable 0 at one replica) keeps the old pod.
		patchNode(ctx, dpStuckNode, func(n *corev1.Node) { n.Spec.Unschedulable = true })
		m := dpMesh(ctx, Default)
		stamp, target := stampOf(m)
		Expect(stamp.Version).To(Equal("1.31.1"))

		rec := startRestartRecorder(ctx)
		defer rec.stop()
		Eventually(ctx, rec.seen).Should(ContainElements(dpAPI.key(), dpStuck.key(), dpWeb.key(), dpDB.key()), "the recorder saw every workload before any restart")
		patchMesh(ctx, func(m *meshv1.MeshControlPlane) {
			m.Spec.Injection.Rollout.RestartStaleWorkloads = meshv1.RestartOnUpgrade
		})

		Eventually(ctx, func(g Gomega) {
			for _, w := range []dpWorkload{dpAPI, dpWeb, dpDB} {
				expectSidecars(ctx, g, w, stamp)
			}
		}).WithTimeout(2*time.Minute).Should(Succeed(), "every restartable workload runs the 1.31.1 sidecar")
		Eventually(ctx, func(g Gomega) {
			m := dpMesh(ctx, g)
			inj := injectionOf(g, m)
			g.Expect(attentionOf(g, m)).To(ConsistOf(dpStuck.key()+": RestartTimedOut"), "only the stuck workload needs attention")
			g.Expect(inj.StalePods).To(Equal(int32(1)), "stalePods: the stuck workload's old pod")
			g.Expect(inj.RestartsInProgress).To(BeZero(), "restartsInProgress: the timed-out restart no longer counts")
			c := sidecarsCurrentOf(g, m)
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(string(dataplane.VersionChanged)))
			g.Expect(c.Message).To(ContainSubstring(dpStuck.key()), "SidecarsCurrent names the stuck workload")
		}).Should(Succeed())

		// The stuck workload: restarted once, its new pod injected with 1.31.1 but stranded;
		// its old pod still serves.
		pods := dpPods(ctx, Default, dpStuck)
		Expect(pods).To(ConsistOf(
			And(HaveField("Status.Phase", corev1.PodRunning), HaveField("ObjectMeta.Annotations", HaveKeyWithValue(dataplane.ProxyVersionAnnotation, "1.31.0"))),
			And(HaveField("Status.Phase", corev1.PodPending), HaveField("Spec.NodeName", BeEmpty()), HaveField("ObjectMeta.Annotations", HaveKeyWithValue(dataplane.ProxyVersionAnnotation, "1.31.1"))),
		), "the stuck workload keeps its old pod and its restarted pod is never scheduled")

		for _, w := range workloads {
			Expect(rec.restartsOf(w)).To(ConsistOf(HaveField("For", target)), "%s is restarted exactly once, for %s", w.key(), target)
		}
		max, why := rec.maxOverlap(dpRestartTimeout)
		Expect(max).To(Equal(1), "never more than maxConcurrent (1) restarts in progress: %s", why)
		Expect(rec.maxInProgress()).To(Equal(int32(1)), "status.injection.restartsInProgress reached 1 and never more")
		// Capstan restarts in the order namespace, kind, name, so the stuck one comes before
		// web and db: with one restart at a time, theirs begin only once it timed out, which
		// shows the plan going on without it.
		stuck := rec.restartsOf(dpStuck)
		Expect(stuck).To(HaveLen(1))
		stuckAt, err := time.Parse(time.RFC3339, stuck[0].At)
		Expect(err).NotTo(HaveOccurred())
		Expect(rec.beganAfter(stuckAt.Add(dpRestartTimeout))).To(ConsistOf(dpWeb.key(), dpDB.key()), "restarts that began after the stuck one timed out")
		// Each batch (here one workload) is told in an Event, and so is the timeout.
		Eventually(ctx, func(g Gomega) {
			notes := meshEvents(ctx, g, meshv1.ReasonRestartingWorkloads)
			for _, w := range workloads {
				g.Expect(notes).To(ContainElement(ContainSubstring(w.key())), "a RestartingWorkloads event names %s", w.key())
			}
			g.Expect(meshEvents(ctx, g, string(dataplane.StatusTimedOut))).To(ContainElement(ContainSubstring(dpStuck.key())))
		}).Should(Succeed())
	}, SpecTimeout(4*time.Minute))

	It("resumes the restarts after the operator is killed mid-restart, restarting no workload twice", func(ctx SpecContext) {
		// The stuck workload has had its test; it would only time out again.
		Expect(k8s.Delete(ctx, dpStuck.object())).To(Succeed())
		workloads := []dpWorkload{dpAPI, dpWeb, dpDB}
		Eventually(ctx, func(g Gomega) []corev1.Pod { return dpPods(ctx, g, dpStuck) }).Should(BeEmpty())

		patchMesh(ctx, func(m *meshv1.MeshControlPlane) {
			m.Spec.Version = "1.31.2"
			m.Spec.Injection.Rollout.RestartStaleWorkloads = meshv1.RestartNever
		})
		Eventually(ctx, func(g Gomega) {
			m := dpMesh(ctx, g)
			c := sidecarsCurrentOf(g, m)
			g.Expect(c.Reason).To(Equal(string(dataplane.VersionChanged)))
			g.Expect(injectionOf(g, m).StalePods).To(Equal(int32(4)), "stalePods")
		}).Should(Succeed())
		Eventually(ctx, func(g Gomega) string { return injectedVersion(ctx, g) }).Should(Equal("1.31.2"))
		stamp, target := stampOf(dpMesh(ctx, Default))

		rec := startRestartRecorder(ctx)
		defer rec.stop()
		Eventually(ctx, rec.seen).Should(ContainElements(dpAPI.key(), dpWeb.key(), dpDB.key()), "the recorder saw every workload before any restart")
		since := time.Now().Truncate(time.Second)
		patchMesh(ctx, func(m *meshv1.MeshControlPlane) {
			m.Spec.Injection.Rollout.RestartStaleWorkloads = meshv1.RestartOnUpgrade
		})

		// Kill the operator as soon as its first restart for the new target is written.
		api := &appsv1.Deployment{}
		Eventually(ctx, func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(dpAPI.object()), api)).To(Succeed())
			g.Expect(api.Annotations).To(HaveKeyWithValue(dataplane.RestartedForAnnotation, target))
		}).WithPolling(50 * time.Millisecond).Should(Succeed())
		Expect(op.Kill()).To(Succeed(), "the operator crashes mid-restart")
		Expect(deploymentComplete(api)).To(BeFalse(), "the kill lands while the first restart rolls out (minReadySeconds %d)", dpAPI.minReadySeconds)
		startOperator(ctx)

		Eventually(ctx, func(g Gomega) {
			for _, w := range workloads {
				expectSidecars(ctx, g, w, stamp)
			}
			m := dpMesh(ctx, g)
			inj := injectionOf(g, m)
			c := sidecarsCurrentOf(g, m)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "SidecarsCurrent: %s: %s", c.Reason, c.Message)
			g.Expect(inj.StalePods).To(BeZero())
			g.Expect(inj.RestartsInProgress).To(BeZero())
			g.Expect(inj.Attention).To(BeEmpty())
		}).WithTimeout(2*time.Minute).Should(Succeed(), "the restarted operator finishes the plan")

		for _, w := range workloads {
			Expect(rec.restartsOf(w)).To(ConsistOf(HaveField("For", target)), "%s is restarted exactly once, for %s, across the crash", w.key(), target)
			// What the workload's controller kept agrees: one pod template per restart.
			Expect(templateRestartsSince(ctx, w, since)).To(HaveLen(1), "%s: pod templates restarted since the upgrade", w.key())
		}
		max, why := rec.maxOverlap(dpRestartTimeout)
		Expect(max).To(Equal(1), "never more than maxConcurrent (1) restarts in progress: %s", why)
	}, SpecTimeout(4*time.Minute))

	It("counts a pod injected but not yet running, which keeps its revision in use, and no more once it is gone", func(ctx SpecContext) {
		// status.injection.injectedPods and status.revisions[].pods count every pod until it
		// terminates: a pending pod carries the sidecar it will run. A pod of a workload
		// pinned to the cordoned node is injected and stays Pending.
		pending := dpWorkload{kind: "Deployment", ns: dpAlpha, name: "pending", replicas: 1, stuck: true}
		Expect(k8s.Create(ctx, pending.object())).To(Succeed())
		Eventually(ctx, func(g Gomega) {
			pods := dpPods(ctx, g, pending)
			g.Expect(pods).To(HaveLen(1))
			g.Expect(proxyOf(&pods[0])).NotTo(BeNil(), "the pending pod is injected")
			g.Expect(pods[0].Status.Conditions).To(ContainElement(And(HaveField("Type", corev1.PodScheduled), HaveField("Status", corev1.ConditionFalse))))
		}).Should(Succeed(), "the pod is injected and left unscheduled")
		// A running sidecar created after it: once the counts show it, they have seen the
		// pending pod too (one pod informer, in order).
		web := &appsv1.Deployment{}
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(dpWeb.object()), web)).To(Succeed())
		patch := client.MergeFrom(web.DeepCopy())
		web.Spec.Replicas = ptr.To[int32](3)
		Expect(k8s.Patch(ctx, web, patch)).To(Succeed())
		Eventually(ctx, func(g Gomega) []corev1.Pod { return dpPods(ctx, g, dpWeb) }).Should(And(HaveLen(3), HaveEach(HaveField("Status.Phase", corev1.PodRunning))))

		counts := func(g Gomega) []int32 {
			m := dpMesh(ctx, g)
			g.Expect(m.Status.Revisions).To(HaveLen(1))
			return []int32{injectionOf(g, m).InjectedPods, ptr.Deref(m.Status.Revisions[0].Pods, -1)}
		}
		withPending := int32(6) // api 1, web 3, db 1 running; pending 1
		Eventually(ctx, counts).WithTimeout(30*time.Second).Should(Equal([]int32{withPending, withPending}), "[injectedPods, revisions[default].pods]")
		// Gone, it counts no more.
		Expect(k8s.Delete(ctx, pending.object())).To(Succeed())
		Eventually(ctx, counts).WithTimeout(30*time.Second).Should(Equal([]int32{withPending - 1, withPending - 1}), "[injectedPods, revisions[default].pods] once the pending pod is gone")
	}, SpecTimeout(2*time.Minute))
})

// patchNode changes the node with a merge patch.
func patchNode(ctx context.Context, name string, change func(*corev1.Node)) {
	GinkgoHelper()
	n := &corev1.Node{}
	Expect(k8s.Get(ctx, client.ObjectKey{Name: name}, n)).To(Succeed())
	patch := client.MergeFrom(n.DeepCopy())
	change(n)
	Expect(k8s.Patch(ctx, n, patch)).To(Succeed())
}

// deploymentComplete is what `kubectl rollout status` waits for: the current template
// observed, every replica updated and available, no old replica left.
func deploymentComplete(d *appsv1.Deployment) bool {
	want := ptr.Deref(d.Spec.Replicas, 1)
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.AvailableReplicas == want && s.Replicas == want
}

func statefulSetComplete(s *appsv1.StatefulSet) bool {
	want := ptr.Deref(s.Spec.Replicas, 1)
	st := s.Status
	return st.ObservedGeneration >= s.Generation && st.UpdateRevision == st.CurrentRevision &&
		st.UpdatedReplicas == want && st.ReadyReplicas == want && st.AvailableReplicas == want && st.Replicas == want
}

// templateRestartsSince are the distinct capstan.dev/restarted-at values, at or after
// since, of the pod templates the workload's controller keeps in its history (a
// Deployment's ReplicaSets, a StatefulSet's ControllerRevisions): each restart leaves one.
func templateRestartsSince(ctx context.Context, w dpWorkload, since time.Time) []string {
	GinkgoHelper()
	var templates []corev1.PodTemplateSpec
	owner := &metav1.ObjectMeta{UID: uidOf(ctx, w)}
	if w.kind == "StatefulSet" {
		crs := &appsv1.ControllerRevisionList{}
		Expect(k8s.List(ctx, crs, client.InNamespace(w.ns))).To(Succeed())
		for _, cr := range crs.Items {
			if !metav1.IsControlledBy(&cr, owner) {
				continue
			}
			var data struct {
				Spec struct {
					Template corev1.PodTemplateSpec `json:"template"`
				} `json:"spec"`
			}
			Expect(json.Unmarshal(cr.Data.Raw, &data)).To(Succeed())
			templates = append(templates, data.Spec.Template)
		}
	} else {
		rss := &appsv1.ReplicaSetList{}
		Expect(k8s.List(ctx, rss, client.InNamespace(w.ns))).To(Succeed())
		for _, rs := range rss.Items {
			if metav1.IsControlledBy(&rs, owner) {
				templates = append(templates, rs.Spec.Template)
			}
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, t := range templates {
		v := t.Annotations[dataplane.RestartedAtAnnotation]
		at, err := time.Parse(time.RFC3339, v)
		if err != nil || at.Before(since) || seen[v] {
			continue
		}
		seen[v] = true
		out = append(out, v)
	}
	return out
}

func uidOf(ctx context.Context, w dpWorkload) types.UID {
	GinkgoHelper()
	obj := w.object()
	Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
	return obj.GetUID()
}

// restartRecorder follows, through watches, the data-plane workloads and the
// MeshControlPlane while Capstan restarts: every restart it sees begin (a new value of a
// pod template's capstan.dev/restarted-at), when the test saw each such rollout complete,
// and the most restarts status.injection.restartsInProgress ever reported. It is the
// test's own record, independent of what Capstan says it did.
type restartRecorder struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	workloads map[string]*recordedWorkload
	inProg    int32
}

type recordedWorkload struct {
	// baseline is the template's restarted-at when first seen: not a restart of this spec.
	baseline string
	restarts []recordedRestart
}

// recordedRestart is one restart as the recorder saw it.
type recordedRestart struct {
	// At is the template's restarted-at, For the workload's restarted-for.
	At, For string
	// Began is when the recorder saw it; Completed when it saw its rollout complete (zero
	// if never).
	Began, Completed time.Time
}

func startRestartRecorder(ctx context.Context) *restartRecorder {
	GinkgoHelper()
	wc, err := client.NewWithWatch(cluster.RESTConfig, client.Options{Scheme: k8s.Scheme()})
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(ctx)
	r := &restartRecorder{cancel: cancel, workloads: map[string]*recordedWorkload{}}
	marked := client.MatchingLabels{dpWorkloadLabel: "true"}
	r.follow(ctx, wc, &appsv1.DeploymentList{}, func(o runtime.Object) {
		if d, ok := o.(*appsv1.Deployment); ok {
			r.saw("Deployment "+d.Namespace+"/"+d.Name, d.Spec.Template.Annotations, d.Annotations, deploymentComplete(d))
		}
	}, marked)
	r.follow(ctx, wc, &appsv1.StatefulSetList{}, func(o runtime.Object) {
		if s, ok := o.(*appsv1.StatefulSet); ok {
			r.saw("StatefulSet "+s.Namespace+"/"+s.Name, s.Spec.Template.Annotations, s.Annotations, statefulSetComplete(s))
		}
	}, marked)
	r.follow(ctx, wc, &meshv1.MeshControlPlaneList{}, func(o runtime.Object) {
		if m, ok := o.(*meshv1.MeshControlPlane); ok && m.Status.Injection != nil {
			r.mu.Lock()
			r.inProg = max(r.inProg, m.Status.Injection.RestartsInProgress)
			r.mu.Unlock()
		}
	})
	return r
}

// follow watches list until ctx ends, watching again whenever the apiserver closes the
// watch (a new watch starts with the current state of every object).
func (r *restartRecorder) follow(ctx context.Context, wc client.WithWatch, list client.ObjectList, on func(runtime.Object), opts ...client.ListOption) {
	r.wg.Add(1)
	go func() {
		defer GinkgoRecover()
		defer r.wg.Done()
		for ctx.Err() == nil {
			w, err := wc.Watch(ctx, list, opts...)
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
				continue
			}
			for ev := range w.ResultChan() {
				if ev.Type == watch.Added || ev.Type == watch.Modified {
					on(ev.Object)
				}
			}
			w.Stop()
		}
	}()
}

func (r *restartRecorder) saw(key string, template, own map[string]string, complete bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	at := template[dataplane.RestartedAtAnnotation]
	w, known := r.workloads[key]
	if !known {
		r.workloads[key] = &recordedWorkload{baseline: at}
		return
	}
	last := w.baseline
	if n := len(w.restarts); n > 0 {
		last = w.restarts[n-1].At
	}
	if at != last {
		w.restarts = append(w.restarts, recordedRestart{At: at, For: own[dataplane.RestartedForAnnotation], Began: now})
		return
	}
	if n := len(w.restarts); n > 0 && complete && w.restarts[n-1].Completed.IsZero() {
		w.restarts[n-1].Completed = now
	}
}

func (r *restartRecorder) stop() {
	r.cancel()
	r.wg.Wait()
}

// seen are the workloads the recorder has seen, sorted.
func (r *restartRecorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for k := range r.workloads {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (r *restartRecorder) restartsOf(w dpWorkload) []recordedRestart {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rw := r.workloads[w.key()]; rw != nil {
		return append([]recordedRestart(nil), rw.restarts...)
	}
	return nil
}

// beganAfter are the workloads with a restart the recorder saw begin at or after t.
func (r *restartRecorder) beganAfter(t time.Time) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for k, w := range r.workloads {
		for _, rs := range w.restarts {
			if !rs.Began.Before(t) {
				out = append(out, k)
				break
			}
		}
	}
	return out
}

// maxInProgress is the highest status.injection.restartsInProgress seen.
func (r *restartRecorder) maxInProgress() int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inProg
}

// maxOverlap is the most restarts the recorder saw in progress at once (counted at each
// restart's beginning), and which they were. A restart is in progress from when it was
// seen to begin until its rollout was seen complete, or until it timed out (its
// restarted-at plus timeout).
func (r *restartRecorder) maxOverlap(timeout time.Duration) (int, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	type span struct {
		key        string
		begin, end time.Time
	}
	var spans []span
	for k, w := range r.workloads {
		for _, rs := range w.restarts {
			end := time.Now().Add(time.Hour)
			if !rs.Completed.IsZero() {
				end = rs.Completed
			}
			if at, err := time.Parse(time.RFC3339, rs.At); err == nil && at.Add(timeout).Before(end) {
				end = at.Add(timeout)
			}
			spans = append(spans, span{k, rs.Began, end})
		}
	}
	most, why := 0, ""
	for _, s := range spans {
		var during []string
		for _, o := range spans {
			if !o.begin.After(s.begin) && o.end.After(s.begin.Add(dpSlack)) || o == s {
				during = append(during, fmt.Sprintf("%s (%s..%s)", o.key, o.begin.Format("15:04:05.000"), o.end.Format("15:04:05.000")))
			}
		}
		if len(during) > most {
			most, why = len(during), "when "+s.key+" began: "+strings.Join(during, ", ")
		}
	}
	return most, why
}

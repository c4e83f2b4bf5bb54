//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/revision"
	"github.com/capstan-mesh/capstan/internal/upgrade"
	"github.com/capstan-mesh/capstan/test/harness"
)

// The canary upgrade's specs: namespaces canary-0 ... canary-9 selected for injection, three
// Deployments of one replica in each.
const (
	// cuSelectLabel is the namespace label spec.injection.namespaceSelector selects.
	cuSelectLabel = "e2e.capstan.dev/canary"
	// cuPoolNode is a simulated node only the pinned workload may use (cuPoolTaint), so that
	// cordoning it strands that workload's next pods and nobody else's.
	cuPoolNode  = "canary-pool"
	cuPoolTaint = "e2e.capstan.dev/canary-pool"
	// cuBatchSize is spec.upgrade.canary.batchSize: ten namespaces make four batches.
	cuBatchSize = 3
	// cuMinReady keeps every rollout in progress a while after its new pod is Ready, so that
	// an operator killed just after a batch's first restart is killed mid-batch.
	cuMinReady = 2
)

// The namespaces, in the order the upgrade moves them (by name).
var cuNamespaces = func() []string {
	var out []string
	for i := range 10 {
		out = append(out, fmt.Sprintf("canary-%d", i))
	}
	return out
}()

// cuPinned is the workload pinned to cuPoolNode: in the first batch, so that the failing
// upgrade fails there and no later batch moves.
var cuPinned = dpWorkload{kind: "Deployment", ns: "canary-0", name: "c", replicas: 1, minReadySeconds: cuMinReady}

// cuWorkloads are every workload of the specs: a, b, c in each namespace.
var cuWorkloads = func() []dpWorkload {
	var out []dpWorkload
	for _, ns := range cuNamespaces {
		for _, name := range []string{"a", "b", "c"} {
			out = append(out, dpWorkload{kind: "Deployment", ns: ns, name: name, replicas: 1, minReadySeconds: cuMinReady})
		}
	}
	return out
}()

// cuWorkloadsIn are the workloads of the namespaces.
func cuWorkloadsIn(namespaces []string) []dpWorkload {
	var out []dpWorkload
	for _, w := range cuWorkloads {
		if slices.Contains(namespaces, w.ns) {
			out = append(out, w)
		}
	}
	return out
}

// cuObject is the workload as the specs create it. It carries dpWorkloadLabel, so that the
// data plane's restartRecorder follows it; the pinned one runs on cuPoolNode only.
func cuObject(w dpWorkload) *appsv1.Deployment {
	d := w.object().(*appsv1.Deployment)
	if w == cuPinned {
		d.Spec.Template.Spec.NodeSelector = map[string]string{corev1.LabelHostname: cuPoolNode}
		d.Spec.Template.Spec.Tolerations = []corev1.Toleration{{Key: cuPoolTaint, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
	}
	return d
}

// The injection webhooks Istio's chart installs in istio-system: the revision's own
// injector, and the default tag's (another control-plane namespace adds "-<namespace>").
const cuDefaultTagWebhook = "istio-revision-tag-default"

func cuInjectorWebhook(rev string) string { return "istio-sidecar-injector-" + rev }

// injectedBy says which revision's injector injected the pod, from the status annotation
// istiod writes ("" when none did).
func injectedBy(p *corev1.Pod) string {
	var st struct {
		Revision string `json:"revision"`
	}
	if err := json.Unmarshal([]byte(p.Annotations["sidecar.istio.io/status"]), &st); err != nil {
		return ""
	}
	return st.Revision
}

// expectInjectedBy checks that every pod of w runs, Ready, with the sidecar that the real
// istiod of revision rev injected: its proxy image's tag and Capstan's stamps are rev's.
func expectInjectedBy(ctx context.Context, g Gomega, w dpWorkload, rev string, stamp dataplane.Stamp) {
	expectSidecars(ctx, g, w, stamp)
	for _, p := range dpPods(ctx, g, w) {
		g.Expect(injectedBy(&p)).To(Equal(rev), "%s: pod %s was injected by another revision", w.key(), p.Name)
	}
}

// stampOfRevision is what the injector of revision rev stamps on the pods it injects.
func stampOfRevision(m *meshv1.MeshControlPlane, rev string) dataplane.Stamp {
	GinkgoHelper()
	p, err := plan.For(&m.Spec, plan.InstalledFrom(&m.Status))
	Expect(err).NotTo(HaveOccurred())
	Expect(p.Stamps).To(HaveKey(rev))
	return p.Stamps[rev]
}

func revisionOf(g Gomega, m *meshv1.MeshControlPlane, name string) meshv1.RevisionStatus {
	for _, r := range m.Status.Revisions {
		if r.Name == name {
			return r
		}
	}
	g.Expect(m.Status.Revisions).To(ContainElement(HaveField("Name", name)), "status.revisions")
	return meshv1.RevisionStatus{}
}

func upgradeOf(g Gomega, m *meshv1.MeshControlPlane) meshv1.UpgradeStatus {
	g.Expect(m.Status.Upgrade).NotTo(BeNil(), "status.upgrade")
	return *m.Status.Upgrade
}

// namespaceRevision is the istio.io/rev label of the namespace.
func namespaceRevision(ctx context.Context, g Gomega, name string) string {
	ns := &corev1.Namespace{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: name}, ns)).To(Succeed())
	return ns.Labels[revision.RevLabel]
}

// batchRecorder follows the MeshControlPlane through a watch and keeps every batch start
// that the upgrade to one revision showed in status.upgrade, in order: a batch started
// again (after a crash, say) shows as a second start of the same batch.
type batchRecorder struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	to     string
	starts []batchStart
}

// batchStart is one batch as status.upgrade showed it moving.
type batchStart struct {
	// Batch is status.upgrade.batch, StartedAt its batchStartedAt, Namespaces its
	// currentBatch.
	Batch      int32
	StartedAt  time.Time
	Namespaces []string
}

func startBatchRecorder(ctx context.Context, to string) *batchRecorder {
	GinkgoHelper()
	wc, err := client.NewWithWatch(cluster.RESTConfig, client.Options{Scheme: k8s.Scheme()})
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(ctx)
	r := &batchRecorder{cancel: cancel, to: to}
	r.wg.Add(1)
	go func() {
		defer GinkgoRecover()
		defer r.wg.Done()
		for ctx.Err() == nil {
			w, err := wc.Watch(ctx, &meshv1.MeshControlPlaneList{})
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
				continue
			}
			for ev := range w.ResultChan() {
				m, ok := ev.Object.(*meshv1.MeshControlPlane)
				if !ok || ev.Type == watch.Deleted || m.Status.Upgrade == nil {
					continue
				}
				r.saw(m.Status.Upgrade)
			}
			w.Stop()
		}
	}()
	return r
}

func (r *batchRecorder) saw(u *meshv1.UpgradeStatus) {
	if u.To != r.to || u.BatchStartedAt == nil || len(u.CurrentBatch) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := batchStart{Batch: u.Batch, StartedAt: u.BatchStartedAt.UTC(), Namespaces: slices.Clone(u.CurrentBatch)}
	if n := len(r.starts); n > 0 && r.starts[n-1].Batch == s.Batch && r.starts[n-1].StartedAt.Equal(s.StartedAt) {
		return
	}
	r.starts = append(r.starts, s)
}

func (r *batchRecorder) stop() {
	r.cancel()
	r.wg.Wait()
}

func (r *batchRecorder) batches() []batchStart {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.starts)
}

// A canary upgrade end to end, on the local cluster with a real istiod per revision.
//
// What is simulated: the nodes and kubelets (kwok: pods "run" without containers and become
// Ready), and each revision's istiod runs as a local process rather than as its
// Deployment's pod — the same pilot-discovery binary serves every revision, bound to its
// own revision's Service ClusterIP (loopback) and reading that revision's ConfigMaps, the
// way a kubelet would mount them. The proxy image a pod gets therefore comes from the
// revision's injection template, which Capstan rendered from that revision's version: it
// is how the specs tell 1.31.0, 1.31.1 and 1.31.2 sidecars apart. What is real: the
// apiserver's admission chain calling each revision's injection webhook, the Deployment
// controller rolling out every restart, and everything Capstan writes.
var _ = Describe("a canary upgrade with two real istiods", Ordered, func() {
	var (
		op       *harness.Operator
		opStarts int
		// istiods are the running istiods, by revision.
		istiods = map[string]*harness.Istiod{}
		// restarts follows every workload's restarts from the first upgrade on.
		restarts *restartRecorder
	)
	startOperator := func(ctx context.Context) {
		GinkgoHelper()
		op = startOwnOperator(ctx, "capstan-canary", &opStarts)
	}
	// startIstiod starts the real istiod of rev once Capstan has installed it: its
	// Deployment available (so the chart's Service and ConfigMaps are applied) and the
	// mesh CA's cacerts Secret written, which the chart's pod mounts.
	startIstiod := func(ctx context.Context, rev string) {
		GinkgoHelper()
		Eventually(ctx, func(g Gomega) {
			g.Expect(istiodOf(ctx, g, rev).Status.AvailableReplicas).To(Equal(int32(1)))
			g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: controllers.CACertsSecret}, &corev1.Secret{})).To(Succeed())
		}).WithTimeout(time.Minute).Should(Succeed(), "Capstan installs revision %s", rev)
		d, err := harness.StartIstiod(ctx, cluster, harness.IstiodOptions{
			Revision: rev,
			WorkDir:  fmt.Sprintf("%s/canary-istiod-%s", cluster.WorkDir, rev),
		})
		Expect(err).NotTo(HaveOccurred())
		istiods[rev] = d
	}
	stopIstiod := func(rev string) {
		GinkgoHelper()
		if d := istiods[rev]; d != nil {
			Expect(d.Stop()).To(Succeed())
			delete(istiods, rev)
		}
	}
	webhookExists := func(ctx context.Context, name string) bool {
		GinkgoHelper()
		err := k8s.Get(ctx, client.ObjectKey{Name: name}, &admissionregistrationv1.MutatingWebhookConfiguration{})
		Expect(client.IgnoreNotFound(err)).To(Succeed())
		return err == nil
	}
	deploymentExists := func(ctx context.Context, name string) bool {
		GinkgoHelper()
		err := k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: name}, &appsv1.Deployment{})
		Expect(client.IgnoreNotFound(err)).To(Succeed())
		return err == nil
	}

	BeforeAll(func(ctx SpecContext) {
		Expect(operator.Stop()).To(Succeed())
		startOperator(ctx)
		Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, &meshv1.MeshControlPlane{}))).
			To(BeTrue(), "another spec left a MeshControlPlane behind")

		// The pinned workload's own simulated node (kwok plays every Node it sees).
		Expect(k8s.Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        cuPoolNode,
				Labels:      map[string]string{corev1.LabelHostname: cuPoolNode, "type": "kwok"},
				Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
			},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: cuPoolTaint, Value: "true", Effect: corev1.TaintEffectNoSchedule}}},
		})).To(Succeed())
		for _, name := range cuNamespaces {
			Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{cuSelectLabel: "true"}}})).To(Succeed())
		}
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
		m.Spec.Version = "1.31.0"
		m.Spec.Injection = &meshv1.InjectionSpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{cuSelectLabel: "true"}}}
		m.Spec.Upgrade = &meshv1.UpgradeSpec{
			Strategy: meshv1.UpgradeRevisionBased,
			Canary: &meshv1.CanarySpec{
				BatchSize:           cuBatchSize,
				ReadinessTimeout:    &metav1.Duration{Duration: time.Minute},
				PauseBetweenBatches: &metav1.Duration{},
				AutoPromote:         true,
			},
			InactiveRevisionGracePeriod: &metav1.Duration{Duration: time.Hour},
		}
		Expect(k8s.Create(ctx, m)).To(Succeed())
		startIstiod(ctx, "1-31-0")
	}, NodeTimeout(3*time.Minute))

	AfterEach(func() {
		if CurrentSpecReport().Failed() {
			for rev, d := range istiods {
				AddReportEntry("istiod "+rev+" log", d.LogTail(4000))
			}
			reportMeshStatus()
		}
	})

	AfterAll(func(ctx SpecContext) {
		if restarts != nil {
			restarts.stop()
		}
		for rev := range istiods {
			stopIstiod(rev)
		}
		for _, name := range cuNamespaces {
			Expect(client.IgnoreNotFound(k8s.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}))).To(Succeed())
		}
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
		Expect(client.IgnoreNotFound(k8s.Delete(ctx, m))).To(Succeed())
		Eventually(ctx, func(g Gomega) {
			g.Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(m), m))).To(BeTrue(), "MeshControlPlane: finalizers %v", m.Finalizers)
			for _, name := range cuNamespaces {
				g.Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Name: name}, &corev1.Namespace{}))).To(BeTrue(), "namespace %s", name)
			}
			deps := &appsv1.DeploymentList{}
			g.Expect(k8s.List(ctx, deps, client.InNamespace(istioNS))).To(Succeed())
			g.Expect(deps.Items).To(BeEmpty(), "istiod Deployments")
			hooks := &admissionregistrationv1.MutatingWebhookConfigurationList{}
			g.Expect(k8s.List(ctx, hooks)).To(Succeed())
			g.Expect(hooks.Items).To(BeEmpty(), "injection webhooks")
		}).WithTimeout(2*time.Minute).Should(Succeed(), "the control plane and the data plane are gone, for the specs that install their own")
		Expect(client.IgnoreNotFound(k8s.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: cuPoolNode}}))).To(Succeed())
		restoreSuiteOperator(ctx, op)
	}, NodeTimeout(3*time.Minute))

	It("runs the first version as its own revision, whose real istiod injects every selected namespace's pods", func(ctx SpecContext) {
		Eventually(ctx, func(g Gomega) {
			for _, name := range cuNamespaces {
				g.Expect(namespaceRevision(ctx, g, name)).To(Equal("1-31-0"), "namespace %s is labelled for the revision", name)
			}
			n := &corev1.Node{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Name: cuPoolNode}, n)).To(Succeed())
			g.Expect(n.Status.Conditions).To(ContainElement(And(HaveField("Type", corev1.NodeReady), HaveField("Status", corev1.ConditionTrue))), "kwok makes node %s Ready", cuPoolNode)
		}).WithTimeout(time.Minute).Should(Succeed())
		for _, w := range cuWorkloads {
			Expect(k8s.Create(ctx, cuObject(w))).To(Succeed(), w.key())
		}
		m := dpMesh(ctx, Default)
		stamp := stampOfRevision(m, "1-31-0")
		Expect(stamp.Version).To(Equal("1.31.0"))
		Eventually(ctx, func(g Gomega) {
			for _, w := range cuWorkloads {
				expectInjectedBy(ctx, g, w, "1-31-0", stamp)
			}
		}).WithTimeout(2*time.Minute).Should(Succeed(), "the real istiod 1-31-0 injects every pod, and kwok runs them")
		Expect(dpPods(ctx, Default, cuPinned)[0].Spec.NodeName).To(Equal(cuPoolNode))

		Eventually(ctx, func(g Gomega) {
			m := dpMesh(ctx, g)
			g.Expect(m.Status.ActiveRevision).To(Equal("1-31-0"))
			r := revisionOf(g, m, "1-31-0")
			g.Expect(r.Ready).To(HaveValue(BeTrue()))
			g.Expect(r.Tags).To(Equal([]string{plan.TagCanary, plan.TagDefault, plan.TagStable}))
			g.Expect(r.Pods).To(HaveValue(Equal(int32(len(cuWorkloads)))), "status.revisions[1-31-0].pods")
		}).WithTimeout(30 * time.Second).Should(Succeed())
	}, SpecTimeout(3*time.Minute))

	It("moves the namespaces to the new revision in batches, resumes the batch an operator killed mid-batch, restarts each workload once, then moves the tags", func(ctx SpecContext) {
		restarts = startRestartRecorder(ctx)
		keys := func() []string {
			var out []string
			for _, w := range cuWorkloads {
				out = append(out, w.key())
			}
			return out
		}()
		Eventually(ctx, restarts.seen).WithTimeout(10*time.Second).Should(ContainElements(keys), "the recorder saw every workload before any restart")
		batches := startBatchRecorder(ctx, "1-31-1")
		defer batches.stop()
		since := time.Now().Truncate(time.Second)

		patchMesh(ctx, func(m *meshv1.MeshControlPlane) { m.Spec.Version = "1.31.1" })
		Eventually(ctx, func(g Gomega) {
			u := upgradeOf(g, dpMesh(ctx, g))
			g.Expect(u.From).To(Equal("1-31-0"))
			g.Expect(u.To).To(Equal("1-31-1"))
			g.Expect(u.Namespaces).To(Equal(cuNamespaces))
			g.Expect(u.BatchesTotal).To(Equal(int32(4)))
		}).WithTimeout(time.Minute).Should(Succeed(), "the upgrade begins, over the ten namespaces in four batches")
		Expect(condition(ctx, meshv1.ConditionUpgrading)).To(HaveField("Status", metav1.ConditionTrue))
		Expect(deploymentExists(ctx, "istiod-1-31-0")).To(BeTrue(), "the old revision runs beside the new")
		// Until the new istiod serves, pods that the first batch's restarts create wait
		// for its webhook (their ReplicaSets retry), as they would for a starting pod.
		startIstiod(ctx, "1-31-1")
		// During the upgrade the plan's revision is still the old one: the target is the
		// new revision's.
		stamp := stampOfRevision(dpMesh(ctx, Default), "1-31-1")
		Expect(stamp.Version).To(Equal("1.31.1"))
		target := "1-31-1/" + stamp.Version + "/" + stamp.ProxyConfig

		// Kill the operator as soon as the second batch's first restart is written: the
		// upgrade's state was persisted before it, and the batch's rollouts (minReadySeconds)
		// are still in progress.
		second := cuNamespaces[cuBatchSize : 2*cuBatchSize]
		Eventually(ctx, func(g Gomega) {
			restarted := 0
			for _, w := range cuWorkloadsIn(second) {
				obj := cuObject(w)
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
				if obj.Annotations[dataplane.RestartedForAnnotation] == target {
					restarted++
				}
			}
			g.Expect(restarted).To(BeNumerically(">", 0), "restarts of the second batch")
		}).WithTimeout(2 * time.Minute).WithPolling(50 * time.Millisecond).Should(Succeed())
		Expect(op.Kill()).To(Succeed(), "the operator crashes mid-batch")
		m := dpMesh(ctx, Default)
		u := upgradeOf(Default, m)
		Expect(u.Phase).To(Equal(string(upgrade.PhaseMigrating)))
		Expect(u.Batch).To(Equal(int32(1)), "the kill lands in the second batch")
		Expect(u.BatchStartedAt).NotTo(BeNil())
		Expect(u.CurrentBatch).To(Equal(second))
		Expect(u.BatchesDone).To(Equal(int32(1)))
		killedIn := u.BatchStartedAt.UTC()
		complete := 0
		for _, w := range cuWorkloadsIn(second) {
			obj := cuObject(w)
			Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
			if deploymentComplete(obj) {
				complete++
			}
		}
		Expect(complete).To(BeNumerically("<", len(cuWorkloadsIn(second))), "the kill lands while the second batch rolls out")
		startOperator(ctx)

		Eventually(ctx, func(g Gomega) {
			m := dpMesh(ctx, g)
			g.Expect(upgradeOf(g, m).Phase).To(Equal(string(upgrade.PhaseComplete)), "status.upgrade: %+v", m.Status.Upgrade)
		}).WithTimeout(2*time.Minute).Should(Succeed(), "the restarted operator finishes the upgrade")

		m = dpMesh(ctx, Default)
		u = upgradeOf(Default, m)
		Expect(u.BatchesDone).To(Equal(int32(4)))
		Expect(u.BatchesTotal).To(Equal(int32(4)))
		Expect(u.CurrentBatch).To(BeEmpty())
		Expect(m.Status.ActiveRevision).To(Equal("1-31-1"))
		Expect(revisionOf(Default, m, "1-31-1").Tags).To(Equal([]string{plan.TagCanary, plan.TagDefault, plan.TagStable}))
		Expect(revisionOf(Default, m, "1-31-0").Tags).To(BeEmpty())
		c := condition(ctx, meshv1.ConditionUpgrading)
		Expect(c.Status).To(Equal(metav1.ConditionFalse))
		Expect(c.Reason).To(Equal(string(upgrade.PhaseComplete)))
		tag := &admissionregistrationv1.MutatingWebhookConfiguration{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: cuDefaultTagWebhook}, tag)).To(Succeed())
		Expect(tag.Labels).To(HaveKeyWithValue(revision.RevLabel, "1-31-1"), "the default tag's webhook selects the new revision")

		// Each batch started once, in order, never more than batchSize namespaces at once:
		// the restarted operator went on with the second batch as the killed one had
		// started it.
		started := batches.batches()
		Expect(len(started)).To(BeNumerically(">=", 4), "batch starts seen: %+v", started)
		Expect(started).To(HaveExactElements(
			batchStart{Batch: 0, StartedAt: started[0].StartedAt, Namespaces: cuNamespaces[0:3]},
			batchStart{Batch: 1, StartedAt: killedIn, Namespaces: cuNamespaces[3:6]},
			batchStart{Batch: 2, StartedAt: started[2].StartedAt, Namespaces: cuNamespaces[6:9]},
			batchStart{Batch: 3, StartedAt: started[3].StartedAt, Namespaces: cuNamespaces[9:]},
		), "the batches status.upgrade showed moving")
		Eventually(ctx, func(g Gomega) []string { return meshEvents(ctx, g, meshv1.ReasonUpgradeBatch) }).WithTimeout(10*time.Second).Should(ContainElements(
			ContainSubstring("batch 1 of 4: moving canary-0, canary-1, canary-2 to revision 1-31-1"),
			ContainSubstring("batch 4 of 4: moving canary-9 to revision 1-31-1"),
		), "each batch is told in an Event")
		for _, ns := range cuNamespaces {
			Expect(namespaceRevision(ctx, Default, ns)).To(Equal("1-31-1"))
		}
		Eventually(ctx, func(g Gomega) {
			for _, w := range cuWorkloads {
				expectInjectedBy(ctx, g, w, "1-31-1", stamp)
			}
		}).WithTimeout(30*time.Second).Should(Succeed(), "the real istiod 1-31-1 re-injected every pod")
		for _, w := range cuWorkloads {
			Expect(restarts.restartsOf(w)).To(ConsistOf(HaveField("For", target)), "%s is restarted exactly once, for %s, across the crash", w.key(), target)
			Expect(templateRestartsSince(ctx, w, since)).To(HaveLen(1), "%s: pod templates restarted since the upgrade", w.key())
			obj := cuObject(w)
			Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
			Expect(obj.Generation).To(Equal(int64(2)), "%s was changed once, by its restart", w.key())
		}
		// A batch's restarts begin only once the batch before it has rolled out.
		for i := 1; i*cuBatchSize < len(cuNamespaces); i++ {
			prev := cuWorkloadsIn(cuNamespaces[(i-1)*cuBatchSize : i*cuBatchSize])
			cur := cuWorkloadsIn(cuNamespaces[i*cuBatchSize : min((i+1)*cuBatchSize, len(cuNamespaces))])
			var prevDone time.Time
			for _, w := range prev {
				r := restarts.restartsOf(w)[0]
				Expect(r.Completed).NotTo(BeZero(), "%s: its rollout was seen complete", w.key())
				if r.Completed.After(prevDone) {
					prevDone = r.Completed
				}
			}
			for _, w := range cur {
				began := restarts.restartsOf(w)[0].Began
				Expect(began.Add(dpSlack)).To(BeTemporally(">=", prevDone), "%s restarted (%s) before batch %d was done (%s)", w.key(), began.Format("15:04:05.000"), i, prevDone.Format("15:04:05.000"))
			}
		}
	}, SpecTimeout(4*time.Minute))

	It("keeps the old revision for inactiveRevisionGracePeriod, then removes it and nothing of the new one", func(ctx SpecContext) {
		Eventually(ctx, func(g Gomega) {
			r := revisionOf(g, dpMesh(ctx, g), "1-31-0")
			g.Expect(r.InUse).To(Equal(meshv1.RevisionUnused))
			g.Expect(r.UnusedSince).NotTo(BeNil())
		}).WithTimeout(30*time.Second).Should(Succeed(), "the old revision is seen unused")
		Consistently(ctx, func() bool { return deploymentExists(ctx, "istiod-1-31-0") }).WithTimeout(3*time.Second).Should(BeTrue(), "removed within the grace period")
		Expect(webhookExists(ctx, cuInjectorWebhook("1-31-0"))).To(BeTrue())

		patchMesh(ctx, func(m *meshv1.MeshControlPlane) {
			m.Spec.Upgrade.InactiveRevisionGracePeriod = &metav1.Duration{}
		})
		Eventually(ctx, func(g Gomega) {
			g.Expect(deploymentExists(ctx, "istiod-1-31-0")).To(BeFalse(), "Deployment istiod-1-31-0")
			g.Expect(webhookExists(ctx, cuInjectorWebhook("1-31-0"))).To(BeFalse(), "the old revision's injector")
			g.Expect(dpMesh(ctx, g).Status.Revisions).NotTo(ContainElement(HaveField("Name", "1-31-0")), "status.revisions")
		}).WithTimeout(time.Minute).Should(Succeed())
		Expect(deploymentExists(ctx, "istiod-1-31-1")).To(BeTrue())
		Expect(webhookExists(ctx, cuInjectorWebhook("1-31-1"))).To(BeTrue())
		Expect(webhookExists(ctx, cuDefaultTagWebhook)).To(BeTrue())
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: "istiod-1-31-1"}, &corev1.Service{})).To(Succeed())
		stopIstiod("1-31-0")
	}, SpecTimeout(2*time.Minute))

	It("moves a batch whose pods are not Ready within readinessTimeout back to the old revision, names the namespace and workload, and keeps the old revision active", func(ctx SpecContext) {
		// Why not a readiness gate nobody sets: kwok's pod-ready stage (kwok v0.8.0,
		// kustomize/stage/pod/fast/pod-ready.yaml) writes a True condition for every
		// spec.readinessGates entry along with Ready. A pod that never becomes Ready is made instead
		// the way it happens to a pinned workload on a full or cordoned node pool: its only
		// node is cordoned, so its restarted pod is created and injected but never
		// scheduled, and its Deployment keeps the old pod.
		patchNode(ctx, cuPoolNode, func(n *corev1.Node) { n.Spec.Unschedulable = true })
		restarts.stop()
		restarts = startRestartRecorder(ctx)
		Eventually(ctx, restarts.seen).WithTimeout(10*time.Second).Should(HaveLen(len(cuWorkloads)), "the recorder saw every workload before any restart")
		first := cuNamespaces[:cuBatchSize]
		patchMesh(ctx, func(m *meshv1.MeshControlPlane) {
			m.Spec.Version = "1.31.2"
			m.Spec.Upgrade.Canary.ReadinessTimeout = &metav1.Duration{Duration: 15 * time.Second}
		})
		startIstiod(ctx, "1-31-2")

		var failure string
		Eventually(ctx, func(g Gomega) {
			u := upgradeOf(g, dpMesh(ctx, g))
			g.Expect(u.To).To(Equal("1-31-2"))
			g.Expect(u.Phase).To(BeElementOf(string(upgrade.PhaseRollingBack), string(upgrade.PhaseFailed)))
			failure = u.Failure
		}).WithTimeout(time.Minute).Should(Succeed(), "the first batch fails")
		Expect(failure).To(And(HavePrefix("batch 1 of 4 failed"), ContainSubstring("namespace "+cuPinned.ns), ContainSubstring(cuPinned.key())))
		for _, w := range cuWorkloadsIn(first) {
			if w != cuPinned {
				Expect(failure).NotTo(ContainSubstring(w.key()), "only the workload that never became Ready is named")
			}
		}
		pods := dpPods(ctx, Default, cuPinned)
		Expect(pods).To(ContainElement(And(HaveField("Status.Phase", corev1.PodPending), HaveField("Spec.NodeName", BeEmpty()),
			HaveField("ObjectMeta.Annotations", HaveKeyWithValue(dataplane.ProxyVersionAnnotation, "1.31.2")))), "the pinned workload's restarted pod, injected by 1-31-2, is never scheduled")

		// The node pool is fixed once the rollback has restarted the pinned workload, so
		// that its rollback can complete.
		Eventually(ctx, func(g Gomega) string {
			obj := cuObject(cuPinned)
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
			return obj.Annotations[dataplane.RestartedForAnnotation]
		}).WithTimeout(30*time.Second).Should(HavePrefix("1-31-1/"), "the rollback restarts the pinned workload onto the old revision")
		patchNode(ctx, cuPoolNode, func(n *corev1.Node) { n.Spec.Unschedulable = false })

		Eventually(ctx, func(g Gomega) {
			g.Expect(upgradeOf(g, dpMesh(ctx, g)).Phase).To(Equal(string(upgrade.PhaseFailed)))
		}).WithTimeout(time.Minute).Should(Succeed(), "the rollback ends")
		m := dpMesh(ctx, Default)
		u := upgradeOf(Default, m)
		Expect(u.Failure).To(Equal(failure))
		Expect(u.Message).To(And(ContainSubstring("revision 1-31-1 stays active"), ContainSubstring(cuPinned.key())))
		Expect(m.Status.ActiveRevision).To(Equal("1-31-1"))
		Expect(revisionOf(Default, m, "1-31-1").Tags).To(Equal([]string{plan.TagCanary, plan.TagDefault, plan.TagStable}))
		c := condition(ctx, meshv1.ConditionUpgrading)
		Expect(c.Status).To(Equal(metav1.ConditionFalse))
		Expect(c.Reason).To(Equal(string(upgrade.PhaseFailed)))
		Expect(c.Message).To(And(ContainSubstring("revision 1-31-1 stays active"), ContainSubstring("namespace "+cuPinned.ns), ContainSubstring(cuPinned.key())))
		tag := &admissionregistrationv1.MutatingWebhookConfiguration{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: cuDefaultTagWebhook}, tag)).To(Succeed())
		Expect(tag.Labels).To(HaveKeyWithValue(revision.RevLabel, "1-31-1"))

		for _, ns := range cuNamespaces {
			Expect(namespaceRevision(ctx, Default, ns)).To(Equal("1-31-1"), "namespace %s", ns)
		}
		stamp := stampOfRevision(m, "1-31-1")
		Eventually(ctx, func(g Gomega) {
			for _, w := range cuWorkloadsIn(first) {
				expectInjectedBy(ctx, g, w, "1-31-1", stamp)
			}
		}).WithTimeout(30*time.Second).Should(Succeed(), "the failed batch's workloads run sidecars the real istiod 1-31-1 injected again")
		for _, w := range cuWorkloads {
			rs := restarts.restartsOf(w)
			if slices.Contains(first, w.ns) {
				Expect(rs).To(HaveExactElements(HaveField("For", HavePrefix("1-31-2/")), HaveField("For", HavePrefix("1-31-1/"))),
					"%s: restarted onto the new revision, then back, once each", w.key())
			} else {
				Expect(rs).To(BeEmpty(), "%s of a later batch was restarted", w.key())
			}
		}

		// The old revision's istiod still injects: a new pod in a namespace of a later batch
		// gets its sidecar.
		probe := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: cuNamespaces[len(cuNamespaces)-1], Name: "after-rollback"},
			Spec: corev1.PodSpec{
				Containers:                    []corev1.Container{{Name: "probe", Image: "example.com/probe:1"}},
				TerminationGracePeriodSeconds: ptr.To[int64](0),
			},
		}
		Expect(k8s.Create(ctx, probe)).To(Succeed())
		Expect(proxyOf(probe)).NotTo(BeNil(), "the new pod got no sidecar")
		Expect(proxyOf(probe).Image).To(HaveSuffix(":1.31.1"))
		Expect(injectedBy(probe)).To(Equal("1-31-1"))
	}, SpecTimeout(4*time.Minute))
})

// condition is the MeshControlPlane's condition of type t, which must exist and describe the
// current spec.
func condition(ctx context.Context, t string) metav1.Condition {
	GinkgoHelper()
	var c metav1.Condition
	Eventually(ctx, func(g Gomega) {
		m := dpMesh(ctx, g)
		found := meta.FindStatusCondition(m.Status.Conditions, t)
		g.Expect(found).NotTo(BeNil(), "condition %s", t)
		g.Expect(found.ObservedGeneration).To(Equal(m.Generation), "condition %s describes an older spec", t)
		c = *found
	}).WithTimeout(30 * time.Second).Should(Succeed())
	return c
}

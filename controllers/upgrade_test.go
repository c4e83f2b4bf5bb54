package controllers_test

import (
	"fmt"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/revision"
	"github.com/capstan-mesh/capstan/internal/upgrade"
)

// Canary upgrades against a real apiserver, with both controllers. envtest runs no
// Deployment controller, kubelet or injection webhook: the specs write what those would
// (an istiod available, a restarted workload's rollout complete, its new pod injected by
// the revision its namespace now selects). What is real: the revisions Capstan installs
// and removes, where it points the tags, the namespace labels and restart patches it
// writes, and the status it persists and resumes from.
// upgradeWorld is what the upgrade specs play in one control-plane namespace: the apps
// (one Deployment "app" per namespace) and the suffix of each app's current pod, which
// each rollout they play replaces.
type upgradeWorld struct {
	cpNS string
	pod  map[string]int
}

// stampOf is what revision rev's injector stamps on the pods it injects.
func (w *upgradeWorld) stampOf(rev string) dataplane.Stamp {
	GinkgoHelper()
	m := getMCP()
	p, err := plan.For(&m.Spec, plan.InstalledFrom(&m.Status))
	Expect(err).NotTo(HaveOccurred())
	Expect(p.Stamps).To(HaveKey(rev))
	return p.Stamps[rev]
}

func app(ns string) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"}}
}

// createApp creates ns's app, its rollout complete, with one pod injected by rev.
func (w *upgradeWorld) createApp(ns, rev string) {
	GinkgoHelper()
	labels := map[string]string{"app": "app"}
	Expect(k8sClient.Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}}})).To(Succeed())
	injectedPod(ns, rev, "Deployment", "app", w.suffix(ns), w.stampOf(rev))
	rolledOut(app(ns))
}

func (w *upgradeWorld) suffix(ns string) string { return fmt.Sprint(w.pod[ns]) }

// rollOnto plays the rollout of ns's app onto rev: its old pod replaced by one that rev's
// injector injected, and the Deployment complete and available.
func (w *upgradeWorld) rollOnto(ns, rev string) {
	GinkgoHelper()
	Expect(k8sClient.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app-" + w.suffix(ns)}})).To(Succeed())
	w.pod[ns]++
	injectedPod(ns, rev, "Deployment", "app", w.suffix(ns), w.stampOf(rev))
	rolledOut(app(ns))
}

// stuckPod adds to ns's app a pod injected by rev that never becomes Ready: its rollout
// never completes.
func (w *upgradeWorld) stuckPod(ns, rev string) {
	GinkgoHelper()
	w.pod[ns]++
	injectedPod(ns, rev, "Deployment", "app", w.suffix(ns), w.stampOf(rev))
}

func (w *upgradeWorld) deploymentExists(name string) func() bool {
	return func() bool {
		err := k8sClient.Get(ctx, client.ObjectKey{Namespace: w.cpNS, Name: name}, &appsv1.Deployment{})
		Expect(client.IgnoreNotFound(err)).To(Succeed())
		return err == nil
	}
}

// cleanUp removes the apps, their pods and the test's namespace label, and the
// MeshControlPlane: envtest never finishes deleting a namespace.
func (w *upgradeWorld) cleanUp(spaces []string, label string) {
	GinkgoHelper()
	for _, ns := range spaces {
		pods := &corev1.PodList{}
		Expect(k8sClient.List(ctx, pods, client.InNamespace(ns))).To(Succeed())
		for i := range pods.Items {
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, &pods.Items[i]))).To(Succeed())
		}
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, app(ns)))).To(Succeed())
		setNamespaceLabels(ns, map[string]string{label: ""})
	}
	deleteMCPAndWait()
}

func restartedFor(d *appsv1.Deployment) func(Gomega) string {
	return func(g Gomega) string {
		cur := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(d), cur)).To(Succeed())
		return cur.Annotations[dataplane.RestartedForAnnotation]
	}
}

// nsLabel is a namespace's label key.
func nsLabel(ns, key string) func(Gomega) string {
	return func(g Gomega) string {
		n := &corev1.Namespace{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: ns}, n)).To(Succeed())
		return n.Labels[key]
	}
}

func nsRevision(ns string) func(Gomega) string { return nsLabel(ns, revision.RevLabel) }

func upgradeStatusOf(g Gomega) meshv1.UpgradeStatus {
	m := getMCP()
	g.Expect(m.Status.Upgrade).NotTo(BeNil(), "status.upgrade")
	return *m.Status.Upgrade
}

func revisionStatus(name string) func(Gomega) meshv1.RevisionStatus {
	return func(g Gomega) meshv1.RevisionStatus {
		for _, r := range getMCP().Status.Revisions {
			if r.Name == name {
				return r
			}
		}
		g.Expect(getMCP().Status.Revisions).To(ContainElement(HaveField("Name", name)))
		return meshv1.RevisionStatus{}
	}
}

// updateMCP changes the MeshControlPlane's spec, retrying on a conflict.
func updateMCP(mutate func(*meshv1.MeshControlPlane)) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		m := getMCP()
		mutate(m)
		g.Expect(k8sClient.Update(ctx, m)).To(Succeed())
	}).Should(Succeed())
}

var _ = Describe("canary upgrades", Ordered, func() {
	const cpNS = "up-istio"
	spaces := []string{"up-a", "up-b", "up-c"}
	w := &upgradeWorld{cpNS: cpNS, pod: map[string]int{}}
	rollOnto, deploymentExists := w.rollOnto, w.deploymentExists
	upgradeStatus := upgradeStatusOf
	setVersion := func(v string) { updateMCP(func(m *meshv1.MeshControlPlane) { m.Spec.Version = v }) }

	BeforeAll(func() {
		for _, ns := range spaces {
			Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"upgrade-test": "yes"}}})).To(Succeed())
		}
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}, Spec: meshv1.MeshControlPlaneSpec{
			Namespace: cpNS, Version: "1.31.0",
			Injection: &meshv1.InjectionSpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"upgrade-test": "yes"}}},
			Upgrade: &meshv1.UpgradeSpec{
				Canary:                      &meshv1.CanarySpec{BatchSize: 2, AutoPromote: true, ReadinessTimeout: &metav1.Duration{Duration: 10 * time.Second}},
				InactiveRevisionGracePeriod: &metav1.Duration{Duration: time.Hour},
			},
		}}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
	})
	AfterAll(func() { w.cleanUp(spaces, "upgrade-test") })

	It("installs a new control plane as the revision of its version, with every tag on it", func() {
		Eventually(deploymentExists("istiod-1-31-0")).Should(BeTrue())
		Expect(deploymentExists("istiod")()).To(BeFalse(), "a new control plane runs in place")
		markDeploymentAvailable(cpNS, "istiod-1-31-0")
		Eventually(func(g Gomega) {
			g.Expect(getMCP().Status.ActiveRevision).To(Equal("1-31-0"))
			r := revisionStatus("1-31-0")(g)
			g.Expect(r.Ready).To(HaveValue(BeTrue()))
			g.Expect(r.Tags).To(Equal([]string{plan.TagCanary, plan.TagDefault, plan.TagStable}))
		}).Should(Succeed())
		tag := &admissionregistrationv1.MutatingWebhookConfiguration{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "istio-revision-tag-default-" + cpNS}, tag)).To(Succeed())
		Expect(tag.Labels).To(HaveKeyWithValue(revision.RevLabel, "1-31-0"))
		for _, ns := range spaces {
			Eventually(nsRevision(ns)).Should(Equal("1-31-0"), "namespace %s is labelled for the revision", ns)
		}
		Expect(condition(meshv1.ConditionUpgrading)(Default).Status).To(Equal(metav1.ConditionFalse))
		Expect(getMCP().ManagedFields).To(ContainElement(HaveField("Manager", controllers.UpgradeFieldManager)), "the upgrade's status has a writer of its own")

		// Each namespace runs one app, injected by the revision.
		for _, ns := range spaces {
			w.createApp(ns, "1-31-0")
		}
		Eventually(func(g Gomega) { g.Expect(revisionStatus("1-31-0")(g).Pods).To(HaveValue(Equal(int32(3)))) }).Should(Succeed())
	})

	It("upgrades batch by batch: the new revision beside the old, each batch moved and restarted once, then the tags", func() {
		setVersion("1.31.1")
		Eventually(deploymentExists("istiod-1-31-1")).Should(BeTrue())
		Eventually(func(g Gomega) {
			u := upgradeStatus(g)
			g.Expect(u.Phase).To(Equal(string(upgrade.PhaseWaiting)))
			g.Expect(u.From).To(Equal("1-31-0"))
			g.Expect(u.To).To(Equal("1-31-1"))
			g.Expect(u.Namespaces).To(Equal(spaces))
			g.Expect(u.BatchesTotal).To(Equal(int32(2)))
		}).Should(Succeed())
		Expect(condition(meshv1.ConditionUpgrading)(Default)).To(HaveField("Status", metav1.ConditionTrue))
		// Nothing moves while the new revision is not Ready.
		Consistently(nsRevision("up-a"), 2*time.Second).Should(Equal("1-31-0"))
		Expect(deploymentExists("istiod-1-31-0")()).To(BeTrue())

		markDeploymentAvailable(cpNS, "istiod-1-31-1")
		Eventually(func(g Gomega) {
			u := upgradeStatus(g)
			g.Expect(u.Phase).To(Equal(string(upgrade.PhaseMigrating)))
			g.Expect(u.CurrentBatch).To(Equal([]string{"up-a", "up-b"}))
		}).Should(Succeed())
		Eventually(nsRevision("up-a")).Should(Equal("1-31-1"))
		Eventually(nsRevision("up-b")).Should(Equal("1-31-1"))
		Expect(nsRevision("up-c")(Default)).To(Equal("1-31-0"), "the second batch moved with the first")
		Eventually(func(g Gomega) { g.Expect(revisionStatus("1-31-1")(g).Tags).To(Equal([]string{plan.TagCanary})) }).Should(Succeed())
		for _, ns := range []string{"up-a", "up-b"} {
			Eventually(restartedFor(app(ns))).Should(HavePrefix("1-31-1/"), "%s/app restarted onto the new revision", ns)
		}
		Expect(restartedAt(app("up-c"))).To(BeEmpty())
		Eventually(func() []string { return eventMessages(meshv1.ReasonUpgradeBatch) }).Should(ContainElement(ContainSubstring("batch 1 of 2")))

		rollOnto("up-a", "1-31-1")
		rollOnto("up-b", "1-31-1")
		Eventually(nsRevision("up-c")).Should(Equal("1-31-1"))
		Eventually(restartedFor(app("up-c"))).Should(HavePrefix("1-31-1/"))
		rollOnto("up-c", "1-31-1")

		Eventually(func(g Gomega) {
			m := getMCP()
			g.Expect(m.Status.Upgrade).NotTo(BeNil())
			g.Expect(m.Status.Upgrade.Phase).To(Equal(string(upgrade.PhaseComplete)))
			g.Expect(m.Status.ActiveRevision).To(Equal("1-31-1"))
			g.Expect(revisionStatus("1-31-1")(g).Tags).To(Equal([]string{plan.TagCanary, plan.TagDefault, plan.TagStable}))
		}).Should(Succeed())
		tag := &admissionregistrationv1.MutatingWebhookConfiguration{}
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "istio-revision-tag-default-" + cpNS}, tag)).To(Succeed())
			g.Expect(tag.Labels).To(HaveKeyWithValue(revision.RevLabel, "1-31-1"))
		}).Should(Succeed())
		Expect(condition(meshv1.ConditionUpgrading)(Default)).To(And(HaveField("Status", metav1.ConditionFalse), HaveField("Reason", string(upgrade.PhaseComplete))))
		for _, ns := range spaces {
			d := &appsv1.Deployment{}
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(app(ns)), d)).To(Succeed())
			Expect(d.Generation).To(Equal(int64(2)), "%s/app was restarted once, by one patch", ns)
			Expect(d.Annotations[dataplane.RestartedForAnnotation]).To(HavePrefix("1-31-1/1.31.1/"))
		}
	})

	It("keeps the old revision for its grace period, then removes it and nothing else", func() {
		Eventually(func(g Gomega) {
			r := revisionStatus("1-31-0")(g)
			g.Expect(r.InUse).To(Equal(meshv1.RevisionUnused))
			g.Expect(r.UnusedSince).NotTo(BeNil())
		}).Should(Succeed())
		Consistently(deploymentExists("istiod-1-31-0"), 2*time.Second).Should(BeTrue(), "removed within the grace period")

		updateMCP(func(m *meshv1.MeshControlPlane) { m.Spec.Upgrade.InactiveRevisionGracePeriod = &metav1.Duration{} })
		Eventually(deploymentExists("istiod-1-31-0")).Should(BeFalse())
		err := k8sClient.Get(ctx, client.ObjectKey{Name: "istio-sidecar-injector-1-31-0-" + cpNS}, &admissionregistrationv1.MutatingWebhookConfiguration{})
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "the old revision's injector: %v", err)
		Expect(deploymentExists("istiod-1-31-1")()).To(BeTrue())
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "istio-revision-tag-default-" + cpNS}, &admissionregistrationv1.MutatingWebhookConfiguration{})).To(Succeed())
		Eventually(func() []string { return eventMessages(meshv1.ReasonRevisionPruned) }).Should(ContainElement(ContainSubstring("removed revision 1-31-0")))
		Eventually(func(g Gomega) {
			g.Expect(slices.ContainsFunc(getMCP().Status.Revisions, func(r meshv1.RevisionStatus) bool { return r.Name == "1-31-0" })).To(BeFalse())
		}).Should(Succeed())
	})

	It("rolls back a batch whose pods are not Ready in time, naming the namespace and workload, and the old revision stays active", func() {
		setVersion("1.31.2")
		Eventually(deploymentExists("istiod-1-31-2")).Should(BeTrue())
		markDeploymentAvailable(cpNS, "istiod-1-31-2")
		Eventually(nsRevision("up-a")).Should(Equal("1-31-2"))
		Eventually(nsRevision("up-b")).Should(Equal("1-31-2"))
		for _, ns := range []string{"up-a", "up-b"} {
			Eventually(restartedFor(app(ns))).Should(HavePrefix("1-31-2/"), "%s/app restarted onto the new revision", ns)
		}
		// up-a's rollout completes; up-b's new pod, injected by the new revision, never
		// becomes Ready, so its rollout never completes.
		rollOnto("up-a", "1-31-2")
		w.stuckPod("up-b", "1-31-2")

		Eventually(func(g Gomega) {
			u := upgradeStatus(g)
			g.Expect(u.Phase).To(Equal(string(upgrade.PhaseRollingBack)))
			g.Expect(u.Failure).To(And(ContainSubstring("namespace up-b"), ContainSubstring("Deployment up-b/app")))
		}, 30*time.Second).Should(Succeed())
		Eventually(nsRevision("up-a")).Should(Equal("1-31-1"))
		Eventually(nsRevision("up-b")).Should(Equal("1-31-1"))
		Expect(getMCP().Status.ActiveRevision).To(Equal("1-31-1"))
		for _, ns := range []string{"up-a", "up-b"} {
			Eventually(restartedFor(app(ns))).Should(HavePrefix("1-31-1/"), func() string {
				m := getMCP()
				return fmt.Sprintf("%s/app restarted back onto the old revision; status.injection %+v", ns, m.Status.Injection)
			})
			rollOnto(ns, "1-31-1")
		}
		Eventually(func(g Gomega) { g.Expect(upgradeStatus(g).Phase).To(Equal(string(upgrade.PhaseFailed))) }).Should(Succeed())
		c := condition(meshv1.ConditionUpgrading)(Default)
		Expect(c.Status).To(Equal(metav1.ConditionFalse))
		Expect(c.Reason).To(Equal(string(upgrade.PhaseFailed)))
		Expect(c.Message).To(And(ContainSubstring("revision 1-31-1 stays active"), ContainSubstring("up-b")))
		Expect(nsRevision("up-c")(Default)).To(Equal("1-31-1"), "a namespace of a later batch moved")
		Expect(getMCP().Status.ActiveRevision).To(Equal("1-31-1"))
		Expect(deploymentExists("istiod-1-31-1")()).To(BeTrue())
	})
})

// Switching a running in-place control plane to RevisionBased is a canary upgrade from the
// revision default: every pod keeps a sidecar throughout, the first batch waits for a
// promotion (autoPromote off), and the in-place istiod stays until unused.
var _ = Describe("switching an in-place control plane to RevisionBased", Ordered, func() {
	const cpNS = "sw-istio"
	spaces := []string{"sw-a", "sw-b"}
	w := &upgradeWorld{cpNS: cpNS, pod: map[string]int{}}
	injectedPods := func(g Gomega) int32 { return injection(g).InjectedPods }

	BeforeAll(func() {
		for _, ns := range spaces {
			Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"switch-test": "yes"}}})).To(Succeed())
		}
		m := mcp(cpNS)
		m.Spec.Injection = &meshv1.InjectionSpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"switch-test": "yes"}}}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		markAvailable(cpNS)
		for _, ns := range spaces {
			Eventually(nsLabel(ns, revision.InjectionLabel)).Should(Equal("enabled"))
			w.createApp(ns, "default")
		}
		Eventually(injectedPods).Should(Equal(int32(2)))
		Expect(getMCP().Status.ActiveRevision).To(Equal("default"))
	})
	AfterAll(func() { w.cleanUp(spaces, "switch-test") })

	It("moves the first batch to the revision of the running version, then waits for a promotion", func() {
		updateMCP(func(m *meshv1.MeshControlPlane) {
			m.Spec.Upgrade = &meshv1.UpgradeSpec{Strategy: meshv1.UpgradeRevisionBased, Canary: &meshv1.CanarySpec{BatchSize: 1}}
		})
		Eventually(w.deploymentExists("istiod-1-31-1")).Should(BeTrue())
		Expect(w.deploymentExists("istiod")()).To(BeTrue(), "the in-place istiod keeps serving")
		markDeploymentAvailable(cpNS, "istiod-1-31-1")
		Eventually(nsRevision("sw-a")).Should(Equal("1-31-1"))
		Expect(nsLabel("sw-a", revision.InjectionLabel)(Default)).To(BeEmpty(), "istio-injection would win over istio.io/rev")
		Eventually(restartedFor(app("sw-a"))).Should(HavePrefix("1-31-1/"))
		Expect(injectedPods(Default)).To(Equal(int32(2)), "no pod lost its sidecar")
		w.rollOnto("sw-a", "1-31-1")
		Eventually(func(g Gomega) { g.Expect(upgradeStatusOf(g).Phase).To(Equal(string(upgrade.PhaseAwaitingPromotion))) }).Should(Succeed())
		Consistently(nsLabel("sw-b", revision.InjectionLabel), 2*time.Second).Should(Equal("enabled"), "the second batch moved before the promotion")
		Expect(condition(meshv1.ConditionUpgrading)(Default).Message).To(ContainSubstring("spec.upgrade.promote"))
	})

	It("moves the rest on a promotion, then the tags, and keeps the in-place istiod until it is unused", func() {
		updateMCP(func(m *meshv1.MeshControlPlane) {
			m.Spec.Upgrade.Promote = &metav1.Time{Time: time.Now().Add(time.Second)}
		})
		Eventually(nsRevision("sw-b")).Should(Equal("1-31-1"))
		Eventually(restartedFor(app("sw-b"))).Should(HavePrefix("1-31-1/"))
		Expect(injectedPods(Default)).To(Equal(int32(2)), "no pod lost its sidecar")
		w.rollOnto("sw-b", "1-31-1")
		Eventually(func(g Gomega) {
			m := getMCP()
			g.Expect(m.Status.ActiveRevision).To(Equal("1-31-1"))
			g.Expect(m.Status.Upgrade).NotTo(BeNil())
			g.Expect(m.Status.Upgrade.Phase).To(Equal(string(upgrade.PhaseComplete)))
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			r := revisionStatus("default")(g)
			g.Expect(r.InUse).To(Equal(meshv1.RevisionUnused))
			g.Expect(r.Tags).To(BeEmpty())
		}).Should(Succeed())
		Expect(w.deploymentExists("istiod")()).To(BeTrue(), "removed before its grace period")
		// A promotion with no upgrade left to promote is said, and changes nothing.
		updateMCP(func(m *meshv1.MeshControlPlane) {
			m.Spec.Upgrade.Promote = &metav1.Time{Time: time.Now().Add(time.Minute)}
		})
		Eventually(func(g Gomega) string { return condition(meshv1.ConditionUpgrading)(g).Message }).Should(ContainSubstring("no upgrade waits for one"))
	})

	// Admission refuses it (internal/webhook's tests; this suite runs no webhook server);
	// one stored anyway is refused by the controller, and nothing installed changes.
	It("refuses InPlace again while the revision runs, and removes nothing", func() {
		updateMCP(func(m *meshv1.MeshControlPlane) { m.Spec.Upgrade.Strategy = meshv1.UpgradeInPlace })
		Eventually(condition(meshv1.ConditionDegraded)).Should(And(HaveField("Reason", meshv1.ReasonInvalidSpec),
			HaveField("Message", ContainSubstring("spec.upgrade.strategy"))))
		Consistently(w.deploymentExists("istiod-1-31-1"), 2*time.Second).Should(BeTrue())
		Expect(getMCP().Status.ActiveRevision).To(Equal("1-31-1"))
		Expect(nsRevision("sw-a")(Default)).To(Equal("1-31-1"))
	})
})

//go:build e2e

package e2e

import (
	"context"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/render"
	"github.com/capstan-mesh/capstan/test/harness"
)

const istioNS = "istio-system"

func ready(ctx context.Context) func(Gomega) {
	return func(g Gomega) {
		m := &meshv1.MeshControlPlane{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
		c := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionReady)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.ObservedGeneration).To(Equal(m.Generation))
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "Ready: %s: %s", c.Reason, c.Message)
	}
}

// istiodDeployment is the in-place istiod, which the data-plane and CA Describes run.
func istiodDeployment(ctx context.Context, g Gomega) *appsv1.Deployment {
	return istiodOf(ctx, g, "default")
}

// istiodOf is the istiod Deployment of a revision: "istiod" for the in-place revision
// default, "istiod-<revision>" for any other.
func istiodOf(ctx context.Context, g Gomega, rev string) *appsv1.Deployment {
	name := "istiod"
	if rev != "default" {
		name += "-" + rev
	}
	d := &appsv1.Deployment{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: name}, d)).To(Succeed())
	return d
}

// sampleRevision is the revision config/samples runs as: RevisionBased, Istio 1.31.1.
const sampleRevision = "1-31-1"

// owned lists every object that carries Capstan's inventory labels, straight from the apiserver.
func owned(ctx context.Context) []string {
	GinkgoHelper()
	var out []string
	for _, k := range render.Kinds {
		l := &metav1.PartialObjectMetadataList{}
		l.SetGroupVersionKind(k.GroupVersion().WithKind(k.Kind + "List"))
		Expect(k8s.List(ctx, l, client.MatchingLabels{apply.ManagedByLabel: apply.ManagedByValue})).To(Succeed())
		for _, o := range l.Items {
			out = append(out, k.Kind+" "+o.Namespace+"/"+o.Name)
		}
	}
	return out
}

var _ = Describe("a MeshControlPlane on a local cluster", Ordered, func() {
	var istiod *harness.Istiod
	AfterAll(func(ctx SpecContext) {
		if istiod != nil {
			_ = istiod.Stop()
		}
		// The injected pods of "shop" would otherwise count in the data plane of every
		// MeshControlPlane a later Describe creates: leave the cluster without them.
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}
		Expect(client.IgnoreNotFound(k8s.Delete(ctx, ns))).To(Succeed())
		Eventually(ctx, func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(ns), ns))
		}).Should(BeTrue(), "namespace shop is deleted")
	}, NodeTimeout(2*time.Minute))

	It("installs from config/samples: istiod runs on the simulated nodes as the revision of its version, and the resource is Ready", func(ctx SpecContext) {
		root, err := harness.RepoRoot()
		Expect(err).NotTo(HaveOccurred())
		_, err = cluster.Kubectl(ctx, "apply", "-f", filepath.Join(root, "config/samples/mesh_v1alpha1_meshcontrolplane.yaml"))
		Expect(err).NotTo(HaveOccurred())

		Eventually(func(g Gomega) {
			d := istiodOf(ctx, g, sampleRevision)
			g.Expect(d.Status.AvailableReplicas).To(Equal(int32(1)))
		}).Should(Succeed())
		pods := &corev1.PodList{}
		Expect(k8s.List(ctx, pods, client.InNamespace(istioNS), client.MatchingLabels{"app": "istiod"})).To(Succeed())
		Expect(pods.Items).To(HaveLen(1))
		Expect(pods.Items[0].Spec.NodeName).NotTo(BeEmpty())
		Expect(pods.Items[0].Status.Phase).To(Equal(corev1.PodRunning))

		Eventually(ready(ctx)).Should(Succeed())
		m := &meshv1.MeshControlPlane{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
		Expect(m.Status.Version).To(Equal("1.31.1"))
		Expect(m.Status.ActiveRevision).To(Equal(sampleRevision))
		Expect(m.Status.Components).To(ConsistOf(meshv1.ComponentStatus{Name: "istiod-" + sampleRevision, Ready: true, DesiredReplicas: 1, ReadyReplicas: 1}))
	})

	It("gives pods in a namespace labelled istio-injection=enabled real sidecars from the real istiod, through the default tag", func(ctx SpecContext) {
		var err error
		istiod, err = harness.StartIstiod(ctx, cluster, harness.IstiodOptions{Revision: sampleRevision})
		Expect(err).NotTo(HaveOccurred())

		m := &meshv1.MeshControlPlane{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
		p, err := plan.For(&m.Spec, plan.InstalledFrom(&m.Status))
		Expect(err).NotTo(HaveOccurred())
		stamp := p.Stamps[p.Revision]
		Expect(p.Revision).To(Equal(sampleRevision))

		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio-injection": "enabled"}}}
		Expect(k8s.Create(ctx, ns)).To(Succeed())
		labels := map[string]string{"app": "cart"}
		Expect(k8s.Create(ctx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To[int32](2),
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "cart", Image: "example.com/cart:1"}}},
				},
			},
		})).To(Succeed())
		Eventually(func(g Gomega) {
			pods := &corev1.PodList{}
			g.Expect(k8s.List(ctx, pods, client.InNamespace("shop"), client.MatchingLabels(labels))).To(Succeed())
			g.Expect(pods.Items).To(HaveLen(2))
			for _, p := range pods.Items {
				g.Expect(p.Spec.Containers).To(ContainElement(HaveField("Name", "istio-proxy")), "pod %s has no sidecar", p.Name)
				g.Expect(p.Spec.InitContainers).To(ContainElement(HaveField("Name", "istio-init")))
				g.Expect(p.Annotations).To(HaveKeyWithValue("sidecar.istio.io/status", ContainSubstring(`"revision":"`+sampleRevision+`"`)))
				// The injector stamps what Capstan told it to, so a stale sidecar can be told
				// from the pod's metadata alone.
				g.Expect(p.Annotations).To(HaveKeyWithValue(dataplane.ProxyVersionAnnotation, "1.31.1"))
				g.Expect(p.Annotations).To(HaveKeyWithValue(dataplane.ProxyConfigAnnotation, stamp.ProxyConfig))
				g.Expect(p.Status.Phase).To(Equal(corev1.PodRunning))
			}
		}).Should(Succeed())
	})

	It("scales istiod when spec.components.pilot.replicas changes", func(ctx SpecContext) {
		m := &meshv1.MeshControlPlane{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
		patch := client.MergeFrom(m.DeepCopy())
		m.Spec.Components.Pilot.Replicas = ptr.To[int32](2)
		Expect(k8s.Patch(ctx, m, patch)).To(Succeed())
		Eventually(func(g Gomega) {
			d := istiodOf(ctx, g, sampleRevision)
			g.Expect(d.Spec.Replicas).To(Equal(ptr.To[int32](2)))
			g.Expect(d.Status.AvailableReplicas).To(Equal(int32(2)))
		}).Should(Succeed())
		Eventually(ready(ctx)).Should(Succeed())
		Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
		Expect(m.Status.Components).To(ConsistOf(meshv1.ComponentStatus{Name: "istiod-" + sampleRevision, Ready: true, DesiredReplicas: 2, ReadyReplicas: 2}))
	})

	It("restores an owned ConfigMap that someone deleted", func(ctx SpecContext) {
		key := client.ObjectKey{Namespace: istioNS, Name: "istio-" + sampleRevision}
		cm := &corev1.ConfigMap{}
		Expect(k8s.Get(ctx, key, cm)).To(Succeed())
		uid, mesh := cm.UID, cm.Data["mesh"]
		Expect(k8s.Delete(ctx, cm)).To(Succeed())
		Eventually(func(g Gomega) {
			restored := &corev1.ConfigMap{}
			g.Expect(k8s.Get(ctx, key, restored)).To(Succeed())
			g.Expect(restored.UID).NotTo(Equal(uid))
			g.Expect(restored.Data["mesh"]).To(Equal(mesh))
		}).WithTimeout(10 * time.Second).Should(Succeed())
		Eventually(func(g Gomega) []string {
			evs := &eventsv1.EventList{}
			g.Expect(k8s.List(ctx, evs)).To(Succeed())
			var notes []string
			for _, e := range evs.Items {
				if e.Regarding.Kind == "MeshControlPlane" {
					notes = append(notes, e.Reason+": "+e.Note)
				}
			}
			return notes
		}).Should(ContainElement(And(HavePrefix(meshv1.ReasonDriftReverted), ContainSubstring("ConfigMap istio-system/istio-"+sampleRevision))))
	})

	It("removes everything but Istio's CRDs when the MeshControlPlane is deleted", func(ctx SpecContext) {
		Expect(istiod.Stop()).To(Succeed())
		istiod = nil
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
		Expect(k8s.Delete(ctx, m)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(m), m))
		}).Should(BeTrue())
		// istio-system itself stays: the operator's RBAC (config/rbac) ships it, as the home of
		// the CA's Secrets Role, so it is not Capstan's to delete. What Capstan wrote in it
		// goes, the CA's key material included (owned by the MeshControlPlane, removed by the
		// garbage collector).
		for _, name := range []string{"cacerts", "capstan-ca"} {
			Eventually(func() bool {
				return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: name}, &corev1.Secret{}))
			}).Should(BeTrue(), "Secret %s/%s is gone", istioNS, name)
		}
		left := owned(ctx)
		Expect(left).To(HaveEach(HavePrefix("CustomResourceDefinition ")))
		Expect(left).To(ContainElement("CustomResourceDefinition /virtualservices.networking.istio.io"))
		hooks := &metav1.PartialObjectMetadataList{}
		hooks.SetGroupVersionKind(schemaGVK("admissionregistration.k8s.io", "v1", "MutatingWebhookConfigurationList"))
		Expect(k8s.List(ctx, hooks)).To(Succeed())
		Expect(hooks.Items).To(BeEmpty(), "the injection webhook is gone, so no pod creation depends on istiod any more")
	})
})

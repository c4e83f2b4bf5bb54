//go:build e2e

// The harness's own end-to-end test: a real kwok cluster, Istio's charts, the real istiod and
// sidecar injection. Build it outside the network namespace and run it inside one:
//
//	go test -c -tags e2e -o bin/harness.test ./test/harness
//	hack/in-netns.sh bin/harness.test -test.v
package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/render"
	"github.com/capstan-mesh/capstan/internal/values"
)

const fieldManager = "capstan-harness-test"

func TestHarnessEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	if err := RequireLoopbackNetns(); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	c, err := StartCluster(ctx, ClusterOptions{Nodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, comp := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller"} {
				t.Logf("--- %s log (tail):\n%s", comp, c.LogTail(comp, 3000))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	t.Logf("cluster %s up in %v (kubeconfig %s)", c.Name, time.Since(start).Round(time.Millisecond), c.Kubeconfig)
	cs := c.Clientset

	// 1. Services get ClusterIPs in the loopback range.
	_, cidr, _ := net.ParseCIDR(ServiceCIDR)
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "probe"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(svc.Spec.ClusterIP); ip == nil || !cidr.Contains(ip) {
		t.Fatalf("Service ClusterIP %q is not inside %s", svc.Spec.ClusterIP, ServiceCIDR)
	}
	t.Logf("Service default/probe has ClusterIP %s", svc.Spec.ClusterIP)

	// The apiserver writes the audit log, and it records that request.
	Eventually(t, ctx, 30*time.Second, "audit log records the Service creation", func(context.Context) (bool, string, error) {
		b, err := os.ReadFile(c.AuditLogPath)
		if err != nil {
			return false, err.Error(), nil
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"verb":"create"`) && strings.Contains(l, `"resource":"services"`) && strings.Contains(l, `"name":"probe"`) {
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("%d bytes, no create of services/probe", len(b)), nil
	})

	// The kubectl helper talks to the same cluster.
	out, err := c.Kubectl(ctx, "get", "service", "probe", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil || out != svc.Spec.ClusterIP {
		t.Fatalf("kubectl get service probe: %q, %v; want %s", out, err, svc.Spec.ClusterIP)
	}

	// 2. Istio's charts, rendered by internal/render, applied server-side.
	ver, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	vals, err := values.For(&meshv1.MeshControlPlaneSpec{Namespace: "istio-system"})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := render.Render(render.Input{Values: vals, Namespace: "istio-system", KubeVersion: ver.GitVersion})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) < 20 {
		t.Fatalf("render returned only %d objects", len(objs))
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	unstructuredObjs := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		unstructuredObjs[i] = o.Unstructured
	}
	if err := c.Apply(ctx, fieldManager, unstructuredObjs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("applied %d rendered objects", len(objs))

	// 3. The real istiod, as a local process.
	d, err := StartIstiod(ctx, c, IstiodOptions{Namespace: "istio-system", Revision: "default"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- istiod log (tail):\n%s", d.LogTail(6000))
		}
		if err := d.Stop(); err != nil {
			t.Errorf("stopping istiod: %v", err)
		}
	})
	t.Logf("istiod ready: webhook %s, secure gRPC %s, log %s", d.HTTPSAddr, d.SecureGRPCAddr, d.LogPath)
	if !strings.HasPrefix(d.HTTPSAddr, d.ServiceIP+":") || !cidr.Contains(net.ParseIP(d.ServiceIP)) {
		t.Fatalf("istiod webhook address %s is not on its Service IP %s", d.HTTPSAddr, d.ServiceIP)
	}

	// The mirrored files match the ConfigMaps, and follow a change.
	mesh, err := cs.CoreV1().ConfigMaps("istio-system").Get(ctx, "istio", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(d.WorkDir, "etc/istio/config/mesh")); err != nil || string(b) != mesh.Data["mesh"] || len(b) == 0 {
		t.Fatalf("etc/istio/config/mesh does not hold ConfigMap istio's mesh key (err %v)", err)
	}
	if _, err := cs.CoreV1().Secrets("istio-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "harness-mirror-probe"},
		Data:       map[string][]byte{"k": []byte("v1")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	probeDir := t.TempDir()
	mirror, err := StartMirror(ctx, cs, nil, MirrorSource{Secret: true, Namespace: "istio-system", Name: "harness-mirror-probe", Dir: probeDir})
	if err != nil {
		t.Fatal(err)
	}
	defer mirror.Stop()
	if b, err := os.ReadFile(filepath.Join(probeDir, "k")); err != nil || string(b) != "v1" {
		t.Fatalf("mirror of Secret harness-mirror-probe: %q, %v; want v1", b, err)
	}
	patch := []byte(`{"data":{"k":null,"k2":"djI="}}`)
	if _, err := cs.CoreV1().Secrets("istio-system").Patch(ctx, "harness-mirror-probe", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	Eventually(t, ctx, 30*time.Second, "mirror follows a Secret change", func(context.Context) (bool, string, error) {
		_, errOld := os.Stat(filepath.Join(probeDir, "k"))
		b, _ := os.ReadFile(filepath.Join(probeDir, "k2"))
		return os.IsNotExist(errOld) && string(b) == "v2", fmt.Sprintf("k removed: %v, k2=%q", os.IsNotExist(errOld), b), nil
	})

	// 4. istiod patches the caBundle of its injection webhook.
	Eventually(t, ctx, time.Minute, "istiod patches the injector webhook caBundle", func(ctx context.Context) (bool, string, error) {
		wh, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "istio-sidecar-injector", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		if len(wh.Webhooks) == 0 {
			return false, "", fmt.Errorf("webhook configuration has no webhooks")
		}
		for _, w := range wh.Webhooks {
			if !strings.Contains(string(w.ClientConfig.CABundle), "BEGIN CERTIFICATE") {
				return false, "webhook " + w.Name + " has no caBundle yet", nil
			}
		}
		return true, "", nil
	})

	// 5. Sidecar injection in a labelled namespace, pods Running on the simulated nodes.
	const ns, replicas = "injected", 2
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns, Labels: map[string]string{"istio-injection": "enabled"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	_, err = cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "web", Image: "example.invalid/web:1",
					Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
				}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kwokNodes := map[string]bool{}
	for _, n := range nodes.Items {
		if n.Annotations["kwok.x-k8s.io/node"] == "fake" {
			kwokNodes[n.Name] = true
		}
	}
	if len(kwokNodes) < 2 {
		t.Fatalf("want at least 2 simulated nodes, have %v", kwokNodes)
	}
	Eventually(t, ctx, 2*time.Minute, "injected pods Running on simulated nodes", func(ctx context.Context) (bool, string, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err.Error(), nil
		}
		if len(pods.Items) != replicas {
			return false, fmt.Sprintf("%d pods", len(pods.Items)), nil
		}
		for _, p := range pods.Items {
			inits, ctrs := containerNames(p.Spec.InitContainers), containerNames(p.Spec.Containers)
			if !slices.Contains(inits, "istio-init") {
				return false, "", fmt.Errorf("pod %s was not injected: init containers %v, containers %v", p.Name, inits, ctrs)
			}
			if !slices.Contains(ctrs, "istio-proxy") && !slices.Contains(inits, "istio-proxy") {
				return false, "", fmt.Errorf("pod %s has no istio-proxy: init containers %v, containers %v", p.Name, inits, ctrs)
			}
			if p.Status.Phase != corev1.PodRunning || !kwokNodes[p.Spec.NodeName] {
				return false, fmt.Sprintf("pod %s: phase %s on node %q", p.Name, p.Status.Phase, p.Spec.NodeName), nil
			}
		}
		return true, "", nil
	})
	pods, _ := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	for _, p := range pods.Items {
		t.Logf("pod %s on %s: %s; init %v, containers %v", p.Name, p.Spec.NodeName, p.Status.Phase,
			containerNames(p.Spec.InitContainers), containerNames(p.Spec.Containers))
	}

	// 6. istiod publishes the mesh root certificate into the namespace.
	Eventually(t, ctx, time.Minute, "ConfigMap istio-ca-root-cert in "+ns, func(ctx context.Context) (bool, string, error) {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "not found", nil
		} else if err != nil {
			return false, err.Error(), nil
		}
		return strings.Contains(cm.Data["root-cert.pem"], "BEGIN CERTIFICATE"), "no root-cert.pem", nil
	})
	t.Logf("whole test in %v", time.Since(start).Round(time.Millisecond))
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

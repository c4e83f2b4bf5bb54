//go:build e2e

package chart

// TestChartOnLocalCluster installs charts/capstan on a local kwok cluster and runs Capstan
// with what the chart installed. Build and run it inside a loopback-only network namespace:
//
//	go test -c -tags e2e -o bin/chart.test ./test/chart
//	hack/in-netns.sh bin/chart.test -test.v
//
// What is real: etcd, kube-apiserver (with its PodSecurity admission enforcing the restricted
// standard on the release namespace), kube-controller-manager and kube-scheduler; the chart,
// rendered by the Helm v4 SDK exactly as `helm install` would render it, and its objects
// applied with server-side apply; the operator binary (bin/capstan), authenticated as the
// chart's ServiceAccount with a bound token, so it has exactly the chart's RBAC (ClusterRole,
// the leader-election Role, and the mesh CA's Secrets Role in the control-plane namespace the
// chart creates); Capstan's install of Istio's control plane from config/samples, which starts
// istiod only once the mesh CA has written its cacerts Secret with that Role.
//
// What is simulated: kwok plays the kubelets, so the chart's Deployment gets a pod that is
// scheduled, admitted and reported Running and Ready on a simulated node, but no container
// runs and its image is never pulled; the operator therefore runs as a local process (with
// the chart's container arguments, less the listen addresses) instead of inside that pod.
// istiod's Deployment likewise becomes Available on simulated nodes (no istiod process: this
// test is about the chart, test/e2e runs the real istiod). The webhook is off
// (webhook.enabled=false): the local cluster has no cert-manager to issue its certificate,
// and no pod would serve it; the unit tests check the webhook's objects.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/test/harness"
)

// fieldManager is the field manager Helm v4 applies with.
const fieldManager = "helm"

func TestChartOnLocalCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	if err := harness.RequireLoopbackNetns(); err != nil {
		t.Fatal(err)
	}
	if err := harness.RequireBins("capstan"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := harness.StartCluster(ctx, harness.ClusterOptions{Nodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, comp := range []string{"kube-apiserver", "kube-controller-manager"} {
				t.Logf("--- %s log (tail):\n%s", comp, c.LogTail(comp, 3000))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	t.Logf("cluster %s up in %v", c.Name, time.Since(start).Round(time.Millisecond))
	cs := c.Clientset
	dyn, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}

	// 1. Render the chart as `helm install capstan charts/capstan -n capstan-system
	// --set webhook.enabled=false` would, for this server's version.
	sv, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	ch := loadChart(t)
	objs, err := renderChart(ch, map[string]any{"webhook": map[string]any{"enabled": false}}, sv.GitVersion)
	if err != nil {
		t.Fatalf("rendering the chart: %v", err)
	}
	dep := deployment(t, objs)
	sa := dep.Spec.Template.Spec.ServiceAccountName
	// harness.StartOperator mints its token for capstan-system/capstan: the chart, installed
	// as release "capstan", must create exactly that ServiceAccount (and nothing else binds it).
	if sa != harness.OperatorServiceAccount || releaseNamespace != harness.OperatorNamespace || find(objs, "ServiceAccount", sa) == nil {
		t.Fatalf("the chart's operator identity is %s/%s (created: %v); harness.StartOperator runs as %s",
			releaseNamespace, sa, find(objs, "ServiceAccount", sa) != nil, harness.OperatorUser)
	}

	// The release namespace enforces the restricted Pod Security Standard: the apiserver
	// rejects the operator's pod unless the chart's security context meets it.
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: releaseNamespace,
		Labels: map[string]string{
			"pod-security.kubernetes.io/enforce":         "restricted",
			"pod-security.kubernetes.io/enforce-version": "latest",
		},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// 2. The CRDs first (Helm installs crds/ before the templates), until Established.
	for _, f := range ch.CRDObjects() {
		crd, err := parseObject(f.File.Data)
		if err != nil || crd == nil || crd.GetKind() != "CustomResourceDefinition" {
			t.Fatalf("%s: %v (kind %v)", f.Filename, err, crd)
		}
		ri := dyn.Resource(apiextensionsv1.SchemeGroupVersion.WithResource("customresourcedefinitions"))
		if _, err := ri.Apply(ctx, crd.GetName(), crd, metav1.ApplyOptions{FieldManager: fieldManager, Force: true}); err != nil {
			t.Fatalf("applying CRD %s: %v", crd.GetName(), err)
		}
		harness.Eventually(t, ctx, time.Minute, "CRD "+crd.GetName()+" Established", func(ctx context.Context) (bool, string, error) {
			u, err := ri.Get(ctx, crd.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, err.Error(), nil
			}
			var got apiextensionsv1.CustomResourceDefinition
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &got); err != nil {
				return false, "", err
			}
			for _, cond := range got.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true, "", nil
				}
			}
			return false, fmt.Sprintf("conditions %+v", got.Status.Conditions), nil
		})
	}

	// 3. The templates, server-side.
	if err := c.Apply(ctx, fieldManager, objs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("applied %d CRDs and %d objects of the chart", len(ch.CRDObjects()), len(objs))

	// The apiserver grants the operator Secrets in the control-plane namespace the chart
	// created, and nowhere else.
	cpNS := "istio-system"
	if n, err := cs.CoreV1().Namespaces().Get(ctx, cpNS, metav1.GetOptions{}); err != nil {
		t.Fatalf("the chart's control-plane namespace: %v", err)
	} else if n.Annotations["helm.sh/resource-policy"] != "keep" {
		t.Errorf("namespace %s annotations %v lack helm.sh/resource-policy: keep", cpNS, n.Annotations)
	}
	for _, tc := range []struct {
		namespace, group, resource, verb string
		want                             bool
	}{
		{cpNS, "", "secrets", "create", true},
		{cpNS, "", "secrets", "watch", true},
		{cpNS, "cert-manager.io", "certificates", "create", true},
		{releaseNamespace, "", "secrets", "get", false},
		{"default", "", "secrets", "list", false},
		{"", "", "secrets", "list", false}, // all namespaces
		{"default", "cert-manager.io", "certificates", "create", false},
	} {
		what := fmt.Sprintf("%s may %s %q %s in namespace %q", harness.OperatorUser, tc.verb, tc.group, tc.resource, tc.namespace)
		if tc.want {
			// The apiserver's RBAC authorizer sees the new RoleBinding through its informer.
			harness.Eventually(t, ctx, 30*time.Second, what, func(ctx context.Context) (bool, string, error) {
				allowed, err := operatorMay(ctx, cs, tc.namespace, tc.group, tc.resource, tc.verb)
				return allowed, "denied", err
			})
			continue
		}
		// Checked after the grants above are visible: a denial now is the chart's, not lag.
		allowed, err := operatorMay(ctx, cs, tc.namespace, tc.group, tc.resource, tc.verb)
		if err != nil {
			t.Fatal(err)
		}
		if allowed {
			t.Errorf("%s: allowed, want denied", what)
		}
	}

	// 4. The manager Deployment becomes Available, its pod admitted under the restricted
	// standard and Running on a simulated node as the chart's ServiceAccount.
	kwokNodes := simulatedNodes(t, ctx, c)
	harness.Eventually(t, ctx, 2*time.Minute, "Deployment "+dep.Name+" Available on simulated nodes", func(ctx context.Context) (bool, string, error) {
		d, err := cs.AppsV1().Deployments(releaseNamespace).Get(ctx, dep.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		for _, cond := range d.Status.Conditions {
			// The ReplicaSet cannot create the pod. A PodSecurity refusal is final; anything
			// else (the ServiceAccount not yet visible to admission, say) the ReplicaSet
			// controller retries.
			if cond.Type == appsv1.DeploymentReplicaFailure && cond.Status == corev1.ConditionTrue {
				if strings.Contains(cond.Message, "violates PodSecurity") {
					return false, "", fmt.Errorf("%s: %s", cond.Reason, cond.Message)
				}
				return false, cond.Reason + ": " + cond.Message, nil
			}
		}
		if !deploymentAvailable(d) {
			return false, fmt.Sprintf("status %+v", d.Status), nil
		}
		sel := metav1.FormatLabelSelector(d.Spec.Selector)
		pods, err := cs.CoreV1().Pods(releaseNamespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return false, err.Error(), nil
		}
		if len(pods.Items) != int(*dep.Spec.Replicas) {
			return false, fmt.Sprintf("%d pods match %s", len(pods.Items), sel), nil
		}
		for _, p := range pods.Items {
			if p.Spec.ServiceAccountName != sa {
				return false, "", fmt.Errorf("pod %s runs as %q, want %q", p.Name, p.Spec.ServiceAccountName, sa)
			}
			if p.Status.Phase != corev1.PodRunning || !kwokNodes[p.Spec.NodeName] {
				return false, fmt.Sprintf("pod %s: %s on %q", p.Name, p.Status.Phase, p.Spec.NodeName), nil
			}
		}
		return true, "", nil
	})

	// 5. The operator, as the chart's ServiceAccount, with the chart's arguments less the
	// listen addresses (the harness picks free loopback ports, and waits on /readyz).
	var args []string
	for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
		if strings.HasPrefix(a, "--health-probe-bind-address") || strings.HasPrefix(a, "--metrics-bind-address") || a == "--leader-elect" {
			continue
		}
		args = append(args, a)
	}
	leaderElect := slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "--leader-elect")
	if !leaderElect {
		t.Fatal("the chart's default Deployment does not run leader election")
	}
	op, err := harness.StartOperator(ctx, c, harness.OperatorOptions{LeaderElect: leaderElect, Args: args})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- capstan log (tail):\n%s", op.LogTail(6000))
		}
		if err := op.Stop(); err != nil {
			t.Errorf("stopping the operator: %v", err)
		}
	})
	t.Logf("operator running as %s with %v", harness.OperatorUser, args)

	// Leader election works with the chart's Role: the operator holds the Lease.
	harness.Eventually(t, ctx, time.Minute, "the operator holds the leader-election Lease", func(ctx context.Context) (bool, string, error) {
		l, err := cs.CoordinationV1().Leases(releaseNamespace).Get(ctx, "capstan.mesh.capstan.dev", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "", "no holder", nil
	})

	// 6. The sample MeshControlPlane becomes Ready: istiod's Deployment Available on the
	// simulated nodes, installed with nothing but the chart's RBAC.
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl(ctx, "apply", "-f", root+"/config/samples/mesh_v1alpha1_meshcontrolplane.yaml"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	mcp := dyn.Resource(meshv1.GroupVersion.WithResource("meshcontrolplanes"))
	harness.Eventually(t, ctx, 3*time.Minute, "MeshControlPlane default Ready=True", func(ctx context.Context) (bool, string, error) {
		u, err := mcp.Get(ctx, meshv1.SingletonName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		var m meshv1.MeshControlPlane
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &m); err != nil {
			return false, "", err
		}
		cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionReady)
		if cond == nil || cond.Status != metav1.ConditionTrue || cond.ObservedGeneration != m.Generation {
			return false, fmt.Sprintf("conditions %+v", m.Status.Conditions), nil
		}
		return true, "", nil
	})
	installed := mustGet(t, ctx, mcp, meshv1.SingletonName).Object
	ns, _, _ := unstructured.NestedString(installed, "spec", "namespace")
	// The sample is RevisionBased: istiod runs as the revision of its version.
	active, _, _ := unstructured.NestedString(installed, "status", "activeRevision")
	name := "istiod-" + active
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the active revision %q: %v", active, err)
	}
	if !deploymentAvailable(d) {
		t.Fatalf("MeshControlPlane is Ready but Deployment %s/%s is not Available: %+v", ns, name, d.Status)
	}
	// istiod started on the mesh CA's cacerts, which the operator wrote with the chart's Role.
	if ns != cpNS {
		t.Fatalf("the sample installs into %s, the chart granted Secrets in %s", ns, cpNS)
	}
	if _, err := cs.CoreV1().Secrets(ns).Get(ctx, "cacerts", metav1.GetOptions{}); err != nil {
		t.Fatalf("the mesh CA's cacerts Secret: %v", err)
	}
	t.Logf("MeshControlPlane default Ready, %s/istiod %d/%d available; whole test in %v",
		ns, d.Status.AvailableReplicas, *d.Spec.Replicas, time.Since(start).Round(time.Millisecond))
}

// operatorMay asks the apiserver whether the operator's ServiceAccount may do verb on a
// resource in a namespace ("" for all namespaces).
func operatorMay(ctx context.Context, cs kubernetes.Interface, namespace, group, resource, verb string) (bool, error) {
	r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   harness.OperatorUser,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + harness.OperatorNamespace, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace, Group: group, Resource: resource, Verb: verb,
		},
	}}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("SubjectAccessReview for %s %s: %w", verb, resource, err)
	}
	return r.Status.Allowed, nil
}

func deploymentAvailable(d *appsv1.Deployment) bool {
	if d.Spec.Replicas == nil || d.Status.ObservedGeneration < d.Generation || d.Status.AvailableReplicas < *d.Spec.Replicas {
		return false
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func simulatedNodes(t *testing.T, ctx context.Context, c *harness.Cluster) map[string]bool {
	t.Helper()
	nodes, err := c.Clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, n := range nodes.Items {
		if n.Annotations["kwok.x-k8s.io/node"] == "fake" {
			out[n.Name] = true
		}
	}
	if len(out) == 0 {
		t.Fatal("no simulated nodes")
	}
	return out
}

func mustGet(t *testing.T, ctx context.Context, ri dynamic.NamespaceableResourceInterface, name string) *unstructured.Unstructured {
	t.Helper()
	u, err := ri.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

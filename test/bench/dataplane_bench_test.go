//go:build e2e

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/revision"
	"github.com/capstan-mesh/capstan/test/harness"
)

// The data-plane benchmark's cluster: its own simulated node for the workloads (kwokctl's
// nodes allow 110 pods each; a node created without a status gets kwok's default of a
// million), namespaces dp-0000... with one Deployment each, every other one meshed.
const (
	dpNode          = "dp-bulk"
	dpLabel         = "capstan-bench"
	dpLabelValue    = "dataplane"
	dpFromVersion   = "1.31.0"
	dpToVersion     = "1.31.1"
	dpMaxConcurrent = 4
	// dpSettle is the least time between two pod events of the latency probe: the
	// data-plane status is written at most once a second, and each probe is to measure an
	// event that finds the controller idle, not one queued behind the last write.
	dpSettle = 1500 * time.Millisecond
)

// TestBenchDataPlane measures the operator on a cluster of dpNamespaces namespaces and
// dpNamespaces×dpPods pods (default 1,000 and 10,000), half of them injected by the real
// istiod:
//
//   - a fresh operator, started with the MeshControlPlane present and the control plane
//     installed: its time and CPU to converge (status.injection counts every pod right),
//     its RSS then and after a quiet period, and its API requests in both;
//   - the time from a pod event (an injected pod created, or deleted) to status.injection
//     counting it, each event on an idle controller;
//   - an in-place upgrade (spec.version 1.31.0 -> 1.31.1) with restartStaleWorkloads
//     OnUpgrade, where CAPSTAN_BENCH_DP_RESTARTS (default 20) Deployments may be restarted
//     and every other meshed one is opted out (capstan.dev/restart: "false"): the
//     operator's writes to workloads per restarted workload, and its other requests.
//
// The cluster is populated before the measured operator starts: an operator installs the
// control plane at 1.31.0 and is stopped, the real istiod runs, and the Deployments are
// created (their pods by the controller-manager, injected by istiod's webhook, run by kwok).
//
// CAPSTAN_BENCH_DP_NAMESPACES, CAPSTAN_BENCH_DP_PODS (per namespace),
// CAPSTAN_BENCH_DP_EVENTS (default 10 of each kind), CAPSTAN_BENCH_DP_RESTARTS (0 skips the
// upgrade) and CAPSTAN_BENCH_STEADY (the quiet period, default 60s) tune it;
// CAPSTAN_BENCH_PROFILE_DIR=DIR saves the measured operator's heap profiles (converged and
// idle) and a CPU profile of its first seconds there.
func TestBenchDataPlane(t *testing.T) {
	nsCount := envInt("CAPSTAN_BENCH_DP_NAMESPACES", 1000)
	perNS := envInt("CAPSTAN_BENCH_DP_PODS", 10)
	probes := envInt("CAPSTAN_BENCH_DP_EVENTS", 10)
	restarts := envInt("CAPSTAN_BENCH_DP_RESTARTS", 20)
	if os.Getenv("CAPSTAN_BENCH_DP_RESTARTS") == "0" {
		restarts = 0
	}
	steady := envDuration("CAPSTAN_BENCH_STEADY", 60*time.Second)
	profileDir := os.Getenv("CAPSTAN_BENCH_PROFILE_DIR")
	meshedNS := (nsCount + 1) / 2
	if restarts > meshedNS {
		restarts = meshedNS
	}

	ctx := context.Background()
	c, k8s := startClusterWith(ctx, t, harness.ClusterOptions{DisableQPSLimits: true})
	bulk := bulkClient(t, c)
	if err := createBulkNode(ctx, bulk); err != nil {
		t.Fatal(err)
	}

	// The control plane at 1.31.0, and the real istiod serving its webhook.
	prep, err := harness.StartOperator(ctx, c, dpOperatorOptions(""))
	if err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, dpMCP()); err != nil {
		t.Fatal(err)
	}
	if err := waitReady(ctx, k8s); err != nil {
		t.Fatalf("%v\n%s", err, prep.LogTail(8000))
	}
	if err := waitIstiodAvailable(ctx, c); err != nil {
		t.Fatal(err)
	}
	istiod, err := harness.StartIstiod(ctx, c, harness.IstiodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = istiod.Stop() })
	// Not needed to populate, and every pod event would cost it CPU the machine's two
	// cores are short of while 10,000 pods are created.
	if err := prep.Stop(); err != nil {
		t.Fatal(err)
	}

	popStart := time.Now()
	if err := populate(ctx, bulk, nsCount, perNS, restarts); err != nil {
		t.Fatalf("%v\n--- istiod:\n%s", err, istiod.LogTail(4000))
	}
	t.Logf("namespaces and Deployments created in %.1fs", time.Since(popStart).Seconds())
	if err := waitDeploymentsAvailable(ctx, bulk, nsCount*perNS, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	populated := time.Since(popStart)
	seen, err := countPods(ctx, k8s, dpFromVersion)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("populated in %.1fs: %d namespaces, %d pods: %+v", populated.Seconds(), nsCount, nsCount*perNS, seen)
	want := meshv1.InjectionStatus{MeshedNamespaces: int32(meshedNS), InjectedPods: int32(meshedNS * perNS)}
	if seen.injected != meshedNS*perNS || seen.uninjected != 0 || seen.running != nsCount*perNS || seen.otherVersion != 0 {
		t.Fatalf("the populated cluster is not what the benchmark expects (%d injected at %s of %d running): %+v", meshedNS*perNS, dpFromVersion, nsCount*perNS, seen)
	}
	t.Logf("what istiod wrote on an injected pod: labels %v, annotations %v", seen.sampleLabels, seen.sampleAnnotations)
	// The first operator wrote a status.injection too (before the pods existed): it goes,
	// so that the counts the measured operator is waited for are its own.
	if err := clearInjectionStatus(ctx, k8s); err != nil {
		t.Fatal(err)
	}

	// The measured operator: a fresh process, the MeshControlPlane and 10,000 pods present.
	pprofAddr := ""
	if profileDir != "" {
		pprofAddr = freeLoopbackAddr(t)
	}
	start := time.Now()
	op, err := harness.StartOperator(ctx, c, dpOperatorOptions(pprofAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = op.Stop() })
	profiled := make(chan struct{})
	if pprofAddr != "" {
		go func() {
			defer close(profiled)
			saveCPUProfile(t, pprofAddr, profileDir, "cpu-dataplane-converge.pb.gz", 30*time.Second)
		}()
	} else {
		close(profiled)
	}
	defer func() { <-profiled }()
	if err := waitInjection(ctx, k8s, 5*time.Minute, func(m *meshv1.MeshControlPlane) bool {
		return meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.ConditionReady) && m.Status.Injection != nil &&
			countsEqual(*m.Status.Injection, want)
	}); err != nil {
		t.Fatalf("converging: %v\n%s", err, op.LogTail(8000))
	}
	convergedAt := time.Now()
	converged := convergedAt.Sub(start)
	cpuConverged := cpuTime(op.PID())
	rssConverged, anonConverged := rssKiB(op.PID())
	saveHeapProfile(t, pprofAddr, profileDir, "heap-dataplane-converged.pb.gz")
	time.Sleep(steady)
	rssIdle, anonIdle := rssKiB(op.PID())
	cpuIdle := cpuTime(op.PID())
	saveHeapProfile(t, pprofAddr, profileDir, "heap-dataplane-idle.pb.gz")
	idleEnd := time.Now()

	// Pod events, one at a time, each on an idle controller.
	var created, deleted []float64
	base := want.InjectedPods
	for i := range probes {
		time.Sleep(dpSettle)
		took, err := probePod(ctx, k8s, fmt.Sprintf("probe-%02d", i), base)
		if err != nil {
			t.Fatalf("probe %d: %v\n%s", i, err, op.LogTail(4000))
		}
		created = append(created, took.Seconds())
		time.Sleep(dpSettle)
		took, err = unprobePod(ctx, k8s, fmt.Sprintf("probe-%02d", i), base)
		if err != nil {
			t.Fatalf("probe %d: %v\n%s", i, err, op.LogTail(4000))
		}
		deleted = append(deleted, took.Seconds())
	}
	probesEnd := time.Now()

	// The in-place upgrade and its restarts.
	var up *upgradeRun
	if restarts > 0 {
		if up, err = upgrade(ctx, k8s, bulk, nsCount, perNS, restarts); err != nil {
			t.Fatalf("upgrade: %v\n--- operator:\n%s\n--- istiod:\n%s", err, op.LogTail(8000), istiod.LogTail(3000))
		}
	}

	events, err := readAuditFile(c.AuditLogPath, harness.OperatorUser)
	if err != nil {
		t.Fatal(err)
	}
	converge := Count(events, start, convergedAt)
	idle := Count(events, convergedAt, idleEnd)
	probing := Count(events, idleEnd, probesEnd)
	t.Logf("converge requests by verb and resource: %v", converge.ByVerb)
	t.Logf("idle requests by verb and resource: %v", idle.ByVerb)
	t.Logf("pod-event requests by verb and resource: %v", probing.ByVerb)

	var b strings.Builder
	fmt.Fprintf(&b, "\nCapstan data-plane benchmark: %d namespaces, %d pods (%d injected by the real istiod), local kwok cluster\n", nsCount, nsCount*perNS, meshedNS*perNS)
	fmt.Fprintf(&b, "| measure | value | target |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| cluster populated (namespaces, Deployments, pods Running and injected) | %.1f s | |\n", populated.Seconds())
	fmt.Fprintf(&b, "| operator start -> status.injection right (and Ready) | %.2f s | |\n", converged.Seconds())
	fmt.Fprintf(&b, "| operator CPU time, start -> converged | %.2f s | <= 8 s |\n", cpuConverged.Seconds())
	fmt.Fprintf(&b, "| operator RSS at convergence | %.1f MiB (anonymous %.1f) | <= 85 MiB |\n", float64(rssConverged)/1024, float64(anonConverged)/1024)
	fmt.Fprintf(&b, "| operator RSS after %s idle | %.1f MiB (anonymous %.1f) | <= 85 MiB |\n", steady, float64(rssIdle)/1024, float64(anonIdle)/1024)
	fmt.Fprintf(&b, "| operator CPU time in %s idle | %.2f s | |\n", steady, (cpuIdle - cpuConverged).Seconds())
	fmt.Fprintf(&b, "| API requests to converge (writes, Lease renewals aside) | %d (%d) | |\n", converge.Total, converge.Writes)
	fmt.Fprintf(&b, "| API requests in %s idle (writes, Lease renewals aside) | %d (%d) | |\n", steady, idle.Total, idle.Writes)
	fmt.Fprintf(&b, "| injected pod created -> counted in status, median / max of %d | %.3f / %.3f s | <= 2 s |\n", len(created), Median(slices.Clone(created)), slices.Max(created))
	fmt.Fprintf(&b, "| injected pod deleted -> counted in status, median / max of %d | %.3f / %.3f s | <= 2 s |\n", len(deleted), Median(slices.Clone(deleted)), slices.Max(deleted))
	if up != nil {
		restart := Count(events, up.start, up.done)
		wl := workloadWrites(events, up.start, up.done)
		fmt.Fprintf(&b, "| upgrade %s -> %s: restarts done (%d Deployments of %d pods, maxConcurrent %d) | %.1f s | |\n", dpFromVersion, dpToVersion, restarts, perNS, dpMaxConcurrent, up.done.Sub(up.start).Seconds())
		fmt.Fprintf(&b, "| operator writes to workloads per restarted workload | %.2f (%d for %d) | 1 |\n", float64(wl)/float64(restarts), wl, restarts)
		fmt.Fprintf(&b, "| operator's other requests during the upgrade (writes) | %d (%d) | |\n", restart.Total-wl, restart.Writes-wl)
		t.Logf("upgrade requests by verb and resource: %v", restart.ByVerb)
	}
	t.Log(b.String())
	fmt.Print(b.String())
	t.Logf("pod created -> counted, each: %s", seconds(created))
	t.Logf("pod deleted -> counted, each: %s", seconds(deleted))
}

// dpOperatorOptions are the Deployment's settings (see TestBench), with the pprof endpoint
// when addr is set.
func dpOperatorOptions(pprofAddr string) harness.OperatorOptions {
	opts := harness.OperatorOptions{LeaderElect: true, Args: []string{"--zap-devel=false"},
		Env: []string{"POD_NAMESPACE=" + harness.OperatorNamespace, "GOMEMLIMIT=268435456"}}
	if pprofAddr != "" {
		opts.Args = append(opts.Args, "--pprof-bind-address="+pprofAddr)
	}
	// CAPSTAN_BENCH_OPERATOR_GOGC runs the measured operator with another GOGC, to see what
	// a lower heap pace costs in CPU (the Deployment sets none).
	if gogc := os.Getenv("CAPSTAN_BENCH_OPERATOR_GOGC"); gogc != "" {
		opts.Env = append(opts.Env, "GOGC="+gogc)
	}
	return opts
}

func dpMCP() *meshv1.MeshControlPlane {
	return &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}, Spec: meshv1.MeshControlPlaneSpec{
		Version:    dpFromVersion,
		Upgrade:    inPlace,
		Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](1)}},
		Injection: &meshv1.InjectionSpec{Rollout: &meshv1.RolloutSpec{
			RestartStaleWorkloads: meshv1.RestartOnUpgrade,
			MaxConcurrent:         dpMaxConcurrent,
		}},
	}}
}

// bulkClient is a client without a rate limit of its own, for populating the cluster.
func bulkClient(t *testing.T, c *harness.Cluster) kubernetes.Interface {
	cfg := rest.CopyConfig(c.RESTConfig)
	cfg.QPS, cfg.Burst = 5000, 10000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// createBulkNode adds the simulated node the workloads run on and waits until it is Ready.
func createBulkNode(ctx context.Context, cs kubernetes.Interface) error {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: dpNode,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels:      map[string]string{"type": "kwok", "kubernetes.io/hostname": dpNode, "kubernetes.io/os": "linux"}},
		// kwok gives pods addresses from the node's range: room for every pod.
		Spec: corev1.NodeSpec{PodCIDR: "10.128.0.0/16", PodCIDRs: []string{"10.128.0.0/16"}},
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, dpNode, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

func dpNamespace(i int) string { return fmt.Sprintf("dp-%04d", i) }

// meshed says whether namespace i is labelled for injection: every other one.
func meshed(i int) bool { return i%2 == 0 }

// populate creates the namespaces and one Deployment of perNS replicas in each, many at a
// time. Of the meshed namespaces' Deployments only the first `restartable` may be
// restarted; the others carry capstan.dev/restart: "false".
func populate(ctx context.Context, cs kubernetes.Interface, nsCount, perNS, restartable int) error {
	const workers = 32
	return parallel(ctx, nsCount, workers, func(ctx context.Context, i int) error {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: dpNamespace(i), Labels: map[string]string{dpLabel: dpLabelValue}}}
		if meshed(i) {
			ns.Labels["istio-injection"] = "enabled"
		}
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("namespace %s: %w", ns.Name, err)
		}
		name := fmt.Sprintf("svc-%04d", i)
		labels := map[string]string{"app": name, dpLabel: dpLabelValue}
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: name, Labels: map[string]string{dpLabel: dpLabelValue}},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To(int32(perNS)),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						// Straight onto the workloads' node: the scheduler would place 10,000
						// pods one by one, and its figures are not the operator's.
						NodeName:   dpNode,
						Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}},
					},
				},
			},
		}
		if meshed(i) && i/2 >= restartable {
			d.Annotations = map[string]string{dataplane.RestartAnnotation: "false"}
		}
		if _, err := cs.AppsV1().Deployments(ns.Name).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("deployment %s/%s: %w", ns.Name, name, err)
		}
		return nil
	})
}

// clearInjectionStatus removes status.injection.
func clearInjectionStatus(ctx context.Context, k8s client.Client) error {
	m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
	if err := k8s.Status().Patch(ctx, m, client.RawPatch(types.MergePatchType, []byte(`{"status":{"injection":null}}`))); err != nil {
		return fmt.Errorf("clearing status.injection: %w", err)
	}
	if m.Status.Injection != nil {
		return fmt.Errorf("status.injection is still %+v after it was cleared", *m.Status.Injection)
	}
	return nil
}

// parallel runs f(0..n-1) on `workers` goroutines and returns the first error.
func parallel(ctx context.Context, n, workers int, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(ctx, i); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		}()
	}
	func() {
		defer close(next)
		for i := range n {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	return errors.Join(slices.Collect(func(yield func(error) bool) {
		for e := range errs {
			if !yield(e) {
				return
			}
		}
	})...)
}

// waitDeploymentsAvailable waits until the benchmark's Deployments have every replica
// updated and available, `pods` in all.
func waitDeploymentsAvailable(ctx context.Context, cs kubernetes.Interface, pods int, timeout time.Duration) error {
	last := ""
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{LabelSelector: dpLabel + "=" + dpLabelValue})
		if err != nil {
			return false, nil
		}
		avail, updated := 0, 0
		for _, d := range list.Items {
			if d.Status.ObservedGeneration == d.Generation {
				avail += int(d.Status.AvailableReplicas)
				updated += int(d.Status.UpdatedReplicas)
			}
		}
		last = fmt.Sprintf("%d Deployments, %d replicas updated and %d available of %d", len(list.Items), updated, avail, pods)
		return avail == pods && updated == pods, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the workloads: %s: %w", last, err)
	}
	return nil
}

// podCensus is what the benchmark sees of the workloads' pods, counted the way
// status.injection counts them.
type podCensus struct {
	running, injected, uninjected, otherVersion int
	sampleLabels, sampleAnnotations             map[string]string
}

// countPods lists the workloads' pods, metadata only, a page at a time.
func countPods(ctx context.Context, k8s client.Client, version string) (podCensus, error) {
	var pc podCensus
	cont := ""
	for {
		list := &metav1.PartialObjectMetadataList{}
		list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
		if err := k8s.List(ctx, list, client.MatchingLabels{dpLabel: dpLabelValue}, client.Limit(1000), client.Continue(cont)); err != nil {
			return pc, err
		}
		for _, p := range list.Items {
			pc.running++
			if _, ok := p.Annotations[revision.StatusAnnotation]; !ok {
				var i int
				if _, err := fmt.Sscanf(p.Namespace, "dp-%04d", &i); err == nil && meshed(i) {
					pc.uninjected++
				}
				continue
			}
			pc.injected++
			if p.Annotations[dataplane.ProxyVersionAnnotation] != version {
				pc.otherVersion++
			}
			if pc.sampleAnnotations == nil {
				pc.sampleLabels, pc.sampleAnnotations = p.Labels, p.Annotations
			}
		}
		if cont = list.Continue; cont == "" {
			return pc, nil
		}
	}
}

func countsEqual(got, want meshv1.InjectionStatus) bool {
	return got.MeshedNamespaces == want.MeshedNamespaces && got.InjectedPods == want.InjectedPods &&
		got.UninjectedPods == want.UninjectedPods && got.StalePods == want.StalePods
}

// waitInjection polls the MeshControlPlane every 10 ms until ok holds.
func waitInjection(ctx context.Context, k8s client.Client, timeout time.Duration, ok func(*meshv1.MeshControlPlane) bool) error {
	var last *meshv1.InjectionStatus
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		m := &meshv1.MeshControlPlane{}
		if err := k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m); err != nil {
			return false, nil
		}
		last = m.Status.Injection
		return ok(m), nil
	})
	if err != nil {
		return fmt.Errorf("status.injection is %+v: %w", last, err)
	}
	return nil
}

// probePod creates an injected pod (istiod's webhook injects it) and returns the time from
// the create's answer to status.injection counting base+1 injected pods.
func probePod(ctx context.Context, k8s client.Client, name string, base int32) (time.Duration, error) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: dpNamespace(0), Name: name, Labels: map[string]string{"app": "probe"}},
		Spec: corev1.PodSpec{NodeName: dpNode, TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{Name: "app", Image: "example.com/probe:1"}}},
	}
	if err := k8s.Create(ctx, p); err != nil {
		return 0, err
	}
	stored := time.Now()
	if _, ok := p.Annotations[revision.StatusAnnotation]; !ok {
		return 0, fmt.Errorf("pod %s/%s was not injected", p.Namespace, p.Name)
	}
	err := waitInjection(ctx, k8s, 30*time.Second, func(m *meshv1.MeshControlPlane) bool {
		return m.Status.Injection != nil && m.Status.Injection.InjectedPods == base+1
	})
	return time.Since(stored), err
}

// unprobePod deletes a probe pod at once (no grace period) and returns the time from the
// delete's answer to status.injection counting base injected pods again.
func unprobePod(ctx context.Context, k8s client.Client, name string, base int32) (time.Duration, error) {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: dpNamespace(0), Name: name}}
	if err := k8s.Delete(ctx, p, client.GracePeriodSeconds(0)); err != nil {
		return 0, err
	}
	gone := time.Now()
	err := waitInjection(ctx, k8s, 30*time.Second, func(m *meshv1.MeshControlPlane) bool {
		return m.Status.Injection != nil && m.Status.Injection.InjectedPods == base
	})
	return time.Since(gone), err
}

// upgradeRun is when the upgrade was asked for and when its restarts were done.
type upgradeRun struct{ start, done time.Time }

// upgrade moves spec.version to dpToVersion and waits until the restartable Deployments
// have been restarted, their pods all injected at the new version, and the others' pods
// are the only stale ones.
func upgrade(ctx context.Context, k8s client.Client, cs kubernetes.Interface, nsCount, perNS, restartable int) (*upgradeRun, error) {
	m := &meshv1.MeshControlPlane{}
	if err := k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m); err != nil {
		return nil, err
	}
	patch := client.MergeFrom(m.DeepCopy())
	m.Spec.Version = dpToVersion
	run := &upgradeRun{start: time.Now()}
	if err := k8s.Patch(ctx, m, patch); err != nil {
		return nil, err
	}
	meshedNS := (nsCount + 1) / 2
	stale := int32((meshedNS - restartable) * perNS)
	last := ""
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Minute, true, func(ctx context.Context) (bool, error) {
		m := &meshv1.MeshControlPlane{}
		if err := k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m); err != nil {
			return false, nil
		}
		inj := m.Status.Injection
		if inj == nil || inj.StalePods != stale || inj.RestartsInProgress != 0 {
			last = fmt.Sprintf("status.injection %+v", inj)
			return false, nil
		}
		for i := range restartable {
			ns, name := dpNamespace(2*i), fmt.Sprintf("svc-%04d", 2*i)
			d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			if d.Annotations[dataplane.RestartedAtAnnotation] == "" {
				last = fmt.Sprintf("Deployment %s/%s not restarted", ns, name)
				return false, nil
			}
			if d.Status.ObservedGeneration != d.Generation || d.Status.UpdatedReplicas != int32(perNS) ||
				d.Status.AvailableReplicas != int32(perNS) || d.Status.Replicas != int32(perNS) {
				last = fmt.Sprintf("Deployment %s/%s rolling out: %+v", ns, name, d.Status)
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for the restarts: %s: %w", last, err)
	}
	run.done = time.Now()
	return run, nil
}

// workloadWrites counts the writes to the benchmark's Deployments, StatefulSets and
// DaemonSets received in [from, to): not the control plane's own (the upgrade re-applies
// istiod's Deployment).
func workloadWrites(events []AuditEvent, from, to time.Time) int {
	return workloadWritesIn(events, from, to, "dp-")
}

// saveCPUProfile saves a CPU profile of the operator's next d as dir/name.
func saveCPUProfile(t *testing.T, addr, dir, name string, d time.Duration) {
	resp, err := httpGet(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds())))
	if err != nil {
		t.Logf("CPU profile: %v", err)
		return
	}
	if err := os.WriteFile(dir+"/"+name, resp, 0o644); err != nil {
		t.Logf("CPU profile: %v", err)
	}
}

func httpGet(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return b, err
}

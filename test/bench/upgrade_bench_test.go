//go:build e2e

package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/revision"
	"github.com/capstan-mesh/capstan/test/harness"
)

// The canary benchmark's cluster: namespaces up-000... selected for injection, each with
// upWorkloads Deployments of one replica, on the bulk node.
const (
	upLabel      = "capstan-bench-upgrade"
	upFrom, upTo = "1.31.0", "1.31.1"
	upFromRev    = "1-31-0"
	upToRev      = "1-31-1"
)

// TestBenchCanaryUpgrade measures a canary upgrade (spec.version 1.31.0 -> 1.31.1,
// RevisionBased, pauseBetweenBatches 0, autoPromote) of CAPSTAN_BENCH_UP_NAMESPACES
// namespaces (default 100) × CAPSTAN_BENCH_UP_WORKLOADS Deployments (default 3), in
// batches of CAPSTAN_BENCH_UP_BATCH namespaces (default 10), with a real istiod per
// revision injecting every pod:
//
//   - the wall time from the version change to status.upgrade Complete, and its parts: the
//     new revision becoming Ready (istiod's Deployment, run by kwok), then the migration;
//   - the rollouts' own time: for each batch, from the first of its restarts seen to the
//     last of its rollouts complete, summed over the batches; the rest of the migration is
//     the operator's own work (noticing a batch is done, labelling the next, restarting it);
//   - the operator's API requests during the upgrade, its writes to workloads per migrated
//     workload, and all its writes per migrated workload.
func TestBenchCanaryUpgrade(t *testing.T) {
	nsCount := envInt("CAPSTAN_BENCH_UP_NAMESPACES", 100)
	perNS := envInt("CAPSTAN_BENCH_UP_WORKLOADS", 3)
	batch := envInt("CAPSTAN_BENCH_UP_BATCH", 10)
	workloads := nsCount * perNS

	ctx := context.Background()
	c, k8s := startClusterWith(ctx, t, harness.ClusterOptions{DisableQPSLimits: true})
	bulk := bulkClient(t, c)
	if err := createBulkNode(ctx, bulk); err != nil {
		t.Fatal(err)
	}
	op, err := harness.StartOperator(ctx, c, dpOperatorOptions(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = op.Stop() })
	m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}, Spec: meshv1.MeshControlPlaneSpec{
		Version:    upFrom,
		Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](1)}},
		Injection:  &meshv1.InjectionSpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{upLabel: "true"}}},
		Upgrade: &meshv1.UpgradeSpec{
			Strategy: meshv1.UpgradeRevisionBased,
			Canary: &meshv1.CanarySpec{BatchSize: int32(batch), AutoPromote: true, PauseBetweenBatches: &metav1.Duration{},
				ReadinessTimeout: &metav1.Duration{Duration: 5 * time.Minute}},
		},
	}}
	if err := k8s.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := waitReady(ctx, k8s); err != nil {
		t.Fatalf("%v\n%s", err, op.LogTail(8000))
	}
	if err := waitDeploymentAvailable(ctx, c, "istiod-"+upFromRev); err != nil {
		t.Fatal(err)
	}
	from, err := harness.StartIstiod(ctx, c, harness.IstiodOptions{Revision: upFromRev})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = from.Stop() })

	popStart := time.Now()
	if err := populateUpgrade(ctx, bulk, nsCount, perNS); err != nil {
		t.Fatalf("%v\n--- istiod:\n%s", err, from.LogTail(4000))
	}
	if err := waitUpgradeWorkloads(ctx, bulk, workloads, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("populated in %.1fs: %d namespaces, %d Deployments", time.Since(popStart).Seconds(), nsCount, workloads)

	rec := newRolloutRecorder()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := rec.watch(watchCtx, bulk); err != nil {
		t.Fatal(err)
	}

	// The upgrade. The second istiod starts as soon as Capstan has written its revision's
	// Service and configuration; until it serves, pods the first batch's restarts create
	// wait for its webhook (their ReplicaSets retry), which counts as rollout time.
	start := time.Now()
	if err := patchVersion(ctx, k8s, upTo); err != nil {
		t.Fatal(err)
	}
	if err := waitDeploymentAvailable(ctx, c, "istiod-"+upToRev); err != nil {
		t.Fatal(err)
	}
	toReady := time.Now()
	to, err := harness.StartIstiod(ctx, c, harness.IstiodOptions{Revision: upToRev})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = to.Stop() })
	var final meshv1.UpgradeStatus
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Minute, true, func(ctx context.Context) (bool, error) {
		cur := &meshv1.MeshControlPlane{}
		if err := k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, cur); err != nil || cur.Status.Upgrade == nil {
			return false, nil
		}
		final = *cur.Status.Upgrade
		return final.Phase == "Complete" || final.Phase == "Failed", nil
	})
	done := time.Now()
	if err != nil || final.Phase != "Complete" {
		t.Fatalf("the upgrade did not complete: %v: %+v\n%s", err, final, op.LogTail(8000))
	}
	stopWatch()

	if n := rec.restarted(); n != workloads {
		t.Errorf("%d Deployments restarted, want every one of %d", n, workloads)
	}
	spans, firstRestart := rec.batchSpans(final.Namespaces, batch)
	var rollouts time.Duration
	for _, s := range spans {
		rollouts += s
	}
	migration := done.Sub(firstRestart)
	events, err := readAuditFile(c.AuditLogPath, harness.OperatorUser)
	if err != nil {
		t.Fatal(err)
	}
	during := Count(events, start, done)
	wl := workloadWritesIn(events, start, done, "up-")
	nsWrites := namespaceWrites(events, start, done, "up-")
	t.Logf("upgrade requests by verb and resource: %v", during.ByVerb)

	var b strings.Builder
	fmt.Fprintf(&b, "\nCapstan canary-upgrade benchmark: %d namespaces × %d Deployments (%d pods, one each), batches of %d, pauseBetweenBatches 0, a real istiod per revision, local kwok cluster\n", nsCount, perNS, workloads, batch)
	fmt.Fprintf(&b, "| measure | value | target |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| spec.version %s -> %s until status.upgrade Complete | %.1f s | |\n", upFrom, upTo, done.Sub(start).Seconds())
	fmt.Fprintf(&b, "| of which: the new revision installed and its istiod available | %.1f s | |\n", toReady.Sub(start).Seconds())
	fmt.Fprintf(&b, "| the migration: first restart -> Complete (%d batches) | %.1f s | |\n", len(spans), migration.Seconds())
	fmt.Fprintf(&b, "| of which the rollouts' own time (per batch: first restart -> last rollout complete, summed) | %.1f s | |\n", rollouts.Seconds())
	fmt.Fprintf(&b, "| the operator's own work in the migration (the rest) | %.1f s | <= 1 s |\n", (migration - rollouts).Seconds())
	fmt.Fprintf(&b, "| operator API requests during the upgrade (writes, Lease renewals aside) | %d (%d) | |\n", during.Total, during.Writes)
	fmt.Fprintf(&b, "| operator writes to workloads per migrated workload | %.2f (%d for %d) | |\n", float64(wl)/float64(workloads), wl, workloads)
	fmt.Fprintf(&b, "| operator writes to namespaces | %d for %d namespaces | |\n", nsWrites, nsCount)
	fmt.Fprintf(&b, "| all operator writes per migrated workload | %.2f (%d for %d) | <= 2 |\n", float64(during.Writes)/float64(workloads), during.Writes, workloads)
	t.Log(b.String())
	fmt.Print(b.String())
	t.Logf("per-batch rollout spans: %v", spans)
}

func upNamespace(i int) string { return fmt.Sprintf("up-%03d", i) }

// populateUpgrade creates the namespaces, waits until Capstan has labelled each for the
// revision (so that their pods are injected from the start), then the Deployments.
func populateUpgrade(ctx context.Context, cs kubernetes.Interface, nsCount, perNS int) error {
	const workers = 16
	if err := parallel(ctx, nsCount, workers, func(ctx context.Context, i int) error {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: upNamespace(i), Labels: map[string]string{upLabel: "true"}}}
		_, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		return err
	}); err != nil {
		return err
	}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: revision.RevLabel + "=" + upFromRev})
		return err == nil && len(l.Items) == nsCount, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for Capstan to label the namespaces: %w", err)
	}
	return parallel(ctx, nsCount*perNS, workers, func(ctx context.Context, k int) error {
		ns, name := upNamespace(k/perNS), fmt.Sprintf("app-%d", k%perNS)
		labels := map[string]string{"app": name, upLabel: "true"}
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{upLabel: "true"}},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To[int32](1),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{NodeName: dpNode,
						Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
				},
			},
		}
		_, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{})
		return err
	})
}

// waitUpgradeWorkloads waits until every Deployment of the benchmark is available.
func waitUpgradeWorkloads(ctx context.Context, cs kubernetes.Interface, n int, timeout time.Duration) error {
	last := ""
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		l, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{LabelSelector: upLabel + "=true"})
		if err != nil {
			return false, nil
		}
		ready := 0
		for _, d := range l.Items {
			if rolloutComplete(&d) {
				ready++
			}
		}
		last = fmt.Sprintf("%d of %d Deployments available", ready, n)
		return ready == n, nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", last, err)
	}
	return nil
}

func rolloutComplete(d *appsv1.Deployment) bool {
	want := ptr.Deref(d.Spec.Replicas, 1)
	st := d.Status
	return st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == want && st.AvailableReplicas == want && st.Replicas == want
}

// rolloutRecorder watches the benchmark's Deployments and records, for each, when its
// restart was first seen and when that rollout was next seen complete.
type rolloutRecorder struct {
	mu        sync.Mutex
	restartAt map[string]time.Time // namespace/name
	doneAt    map[string]time.Time
}

func newRolloutRecorder() *rolloutRecorder {
	return &rolloutRecorder{restartAt: map[string]time.Time{}, doneAt: map[string]time.Time{}}
}

func (r *rolloutRecorder) watch(ctx context.Context, cs kubernetes.Interface) error {
	w, err := cs.AppsV1().Deployments("").Watch(ctx, metav1.ListOptions{LabelSelector: upLabel + "=true"})
	if err != nil {
		return err
	}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			d, ok := ev.Object.(*appsv1.Deployment)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			key, now := d.Namespace+"/"+d.Name, time.Now()
			r.mu.Lock()
			_, restarted := r.restartAt[key]
			if !restarted && d.Annotations[dataplane.RestartedAtAnnotation] != "" {
				r.restartAt[key], restarted = now, true
			}
			if _, done := r.doneAt[key]; restarted && !done && rolloutComplete(d) {
				r.doneAt[key] = now
			}
			r.mu.Unlock()
		}
	}()
	return nil
}

func (r *rolloutRecorder) restarted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.restartAt)
}

// batchSpans are, for each batch of namespaces (in the upgrade's order), the time from
// its first restart seen to its last rollout complete; and when the first restart was.
func (r *rolloutRecorder) batchSpans(namespaces []string, size int) ([]time.Duration, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var spans []time.Duration
	var first time.Time
	for chunk := range slices.Chunk(namespaces, size) {
		var lo, hi time.Time
		for key, at := range r.restartAt {
			if !slices.Contains(chunk, strings.SplitN(key, "/", 2)[0]) {
				continue
			}
			if lo.IsZero() || at.Before(lo) {
				lo = at
			}
			if d := r.doneAt[key]; d.After(hi) {
				hi = d
			}
		}
		if !lo.IsZero() {
			spans = append(spans, hi.Sub(lo))
			if first.IsZero() || lo.Before(first) {
				first = lo
			}
		}
	}
	return spans, first
}

// waitDeploymentAvailable waits for a Deployment of istio-system to have a replica available.
func waitDeploymentAvailable(ctx context.Context, c *harness.Cluster, name string) error {
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := c.Clientset.AppsV1().Deployments("istio-system").Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil && d.Status.AvailableReplicas >= 1, err
	})
}

func patchVersion(ctx context.Context, k8s client.Client, v string) error {
	m := &meshv1.MeshControlPlane{}
	if err := k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m); err != nil {
		return err
	}
	patch := client.MergeFrom(m.DeepCopy())
	m.Spec.Version = v
	return k8s.Patch(ctx, m, patch)
}

// workloadWritesIn counts the writes to Deployments, StatefulSets and DaemonSets in
// namespaces named prefix... received in [from, to).
func workloadWritesIn(events []AuditEvent, from, to time.Time, prefix string) int {
	return writesTo(events, from, to, func(e AuditEvent) bool {
		r := e.ObjectRef.Resource
		return strings.HasPrefix(e.ObjectRef.Namespace, prefix) && (r == "deployments" || r == "statefulsets" || r == "daemonsets")
	})
}

// namespaceWrites counts the writes to namespaces named prefix... received in [from, to).
func namespaceWrites(events []AuditEvent, from, to time.Time, prefix string) int {
	return writesTo(events, from, to, func(e AuditEvent) bool {
		return e.ObjectRef.Resource == "namespaces" && strings.HasPrefix(e.ObjectRef.Name, prefix)
	})
}

func writesTo(events []AuditEvent, from, to time.Time, match func(AuditEvent) bool) int {
	n := 0
	for _, e := range events {
		t := e.RequestReceivedTimestamp
		if !t.Before(from) && t.Before(to) && e.IsWrite() && e.ObjectRef != nil && match(e) {
			n++
		}
	}
	return n
}

//go:build e2e

package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/test/harness"
)

// settle is how long after Ready the install is counted: the echoes of its own writes.
const settle = 3 * time.Second

// inPlace is spec.upgrade for the benchmarks of an in-place control plane, which keeps
// their figures comparable with the rounds before RevisionBased became the default.
var inPlace = &meshv1.UpgradeSpec{Strategy: meshv1.UpgradeInPlace}

// run is what one install measured.
type run struct {
	applied, ready  time.Duration
	createLatency   time.Duration // the create request itself, client to stored
	install, steady Counts
	// RSS in KiB: the moment Ready is seen, once the install has settled (the
	// install's own writes echoed back), and after the steady state.
	rssReady, rssInstalled, rssIdle    int64
	anonReady, anonInstalled, anonIdle int64 // KiB of RSS that is not the binary's mapped pages
	cpu                                time.Duration
}

// TestBench installs the sample control plane on a fresh operator several times and reports
// medians: time from create to every object applied (from the apiserver's audit log) and to
// Ready=True, the API requests the operator makes (audit log, filtered by its own
// ServiceAccount) per install and during a quiet period after it, and its memory. Every run
// removes the CRDs too (spec.uninstall.removeCRDs), so each one is a complete install.
//
// CAPSTAN_BENCH_RUNS (default 5) and CAPSTAN_BENCH_STEADY (default 60s) tune it.
// CAPSTAN_BENCH_PROFILE_DIR=DIR saves the operator's heap profile and memory map,
// installed and idle, of each run there (go tool pprof reads the profiles); fetching it costs the operator memory of its
// own, so the figures of such a run are not the ones to report.
// CAPSTAN_BENCH_KEEP_CRDS=1 keeps Istio's CRDs between runs instead, to measure an install
// onto a cluster that has them (every run but the first). CAPSTAN_BENCH_TIMELINE=1 logs each
// run's requests, from the audit log, relative to the moment the MeshControlPlane was stored.
func TestBench(t *testing.T) {
	runs := envInt("CAPSTAN_BENCH_RUNS", 5)
	removeCRDs := os.Getenv("CAPSTAN_BENCH_KEEP_CRDS") != "1"
	steady := envDuration("CAPSTAN_BENCH_STEADY", 60*time.Second)

	ctx := context.Background()
	c, k8s := startCluster(ctx, t)

	profileDir := os.Getenv("CAPSTAN_BENCH_PROFILE_DIR")
	var results []run
	for i := range runs {
		// The Deployment's logging (info level, JSON), not the tests' debug logging, and
		// what it sets through the downward API: its namespace and, from config/manager's
		// memory limit (256Mi), GOMEMLIMIT.
		opts := harness.OperatorOptions{LeaderElect: true, Args: []string{"--zap-devel=false"},
			Env: []string{"POD_NAMESPACE=" + harness.OperatorNamespace, "GOMEMLIMIT=268435456"}}
		pprofAddr := ""
		if profileDir != "" {
			pprofAddr = freeLoopbackAddr(t)
			opts.Args = append(opts.Args, "--pprof-bind-address="+pprofAddr)
		}
		op, err := harness.StartOperator(ctx, c, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := waitLeader(ctx, c); err != nil {
			t.Fatalf("%v\n%s", err, op.LogTail(8000))
		}
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}, Spec: meshv1.MeshControlPlaneSpec{
			Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](1)}},
			Uninstall:  &meshv1.UninstallSpec{RemoveCRDs: removeCRDs},
			Upgrade:    inPlace,
		}}
		start := time.Now()
		if err := k8s.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := waitReady(ctx, k8s); err != nil {
			t.Fatalf("run %d: %v\n%s", i+1, err, op.LogTail(8000))
		}
		r := run{ready: time.Since(start)}
		r.rssReady, r.anonReady = rssKiB(op.PID())
		readyAt := time.Now()
		time.Sleep(settle)
		r.rssInstalled, r.anonInstalled = rssKiB(op.PID())
		saveHeapProfile(t, pprofAddr, profileDir, fmt.Sprintf("heap-run%d-installed.pb.gz", i+1))
		saveSmaps(t, op.PID(), profileDir, fmt.Sprintf("smaps-run%d-installed.txt", i+1))
		time.Sleep(steady) // the quiet period being measured; nothing else happens in it
		r.rssIdle, r.anonIdle = rssKiB(op.PID())
		saveHeapProfile(t, pprofAddr, profileDir, fmt.Sprintf("heap-run%d-idle.pb.gz", i+1))
		saveSmaps(t, op.PID(), profileDir, fmt.Sprintf("smaps-run%d-idle.txt", i+1))
		r.cpu = cpuTime(op.PID())

		all, err := readAuditFile(c.AuditLogPath, "")
		if err != nil {
			t.Fatal(err)
		}
		created, ok := Created(all, "meshcontrolplanes", meshv1.SingletonName)
		if !ok || created.Before(start.Add(-time.Second)) {
			t.Fatalf("run %d: the audit log has no create of the MeshControlPlane", i)
		}
		var events []AuditEvent
		for _, e := range all {
			if e.User.Username == harness.OperatorUser {
				events = append(events, e)
			}
		}
		if os.Getenv("CAPSTAN_BENCH_TIMELINE") == "1" {
			logTimeline(t, events, created, start, readyAt.Add(settle))
		}
		r.install = Count(events, start, readyAt.Add(settle))
		r.steady = Count(events, readyAt.Add(settle), readyAt.Add(settle+steady))
		r.applied = r.install.LastApply.Sub(created)
		r.createLatency = created.Sub(start)
		results = append(results, r)
		t.Logf("run %d: create took %.3fs, applied %.3fs after it, ready %.3fs after the request, install requests %d (writes %d), steady requests %d (writes %d, lease writes %d), RSS at Ready/installed/idle %d/%d/%d KiB (anonymous %d/%d/%d KiB)",
			i+1, r.createLatency.Seconds(), r.applied.Seconds(), r.ready.Seconds(), r.install.Total, r.install.Writes, r.steady.Total, r.steady.Writes, r.steady.LeaseWrites, r.rssReady, r.rssInstalled, r.rssIdle, r.anonReady, r.anonInstalled, r.anonIdle)
		if i == 0 || r.steady.Writes > 0 {
			t.Logf("install requests by verb and resource: %v", r.install.ByVerb)
			t.Logf("steady-state requests by verb and resource: %v", r.steady.ByVerb)
		}

		if err := uninstall(ctx, k8s, c, removeCRDs); err != nil {
			t.Fatalf("run %d: %v\n%s", i+1, err, diagnose(c, op))
		}
		if err := op.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	report(t, results, steady)
}

func report(t *testing.T, rs []run, steady time.Duration) {
	col := func(f func(run) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = f(r)
		}
		return Median(xs)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nCapstan install benchmark: median of %d runs (local kwok cluster, 2 simulated nodes)\n", len(rs))
	fmt.Fprintf(&b, "| measure | median | target |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| MeshControlPlane stored -> all objects applied (apiserver audit log) | %.3f s | <= 0.5 s |\n", col(func(r run) float64 { return r.applied.Seconds() }))
	fmt.Fprintf(&b, "| the create request itself (client sends -> apiserver stored) | %.3f s | |\n", col(func(r run) float64 { return r.createLatency.Seconds() }))
	fmt.Fprintf(&b, "| create -> Ready=True | %.3f s | |\n", col(func(r run) float64 { return r.ready.Seconds() }))
	fmt.Fprintf(&b, "| API requests per install (create to Ready + 3 s) | %.0f | <= 60 |\n", col(func(r run) float64 { return float64(r.install.Total) }))
	fmt.Fprintf(&b, "| of which writes | %.0f | |\n", col(func(r run) float64 { return float64(r.install.Writes) }))
	fmt.Fprintf(&b, "| API requests in %s of steady state | %.0f | |\n", steady, col(func(r run) float64 { return float64(r.steady.Total) }))
	fmt.Fprintf(&b, "| writes in steady state, lease renewals aside | %.0f | 0 |\n", col(func(r run) float64 { return float64(r.steady.Writes) }))
	fmt.Fprintf(&b, "| lease renewals in steady state | %.0f | |\n", col(func(r run) float64 { return float64(r.steady.LeaseWrites) }))
	fmt.Fprintf(&b, "| operator RSS the moment Ready=True is seen (the install's last reconciles) | %.1f MiB | |\n", col(func(r run) float64 { return float64(r.rssReady) / 1024 }))
	fmt.Fprintf(&b, "| operator RSS, installed (Ready + %s) | %.1f MiB | retired (the data plane's scale targets replace it) |\n", settle, col(func(r run) float64 { return float64(r.rssInstalled) / 1024 }))
	fmt.Fprintf(&b, "| operator RSS, idle after steady state | %.1f MiB | retired |\n", col(func(r run) float64 { return float64(r.rssIdle) / 1024 }))
	fmt.Fprintf(&b, "| of which anonymous (heap, stacks), at Ready / installed / idle | %.1f / %.1f / %.1f MiB | |\n", col(func(r run) float64 { return float64(r.anonReady) / 1024 }), col(func(r run) float64 { return float64(r.anonInstalled) / 1024 }), col(func(r run) float64 { return float64(r.anonIdle) / 1024 }))
	fmt.Fprintf(&b, "| operator CPU time, start to end of steady state | %.2f s | |\n", col(func(r run) float64 { return r.cpu.Seconds() }))
	t.Log(b.String())
	fmt.Print(b.String())
}

// logTimeline logs the requests received in [from, to): when each was received and
// completed, relative to at.
func logTimeline(t *testing.T, events []AuditEvent, at, from, to time.Time) {
	for _, e := range events {
		if e.RequestReceivedTimestamp.Before(from) || !e.RequestReceivedTimestamp.Before(to) {
			continue
		}
		res, name := "", ""
		if e.ObjectRef != nil {
			res, name = e.ObjectRef.Resource, e.ObjectRef.Name
		}
		t.Logf("  %+.3f .. %+.3f s  %s %s %s", e.RequestReceivedTimestamp.Sub(at).Seconds(), e.StageTimestamp.Sub(at).Seconds(), e.Verb, res, name)
	}
}

func waitReady(ctx context.Context, k8s client.Client) error {
	return wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		m := &meshv1.MeshControlPlane{}
		if err := k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m); err != nil {
			return false, err
		}
		return meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.ConditionReady), nil
	})
}

// uninstall deletes the MeshControlPlane and waits until the control plane (and its CRDs,
// when crdsToo) is gone, so the next run starts from a cluster without it.
func uninstall(ctx context.Context, k8s client.Client, c *harness.Cluster, crdsToo bool) error {
	m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
	if err := k8s.Delete(ctx, m); err != nil {
		return err
	}
	waiting := ""
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		switch err := k8s.Get(ctx, client.ObjectKeyFromObject(m), m); {
		case err == nil:
			waiting = fmt.Sprintf("the MeshControlPlane: finalizers %v, conditions %+v", m.Finalizers, m.Status.Conditions)
			return false, nil
		case !apierrors.IsNotFound(err):
			return false, nil // a failed read (the deadline, say) says nothing of what is left
		}
		// Capstan deletes the control-plane namespace only when it created it; config/ ships
		// istio-system (for the CA's Role), and then Capstan's objects in it go instead.
		ns, err := c.Clientset.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return false, err
		case ns.Labels["app.kubernetes.io/managed-by"] == "capstan":
			waiting = "namespace istio-system"
			return false, nil
		default:
			if _, err := c.Clientset.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				waiting = fmt.Sprintf("Deployment istio-system/istiod (%v)", err)
				return false, nil
			}
		}
		// The CA's Secrets go with the MeshControlPlane that owns them, through the garbage
		// collector; the next run's CA waits for them, so a run waits for them too.
		for _, name := range []string{controllers.CACertsSecret, controllers.CAStateSecret} {
			if _, err := c.Clientset.CoreV1().Secrets("istio-system").Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				waiting = fmt.Sprintf("Secret istio-system/%s (%v)", name, err)
				return false, nil
			}
		}
		if !crdsToo {
			return true, nil
		}
		crds := &metav1.PartialObjectMetadataList{}
		crds.SetGroupVersionKind(schemaCRDList)
		if err := k8s.List(ctx, crds, client.MatchingLabels{"app.kubernetes.io/managed-by": "capstan"}); err != nil {
			return false, err
		}
		if len(crds.Items) > 0 {
			waiting = fmt.Sprintf("%d CRDs, such as %s (deletion %v, finalizers %v)", len(crds.Items), crds.Items[0].Name, crds.Items[0].DeletionTimestamp, crds.Items[0].Finalizers)
		}
		return len(crds.Items) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("uninstalling: still waiting for %s: %w", waiting, err)
	}
	return nil
}

// waitLeader waits until an operator holds the leader-election lease (a stopped operator
// releases it), so that the time measured is the install's, not the election's.
func waitLeader(ctx context.Context, c *harness.Cluster) error {
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := c.Clientset.CoordinationV1().Leases(harness.OperatorNamespace).Get(ctx, "capstan.mesh.capstan.dev", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil && ptr.Deref(l.Spec.HolderIdentity, "") != "", err
	})
}

func readAuditFile(path, user string) ([]AuditEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadAudit(f, user)
}

// rssKiB reads a process's resident set size, and the anonymous part of it (what is not
// file-backed pages of the binary and libraries).
func rssKiB(pid int) (total, anon int64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			total = n
		case "RssAnon:":
			anon = n
		}
	}
	return total, anon
}

// cpuTime reads a process's user plus system CPU time (clock ticks of 10 ms).
func cpuTime(pid int) time.Duration {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

var schemaCRDList = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinitionList"}

// freeLoopbackAddr is a free TCP address on 127.0.0.1.
func freeLoopbackAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// saveHeapProfile saves the operator's heap profile as dir/name, and beside it the text
// form, which ends with the runtime's memory statistics; nothing when addr is "".
func saveHeapProfile(t *testing.T, addr, dir, name string) {
	if addr == "" {
		return
	}
	for _, q := range []string{"", "?debug=1"} {
		resp, err := http.Get("http://" + addr + "/debug/pprof/heap" + q)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("heap profile: %v (HTTP %d)", err, resp.StatusCode)
		}
		file := name
		if q != "" {
			file = strings.TrimSuffix(name, ".pb.gz") + ".txt"
		}
		if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// startCluster starts a local cluster, stopped when the test ends, installs Capstan's CRD
// and RBAC, and returns it with a client.
func startCluster(ctx context.Context, t *testing.T) (*harness.Cluster, client.Client) {
	return startClusterWith(ctx, t, harness.ClusterOptions{})
}

// startClusterWith is startCluster with options.
func startClusterWith(ctx context.Context, t *testing.T, opts harness.ClusterOptions) (*harness.Cluster, client.Client) {
	c, err := harness.StartCluster(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	if err := harness.InstallCapstan(ctx, c); err != nil {
		t.Fatal(err)
	}
	scheme, err := controllers.NewTestScheme()
	if err != nil {
		t.Fatal(err)
	}
	k8s, err := client.New(c.RESTConfig, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c, k8s
}

// saveSmaps saves the operator's memory map with what is resident of each mapping
// (/proc/PID/smaps) as dir/name; nothing when dir is "".
func saveSmaps(t *testing.T, pid int, dir, name string) {
	if dir == "" {
		return
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// diagnose asks a stuck operator for its goroutines' stacks (SIGQUIT makes a Go program
// print them and exit), copies its whole log and the apiserver's audit log and log to the
// temporary directory, where they outlive the cluster, and says where they are.
func diagnose(c *harness.Cluster, op *harness.Operator) string {
	_ = op.Cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-op.Done():
	case <-time.After(5 * time.Second):
	}
	dir, err := os.MkdirTemp("", "capstan-bench-failure-")
	if err != nil {
		return err.Error()
	}
	for src, name := range map[string]string{op.LogPath: "operator.log", c.AuditLogPath: "audit.log", c.LogPath("kube-apiserver"): "kube-apiserver.log"} {
		if b, err := os.ReadFile(src); err == nil {
			_ = os.WriteFile(filepath.Join(dir, name), b, 0o644)
		}
	}
	return "the operator's log (with its goroutines' stacks) and the apiserver's logs are in " + dir
}

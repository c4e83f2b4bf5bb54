//go:build e2e

package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/internal/ca"
	"github.com/capstan-mesh/capstan/test/harness"
)

// benchCertTTL is the workload certificate TTL of the rotation runs (the shortest CEL
// admits), and so their soak; benchPropagation is the operator's --ca-propagation.
const (
	benchCertTTL     = 10 * time.Second
	benchPropagation = time.Second
)

// TestBenchCA measures the mesh CA on a local cluster, with the real istiod:
//
//   - for each key algorithm, the time from the MeshControlPlane being stored to the cacerts
//     Secret being stored (both from the apiserver's audit log): generating a root and an
//     intermediate and installing them for istiod;
//   - for root rotations on request (the default ECDSA P-256), the time from the request being
//     stored to cacerts holding the new root beside the old one (generating the new CA and
//     installing it for trust), the time to Done, and the operator's CPU time (user + system,
//     from /proc) from the request to Done.
//
// CAPSTAN_BENCH_RUNS (default 5) is the number of runs of each.
func TestBenchCA(t *testing.T) {
	runs := envInt("CAPSTAN_BENCH_RUNS", 5)
	ctx := context.Background()
	c, k8s := startCluster(ctx, t)
	op, err := harness.StartOperator(ctx, c, harness.OperatorOptions{Args: []string{"--ca-propagation=" + benchPropagation.String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = op.Stop() }()

	var b strings.Builder
	fmt.Fprintf(&b, "\nCapstan mesh CA benchmark: median of %d runs (local kwok cluster, real istiod)\n", runs)
	fmt.Fprintf(&b, "| measure | median | runs |\n| --- | --- | --- |\n")

	for _, alg := range []string{"ECDSAP256", "ECDSAP384", "RSA3072", "RSA4096"} {
		var xs []float64
		for i := range runs {
			start := time.Now()
			m := caBenchMCP(alg)
			if err := k8s.Create(ctx, m); err != nil {
				t.Fatal(err)
			}
			if err := waitCACerts(ctx, k8s, nil); err != nil {
				t.Fatalf("%s run %d: %v\n%s", alg, i+1, err, op.LogTail(8000))
			}
			all, err := readAuditFile(c.AuditLogPath, "")
			if err != nil {
				t.Fatal(err)
			}
			stored, ok1 := Created(since(all, start), "meshcontrolplanes", meshv1.SingletonName)
			issued, ok2 := Created(since(all, start), "secrets", controllers.CACertsSecret)
			if !ok1 || !ok2 {
				t.Fatalf("%s run %d: the audit log lacks the creation of the MeshControlPlane or of cacerts", alg, i+1)
			}
			xs = append(xs, issued.Sub(stored).Seconds())
			t.Logf("%s run %d: cacerts stored %.3fs after the MeshControlPlane", alg, i+1, xs[len(xs)-1])
			if err := uninstall(ctx, k8s, c, false); err != nil {
				t.Fatalf("%s run %d: %v\n%s", alg, i+1, err, op.LogTail(8000))
			}
			// The CA's Secrets go with their owner, through the garbage collector: the next
			// run must issue a new CA, not find this one.
			if err := waitSecretsGone(ctx, k8s, controllers.CACertsSecret, controllers.CAStateSecret); err != nil {
				t.Fatalf("%s run %d: %v", alg, i+1, err)
			}
		}
		fmt.Fprintf(&b, "| new CA generated and installed (%s): MeshControlPlane stored -> cacerts stored | %.3f s | %s |\n", alg, Median(slices.Clone(xs)), seconds(xs))
	}

	// Rotations, with istiod running as a kubelet would run it, publishing the trust bundle.
	if err := k8s.Create(ctx, caBenchMCP("ECDSAP256")); err != nil {
		t.Fatal(err)
	}
	if err := waitCACerts(ctx, k8s, nil); err != nil {
		t.Fatal(err)
	}
	if err := waitIstiodAvailable(ctx, c); err != nil {
		t.Fatalf("%v\n%s", err, op.LogTail(8000))
	}
	istiod, err := harness.StartIstiod(ctx, c, harness.IstiodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = istiod.Stop() }()
	// A workload namespace, so that the rotation waits for istiod to publish there too.
	if _, err := harness.ServiceAccountToken(ctx, c, "ca-bench", "workload", harness.IstioCAAudience); err != nil {
		t.Fatal(err)
	}
	var trusting, done, cpu []float64
	for i := range runs {
		before, err := rootsOf(ctx, k8s)
		if err != nil {
			t.Fatal(err)
		}
		cpu0 := cpuTime(op.PID())
		requested, err := requestRotation(ctx, k8s)
		if err != nil {
			t.Fatal(err)
		}
		if err := waitCACerts(ctx, k8s, func(roots []string) bool { return len(roots) == 2 && slices.Contains(roots, before[0]) }); err != nil {
			t.Fatalf("rotation %d: %v\n%s", i+1, err, op.LogTail(8000))
		}
		both := time.Since(requested)
		if err := waitRotationDone(ctx, k8s, before[0]); err != nil {
			t.Fatalf("rotation %d: %v\n%s", i+1, err, op.LogTail(8000))
		}
		took := time.Since(requested)
		used := cpuTime(op.PID()) - cpu0
		trusting, done, cpu = append(trusting, both.Seconds()), append(done, took.Seconds()), append(cpu, used.Seconds())
		t.Logf("rotation %d: new root trusted in cacerts %.3fs after the request, Done after %.1fs, operator CPU %.2fs", i+1, both.Seconds(), took.Seconds(), used.Seconds())
	}
	fmt.Fprintf(&b, "| root rotation requested -> new root trusted beside the old in cacerts (ECDSAP256) | %.3f s | %s |\n", Median(slices.Clone(trusting)), seconds(trusting))
	fmt.Fprintf(&b, "| root rotation requested -> Done (workload TTL %s, propagation %s) | %.1f s | %s |\n", benchCertTTL, benchPropagation, Median(slices.Clone(done)), seconds(done))
	fmt.Fprintf(&b, "| operator CPU time per root rotation (request -> Done) | %.2f s | %s |\n", Median(slices.Clone(cpu)), seconds(cpu))
	t.Log(b.String())
	fmt.Print(b.String())
}

func caBenchMCP(alg string) *meshv1.MeshControlPlane {
	return &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}, Spec: meshv1.MeshControlPlaneSpec{
		Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](1)}},
		Upgrade:    inPlace,
		Security: &meshv1.SecuritySpec{CA: &meshv1.CASpec{
			KeyAlgorithm:    alg,
			WorkloadCertTTL: &metav1.Duration{Duration: benchCertTTL},
		}},
	}}
}

// since keeps the events received from t on.
func since(events []AuditEvent, t time.Time) []AuditEvent {
	var out []AuditEvent
	for _, e := range events {
		if !e.RequestReceivedTimestamp.Before(t.Add(-time.Second)) {
			out = append(out, e)
		}
	}
	return out
}

// rootsOf is the fingerprints of the roots in cacerts.
func rootsOf(ctx context.Context, k8s client.Client) ([]string, error) {
	s := &corev1.Secret{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: controllers.CACertsSecret}, s); err != nil {
		return nil, err
	}
	certs, err := ca.ParseBundle(s.Data[ca.IstioKeys.Roots])
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range certs {
		out = append(out, ca.Fingerprint(c))
	}
	return out, nil
}

// waitCACerts waits until cacerts exists and, when ok is given, its roots satisfy it.
func waitCACerts(ctx context.Context, k8s client.Client, ok func(roots []string) bool) error {
	return wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		roots, err := rootsOf(ctx, k8s)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return ok == nil || ok(roots), nil
	})
}

func requestRotation(ctx context.Context, k8s client.Client) (time.Time, error) {
	m := &meshv1.MeshControlPlane{}
	if err := k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m); err != nil {
		return time.Time{}, err
	}
	// requestedAt has a resolution of one second, and a rotation starts only on a newer one.
	if r := m.Spec.Security.CA.Rotation; r != nil && r.RequestedAt != nil {
		time.Sleep(time.Until(r.RequestedAt.Add(time.Second)))
	}
	patch := client.MergeFrom(m.DeepCopy())
	if m.Spec.Security.CA.Rotation == nil {
		m.Spec.Security.CA.Rotation = &meshv1.CARotationSpec{}
	}
	now := time.Now()
	m.Spec.Security.CA.Rotation.RequestedAt = &metav1.Time{Time: now}
	return now, k8s.Patch(ctx, m, patch)
}

// waitRotationDone waits until status.ca says Done and cacerts trusts only a root other
// than old.
func waitRotationDone(ctx context.Context, k8s client.Client, old string) error {
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		m := &meshv1.MeshControlPlane{}
		if err := k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m); err != nil {
			return false, err
		}
		if m.Status.CA == nil || m.Status.CA.Phase != string(ca.PhaseDone) {
			return false, nil
		}
		roots, err := rootsOf(ctx, k8s)
		return err == nil && len(roots) == 1 && roots[0] != old, err
	})
}

func waitSecretsGone(ctx context.Context, k8s client.Client, names ...string) error {
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, n := range names {
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: n}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
				return false, client.IgnoreNotFound(err)
			}
		}
		return true, nil
	})
}

func waitIstiodAvailable(ctx context.Context, c *harness.Cluster) error {
	return waitDeploymentAvailable(ctx, c, "istiod")
}

// seconds lists a sample, for the report.
func seconds(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(parts, ", ")
}

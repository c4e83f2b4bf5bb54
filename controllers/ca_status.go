package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/ca"
)

// summarize fills status.ca and the CAReady and CARotating conditions from what the
// reconcile found. No key material reaches status: only expiry times and fingerprints.
func (s *caScope) summarize() {
	st := &meshv1.CAStatus{Type: s.spec.Type}
	if st.Type == "" {
		st.Type = meshv1.CASelfSigned
	}
	if s.state != nil {
		serve := s.state.Serve()
		st.Phase = string(s.state.Rotation.Phase)
		st.RotationReason = s.state.Rotation.Reason
		st.RootFingerprints = s.state.TrustedRoots()
		st.RootExpiry = timePtr(ca.EarliestExpiry(s.state.Signing().Material.Roots))
		st.IntermediateExpiry = timePtr(serve.Intermediate.Cert.NotAfter)
		if !s.wake.IsZero() {
			st.NextAction = timePtr(s.wake)
			st.NextActionReason = s.wakeReason
		} else if s.wakeReason != "" {
			st.NextActionReason = s.wakeReason
		}
	}
	s.mcp.Status.CA = st

	switch {
	case s.problem != nil:
		setCondition(s.mcp, meshv1.ConditionCAReady, metav1.ConditionFalse, s.problem.reason, s.problem.message)
	case s.state == nil:
		setCondition(s.mcp, meshv1.ConditionCAReady, metav1.ConditionFalse, meshv1.ReasonCAWaiting, "waiting for the control-plane namespace to issue the mesh CA")
	case s.state.Active.Recovered():
		setCondition(s.mcp, meshv1.ConditionCAReady, metav1.ConditionFalse, meshv1.ReasonCAStateLost, s.stateLostMessage())
	default:
		setCondition(s.mcp, meshv1.ConditionCAReady, metav1.ConditionTrue, meshv1.ReasonCAIssued,
			fmt.Sprintf("istiod signs with %s", s.state.Serve()))
	}
	switch {
	case s.state != nil && s.state.Rotation.Phase.InProgress():
		r := s.state.Rotation
		setCondition(s.mcp, meshv1.ConditionCARotating, metav1.ConditionTrue, meshv1.ReasonCAPhase,
			fmt.Sprintf("root rotation (%s) in phase %s since %s: %s", r.Reason, r.Phase, r.PhaseSince.UTC().Format(time.RFC3339), s.wakeReason))
	case s.state != nil && s.state.Rotation.Phase == ca.PhaseDone:
		setCondition(s.mcp, meshv1.ConditionCARotating, metav1.ConditionFalse, meshv1.ReasonCARotated, "the last root rotation ("+s.state.Rotation.Reason+") completed")
	case s.state != nil && s.state.Rotation.Phase == ca.PhaseRolledBack:
		setCondition(s.mcp, meshv1.ConditionCARotating, metav1.ConditionFalse, meshv1.ReasonCARolledBack, "the last root rotation ("+s.state.Rotation.Reason+") was rolled back at the user's request; while spec.security.ca.rotation.abortRequestedAt stays set, only a new requestedAt starts another")
	default:
		setCondition(s.mcp, meshv1.ConditionCARotating, metav1.ConditionFalse, meshv1.ReasonNoRotation, "no root rotation has run")
	}
}

// stateLostMessage says, while istiod signs with a CA recovered from cacerts after the
// state Secret was lost, what happened and what happens next.
func (s *caScope) stateLostMessage() string {
	st := s.state
	msg := fmt.Sprintf("secret %s/%s, which held the CA's state and root key, was lost; Capstan took the CA back from secret %s/%s without its root key, and istiod keeps signing with it, so every workload certificate stays trusted. ",
		s.ns, CAStateSecret, s.ns, CACertsSecret)
	restore := fmt.Sprintf("restore secret %s/%s from a backup", s.ns, CAStateSecret)
	switch {
	case st.Rotation.Phase == ca.PhaseRollingBack:
		return msg + fmt.Sprintf("The root rotation (%s) away from it is being rolled back at the user's request; CAReady stays False until a later rotation moves the mesh off it, or you %s", st.Rotation.Reason, restore)
	case st.Rotation.Phase.InProgress():
		towards := "a new root"
		if st.Next.Source != ca.SourceSelfSigned {
			towards = "the roots of " + st.Next.Source
		}
		return msg + fmt.Sprintf("A root rotation (%s) to %s is under way, in phase %s; CAReady turns True once it is done", st.Rotation.Reason, towards, st.Rotation.Phase)
	case s.policy.Source != ca.SourceSelfSigned:
		return msg + "The rotation to " + s.policy.Source + " was rolled back: put a new root in its Secret to rotate again, or " + restore
	}
	return msg + fmt.Sprintf("Without the root key Capstan can neither renew the intermediate (it expires %s) nor rotate the root by itself: set spec.security.ca.rotation.requestedAt to the current time to rotate to a new root without breaking trust, or %s",
		st.Active.Material.Intermediate.Cert.NotAfter.UTC().Format(time.RFC3339), restore)
}

func timePtr(t time.Time) *metav1.Time {
	mt := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &mt
}

// caConditions are the conditions the CA controller owns, in a fixed order.
func caConditions(all []metav1.Condition) []metav1.Condition {
	var out []metav1.Condition
	for _, t := range []string{meshv1.ConditionCAReady, meshv1.ConditionCARotating} {
		if c := meta.FindStatusCondition(all, t); c != nil {
			out = append(out, *c)
		}
	}
	return out
}

// applyStatusFields server-side applies the given status fields of mcp as manager. Each
// controller applies only the fields it owns; the apiserver merges them (conditions are a
// map keyed by type), so neither overwrites the other's.
func applyStatusFields(ctx context.Context, c client.Client, mcp *meshv1.MeshControlPlane, manager string, fields map[string]any) error {
	status, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&fields)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": status}}
	u.SetGroupVersionKind(meshv1.GroupVersion.WithKind("MeshControlPlane"))
	u.SetName(mcp.Name)
	return c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(manager), client.ForceOwnership)
}

// CAMetrics exports the seconds until the mesh CA's root and intermediate expire, computed
// at every scrape so that the figure is current between reconciles.
type CAMetrics struct {
	mu     sync.Mutex
	expiry map[string]time.Time
	clock  func() time.Time
	desc   *prometheus.Desc
}

// NewCAMetrics returns the CA's metrics, to be registered with the metrics registry.
func NewCAMetrics(now func() time.Time) *CAMetrics {
	return &CAMetrics{
		expiry: map[string]time.Time{},
		clock:  now,
		desc: prometheus.NewDesc("capstan_ca_expiry_seconds",
			"Seconds until the mesh CA certificate expires (negative once expired), by certificate: root or intermediate.",
			[]string{"certificate"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (m *CAMetrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.desc }

// Collect implements prometheus.Collector.
func (m *CAMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock()
	for name, t := range m.expiry {
		ch <- prometheus.MustNewConstMetric(m.desc, prometheus.GaugeValue, t.Sub(now).Seconds(), name)
	}
}

// observe records the expiry times of the CA istiod signs with.
func (m *CAMetrics) observe(st *meshv1.CAStatus) {
	if m == nil || st == nil || st.RootExpiry == nil || st.IntermediateExpiry == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expiry["root"] = st.RootExpiry.Time
	m.expiry["intermediate"] = st.IntermediateExpiry.Time
}

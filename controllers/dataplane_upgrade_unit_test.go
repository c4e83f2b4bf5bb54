package controllers

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/upgrade"
)

// spec.upgrade.canary as the migration reads it: the defaults where it is silent, every
// field where it is not.
func TestCanaryConfig(t *testing.T) {
	got := canaryConfig(&meshv1.MeshControlPlaneSpec{})
	if got != (upgrade.Config{BatchSize: 1, ReadinessTimeout: defaultReadinessTimeout, RollbackOnFailure: true}) {
		t.Errorf("defaults %+v", got)
	}
	got = canaryConfig(&meshv1.MeshControlPlaneSpec{Upgrade: &meshv1.UpgradeSpec{Canary: &meshv1.CanarySpec{
		BatchSize: 5, ReadinessTimeout: &metav1.Duration{Duration: time.Minute}, PauseBetweenBatches: &metav1.Duration{Duration: time.Second},
		AutoPromote: true, RollbackOnFailure: ptr.To(false),
	}}})
	want := upgrade.Config{BatchSize: 5, ReadinessTimeout: time.Minute, PauseBetweenBatches: time.Second, AutoPromote: true}
	if got != want {
		t.Errorf("%+v, want %+v", got, want)
	}
}

// The State survives its trip through status.upgrade whole: what a restarted operator
// reads back is what the one before it wrote.
func TestUpgradeStateRoundTrip(t *testing.T) {
	at := func(s int) time.Time { return time.Date(2026, 12, 1, 9, 0, s, 0, time.UTC) }
	st := upgrade.State{Phase: upgrade.PhaseRollingBack, From: "1-31-0", To: "1-31-1", StartedAt: at(0),
		Namespaces: []string{"a", "b", "c"}, Batch: 1, BatchStartedAt: at(10), BatchDoneAt: at(5),
		RollBack: []string{"b"}, Aborting: true, Failure: "why", HandledPromote: at(3), HandledAbort: at(12)}
	cfg := upgrade.Config{BatchSize: 2}
	back := upgradeState(upgradeStatus(cfg, st, "msg"))
	if !equality.Semantic.DeepEqual(upgradeStatus(cfg, back, "msg"), upgradeStatus(cfg, st, "msg")) {
		t.Errorf("read back %+v, wrote %+v", back, st)
	}
	u := upgradeStatus(cfg, st, "msg")
	if u.BatchesDone != 1 || u.BatchesTotal != 2 || len(u.CurrentBatch) != 1 || u.CurrentBatch[0] != "b" {
		t.Errorf("progress %d/%d %v", u.BatchesDone, u.BatchesTotal, u.CurrentBatch)
	}
}

// The pre-upgrade checks: the CA ready and not rotating, and every sidecar within the
// skew Istio supports (at most one minor behind the new control plane, never ahead).
func TestUpgradeChecks(t *testing.T) {
	mcp := &meshv1.MeshControlPlane{}
	if got := upgradeBlocked(mcp); !strings.Contains(got, "CAReady") {
		t.Errorf("no CA: %q", got)
	}
	setCondition(mcp, meshv1.ConditionCAReady, metav1.ConditionTrue, meshv1.ReasonCAIssued, "")
	if got := upgradeBlocked(mcp); got != "" {
		t.Errorf("CA ready: %q", got)
	}
	setCondition(mcp, meshv1.ConditionCARotating, metav1.ConditionTrue, meshv1.ReasonCAPhase, "")
	if got := upgradeBlocked(mcp); !strings.Contains(got, "root rotation") {
		t.Errorf("rotating: %q", got)
	}
	for name, tc := range map[string]struct {
		versions map[string]int
		want     string
	}{
		"patches of the same minor":  {map[string]int{"1.31.0": 3, "1.31.1": 2}, ""},
		"one minor behind":           {map[string]int{"1.30.4": 3}, ""},
		"two minors behind":          {map[string]int{"1.29.2": 3}, "3 sidecars run Istio 1.29.2, more than one minor behind 1.31.1"},
		"newer than the new version": {map[string]int{"1.32.0": 1}, "1 sidecars run Istio 1.32.0, newer than 1.31.1"},
		"a stamp that is no version": {map[string]int{"-": 4}, ""},
	} {
		if got := proxySkew(tc.versions, "1.31.1"); (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", name, got, tc.want)
		}
	}
}

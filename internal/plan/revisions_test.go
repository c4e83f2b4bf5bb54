package plan

import (
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/upgrade"
	"github.com/capstan-mesh/capstan/internal/values"
)

func TestRevisionNames(t *testing.T) {
	if got := RevisionName("1.31.1"); got != "1-31-1" {
		t.Errorf("RevisionName: %s", got)
	}
	for rev, want := range map[string]string{"1-31-1": "1.31.1", "1-31-10": "1.31.10", "default": "", "canary": "", "1-31": "", "01-31-1": ""} {
		if got := versionOf(rev); got != want {
			t.Errorf("versionOf(%s) = %q, want %q", rev, got, want)
		}
	}
}

func revisionBased(version string) *meshv1.MeshControlPlaneSpec {
	return &meshv1.MeshControlPlaneSpec{Version: version, Upgrade: &meshv1.UpgradeSpec{Strategy: meshv1.UpgradeRevisionBased}}
}

func upgrading(from, to string, phase upgrade.Phase) *meshv1.UpgradeStatus {
	return &meshv1.UpgradeStatus{Phase: string(phase), From: from, To: to}
}

// The layouts a spec and what is installed give: which revisions run, which is active,
// and where each tag points. The default tag is never rendered on the in-place revision,
// whose own webhook serves istio-injection=enabled; the canary tag points at the new
// revision only once it is Ready (the migration has begun) and until the upgrade ends.
func TestLayout(t *testing.T) {
	tests := map[string]struct {
		spec       *meshv1.MeshControlPlaneSpec
		in         Installed
		active     string
		target     string
		queued     string
		versions   map[string]string
		tags       map[string][]string
		strategyIs meshv1.UpgradeStrategy
	}{
		"a new control plane is RevisionBased, named after its version": {
			spec: &meshv1.MeshControlPlaneSpec{Version: "1.31.1"}, active: "1-31-1", target: "1-31-1",
			versions: map[string]string{"1-31-1": "1.31.1"}, tags: map[string][]string{"1-31-1": {"canary", "default", "stable"}},
			strategyIs: meshv1.UpgradeRevisionBased,
		},
		"an in-place control plane stays in place while the strategy is unset": {
			spec: &meshv1.MeshControlPlaneSpec{Version: "1.31.1"}, in: Installed{Revisions: map[string]string{"default": "1.31.0"}},
			active: "default", target: "default", versions: map[string]string{"default": "1.31.1"}, tags: map[string][]string{"default": nil},
			strategyIs: meshv1.UpgradeInPlace,
		},
		"switching in place to RevisionBased: the new revision beside default, which keeps its version": {
			spec: revisionBased("1.31.1"), in: Installed{Revisions: map[string]string{"default": "1.31.0"}, Active: "default"},
			active: "default", target: "1-31-1", versions: map[string]string{"default": "1.31.0", "1-31-1": "1.31.1"},
			tags: map[string][]string{"default": {"canary", "stable"}, "1-31-1": nil}, strategyIs: meshv1.UpgradeRevisionBased,
		},
		"a version change: the new revision waits for its tags": {
			spec: revisionBased("1.31.1"), in: Installed{Revisions: map[string]string{"1-31-0": "1.31.0"}, Active: "1-31-0", Upgrade: upgrading("1-31-0", "1-31-1", upgrade.PhaseWaiting)},
			active: "1-31-0", target: "1-31-1", versions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"},
			tags: map[string][]string{"1-31-0": {"canary", "default", "stable"}, "1-31-1": nil},
		},
		"migrating: the canary tag on the new revision": {
			spec: revisionBased("1.31.1"), in: Installed{Revisions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"}, Active: "1-31-0", Upgrade: upgrading("1-31-0", "1-31-1", upgrade.PhaseMigrating)},
			active: "1-31-0", target: "1-31-1", versions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"},
			tags: map[string][]string{"1-31-0": {"default", "stable"}, "1-31-1": {"canary"}},
		},
		"rolling back: the canary tag back on the old": {
			spec: revisionBased("1.31.1"), in: Installed{Revisions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"}, Active: "1-31-0", Upgrade: upgrading("1-31-0", "1-31-1", upgrade.PhaseRollingBack)},
			active: "1-31-0", target: "1-31-1", versions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"},
			tags: map[string][]string{"1-31-0": {"canary", "default", "stable"}, "1-31-1": nil},
		},
		"complete: every tag on the new, the old kept until it is pruned": {
			spec: revisionBased("1.31.1"), in: Installed{Revisions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"}, Active: "1-31-1", Upgrade: upgrading("1-31-0", "1-31-1", upgrade.PhaseComplete)},
			active: "1-31-1", target: "1-31-1", versions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"},
			tags: map[string][]string{"1-31-0": nil, "1-31-1": {"canary", "default", "stable"}},
		},
		"pruned: the old revision is planned no more": {
			spec: revisionBased("1.31.1"), in: Installed{Revisions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"}, Active: "1-31-1", Prune: []string{"1-31-0"}},
			active: "1-31-1", target: "1-31-1", versions: map[string]string{"1-31-1": "1.31.1"},
			tags: map[string][]string{"1-31-1": {"canary", "default", "stable"}},
		},
		"a second version change mid-upgrade waits for the first": {
			spec: revisionBased("1.31.2"), in: Installed{Revisions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"}, Active: "1-31-0", Upgrade: upgrading("1-31-0", "1-31-1", upgrade.PhaseMigrating)},
			active: "1-31-0", target: "1-31-1", queued: "1.31.2", versions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"},
			tags: map[string][]string{"1-31-0": {"default", "stable"}, "1-31-1": {"canary"}},
		},
		"the old version set back mid-upgrade keeps the new revision for the rollback": {
			spec: revisionBased("1.31.0"), in: Installed{Revisions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"}, Active: "1-31-0", Upgrade: upgrading("1-31-0", "1-31-1", upgrade.PhaseMigrating)},
			active: "1-31-0", target: "1-31-1", versions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"},
			tags: map[string][]string{"1-31-0": {"default", "stable"}, "1-31-1": {"canary"}},
		},
		"status lost: the oldest revision installed stays active": {
			spec: revisionBased("1.31.1"), in: Installed{Revisions: map[string]string{"1-31-0": "", "1-31-1": ""}},
			active: "1-31-0", target: "1-31-1", versions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"},
			tags: map[string][]string{"1-31-0": {"canary", "default", "stable"}, "1-31-1": nil},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			l, err := LayoutFor(tc.spec, tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if l.Active != tc.active || l.Target != tc.target || l.Queued != tc.queued || l.Upgrading != (tc.active != tc.target) {
				t.Errorf("active %s target %s queued %q upgrading %t", l.Active, l.Target, l.Queued, l.Upgrading)
			}
			if !maps.Equal(l.Versions, tc.versions) {
				t.Errorf("versions %v, want %v", l.Versions, tc.versions)
			}
			if !maps.EqualFunc(l.Tags, tc.tags, slices.Equal) {
				t.Errorf("tags %v, want %v", l.Tags, tc.tags)
			}
			if tc.strategyIs != "" && l.Strategy != tc.strategyIs {
				t.Errorf("strategy %s", l.Strategy)
			}
		})
	}
}

// A switch back to InPlace while a revision other than default runs is refused, naming
// the field: nothing installed changes.
func TestInPlaceRefusedBesideRevisions(t *testing.T) {
	spec := &meshv1.MeshControlPlaneSpec{Version: "1.31.1", Upgrade: &meshv1.UpgradeSpec{Strategy: meshv1.UpgradeInPlace}}
	_, err := For(spec, Installed{Revisions: map[string]string{"1-31-1": "1.31.1"}, Active: "1-31-1"})
	var fe *values.FieldError
	if !errors.As(err, &fe) || fe.Field != "spec.upgrade.strategy" {
		t.Fatalf("error %v, want a FieldError on spec.upgrade.strategy", err)
	}
}

// Two revisions render side by side: each istiod under its own names, the tag webhooks on
// the revision that carries them, and base's default validator pointing at the active one.
func TestRenderTwoRevisions(t *testing.T) {
	p, err := For(revisionBased("1.31.1"), Installed{Revisions: map[string]string{"1-31-0": "1.31.0", "1-31-1": "1.31.1"}, Active: "1-31-0", Upgrade: upgrading("1-31-0", "1-31-1", upgrade.PhaseMigrating)})
	if err != nil {
		t.Fatal(err)
	}
	if p.Stamps["1-31-0"].Version != "1.31.0" || p.Stamps["1-31-1"].Version != "1.31.1" {
		t.Errorf("stamps %v", p.Stamps)
	}
	objs, err := p.Render("v1.37.1")
	if err != nil {
		t.Fatal(err)
	}
	unitOf := map[string]string{}
	var validator map[string]any
	for _, o := range objs {
		inv, _ := apply.InventoryOf(o.GetLabels())
		unitOf[o.GetKind()+"/"+o.GetName()] = inv.Component + "@" + inv.Revision
		if o.GetName() == "istiod-default-validator" {
			validator = o.Object
		}
	}
	for obj, unit := range map[string]string{
		"Deployment/istiod-1-31-0":                                   "istiod@1-31-0",
		"Deployment/istiod-1-31-1":                                   "istiod@1-31-1",
		"MutatingWebhookConfiguration/istio-sidecar-injector-1-31-0": "istiod@1-31-0",
		"MutatingWebhookConfiguration/istio-revision-tag-default":    "istiod@1-31-0",
		"MutatingWebhookConfiguration/istio-revision-tag-stable":     "istiod@1-31-0",
		"MutatingWebhookConfiguration/istio-revision-tag-canary":     "istiod@1-31-1",
		"ValidatingWebhookConfiguration/istiod-default-validator":    "base@",
	} {
		if unitOf[obj] != unit {
			t.Errorf("%s: unit %q, want %s", obj, unitOf[obj], unit)
		}
	}
	if _, ok := unitOf["Deployment/istiod"]; ok {
		t.Error("the in-place istiod is rendered beside the revisions")
	}
	hooks, _ := validator["webhooks"].([]any)
	if len(hooks) == 0 {
		t.Fatal("the default validator has no webhook")
	}
	svc, _ := hooks[0].(map[string]any)["clientConfig"].(map[string]any)["service"].(map[string]any)
	if svc["name"] != "istiod-1-31-0" {
		t.Errorf("the default validator calls %v, want the active revision's istiod-1-31-0", svc["name"])
	}
}

// A revision is removed only when it is neither active nor the upgrade's, the data plane
// reports it unused (never unknown), and it has been for the grace period.
func TestPrunable(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	since := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(-d)} }
	l := Revisions{Active: "1-31-2", Target: "1-31-2"}
	st := &meshv1.MeshControlPlaneStatus{Revisions: []meshv1.RevisionStatus{
		{Name: "1-31-2", InUse: meshv1.RevisionUnused, UnusedSince: since(2 * time.Hour)},      // active
		{Name: "1-31-1", InUse: meshv1.RevisionUnused, UnusedSince: since(2 * time.Hour)},      // gone
		{Name: "1-31-0", InUse: meshv1.RevisionUnused, UnusedSince: since(10 * time.Minute)},   // not yet
		{Name: "default", InUse: meshv1.RevisionUseUnknown, UnusedSince: since(2 * time.Hour)}, // unknown
		{Name: "1-30-9", InUse: meshv1.RevisionInUse},
	}}
	prune, wake := Prunable(l, st, time.Hour, now)
	if !slices.Equal(prune, []string{"1-31-1"}) || !wake.Equal(now.Add(50*time.Minute)) {
		t.Errorf("prune %v wake %s", prune, wake)
	}
	st.Upgrade = upgrading("1-31-1", "1-31-2", upgrade.PhaseMigrating)
	if prune, _ := Prunable(l, st, time.Hour, now); len(prune) != 0 {
		t.Errorf("the source of an upgrade under way pruned: %v", prune)
	}
}

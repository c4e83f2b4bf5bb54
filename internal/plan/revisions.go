package plan

import (
	"fmt"
	"slices"
	"strings"
	"time"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/upgrade"
	"github.com/capstan-mesh/capstan/internal/values"
	"github.com/capstan-mesh/capstan/internal/version"
)

// The revision tags Capstan keeps. default is what istio-injection=enabled namespaces (and
// pods with sidecar.istio.io/inject=true) follow; stable is the same revision under a name
// a namespace can pin (istio.io/rev=stable); canary is the revision an upgrade moves to,
// once it is Ready, so that a namespace can try it before its batch.
const (
	TagDefault = "default"
	TagStable  = "stable"
	TagCanary  = "canary"
)

// DefaultGracePeriod is how long a revision that is no longer active must be unused
// before it is removed, when spec.upgrade.inactiveRevisionGracePeriod is unset.
const DefaultGracePeriod = time.Hour

// RevisionName is the revision Istio version v runs as under RevisionBased: 1.31.1 runs as
// 1-31-1 (a revision must be a DNS label, and dots are not allowed in one).
func RevisionName(v string) string { return strings.ReplaceAll(v, ".", "-") }

// versionOf is the Istio version of a revision Capstan named (the inverse of
// RevisionName), or "" for any other name.
func versionOf(rev string) string {
	v := strings.ReplaceAll(rev, "-", ".")
	major, minor, patch, err := version.Parse(v)
	if err != nil || fmt.Sprintf("%d.%d.%d", major, minor, patch) != v {
		return ""
	}
	return v
}

// Installed is what the cluster runs that a plan must know besides the spec: the
// revisions installed and which is active, and the upgrade under way. It comes from the
// MeshControlPlane's status, with the revisions the install finds in the cluster added.
type Installed struct {
	// Revisions are the revisions whose istiod is installed, each with its Istio version
	// ("" when unknown: a revision Capstan named carries its version in its name).
	Revisions map[string]string
	// Active is status.activeRevision.
	Active string
	// Upgrade is status.upgrade.
	Upgrade *meshv1.UpgradeStatus
	// Prune are installed revisions to remove (see Prunable): planned with no objects.
	Prune []string
}

// InstalledFrom reads Installed from a MeshControlPlane's status.
func InstalledFrom(st *meshv1.MeshControlPlaneStatus) Installed {
	in := Installed{Revisions: map[string]string{}, Active: st.ActiveRevision, Upgrade: st.Upgrade}
	for _, r := range st.Revisions {
		if r.Version != "" || r.Ready != nil { // the install's entry: the revision is installed
			in.Revisions[r.Name] = r.Version
		}
	}
	if v, ok := in.Revisions[apply.DefaultRevision]; ok && v == "" {
		in.Revisions[apply.DefaultRevision] = st.Version
	}
	return in
}

// Strategy is the upgrade strategy in force: spec.upgrade.strategy, or, unset,
// RevisionBased, except for a control plane that runs only the in-place revision default,
// which stays InPlace until the field says otherwise.
func Strategy(spec *meshv1.MeshControlPlaneSpec, in Installed) meshv1.UpgradeStrategy {
	if spec.Upgrade != nil && spec.Upgrade.Strategy != "" {
		return spec.Upgrade.Strategy
	}
	if _, ok := in.Revisions[apply.DefaultRevision]; ok && len(in.Revisions) == 1 {
		return meshv1.UpgradeInPlace
	}
	return meshv1.UpgradeRevisionBased
}

// Revisions is the revision layout of a plan: which revisions run, at which version, and
// which tags point where.
type Revisions struct {
	// Strategy is the strategy in force.
	Strategy meshv1.UpgradeStrategy
	// Active is the revision the default and stable tags point at.
	Active string
	// Target is the revision spec.version runs as (Active once no upgrade is under way),
	// and Upgrading says an upgrade from Active to Target is under way or about to start.
	Target    string
	Upgrading bool
	// Queued is a version spec.version asks for that waits for the upgrade under way.
	Queued string
	// Versions are the revisions to keep installed, with their Istio versions.
	Versions map[string]string
	// Tags are the tags each revision carries, for its istiod's revisionTags value.
	Tags map[string][]string
}

// LayoutFor decides the revisions spec declares, given what is installed. Under InPlace
// that is the one revision default at spec.version; a switch back to InPlace while other
// revisions run is refused (a *values.FieldError), and nothing changes.
func LayoutFor(spec *meshv1.MeshControlPlaneSpec, in Installed) (Revisions, error) {
	want := spec.Version
	if want == "" {
		want = version.Embedded
	}
	strategy := Strategy(spec, in)
	if strategy == meshv1.UpgradeInPlace {
		for r := range in.Revisions {
			if r != apply.DefaultRevision && !slices.Contains(in.Prune, r) {
				return Revisions{}, &values.FieldError{Field: "spec.upgrade.strategy", Detail: fmt.Sprintf(
					"InPlace runs the one revision %q, and revision %s runs; keep RevisionBased (a revision is removed once unused for spec.upgrade.inactiveRevisionGracePeriod)", apply.DefaultRevision, r)}
			}
		}
		return Revisions{
			Strategy: strategy, Active: apply.DefaultRevision, Target: apply.DefaultRevision,
			Versions: map[string]string{apply.DefaultRevision: want},
			Tags:     map[string][]string{apply.DefaultRevision: nil},
		}, nil
	}
	l := Revisions{Strategy: strategy, Target: RevisionName(want), Active: in.activeRevision()}
	if l.Active == "" {
		l.Active = l.Target // a new control plane
	}
	// An upgrade under way goes on to its own target: a version asked for meanwhile waits
	// (queued), except the active one's, which the migration takes for an abort.
	if u := in.Upgrade; u != nil && !upgrade.Phase(u.Phase).Final() && u.From == l.Active && u.To != l.Target {
		if l.Target != l.Active {
			l.Queued = want
		}
		l.Target = u.To
	}
	l.Upgrading = l.Target != l.Active
	l.Versions = map[string]string{}
	for _, r := range []string{l.Active, l.Target} {
		v := in.versionOf(r)
		if r == RevisionName(want) {
			v = want
		}
		if v == "" {
			return Revisions{}, &values.FieldError{Field: "status.activeRevision", Detail: fmt.Sprintf("the Istio version of revision %s is not known; set status.activeRevision to a revision Capstan installed", r)}
		}
		l.Versions[r] = v
	}
	for r := range in.Revisions {
		if _, ok := l.Versions[r]; !ok && !slices.Contains(in.Prune, r) {
			if v := in.versionOf(r); v != "" {
				l.Versions[r] = v // an old revision, kept until it is unused for the grace period
			}
		}
	}
	l.Tags = map[string][]string{}
	for r := range l.Versions {
		l.Tags[r] = nil
	}
	canary := l.Active
	if l.Upgrading && in.Upgrade != nil && in.Upgrade.To == l.Target && canaryPhase(upgrade.Phase(in.Upgrade.Phase)) {
		canary = l.Target
	}
	l.Tags[l.Active] = append(l.Tags[l.Active], TagStable)
	if l.Active != apply.DefaultRevision {
		// The in-place revision's own webhook serves istio-injection=enabled already.
		l.Tags[l.Active] = append(l.Tags[l.Active], TagDefault)
	}
	l.Tags[canary] = append(l.Tags[canary], TagCanary)
	for r := range l.Tags {
		slices.Sort(l.Tags[r])
	}
	return l, nil
}

// canaryPhase says whether the canary tag points at the new revision in phase p: once the
// new revision is Ready and until the upgrade ends or rolls back.
func canaryPhase(p upgrade.Phase) bool {
	return p == upgrade.PhaseMigrating || p == upgrade.PhaseAwaitingPromotion || p == upgrade.PhasePromoting
}

// activeRevision is the active revision: status.activeRevision when it is installed;
// otherwise (status lost, or a control plane installed before Capstan kept it) the
// in-place revision when it runs, else the oldest revision installed, which is never
// wrongly retired. "" when nothing is installed.
func (in Installed) activeRevision() string {
	if _, ok := in.Revisions[in.Active]; ok || (in.Active != "" && len(in.Revisions) == 0) {
		return in.Active
	}
	if _, ok := in.Revisions[apply.DefaultRevision]; ok {
		return apply.DefaultRevision
	}
	var oldest string
	for r := range in.Revisions {
		if v := in.versionOf(r); v != "" && (oldest == "" || version.Less(v, in.versionOf(oldest))) {
			oldest = r
		}
	}
	return oldest
}

func (in Installed) versionOf(rev string) string {
	if v := in.Revisions[rev]; v != "" {
		return v
	}
	return versionOf(rev)
}

// Prunable are the installed revisions to remove now: neither active nor an upgrade's
// target or source, reported unused (not unknown) by the data plane, for the grace period.
// Wake is when the next one becomes prunable (zero when none will by time alone).
func Prunable(l Revisions, st *meshv1.MeshControlPlaneStatus, grace time.Duration, now time.Time) (prune []string, wake time.Time) {
	for _, r := range st.Revisions {
		keep := r.Name == l.Active || r.Name == l.Target
		if u := st.Upgrade; u != nil && !upgrade.Phase(u.Phase).Final() {
			keep = keep || r.Name == u.From || r.Name == u.To
		}
		if keep || r.InUse != meshv1.RevisionUnused || r.UnusedSince == nil {
			continue
		}
		if at := r.UnusedSince.Add(grace); now.Before(at) {
			if wake.IsZero() || at.Before(wake) {
				wake = at
			}
			continue
		}
		prune = append(prune, r.Name)
	}
	slices.Sort(prune)
	return prune, wake
}

// GracePeriod is spec.upgrade.inactiveRevisionGracePeriod, or its default.
func GracePeriod(spec *meshv1.MeshControlPlaneSpec) time.Duration {
	if u := spec.Upgrade; u != nil && u.InactiveRevisionGracePeriod != nil {
		return u.InactiveRevisionGracePeriod.Duration
	}
	return DefaultGracePeriod
}

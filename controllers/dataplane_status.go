package controllers

import (
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/revision"
)

// dataPlaneScope is one reconcile of the data plane: the MeshControlPlane as read, and
// what the counts said.
type dataPlaneScope struct {
	mcp, before *meshv1.MeshControlPlane
	now         time.Time
	// planErr: the spec cannot be planned, so which sidecars are current is unknown.
	planErr error
	// hasDesired: the counts were given a desired state at least once.
	hasDesired bool
	sum        dataplane.Summary
	stale      []dataplane.StaleWorkload
	missing    []dataplane.MissingRevision
	// uses is every revision's use; revisions are the installed ones, as planned.
	uses      revision.Uses
	revisions []string
	// decision is the restart plan's last decision; nil when it did not run. hold says why
	// it may start no restart now, if it would.
	decision *dataplane.Decision
	hold     string
	// revision and cpNamespace: the revision namespaces are labelled for (the active one),
	// and the control-plane namespace, as planned from the spec; empty while it cannot be.
	revision, cpNamespace string
	// plan is the plan of the spec and the revisions installed, and resolver its
	// injection webhooks.
	plan     plan.Plan
	resolver revision.Resolver
	// upgrade is the canary upgrade as persisted; nil while the spec cannot be planned.
	// migration are the last decision's items of the workloads it restarts.
	upgrade   *upgradeRun
	migration []dataplane.Item
}

// summarize fills status.injection, the data plane's fields of status.revisions and the
// SidecarsCurrent condition. The attention list takes the restart plan's items.
func (s *dataPlaneScope) summarize() {
	if s.hasDesired {
		d := s.decision
		if d == nil {
			// The restart plan did not run: every stale workload is reported as left stale.
			ws := make([]dataplane.Workload, len(s.stale))
			for i, w := range s.stale {
				ws[i] = dataplane.Workload{StaleWorkload: w}
			}
			never := dataplane.Decide(dataplane.Inputs{Policy: dataplane.Policy{Restart: dataplane.RestartNever}, Workloads: ws, Now: s.now})
			d = &never
		}
		list, more := dataplane.AttentionList(d.Items, s.missing)
		st := &meshv1.InjectionStatus{
			MeshedNamespaces:     int32(s.sum.MeshedNamespaces),
			InjectedPods:         int32(s.sum.InjectedPods),
			UninjectedPods:       int32(s.sum.UninjectedPods),
			StalePods:            int32(s.sum.StalePods),
			RestartsInProgress:   int32(d.InProgress),
			MoreNeedingAttention: int32(more),
		}
		for _, a := range list {
			st.Attention = append(st.Attention, meshv1.InjectionAttention{Kind: a.Kind, Namespace: a.Namespace, Name: a.Name, Reason: a.Reason, Message: a.Message})
		}
		s.mcp.Status.Injection = st
		s.summarizeRevisions()
	}
	switch {
	case s.planErr != nil:
		setCondition(s.mcp, meshv1.ConditionSidecarsCurrent, metav1.ConditionUnknown, meshv1.ReasonInvalidSpec,
			"which sidecars are current cannot be told: "+s.planErr.Error())
	case s.sum.StalePods == 0:
		setCondition(s.mcp, meshv1.ConditionSidecarsCurrent, metav1.ConditionTrue, meshv1.ReasonSidecarsCurrent,
			fmt.Sprintf("all %d running sidecars are the ones their revision injects now", s.sum.InjectedPods))
	default:
		top := dataplane.TopReason(s.stale)
		msg := fmt.Sprintf("%d of %d running sidecars are stale, in %d workloads", s.sum.StalePods, s.sum.InjectedPods, len(s.stale))
		for _, w := range s.stale {
			if w.Reason == top {
				msg += fmt.Sprintf("; %s first: %s has %d stale pods", top, w.WorkloadRef, w.Pods)
				break
			}
		}
		if s.hold != "" {
			msg += "; restarts are held: " + s.hold
		}
		setCondition(s.mcp, meshv1.ConditionSidecarsCurrent, metav1.ConditionFalse, string(top), msg)
	}
}

// summarizeRevisions sets, on each installed revision's entry of status.revisions, what
// uses it. Its version and readiness are the install's to write; an entry the install no
// longer writes (the revision was removed) goes.
func (s *dataPlaneScope) summarizeRevisions() {
	s.mcp.Status.Revisions = slices.DeleteFunc(s.mcp.Status.Revisions, func(r meshv1.RevisionStatus) bool {
		return r.Version == "" && r.Ready == nil && !slices.Contains(s.revisions, r.Name)
	})
	for _, name := range s.revisions {
		use := s.uses.ByRevision[name]
		inUse := meshv1.RevisionUnused
		switch {
		case use.InUse():
			inUse = meshv1.RevisionInUse
		case s.uses.Unknown:
			inUse = meshv1.RevisionUseUnknown
		}
		i := slices.IndexFunc(s.mcp.Status.Revisions, func(r meshv1.RevisionStatus) bool { return r.Name == name })
		if i < 0 {
			s.mcp.Status.Revisions = append(s.mcp.Status.Revisions, meshv1.RevisionStatus{Name: name})
			i = len(s.mcp.Status.Revisions) - 1
		}
		rs := &s.mcp.Status.Revisions[i]
		switch {
		case inUse != meshv1.RevisionUnused:
			rs.UnusedSince = nil
		case rs.InUse != meshv1.RevisionUnused || rs.UnusedSince == nil:
			// Unused from now: the grace period before it is removed starts here.
			rs.UnusedSince = &metav1.Time{Time: s.now.UTC().Truncate(time.Second)}
		}
		rs.InUse, rs.Pods, rs.Namespaces = inUse, ptr.To(int32(use.Pods)), ptr.To(int32(use.Namespaces))
	}
}

// changed says whether status.injection, status.revisions, SidecarsCurrent or
// InjectionConfigured differ from what was read: a status patch is sent only when the
// status really changed.
func (s *dataPlaneScope) changed() bool {
	return !equality.Semantic.DeepEqual(s.before.Status.Injection, s.mcp.Status.Injection) ||
		!equality.Semantic.DeepEqual(s.before.Status.Revisions, s.mcp.Status.Revisions) ||
		!equality.Semantic.DeepEqual(sidecarsCurrent(s.before), sidecarsCurrent(s.mcp)) ||
		!equality.Semantic.DeepEqual(injectionConfigured(s.before), injectionConfigured(s.mcp))
}

// fields are the status fields the data-plane controller owns, for applyStatusFields.
// InjectionConfigured is left out while no selector is set, which removes it.
func (s *dataPlaneScope) fields() map[string]any {
	conds := []metav1.Condition{*sidecarsCurrent(s.mcp)}
	if c := injectionConfigured(s.mcp); c != nil {
		conds = append(conds, *c)
	}
	f := map[string]any{"conditions": conds}
	if s.mcp.Status.Injection != nil {
		f["injection"] = s.mcp.Status.Injection
	}
	var revs []map[string]any
	for _, name := range s.revisions {
		for _, rs := range s.mcp.Status.Revisions {
			if rs.Name == name {
				rev := map[string]any{"name": name, "inUse": rs.InUse, "pods": rs.Pods, "namespaces": rs.Namespaces}
				if rs.UnusedSince != nil {
					rev["unusedSince"] = rs.UnusedSince
				}
				revs = append(revs, rev)
			}
		}
	}
	if len(revs) > 0 {
		f["revisions"] = revs
	}
	return f
}

func sidecarsCurrent(mcp *meshv1.MeshControlPlane) *metav1.Condition {
	return meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionSidecarsCurrent)
}

func injectionConfigured(mcp *meshv1.MeshControlPlane) *metav1.Condition {
	return meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionInjectionConfigured)
}

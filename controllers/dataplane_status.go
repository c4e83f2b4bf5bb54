package controllers

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
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
	// revision and cpNamespace: the revision namespaces are labelled for, and the
	// control-plane namespace, as planned from the spec; empty while it cannot be.
	revision, cpNamespace string
}

// summarize fills status.injection and the SidecarsCurrent condition. The attention list
// takes the restart plan's items under the Never policy: this controller restarts nothing,
// so every stale workload is reported as left stale.
func (s *dataPlaneScope) summarize() {
	if s.hasDesired {
		ws := make([]dataplane.Workload, len(s.stale))
		for i, w := range s.stale {
			ws[i] = dataplane.Workload{StaleWorkload: w}
		}
		d := dataplane.Decide(dataplane.Inputs{Policy: dataplane.Policy{Restart: dataplane.RestartNever}, Workloads: ws, Now: s.now})
		list, more := dataplane.AttentionList(d.Items, s.missing)
		st := &meshv1.InjectionStatus{
			MeshedNamespaces:     int32(s.sum.MeshedNamespaces),
			InjectedPods:         int32(s.sum.InjectedPods),
			UninjectedPods:       int32(s.sum.UninjectedPods),
			StalePods:            int32(s.sum.StalePods),
			MoreNeedingAttention: int32(more),
		}
		for _, a := range list {
			st.Attention = append(st.Attention, meshv1.InjectionAttention{Kind: a.Kind, Namespace: a.Namespace, Name: a.Name, Reason: a.Reason, Message: a.Message})
		}
		s.mcp.Status.Injection = st
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
		setCondition(s.mcp, meshv1.ConditionSidecarsCurrent, metav1.ConditionFalse, string(top), msg)
	}
}

// changed says whether status.injection, SidecarsCurrent or InjectionConfigured differ
// from what was read: a status patch is sent only when the status really changed.
func (s *dataPlaneScope) changed() bool {
	return !equality.Semantic.DeepEqual(s.before.Status.Injection, s.mcp.Status.Injection) ||
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
	return f
}

func sidecarsCurrent(mcp *meshv1.MeshControlPlane) *metav1.Condition {
	return meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionSidecarsCurrent)
}

func injectionConfigured(mcp *meshv1.MeshControlPlane) *metav1.Condition {
	return meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionInjectionConfigured)
}

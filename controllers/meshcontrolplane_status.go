package controllers

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
)

// summarize sets the conditions from what the phases did and found, and emits the events
// that say what changed. observedGeneration moves only when this generation was really
// reconciled: every phase ran, or the spec was found wanting (a terminal failure, which
// only a new generation can mend). A transient failure leaves it where it was.
func (r *MeshControlPlaneReconciler) summarize(ctx context.Context, s *scope) {
	mcp := s.mcp
	f := s.failure
	if s.completed || (f != nil && f.terminal) {
		mcp.Status.ObservedGeneration = mcp.Generation
	}
	if !mcp.DeletionTimestamp.IsZero() {
		if f != nil {
			setCondition(mcp, meshv1.ConditionDegraded, metav1.ConditionTrue, f.reason, f.message)
		}
		return
	}

	if f != nil {
		wasDegraded := meta.IsStatusConditionTrue(s.before.Status.Conditions, meshv1.ConditionDegraded)
		setCondition(mcp, meshv1.ConditionDegraded, metav1.ConditionTrue, f.reason, f.message)
		if r.servingAfter(ctx, s) {
			setCondition(mcp, meshv1.ConditionReady, metav1.ConditionTrue, meshv1.ReasonServingPrevious,
				fmt.Sprintf("the control plane last applied (Istio %s) serves; the declared state is not applied (see condition %s)", mcp.Status.Version, meshv1.ConditionDegraded))
		} else {
			setCondition(mcp, meshv1.ConditionReady, metav1.ConditionFalse, f.reason, f.message)
		}
		setCondition(mcp, meshv1.ConditionProgressing, metav1.ConditionFalse, f.reason, "stopped: "+f.message)
		if !wasDegraded || meta.FindStatusCondition(s.before.Status.Conditions, meshv1.ConditionDegraded).Message != f.message {
			r.Recorder.Eventf(mcp, nil, corev1.EventTypeWarning, f.reason, "Reconcile", "%s", f.message)
		}
		log.FromContext(ctx).Info("cannot reach the declared state", "reason", f.reason, "message", f.message)
		return
	}

	if s.completed {
		mcp.Status.Version = s.plan.Version
	}
	setCondition(mcp, meshv1.ConditionDegraded, metav1.ConditionFalse, meshv1.ReasonReconciled, "every object is applied as declared")
	var waiting []string
	if s.awaitingCA {
		waiting = append(waiting, fmt.Sprintf("the mesh CA to write Secret %s/%s before istiod starts (see condition %s)", s.namespace, CACertsSecret, meshv1.ConditionCAReady))
	} else if len(mcp.Status.Components) == 0 {
		waiting = append(waiting, "a control-plane component to be installed")
	}
	for _, c := range mcp.Status.Components {
		if !c.Ready {
			waiting = append(waiting, fmt.Sprintf("%s: %d/%d replicas available", c.Name, c.ReadyReplicas, c.DesiredReplicas))
		}
	}
	if len(waiting) == 0 {
		setCondition(mcp, meshv1.ConditionReady, metav1.ConditionTrue, meshv1.ReasonComponentsReady, fmt.Sprintf("Istio %s control plane is ready", mcp.Status.Version))
		setCondition(mcp, meshv1.ConditionProgressing, metav1.ConditionFalse, meshv1.ReasonComponentsReady, "rollout complete")
	} else {
		msg := "waiting for " + strings.Join(waiting, "; ")
		reason := meshv1.ReasonComponentsNotReady
		if s.awaitingCA {
			reason = meshv1.ReasonCAWaiting // also what tells the next reconcile that istiod was held back
		}
		setCondition(mcp, meshv1.ConditionReady, metav1.ConditionFalse, reason, msg)
		setCondition(mcp, meshv1.ConditionProgressing, metav1.ConditionTrue, reason, msg)
	}
	r.recordChanges(s)
}

// servingAfter says, after a failure, whether the control plane last applied is still
// observed serving: every component Capstan installed is there and ready. It observes
// what the failed reconcile did not get to; a control plane that cannot be observed does
// not count as serving.
func (r *MeshControlPlaneReconciler) servingAfter(ctx context.Context, s *scope) bool {
	if s.failure.phase == "observe" {
		s.mcp.Status.Components = s.before.Status.Components
		return false
	}
	if !s.observed {
		if _, err := r.observe(ctx, s); err != nil {
			log.FromContext(ctx).V(1).Info("cannot observe the control plane after a failure", "error", err.Error())
			s.mcp.Status.Components = s.before.Status.Components
			return false
		}
	}
	if s.mcp.Status.Version == "" || len(s.mcp.Status.Components) == 0 {
		return false
	}
	for _, c := range s.mcp.Status.Components {
		if !c.Ready {
			return false
		}
	}
	return true
}

// recordChanges emits one event for what this reconcile wrote: a first install, an
// in-place upgrade, a spec update, or the repair of objects that drifted.
func (r *MeshControlPlaneReconciler) recordChanges(s *scope) {
	if len(s.applied) == 0 {
		return
	}
	mcp, prev := s.mcp, s.before.Status.Version
	switch {
	case prev == "":
		r.Recorder.Eventf(mcp, nil, corev1.EventTypeNormal, meshv1.ReasonInstalled, "Install", "installed Istio %s: %d objects applied", mcp.Status.Version, len(s.applied))
	case prev != mcp.Status.Version && s.plan.Layout.Upgrading:
		r.Recorder.Eventf(mcp, nil, corev1.EventTypeNormal, meshv1.ReasonUpgraded, "Upgrade", "installed Istio %s as revision %s beside revision %s, which stays active until the workloads have moved (status.upgrade): %d objects applied",
			mcp.Status.Version, s.plan.Layout.Target, s.plan.Layout.Active, len(s.applied))
	case prev != mcp.Status.Version:
		r.Recorder.Eventf(mcp, nil, corev1.EventTypeNormal, meshv1.ReasonUpgraded, "Upgrade", "upgraded Istio in place from %s to %s: %d objects applied", prev, mcp.Status.Version, len(s.applied))
	case len(s.repaired) > 0:
		r.Recorder.Eventf(mcp, nil, corev1.EventTypeNormal, meshv1.ReasonDriftReverted, "RevertDrift", "restored %d objects that were changed or deleted: %s", len(s.repaired), describeRefs(s.repaired))
	default:
		r.Recorder.Eventf(mcp, nil, corev1.EventTypeNormal, meshv1.ReasonUpdated, "Update", "applied generation %d: %d objects changed", mcp.Generation, len(s.applied))
	}
}

// setCondition sets a condition stamped with the generation it describes.
func setCondition(mcp *meshv1.MeshControlPlane, typ string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(&mcp.Status.Conditions, metav1.Condition{
		Type:               typ,
		Status:             status,
		Reason:             reason,
		Message:            message,
		ObservedGeneration: mcp.Generation,
	})
}

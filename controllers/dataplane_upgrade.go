package controllers

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/upgrade"
	"github.com/capstan-mesh/capstan/internal/version"
)

// UpgradeFieldManager is the field manager of the canary upgrade's status: it owns
// status.upgrade, status.activeRevision and the Upgrading condition, and nothing else.
// Only it moves the active revision (which is where the install points the tags).
const UpgradeFieldManager = "capstan-upgrade"

// The canary's defaults, where spec.upgrade.canary leaves them unset.
const (
	defaultReadinessTimeout = 10 * time.Minute
	// maxCurrentBatch is how many namespaces of the batch in progress status shows.
	maxCurrentBatch = 10
)

// canaryConfig is spec.upgrade.canary as the migration reads it.
func canaryConfig(spec *meshv1.MeshControlPlaneSpec) upgrade.Config {
	cfg := upgrade.Config{BatchSize: 1, ReadinessTimeout: defaultReadinessTimeout, RollbackOnFailure: true}
	if spec.Upgrade == nil || spec.Upgrade.Canary == nil {
		return cfg
	}
	c := spec.Upgrade.Canary
	cfg.BatchSize = max(int(c.BatchSize), 1)
	if c.ReadinessTimeout != nil {
		cfg.ReadinessTimeout = c.ReadinessTimeout.Duration
	}
	if c.PauseBetweenBatches != nil {
		cfg.PauseBetweenBatches = c.PauseBetweenBatches.Duration
	}
	cfg.AutoPromote = c.AutoPromote
	if c.RollbackOnFailure != nil {
		cfg.RollbackOnFailure = *c.RollbackOnFailure
	}
	return cfg
}

// upgradeState reads the persisted migration state out of status.upgrade.
func upgradeState(u *meshv1.UpgradeStatus) upgrade.State {
	if u == nil {
		return upgrade.State{}
	}
	return upgrade.State{
		Phase: upgrade.Phase(u.Phase), From: u.From, To: u.To, StartedAt: u.StartedAt.Time,
		Namespaces: slices.Clone(u.Namespaces), Batch: int(u.Batch),
		BatchStartedAt: timeOf(u.BatchStartedAt), BatchDoneAt: timeOf(u.BatchDoneAt),
		RollBack: slices.Clone(u.RollBack), Aborting: u.Aborting, Failure: u.Failure,
		HandledPromote: timeOf(u.HandledPromote), HandledAbort: timeOf(u.HandledAbort),
	}
}

// upgradeStatus is the State, with its progress and message, as status.upgrade.
func upgradeStatus(cfg upgrade.Config, st upgrade.State, message string) *meshv1.UpgradeStatus {
	done, total, current := upgrade.Progress(cfg, st, maxCurrentBatch)
	return &meshv1.UpgradeStatus{
		Phase: string(st.Phase), From: st.From, To: st.To, StartedAt: metav1.NewTime(st.StartedAt),
		BatchesDone: int32(done), BatchesTotal: int32(total), CurrentBatch: current, Message: message,
		Namespaces: st.Namespaces, Batch: int32(st.Batch),
		BatchStartedAt: optionalTime(st.BatchStartedAt), BatchDoneAt: optionalTime(st.BatchDoneAt),
		RollBack: st.RollBack, Aborting: st.Aborting, Failure: st.Failure,
		HandledPromote: optionalTime(st.HandledPromote), HandledAbort: optionalTime(st.HandledAbort),
	}
}

func timeOf(t *metav1.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.Time
}

// optionalTime is t for status, nil when zero.
func optionalTime(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	return &metav1.Time{Time: t}
}

// upgradeRun is the migration's part of one data-plane reconcile.
type upgradeRun struct {
	cfg upgrade.Config
	// st is the persisted State.
	st upgrade.State
	// moving are the namespaces whose workloads the migration restarts now: the batch
	// moving, or those a rollback moves back.
	moving []string
	// wake is when time alone changes the migration's decision.
	wake time.Time
}

// labelsKey is what of the State the namespace labels depend on, for telling when the
// labelling pass must run again.
func (u *upgradeRun) labelsKey() string {
	if u == nil || u.st.Phase == "" {
		return ""
	}
	return fmt.Sprintf("%s>%s:%s:%d:%t:%d", u.st.From, u.st.To, u.st.Phase, u.st.Batch, u.st.BatchStartedAt.IsZero(), len(u.st.RollBack))
}

// revisionFor is the revision a namespace Capstan labels is put on: the one the upgrade
// assigned it, else the active revision.
func (u *upgradeRun) revisionFor(ns, active string) string {
	if u != nil && u.st.Phase != "" {
		if rev, ok := upgrade.Assigned(u.cfg, u.st, ns); ok {
			return rev
		}
	}
	return active
}

// writtenUpgrade is what this process last wrote of the upgrade's status. Only the
// upgrade writes status.upgrade and status.activeRevision, so until the cache shows it,
// the cache is behind: a reconcile that read the object before the write landed must not
// act on the State before it (it would label namespaces back for a step already taken).
type writtenUpgrade struct {
	uid     types.UID
	upgrade *meshv1.UpgradeStatus
	active  string
}

// catchUpUpgrade puts into s what this process wrote of the upgrade when the cached
// object does not show it yet, and forgets the write once it does.
func (r *DataPlaneReconciler) catchUpUpgrade(s *dataPlaneScope) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.upgradeWritten
	if w == nil {
		return
	}
	st := &s.mcp.Status
	switch {
	case w.uid != s.mcp.UID:
		r.upgradeWritten = nil // another MeshControlPlane: that write was not its
	case st.ActiveRevision == w.active && equality.Semantic.DeepEqual(st.Upgrade, w.upgrade):
		r.upgradeWritten = nil // the cache has caught up
	default:
		for _, m := range []*meshv1.MeshControlPlane{s.mcp, s.before} {
			m.Status.Upgrade, m.Status.ActiveRevision = w.upgrade.DeepCopy(), w.active
		}
	}
}

// upgradeOf is the migration as persisted in status.upgrade: what the namespace labels and
// the restarts of this reconcile follow.
func upgradeOf(s *dataPlaneScope) *upgradeRun {
	run := &upgradeRun{cfg: canaryConfig(&s.mcp.Spec), st: upgradeState(s.mcp.Status.Upgrade)}
	run.setMoving()
	return run
}

// setMoving sets the namespaces whose workloads the migration restarts in the State's
// phase: the batch moving, or those a rollback moves back.
func (u *upgradeRun) setMoving() {
	u.moving = nil
	switch {
	case u.st.Phase == upgrade.PhaseMigrating && !u.st.BatchStartedAt.IsZero():
		_, _, u.moving = upgrade.Progress(u.cfg, u.st, len(u.st.Namespaces))
	case u.st.Phase == upgrade.PhaseRollingBack:
		u.moving = u.st.RollBack
	}
}

// stepUpgrade is one step of the canary upgrade: it starts an upgrade when the plan asks
// for one, runs upgrade.Next on what the data plane observes (items: the migration's
// restarts), and persists the State it returns (and the active revision, when the step
// moves the tags) before anything acts on it: the namespace labels follow the persisted
// State (revisionFor), and the install follows the active revision. A crash between any
// two steps resumes from the status. It says whether the State changed.
func (r *DataPlaneReconciler) stepUpgrade(ctx context.Context, s *dataPlaneScope, run *upgradeRun, items []dataplane.Item) (bool, error) {
	l := s.plan.Layout
	before := run.st
	active := s.mcp.Status.ActiveRevision
	if active == "" {
		active = l.Active // a new control plane, or one from before Capstan kept it
	}
	if l.Strategy == meshv1.UpgradeRevisionBased && l.Upgrading && r.startsUpgrade(s, run.st) {
		ns, err := r.upgradeNamespaces(ctx, s, l.Active)
		if err != nil {
			return false, err
		}
		run.st = upgrade.Start(l.Active, l.Target, ns, upgradeNow(s))
		log.FromContext(ctx).Info("upgrade starts", "from", l.Active, "to", l.Target, "namespaces", len(ns))
	}
	message := ""
	switch {
	case run.st.Phase != "" && !run.st.Phase.Final():
		prev := run.st
		step := upgrade.Next(run.cfg, run.st, r.observeUpgrade(s, run.st, items))
		run.st, message, run.wake = step.State, step.Message, step.Wake
		if step.Action.Kind == upgrade.ActionMoveTags {
			active = step.Action.Revision
		}
		r.recordUpgrade(s, prev, step)
	case run.st.Phase != "":
		message = upgrade.Next(run.cfg, run.st, upgrade.Observed{Now: upgradeNow(s)}).Message
	}
	run.setMoving()
	if err := r.persistUpgrade(ctx, s, run.cfg, run.st, message, active, l.Queued); err != nil {
		return false, err
	}
	return !equality.Semantic.DeepEqual(upgradeStatus(run.cfg, before, ""), upgradeStatus(run.cfg, run.st, "")), nil
}

// startsUpgrade says whether a new upgrade begins: none was under way to the plan's
// target, or the last one to it failed or was aborted and a promote request newer than
// it asks to try again.
func (r *DataPlaneReconciler) startsUpgrade(s *dataPlaneScope, st upgrade.State) bool {
	l := s.plan.Layout
	if st.Phase == "" || st.From != l.Active || st.To != l.Target {
		return true
	}
	if st.Phase != upgrade.PhaseFailed && st.Phase != upgrade.PhaseAborted {
		return false
	}
	req := promoteRequest(&s.mcp.Spec)
	return req.After(st.StartedAt) && req.After(st.HandledPromote) && req.After(st.HandledAbort)
}

func promoteRequest(spec *meshv1.MeshControlPlaneSpec) time.Time {
	if spec.Upgrade == nil {
		return time.Time{}
	}
	return timeOf(spec.Upgrade.Promote)
}

// upgradeNamespaces are the namespaces an upgrade from revision from moves: those Capstan
// labelled whose labels select it. A namespace its owner labelled follows the tags, which
// move when the last batch is done.
func (r *DataPlaneReconciler) upgradeNamespaces(ctx context.Context, s *dataPlaneScope, from string) ([]string, error) {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(namespaceGVK.GroupVersion().WithKind("NamespaceList"))
	if err := r.List(ctx, list); err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	var out []string
	for i := range list.Items {
		ns := &list.Items[i]
		if _, marked := ns.Annotations[InjectionLabelledAnnotation]; !marked || !ns.DeletionTimestamp.IsZero() {
			continue
		}
		if s.resolver.Resolve(ns.Labels, nil).Revision == from {
			out = append(out, ns.Name)
		}
	}
	return out, nil
}

// upgradeNow is the reconcile's time as the upgrade keeps it: in whole seconds, as status
// stores times, so that a State read back equals the State written.
func upgradeNow(s *dataPlaneScope) time.Time { return s.now.UTC().Truncate(time.Second) }

// observeUpgrade is what the migration sees: the revisions' readiness (the install's
// status), the pre-upgrade checks, where the tags point, and each namespace of the
// upgrade from the counts and the last restart decision.
func (r *DataPlaneReconciler) observeUpgrade(s *dataPlaneScope, st upgrade.State, items []dataplane.Item) upgrade.Observed {
	obs := upgrade.Observed{Now: upgradeNow(s), Namespaces: map[string]upgrade.Namespace{}, Blocked: upgradeBlocked(s.mcp)}
	if obs.Blocked == "" {
		r.mu.Lock()
		versions := r.counts.ProxyVersions()
		r.mu.Unlock()
		obs.Blocked = proxySkew(versions, s.plan.Layout.Versions[st.To])
	}
	for _, rs := range s.mcp.Status.Revisions {
		ready := rs.Ready != nil && *rs.Ready
		switch rs.Name {
		case st.To:
			obs.ToReady = ready
		case st.From:
			obs.FromReady = ready
		}
		if slices.Contains(rs.Tags, plan.TagStable) {
			obs.Tags = rs.Name
		}
	}
	if u := s.mcp.Spec.Upgrade; u != nil {
		obs.PromoteRequestedAt, obs.AbortRequestedAt = timeOf(u.Promote), timeOf(u.Abort)
	}
	if plan.RevisionName(s.plan.Version) == st.From {
		// spec.version was set back to the old version: the upgrade is abandoned, as by an
		// abort made when it began.
		obs.AbortRequestedAt = st.StartedAt
	}
	// Pods still waiting for their restart onto the namespace's revision, per namespace.
	waiting, failing := map[string]int{}, map[string][]string{}
	waitingFor := map[string][]string{}
	for _, it := range items {
		switch it.Status {
		case dataplane.StatusRestarting, dataplane.StatusQueued, dataplane.StatusWaitingForPDB, dataplane.StatusStaleAfterRestart:
			waiting[it.Namespace] += max(it.Pods, 1)
			waitingFor[it.Namespace] = append(waitingFor[it.Namespace], fmt.Sprintf("%s (%s)", it.WorkloadRef, it.Status))
		case dataplane.StatusTimedOut:
			failing[it.Namespace] = append(failing[it.Namespace], it.Message)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range st.Namespaces {
		known, rev, pods, current := r.counts.Namespace(n)
		if !known {
			continue // deleted: done
		}
		ready := max(min(current, pods-waiting[n]), 0)
		obs.Namespaces[n] = upgrade.Namespace{Revision: rev, Pods: pods, Ready: ready, Waiting: waitingFor[n], Failing: failing[n]}
	}
	return obs
}

// upgradeBlocked names a pre-upgrade check that fails, or "": the mesh CA must be ready
// and not rotating its root (a new istiod must load the CA the workloads trust, and a
// rotation moves that trust).
func upgradeBlocked(mcp *meshv1.MeshControlPlane) string {
	if c := meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionCARotating); c != nil && c.Status == metav1.ConditionTrue {
		return "a root rotation of the mesh CA is under way (condition CARotating); the upgrade starts when it ends"
	}
	if c := meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionCAReady); c == nil || c.Status != metav1.ConditionTrue {
		return "the mesh CA is not ready (condition CAReady); the new revision must load it before any workload moves"
	}
	return ""
}

// proxySkew names the running sidecars a control plane at version to cannot serve, or "":
// Istio supports proxies at most one minor behind their control plane, and never ahead
// of it. A version that does not parse (a pod stamped by hand) is left out.
func proxySkew(versions map[string]int, to string) string {
	tmaj, tmin, _, err := version.Parse(to)
	if err != nil {
		return ""
	}
	var problems []string
	for _, v := range slices.Sorted(maps.Keys(versions)) {
		maj, minor, _, err := version.Parse(v)
		switch {
		case err != nil || versions[v] == 0:
		case maj != tmaj || minor < tmin-1:
			problems = append(problems, fmt.Sprintf("%d sidecars run Istio %s, more than one minor behind %s; restart them onto the running revision first", versions[v], v, to))
		case minor > tmin:
			problems = append(problems, fmt.Sprintf("%d sidecars run Istio %s, newer than %s", versions[v], v, to))
		}
	}
	return strings.Join(problems, "; ")
}

// recordUpgrade tells each batch that began moving, and each rollback, in an Event.
func (r *DataPlaneReconciler) recordUpgrade(s *dataPlaneScope, before upgrade.State, step upgrade.Step) {
	after := step.State
	switch {
	case step.Action.Kind == upgrade.ActionMove && !after.BatchStartedAt.IsZero() && (before.BatchStartedAt.IsZero() || before.Batch != after.Batch):
		r.Recorder.Eventf(s.mcp, nil, corev1.EventTypeNormal, meshv1.ReasonUpgradeBatch, "Upgrade", "%s", step.Message)
	case after.Phase == upgrade.PhaseRollingBack && before.Phase != upgrade.PhaseRollingBack:
		r.Recorder.Eventf(s.mcp, nil, corev1.EventTypeWarning, meshv1.ReasonUpgradeBatch, "RollBack", "%s; rolling back %s to revision %s", after.Failure, listSome(after.RollBack), after.From)
	case after.Phase != before.Phase && after.Phase.Final():
		r.Recorder.Eventf(s.mcp, nil, corev1.EventTypeNormal, meshv1.ReasonUpgradeBatch, string(after.Phase), "%s", upgrade.Next(upgrade.Config{}, after, upgrade.Observed{}).Message)
	}
}

// persistUpgrade writes status.upgrade, status.activeRevision and the Upgrading condition
// when they changed, with the upgrade's own field manager, at once: nothing acts on a
// State before it is stored.
func (r *DataPlaneReconciler) persistUpgrade(ctx context.Context, s *dataPlaneScope, cfg upgrade.Config, st upgrade.State, message, active, queued string) error {
	var u *meshv1.UpgradeStatus
	if st.Phase != "" {
		u = upgradeStatus(cfg, st, message)
	}
	status, reason, msg := metav1.ConditionFalse, "NoUpgrade", "no upgrade has run"
	switch {
	case u != nil && st.Phase == upgrade.PhaseWaiting && upgradeBlocked(s.mcp) != "":
		status, reason, msg = metav1.ConditionTrue, meshv1.ReasonUpgradeBlocked, message
	case u != nil && !st.Phase.Final():
		status, reason, msg = metav1.ConditionTrue, string(st.Phase), message
	case u != nil:
		reason, msg = string(st.Phase), message
	}
	if queued != "" {
		msg += fmt.Sprintf("; spec.version %s waits until the upgrade to revision %s ends", queued, st.To)
	}
	if req := promoteRequest(&s.mcp.Spec); !req.IsZero() && (st.Phase == "" || st.Phase == upgrade.PhaseComplete) && req.After(st.StartedAt) && req.After(st.HandledPromote) {
		msg += fmt.Sprintf("; spec.upgrade.promote (%s) asks for a promotion, and no upgrade waits for one: nothing was done", req.UTC().Format(time.RFC3339))
	}
	mcp := s.mcp.DeepCopy()
	mcp.Status.Upgrade, mcp.Status.ActiveRevision = u, active
	setCondition(mcp, meshv1.ConditionUpgrading, status, reason, msg)
	cond := meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionUpgrading)
	if equality.Semantic.DeepEqual(s.mcp.Status.Upgrade, u) && s.mcp.Status.ActiveRevision == active &&
		equality.Semantic.DeepEqual(meta.FindStatusCondition(s.mcp.Status.Conditions, meshv1.ConditionUpgrading), cond) {
		return nil
	}
	fields := map[string]any{"conditions": []metav1.Condition{*cond}}
	if active != "" {
		fields["activeRevision"] = active
	}
	if u != nil {
		fields["upgrade"] = u
	}
	if err := client.IgnoreNotFound(applyStatusFields(ctx, r.Client, s.mcp, UpgradeFieldManager, fields)); err != nil {
		return fmt.Errorf("writing the upgrade's status: %w", err)
	}
	r.mu.Lock()
	r.upgradeWritten = &writtenUpgrade{uid: s.mcp.UID, upgrade: u, active: active}
	r.mu.Unlock()
	s.mcp.Status.Upgrade, s.mcp.Status.ActiveRevision = u, active
	setCondition(s.mcp, meshv1.ConditionUpgrading, status, reason, msg)
	s.before.Status.Upgrade, s.before.Status.ActiveRevision = u, active
	setCondition(s.before, meshv1.ConditionUpgrading, status, reason, msg)
	return nil
}

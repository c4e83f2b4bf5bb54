package dataplane

// WorkloadRef names the workload a restart goes through: a Deployment, StatefulSet or
// DaemonSet, or, reported only, a Job, another owner, or a pod no controller owns (Kind
// "Pod").
type WorkloadRef struct {
	Kind, Namespace, Name string
}

// String is "Kind namespace/name", the form messages name a workload by.
func (w WorkloadRef) String() string { return w.Kind + " " + w.Namespace + "/" + w.Name }

// WorkloadOf is the workload that owns the pod, the key its stale pods are grouped by.
func WorkloadOf(p Pod) WorkloadRef {
	if p.OwnerKind == "" {
		return WorkloadRef{Kind: "Pod", Namespace: p.Namespace, Name: p.Name}
	}
	return WorkloadRef{Kind: p.OwnerKind, Namespace: p.Namespace, Name: p.OwnerName}
}

// Restartable says whether Capstan restarts the workload the way `kubectl rollout restart`
// does, by a new annotation on its pod template. A Job's pods finish by themselves, a pod
// no controller owns would be deleted for good, and other owners roll out in their own
// ways: those are reported, never restarted.
func (w WorkloadRef) Restartable() bool {
	switch w.Kind {
	case "Deployment", "StatefulSet", "DaemonSet":
		return true
	}
	return false
}

// whyNotRestartable says, for status, why Capstan leaves a workload's stale pods alone.
func (w WorkloadRef) whyNotRestartable() string {
	switch w.Kind {
	case "Pod":
		return "no controller owns it; delete it and create it again to give it a current sidecar"
	case "Job":
		return "a Job's pods are not restarted; its next pods get a current sidecar"
	}
	return "Capstan restarts only Deployments, StatefulSets and DaemonSets; restart it by hand"
}

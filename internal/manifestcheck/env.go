// Package manifestcheck holds checks of the operator's Deployment that the tests of every
// packaging (config/, the Helm chart, the OLM bundle) share, so the three say the same.
package manifestcheck

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// ManagerEnv lists what is wrong with the variables the operator reads from its pod:
// GOMEMLIMIT must be the container's memory limit, in bytes, under which Go's garbage
// collector keeps the heap (the operator's only memory tuning), and POD_NAMESPACE the
// pod's namespace, which the webhook refuses for the control plane. Nil when both hold.
func ManagerEnv(c corev1.Container) []string {
	var problems []string
	if c.Resources.Limits.Memory().IsZero() {
		problems = append(problems, "no memory limit: GOMEMLIMIT would be the node's allocatable memory")
	}
	env := map[string]*corev1.EnvVarSource{}
	for _, e := range c.Env {
		env[e.Name] = e.ValueFrom
	}
	f := env["GOMEMLIMIT"]
	switch {
	case f == nil || f.ResourceFieldRef == nil || f.ResourceFieldRef.Resource != "limits.memory" ||
		(f.ResourceFieldRef.ContainerName != "" && f.ResourceFieldRef.ContainerName != c.Name):
		problems = append(problems, "GOMEMLIMIT is not the container's limits.memory")
	case !f.ResourceFieldRef.Divisor.IsZero() && f.ResourceFieldRef.Divisor.Cmp(resource.MustParse("1")) != 0:
		problems = append(problems, "GOMEMLIMIT's divisor is "+f.ResourceFieldRef.Divisor.String()+": Go reads a plain number as bytes, so it must be 1")
	}
	if f := env["POD_NAMESPACE"]; f == nil || f.FieldRef == nil || f.FieldRef.FieldPath != "metadata.namespace" {
		problems = append(problems, "POD_NAMESPACE is not the pod's metadata.namespace")
	}
	return problems
}

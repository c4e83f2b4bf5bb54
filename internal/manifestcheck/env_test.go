package manifestcheck

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// The check itself must refuse what the packagings must never ship.
func TestManagerEnv(t *testing.T) {
	good := func() corev1.Container {
		return corev1.Container{Name: "manager",
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}},
			Env: []corev1.EnvVar{
				{Name: "GOMEMLIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1")}}},
				{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			}}
	}
	tests := map[string]struct {
		mutate func(*corev1.Container)
		bad    bool
	}{
		"as shipped":         {func(*corev1.Container) {}, false},
		"no memory limit":    {func(c *corev1.Container) { c.Resources.Limits = nil }, true},
		"divisor in MiB":     {func(c *corev1.Container) { c.Env[0].ValueFrom.ResourceFieldRef.Divisor = resource.MustParse("1Mi") }, true},
		"from the CPU limit": {func(c *corev1.Container) { c.Env[0].ValueFrom.ResourceFieldRef.Resource = "limits.cpu" }, true},
		"no POD_NAMESPACE":   {func(c *corev1.Container) { c.Env = c.Env[:1] }, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := good()
			tc.mutate(&c)
			if got := ManagerEnv(c); (len(got) > 0) != tc.bad {
				t.Errorf("ManagerEnv = %v, want problems: %t", got, tc.bad)
			}
		})
	}
}

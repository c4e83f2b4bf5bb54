package ca

import (
	"k8s.io/apimachinery/pkg/labels"
)

// Served says which namespaces istiod serves, and so which of its istio-ca-root-cert
// ConfigMaps tell whether it has published a trust bundle. A ConfigMap elsewhere (in a
// namespace being deleted, or one discoverySelectors leave out, where istiod no longer
// writes) may keep an old bundle for ever, and a rotation must not wait on it.
type Served struct {
	// ControlPlane is the control-plane namespace, which always counts.
	ControlPlane string
	// Selectors are meshConfig.discoverySelectors: a namespace counts when it matches one
	// of them. Nil means every namespace, as in istiod.
	Selectors []labels.Selector
}

// Counts says whether the istio-ca-root-cert ConfigMap of namespace ns, with its labels and
// whether it is terminating, must hold the bundle for it to count as published.
func (s Served) Counts(ns string, nsLabels map[string]string, terminating bool) bool {
	switch {
	case terminating:
		return false
	case ns == s.ControlPlane || s.Selectors == nil:
		return true
	}
	set := labels.Set(nsLabels)
	for _, sel := range s.Selectors {
		if sel.Matches(set) {
			return true
		}
	}
	return false
}

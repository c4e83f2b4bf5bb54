package apply

import (
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Drift is how a live object differs from what Capstan wants it to be.
type Drift int

const (
	// InSync: nothing to apply.
	InSync Drift = iota
	// Missing: the object does not exist.
	Missing
	// Outdated: the object holds an earlier desired state (its configuration hash differs):
	// the spec or the charts changed.
	Outdated
	// Modified: the object holds the current desired state, but someone changed it since.
	Modified
)

// Compare says whether live still holds what desired asks for, so that it must be applied
// again, and why. Fields the server or other controllers add are not drift: desired need
// only be contained in live. Values the server rewrites to a canonical form (quantities,
// numbers) compare by meaning, and fields Istio's control plane owns at run time are
// skipped.
func Compare(desired, live *unstructured.Unstructured) Drift {
	d, _ := Diff(desired, live)
	return d
}

// Diff is Compare that also names the first field found to differ, for logs.
func Diff(desired, live *unstructured.Unstructured) (Drift, string) {
	if live == nil {
		return Missing, ""
	}
	if d := MetadataDrift(desired, live); d != InSync {
		return d, "metadata"
	}
	for _, k := range slices.Sorted(maps.Keys(desired.Object)) {
		if k == "metadata" || k == "status" {
			continue
		}
		if path, ok := contains(desired.Object[k], live.Object[k], ignoredPaths(desired.GetKind()), k); !ok {
			return Modified, path
		}
	}
	return InSync, ""
}

// MetadataDrift compares only the configuration hash and the inventory labels: the check
// for kinds Capstan watches as metadata only, such as CRDs, whose bodies are too large to
// cache.
func MetadataDrift(desired *unstructured.Unstructured, live metav1.Object) Drift {
	if desired.GetAnnotations()[ConfigHashAnnot] != live.GetAnnotations()[ConfigHashAnnot] {
		return Outdated
	}
	for k, v := range desired.GetLabels() {
		if live.GetLabels()[k] != v {
			return Modified
		}
	}
	return InSync
}

// ignoredPaths are fields that istiod changes after Capstan applies them (it turns the
// validating webhook's failurePolicy from Ignore to Fail once it serves).
func ignoredPaths(kind string) map[string]bool {
	if kind == "ValidatingWebhookConfiguration" {
		return map[string]bool{"webhooks[].failurePolicy": true}
	}
	return nil
}

// contains reports whether got holds everything want asks for; when not, it names the
// first path that differs.
func contains(want, got any, ignore map[string]bool, path string) (string, bool) {
	if ignore[path] {
		return "", true
	}
	if got == nil && isZero(want) {
		return "", true // the server omits empty strings, false and 0 of omitempty fields
	}
	switch w := want.(type) {
	case nil:
		return "", true
	case map[string]any:
		if len(w) == 0 {
			return "", true // an empty map asks for nothing; the server may drop it
		}
		g, ok := got.(map[string]any)
		if !ok {
			return path, false
		}
		for _, k := range slices.Sorted(maps.Keys(w)) {
			if p, ok := contains(w[k], g[k], ignore, path+"."+k); !ok {
				return p, false
			}
		}
		return "", true
	case []any:
		g, ok := got.([]any)
		if !ok {
			return path, len(w) == 0 && got == nil
		}
		if len(w) != len(g) {
			return path, false
		}
		for i := range w {
			if p, ok := contains(w[i], g[i], ignore, path+"[]"); !ok {
				return p, false
			}
		}
		return "", true
	case string:
		g, ok := got.(string)
		return path, ok && (w == g || sameQuantity(w, g))
	case bool:
		g, ok := got.(bool)
		return path, ok && g == w
	default:
		wf, wok := number(want)
		gf, gok := number(got)
		if wok && gok {
			return path, wf == gf
		}
		if gs, ok := got.(string); ok && wok {
			// int-or-string fields may come back as strings
			q, err := resource.ParseQuantity(gs)
			return path, err == nil && q.AsApproximateFloat64() == wf
		}
		return path, false
	}
}

func isZero(v any) bool {
	switch w := v.(type) {
	case string:
		return w == ""
	case bool:
		return !w
	}
	n, ok := number(v)
	return ok && n == 0
}

func sameQuantity(a, b string) bool {
	qa, err := resource.ParseQuantity(a)
	if err != nil {
		return false
	}
	qb, err := resource.ParseQuantity(b)
	return err == nil && qa.Cmp(qb) == 0
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case int64:
		return float64(n), true
	case int:
		return float64(n), true
	case int32:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}

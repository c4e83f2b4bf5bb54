package apply

import "slices"

// PruneOptions say which owned objects may be deleted.
type PruneOptions struct {
	// KeepCRDs leaves CustomResourceDefinitions in place even when the render no longer
	// has them: deleting one deletes every object of its kind.
	KeepCRDs bool
}

// Prunable returns the owned live objects that the desired set no longer contains, in the
// reverse of apply order (webhooks before the workloads they call). live must hold only
// objects that carry Capstan's inventory labels.
func Prunable(desired, live []Ref, rank func(Ref) int, opts PruneOptions) []Ref {
	want := make(map[Ref]bool, len(desired))
	for _, r := range desired {
		want[r] = true
	}
	var out []Ref
	for _, r := range live {
		if want[r] {
			continue
		}
		if opts.KeepCRDs && r.GVK.Group == "apiextensions.k8s.io" && r.GVK.Kind == "CustomResourceDefinition" {
			continue
		}
		out = append(out, r)
	}
	slices.SortStableFunc(out, func(a, b Ref) int { return rank(b) - rank(a) })
	return out
}

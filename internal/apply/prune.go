package apply

import "slices"

// Live is an object Capstan wrote, as found in the cluster: its reference and its
// inventory labels.
type Live struct {
	Ref
	Inventory
}

// Unit names one unit of the control plane (see internal/plan): a component at a
// revision. A unit with no revision is shared by every revision and holds every object of
// its component.
type Unit struct {
	Component, Revision string
}

// Holds says whether an object labelled inv belongs to the unit u.
func (u Unit) Holds(inv Inventory) bool {
	return inv.Component == u.Component && (u.Revision == "" || inv.Revision == u.Revision)
}

// PruneOptions say which owned objects may be deleted.
type PruneOptions struct {
	// Writer is the controller pruning: only its objects are candidates.
	Writer string
	// Units are the units being pruned: only their objects are candidates. Nil means every
	// unit of the writer (an uninstall).
	Units []Unit
	// KeepCRDs leaves CustomResourceDefinitions in place even when the render no longer
	// has them: deleting one deletes every object of its kind.
	KeepCRDs bool
}

// Prunable returns the live objects of opts' writer and units that the desired set no
// longer contains, in the reverse of apply order (webhooks before the workloads they
// call). Another controller's objects, and objects of units not named, are never
// returned, whatever their names.
func Prunable(desired []Ref, live []Live, rank func(Ref) int, opts PruneOptions) []Ref {
	want := make(map[Ref]bool, len(desired))
	for _, r := range desired {
		want[r] = true
	}
	var out []Ref
	for _, l := range live {
		if want[l.Ref] || l.Writer != opts.Writer {
			continue
		}
		if opts.Units != nil && !slices.ContainsFunc(opts.Units, func(u Unit) bool { return u.Holds(l.Inventory) }) {
			continue
		}
		if opts.KeepCRDs && l.GVK.Group == "apiextensions.k8s.io" && l.GVK.Kind == "CustomResourceDefinition" {
			continue
		}
		out = append(out, l.Ref)
	}
	slices.SortStableFunc(out, func(a, b Ref) int { return rank(b) - rank(a) })
	return out
}

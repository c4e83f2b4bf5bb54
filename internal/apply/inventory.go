// Package apply writes rendered objects with server-side apply, keeps the inventory labels
// that say which objects Capstan owns, decides what has drifted, and what to prune.
package apply

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// Labels and annotations every object Capstan writes carries.
const (
	FieldManager   = "capstan"
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "capstan"
	ComponentLabel = "capstan.dev/component"
	RevisionLabel  = "capstan.dev/revision"
	// WriterLabel names the Capstan controller that wrote an object: prune and uninstall
	// of one controller never touch another's objects.
	WriterLabel     = "capstan.dev/writer"
	ConfigHashAnnot = "capstan.dev/config-hash"
	// DefaultRevision is the revision of an in-place control plane: istiod's objects are
	// named without a revision suffix.
	DefaultRevision    = "default"
	NamespaceComponent = "namespace"
)

// Writers: the controllers that write objects, each pruning only its own.
const (
	// WriterInstall is the install controller: the charts' objects and the control-plane
	// namespace.
	WriterInstall = "install"
	// WriterCA is the mesh CA controller: the CA's Secrets and cert-manager Certificate.
	WriterCA = "ca"
)

// Ref names one object.
type Ref struct {
	GVK schema.GroupVersionKind
	types.NamespacedName
}

// RefOf returns the reference of an object.
func RefOf(u *unstructured.Unstructured) Ref {
	return Ref{GVK: u.GroupVersionKind(), NamespacedName: types.NamespacedName{Namespace: u.GetNamespace(), Name: u.GetName()}}
}

func (r Ref) String() string {
	if r.Namespace == "" {
		return r.GVK.Kind + " " + r.Name
	}
	return r.GVK.Kind + " " + r.Namespace + "/" + r.Name
}

// Inventory is what the labels of an object Capstan wrote say about it: the unit it
// belongs to (component and revision) and the controller that wrote it.
type Inventory struct {
	// Component is the unit's component: base, istiod, namespace, ca, ...
	Component string
	// Revision is the control-plane revision of a per-revision unit; empty for a unit shared
	// by every revision (base, the namespace, the CA).
	Revision string
	// Writer is the controller that wrote the object (WriterInstall, WriterCA).
	Writer string
}

// Labels are the inventory labels that mark an object as Capstan's.
func (inv Inventory) Labels() map[string]string {
	l := map[string]string{ManagedByLabel: ManagedByValue, ComponentLabel: inv.Component, WriterLabel: inv.Writer}
	if inv.Revision != "" {
		l[RevisionLabel] = inv.Revision
	}
	return l
}

// InventoryOf reads the inventory labels of a live object; false when Capstan did not
// write it. Objects written before the writer label existed carry none: the CA's were
// then labelled component "ca", and every other one was the install controller's.
func InventoryOf(labels map[string]string) (Inventory, bool) {
	if !Owned(labels) {
		return Inventory{}, false
	}
	inv := Inventory{Component: labels[ComponentLabel], Revision: labels[RevisionLabel], Writer: labels[WriterLabel]}
	if inv.Writer == "" {
		inv.Writer = WriterInstall
		if inv.Component == WriterCA {
			inv.Writer = WriterCA
		}
	}
	return inv, true
}

// Stamp labels a rendered object as Capstan's, for its unit and writer, and records a hash
// of what Capstan wants it to hold. It also drops fields that Istio's control plane fills
// in at run time, so that applying never takes them back.
func Stamp(u *unstructured.Unstructured, inv Inventory) {
	dropRuntimeOwnedFields(u)
	labels := u.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	delete(labels, RevisionLabel)
	maps.Copy(labels, inv.Labels())
	u.SetLabels(labels)

	// The hash covers the object as it would be without its hash annotation (and without
	// an annotations map that holds nothing else), so stamping twice changes nothing.
	annotations := u.GetAnnotations()
	delete(annotations, ConfigHashAnnot)
	if len(annotations) == 0 {
		unstructured.RemoveNestedField(u.Object, "metadata", "annotations")
		annotations = map[string]string{}
	} else {
		u.SetAnnotations(annotations)
	}
	annotations[ConfigHashAnnot] = configHash(u)
	u.SetAnnotations(annotations)
}

// configHash digests an object. Hashes are compared with those of objects stamped by
// earlier versions of Capstan, so what is digested (the object's JSON, keys sorted) must
// not change: a test holds a known value.
func configHash(u *unstructured.Unstructured) string {
	b, _ := json.Marshal(u.Object) // the object came from JSON, so it marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// dropRuntimeOwnedFields removes rendered fields whose live value istiod owns: the webhook
// CA bundles it patches in when the charts leave them empty.
func dropRuntimeOwnedFields(u *unstructured.Unstructured) {
	switch u.GetKind() {
	case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
	default:
		return
	}
	hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
	for _, h := range hooks {
		hm, ok := h.(map[string]any)
		if !ok {
			continue
		}
		if cc, ok := hm["clientConfig"].(map[string]any); ok {
			if ca, _ := cc["caBundle"].(string); ca == "" {
				delete(cc, "caBundle")
			}
		}
	}
	_ = unstructured.SetNestedSlice(u.Object, hooks, "webhooks")
}

// Owned reports whether a live object carries Capstan's inventory labels.
func Owned(labels map[string]string) bool {
	return labels[ManagedByLabel] == ManagedByValue && labels[ComponentLabel] != ""
}

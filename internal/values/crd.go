package values

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

// CRDPath is the MeshControlPlane CRD controller-gen writes, relative to the repository.
const CRDPath = "config/crd/bases/mesh.capstan.dev_meshcontrolplanes.yaml"

// WithOwnedSchema is the MeshControlPlane CRD, as controller-gen writes it, with
// OwnedSchema applied to spec.values in every version. controller-gen cannot declare
// fields inside a JSON-typed field, hence this step after it; the rest of the file comes
// back byte for byte (the same YAML encoder, keys sorted).
func WithOwnedSchema(crd []byte) ([]byte, error) {
	const header = "---\n"
	var doc map[string]any
	if err := yaml.Unmarshal(bytes.TrimPrefix(crd, []byte(header)), &doc); err != nil {
		return nil, err
	}
	spec, _ := doc["spec"].(map[string]any)
	versions, _ := spec["versions"].([]any)
	if len(versions) == 0 {
		return nil, errors.New("no spec.versions: not a CRD")
	}
	for _, ver := range versions {
		ver, _ := ver.(map[string]any)
		props, err := dig(ver, "schema", "openAPIV3Schema", "properties", "spec", "properties")
		if err != nil {
			return nil, fmt.Errorf("version %v: %w", ver["name"], err)
		}
		var s apiextensionsv1.JSONSchemaProps
		if err := convert(props["values"], &s); err != nil {
			return nil, fmt.Errorf("version %v: spec.values: %w", ver["name"], err)
		}
		if s.XPreserveUnknownFields == nil || !*s.XPreserveUnknownFields {
			return nil, fmt.Errorf("version %v: spec.values does not preserve unknown fields", ver["name"])
		}
		OwnedSchema(&s)
		var out map[string]any
		if err := convert(s, &out); err != nil {
			return nil, err
		}
		props["values"] = out
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return append([]byte(header), b...), nil
}

func dig(m map[string]any, path ...string) (map[string]any, error) {
	for _, p := range path {
		next, ok := m[p].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("no %s in the schema", p)
		}
		m = next
	}
	return m, nil
}

func convert(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

package values

import (
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// DiscoverySelectors reads meshConfig.discoverySelectors from the raw Helm values of
// spec.values: nil when they are not set or the list is empty (istiod then serves every
// namespace). Errors name the field.
func DiscoverySelectors(raw []byte) ([]labels.Selector, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var v struct {
		MeshConfig struct {
			DiscoverySelectors []json.RawMessage `json:"discoverySelectors"`
		} `json:"meshConfig"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("spec.values.meshConfig.discoverySelectors: %w", err)
	}
	var out []labels.Selector
	for i, raw := range v.MeshConfig.DiscoverySelectors {
		var ls metav1.LabelSelector
		if err := json.Unmarshal(raw, &ls); err != nil {
			return nil, fmt.Errorf("spec.values.meshConfig.discoverySelectors[%d]: %w", i, err)
		}
		sel, err := metav1.LabelSelectorAsSelector(&ls)
		if err != nil {
			return nil, fmt.Errorf("spec.values.meshConfig.discoverySelectors[%d]: %w", i, err)
		}
		out = append(out, sel)
	}
	return out, nil
}

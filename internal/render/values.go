package render

import (
	"fmt"

	"helm.sh/helm/v4/pkg/chart"
	"helm.sh/helm/v4/pkg/chart/common"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
)

// renderValues is what a chart's templates are given, as helm install gives it: .Values
// (the chart's defaults under the given values), .Chart, .Release and .Capabilities.
//
// Capstan builds it itself rather than through Helm's pkg/chart/common/util, which would
// also validate the values against the chart's values.schema.json: the charts Capstan
// installs ship none, and that package compiles JSON-schema meta-schemas when the program
// starts, a megabyte the operator would hold for its whole life. A test compares the
// result with Helm's for the charts and specs that matter.
func renderValues(ch *chartv2.Chart, vals map[string]any, opts common.ReleaseOptions, caps *common.Capabilities) (common.Values, error) {
	if len(ch.Dependencies()) > 0 {
		return nil, fmt.Errorf("chart %s has subcharts, whose values Capstan does not merge", ch.Name())
	}
	acc, err := chart.NewAccessor(ch)
	if err != nil {
		return nil, err
	}
	return common.Values{
		"Chart":        acc.MetadataAsMap(),
		"Capabilities": caps,
		"Release": map[string]any{
			"Name":      opts.Name,
			"Namespace": opts.Namespace,
			"IsUpgrade": opts.IsUpgrade,
			"IsInstall": opts.IsInstall,
			"Revision":  opts.Revision,
			"Service":   "Helm",
		},
		"Values": common.Values(underDefaults(vals, ch.Values)),
	}, nil
}

// underDefaults lays a chart's default values under the given ones, the way Helm merges
// them: a key the given values lack takes its default; a key they set to null drops its
// default; two maps merge key by key; any other given value wins. It changes and returns
// vals.
func underDefaults(vals, defaults map[string]any) map[string]any {
	if vals == nil {
		vals = map[string]any{}
	}
	for k, d := range defaults {
		v, set := vals[k]
		switch {
		case !set:
			vals[k] = d
		case v == nil:
			delete(vals, k)
		default:
			vm, vIsMap := v.(map[string]any)
			dm, dIsMap := d.(map[string]any)
			if vIsMap && dIsMap {
				underDefaults(vm, dm)
			}
		}
	}
	return vals
}

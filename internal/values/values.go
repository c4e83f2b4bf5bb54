// Package values turns a MeshControlPlane spec into the Helm values of Istio's charts.
// It is pure: no client, no clock.
package values

import (
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"time"

	"helm.sh/helm/v4/pkg/chart/v2/loader"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/version"
)

// DefaultHub is the registry Istio publishes its release images to.
const DefaultHub = "docker.io/istio"

// Values are Helm values, shared by every chart of one control plane.
type Values = map[string]any

// FieldError is a values problem tied to the spec field that caused it, so the condition
// message can tell the user what to fix.
type FieldError struct {
	Field  string
	Detail string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Detail }

// For builds the chart values for spec. Raw spec.values come first; the typed fields are
// merged over them, so a typed field always wins. Raw values that set one of OwnedValues
// are refused: the CRD refuses them at admission, and this catches objects stored before
// it did.
func For(spec *meshv1.MeshControlPlaneSpec) (Values, error) {
	v := Values{}
	if spec.Values != nil && len(spec.Values.Raw) > 0 {
		if err := json.Unmarshal(spec.Values.Raw, &v); err != nil {
			return nil, &FieldError{Field: "spec.values", Detail: fmt.Sprintf("not a JSON object: %v", err)}
		}
		if v == nil {
			v = Values{}
		}
		// istiod would refuse them too; said here, the field is named and nothing changes.
		if _, err := DiscoverySelectors(spec.Values.Raw); err != nil {
			return nil, &FieldError{Field: "spec.values.meshConfig.discoverySelectors", Detail: "not a list of Kubernetes label selectors: " + err.Error()}
		}
		if err := checkOwned(v); err != nil {
			return nil, err
		}
	}
	ver := spec.Version
	if ver == "" {
		ver = version.Embedded
	}
	if err := version.Supported(ver); err != nil {
		return nil, &FieldError{Field: "spec.version", Detail: err.Error()}
	}
	ns := Namespace(spec)

	global := Values{
		"istioNamespace": ns,
		"tag":            ver,
	}
	if hub, _ := nested(v, "global", "hub").(string); hub == "" {
		global["hub"] = DefaultHub
	}
	typed := Values{"global": global}

	switch spec.Profile {
	case "", "default", "minimal":
		// Capstan installs only base and istiod, which is all "minimal" adds to "default";
		// the charts have no profile file for either.
	case "openshift":
		global["platform"] = "openshift"
	default:
		typed["profile"] = spec.Profile
	}

	if c := spec.Components; c != nil && c.Pilot != nil {
		pilot, err := pilotValues(c.Pilot)
		if err != nil {
			return nil, err
		}
		typed["pilot"] = pilot
	}
	if m := spec.MeshConfig; m != nil {
		typed["meshConfig"] = meshConfigValues(m)
	}
	if inj := spec.Injection; inj != nil && inj.Proxy != nil {
		proxy, err := proxyValues(inj.Proxy)
		if err != nil {
			return nil, err
		}
		typed = loader.MergeMaps(typed, proxy)
	}
	return loader.MergeMaps(loader.MergeMaps(v, typed), caValues(spec)), nil
}

// proxyValues map spec.injection.proxy to what the injection template reads.
func proxyValues(p *meshv1.ProxySpec) (Values, error) {
	proxy := Values{}
	if p.Resources != nil {
		r, err := toValues(p.Resources)
		if err != nil {
			return nil, &FieldError{Field: "spec.injection.proxy.resources", Detail: err.Error()}
		}
		proxy["resources"] = r
	}
	if p.HoldApplicationUntilProxyStarts != nil {
		proxy["holdApplicationUntilProxyStarts"] = *p.HoldApplicationUntilProxyStarts
	}
	if p.LogLevel != "" {
		proxy["logLevel"] = p.LogLevel
	}
	out := Values{"global": Values{"proxy": proxy}}
	if p.NativeSidecars != nil {
		// istiod's injector reads the switch from its environment, not from a chart value.
		out["pilot"] = Values{"env": Values{"ENABLE_NATIVE_SIDECARS": strconv.FormatBool(*p.NativeSidecars)}}
	}
	return out, nil
}

// WorkloadCertTTL is the workload certificate lifetime spec declares, or Istio's default.
func WorkloadCertTTL(spec *meshv1.MeshControlPlaneSpec) time.Duration {
	if s := spec.Security; s != nil && s.CA != nil && s.CA.WorkloadCertTTL != nil && s.CA.WorkloadCertTTL.Duration > 0 {
		return s.CA.WorkloadCertTTL.Duration
	}
	return DefaultWorkloadCertTTL
}

// DefaultWorkloadCertTTL is Istio's default workload certificate lifetime.
const DefaultWorkloadCertTTL = 24 * time.Hour

// caValues are the settings Capstan's CA management needs of istiod and the sidecars. They
// win over spec.values and spec.components.pilot.env, because a root rotation is safe only
// if they hold:
//   - ISTIO_MULTIROOT_MESH lets istiod accept a cacerts whose root bundle grows or shrinks;
//   - PROXY_CONFIG_XDS_AGENT has istiod push a new trust bundle to sidecars at once;
//   - the workload certificate TTL is both what sidecars ask for (SECRET_TTL) and the most
//     istiod grants (MAX_WORKLOAD_CERT_TTL), so that no certificate outlives the soak.
func caValues(spec *meshv1.MeshControlPlaneSpec) Values {
	ttl := WorkloadCertTTL(spec).String()
	return Values{
		"pilot": Values{"env": Values{
			"ISTIO_MULTIROOT_MESH":      "true",
			"PROXY_CONFIG_XDS_AGENT":    "true",
			"DEFAULT_WORKLOAD_CERT_TTL": ttl,
			"MAX_WORKLOAD_CERT_TTL":     ttl,
		}},
		"meshConfig": Values{"defaultConfig": Values{"proxyMetadata": Values{"SECRET_TTL": ttl}}},
	}
}

func pilotValues(p *meshv1.PilotSpec) (Values, error) {
	out := Values{}
	switch {
	case p.Replicas != nil:
		out["autoscaleEnabled"] = false
		out["replicaCount"] = int64(*p.Replicas)
	case p.Autoscale != nil:
		out["autoscaleEnabled"] = true
		out["autoscaleMin"] = int64(p.Autoscale.Min)
		out["autoscaleMax"] = int64(p.Autoscale.Max)
		if p.Autoscale.TargetCPUUtilizationPercentage > 0 {
			out["cpu"] = Values{"targetAverageUtilization": int64(p.Autoscale.TargetCPUUtilizationPercentage)}
		}
	}
	if p.Resources != nil {
		r, err := toValues(p.Resources)
		if err != nil {
			return nil, &FieldError{Field: "spec.components.pilot.resources", Detail: err.Error()}
		}
		out["resources"] = r
	}
	if len(p.Env) > 0 {
		env := Values{}
		for k, val := range p.Env {
			env[k] = val
		}
		out["env"] = env
	}
	if len(p.NodeSelector) > 0 {
		out["nodeSelector"] = toAnyMap(p.NodeSelector)
	}
	if len(p.Tolerations) > 0 {
		t, err := toValues(p.Tolerations)
		if err != nil {
			return nil, &FieldError{Field: "spec.components.pilot.tolerations", Detail: err.Error()}
		}
		out["tolerations"] = t
	}
	return out, nil
}

func meshConfigValues(m *meshv1.MeshConfigSpec) Values {
	out := Values{}
	if m.AccessLogFile != nil {
		out["accessLogFile"] = *m.AccessLogFile
	}
	if m.AccessLogEncoding != "" {
		out["accessLogEncoding"] = m.AccessLogEncoding
	}
	if m.TrustDomain != "" {
		out["trustDomain"] = m.TrustDomain
	}
	if m.OutboundTrafficPolicy != nil {
		out["outboundTrafficPolicy"] = Values{"mode": m.OutboundTrafficPolicy.Mode}
	}
	return out
}

// toValues round-trips a typed value through JSON into plain maps and slices, the shape
// Helm templates expect.
func toValues(in any) (any, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	var out any
	return out, json.Unmarshal(b, &out)
}

func toAnyMap(in map[string]string) Values {
	out := make(Values, len(in))
	for k, v := range maps.All(in) {
		out[k] = v
	}
	return out
}

func nested(v Values, path ...string) any {
	var cur any = v
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

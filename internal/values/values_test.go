package values

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
)

func TestFor(t *testing.T) {
	tests := map[string]struct {
		spec meshv1.MeshControlPlaneSpec
		// want maps a dotted path to the value it must hold; nil means absent.
		want map[string]any
	}{
		"defaults give the embedded version from Istio's release hub": {
			spec: meshv1.MeshControlPlaneSpec{},
			want: map[string]any{"global.tag": "1.31.1", "global.hub": DefaultHub, "global.istioNamespace": "istio-system", "profile": nil},
		},
		"the image tag follows spec.version": {
			spec: meshv1.MeshControlPlaneSpec{Version: "1.31.4", Namespace: "mesh"},
			want: map[string]any{"global.tag": "1.31.4", "global.istioNamespace": "mesh"},
		},
		"fixed replicas turn autoscaling off": {
			spec: meshv1.MeshControlPlaneSpec{Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](3)}}},
			want: map[string]any{"pilot.autoscaleEnabled": false, "pilot.replicaCount": int64(3)},
		},
		"autoscale bounds map to the chart's keys": {
			spec: meshv1.MeshControlPlaneSpec{Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Autoscale: &meshv1.AutoscaleSpec{Min: 2, Max: 7, TargetCPUUtilizationPercentage: 60}}}},
			want: map[string]any{"pilot.autoscaleEnabled": true, "pilot.autoscaleMin": int64(2), "pilot.autoscaleMax": int64(7), "pilot.cpu.targetAverageUtilization": int64(60)},
		},
		"resources, env, node selector and tolerations pass through": {
			spec: meshv1.MeshControlPlaneSpec{Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{
				Resources:    &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")}},
				Env:          map[string]string{"PILOT_DEBOUNCE_AFTER": "200ms"},
				NodeSelector: map[string]string{"role": "infra"},
				Tolerations:  []corev1.Toleration{{Key: "infra", Operator: corev1.TolerationOpExists}},
			}}},
			want: map[string]any{
				"pilot.resources.requests.cpu":   "250m",
				"pilot.env.PILOT_DEBOUNCE_AFTER": "200ms",
				"pilot.nodeSelector.role":        "infra",
				"pilot.tolerations":              []any{map[string]any{"key": "infra", "operator": "Exists"}},
			},
		},
		"the typed mesh config subset": {
			spec: meshv1.MeshControlPlaneSpec{MeshConfig: &meshv1.MeshConfigSpec{
				AccessLogFile: ptr.To("/dev/stdout"), AccessLogEncoding: "JSON", TrustDomain: "corp.example",
				OutboundTrafficPolicy: &meshv1.OutboundTrafficPolicy{Mode: "REGISTRY_ONLY"},
			}},
			want: map[string]any{"meshConfig.accessLogFile": "/dev/stdout", "meshConfig.accessLogEncoding": "JSON", "meshConfig.trustDomain": "corp.example", "meshConfig.outboundTrafficPolicy.mode": "REGISTRY_ONLY"},
		},
		"profiles: openshift is a platform, demo a chart profile, minimal needs none": {
			spec: meshv1.MeshControlPlaneSpec{Profile: "openshift"},
			want: map[string]any{"global.platform": "openshift", "profile": nil},
		},
		"demo profile": {
			spec: meshv1.MeshControlPlaneSpec{Profile: "demo"},
			want: map[string]any{"profile": "demo"},
		},
		"minimal profile": {
			spec: meshv1.MeshControlPlaneSpec{Profile: "minimal"},
			want: map[string]any{"profile": nil},
		},
		"raw values fill what the typed fields leave": {
			spec: meshv1.MeshControlPlaneSpec{Values: raw(`{"pilot":{"traceSampling":5},"global":{"hub":"registry.corp/istio","logging":{"level":"default:debug"}}}`)},
			want: map[string]any{"pilot.traceSampling": float64(5), "global.hub": "registry.corp/istio", "global.logging.level": "default:debug", "global.tag": "1.31.1"},
		},
		"typed fields win over raw values": {
			spec: meshv1.MeshControlPlaneSpec{
				Version:    "1.31.2",
				Values:     raw(`{"global":{"tag":"9.9.9"},"pilot":{"replicaCount":9,"autoscaleEnabled":true}}`),
				Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](2)}},
			},
			want: map[string]any{"global.tag": "1.31.2", "global.istioNamespace": "istio-system", "pilot.replicaCount": int64(2), "pilot.autoscaleEnabled": false},
		},
		"the CA settings a root rotation relies on, with Istio's default TTL": {
			spec: meshv1.MeshControlPlaneSpec{},
			want: map[string]any{
				"pilot.env.ISTIO_MULTIROOT_MESH": "true", "pilot.env.PROXY_CONFIG_XDS_AGENT": "true",
				"pilot.env.MAX_WORKLOAD_CERT_TTL": "24h0m0s", "pilot.env.DEFAULT_WORKLOAD_CERT_TTL": "24h0m0s",
				"meshConfig.defaultConfig.proxyMetadata.SECRET_TTL": "24h0m0s",
			},
		},
		"the workload TTL bounds what istiod grants and what sidecars ask, over raw values and pilot env": {
			spec: meshv1.MeshControlPlaneSpec{
				Values:     raw(`{"pilot":{"env":{"MAX_WORKLOAD_CERT_TTL":"2160h"}},"meshConfig":{"defaultConfig":{"proxyMetadata":{"SECRET_TTL":"90h","OTHER":"x"}}}}`),
				Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Env: map[string]string{"ISTIO_MULTIROOT_MESH": "false"}}},
				Security:   &meshv1.SecuritySpec{CA: &meshv1.CASpec{WorkloadCertTTL: &metav1.Duration{Duration: 2 * time.Hour}}},
			},
			want: map[string]any{
				"pilot.env.MAX_WORKLOAD_CERT_TTL": "2h0m0s", "pilot.env.ISTIO_MULTIROOT_MESH": "true",
				"meshConfig.defaultConfig.proxyMetadata.SECRET_TTL": "2h0m0s", "meshConfig.defaultConfig.proxyMetadata.OTHER": "x",
			},
		},
		"spec.injection.proxy sets the sidecar the injector builds, over raw values": {
			spec: meshv1.MeshControlPlaneSpec{
				Values: raw(`{"global":{"proxy":{"logLevel":"debug","clusterDomain":"corp.local"}}}`),
				Injection: &meshv1.InjectionSpec{Proxy: &meshv1.ProxySpec{
					Resources:                       &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m")}},
					HoldApplicationUntilProxyStarts: ptr.To(true),
					LogLevel:                        "error",
					NativeSidecars:                  ptr.To(false),
				}},
			},
			want: map[string]any{
				"global.proxy.logLevel": "error", "global.proxy.clusterDomain": "corp.local",
				"global.proxy.holdApplicationUntilProxyStarts": true,
				"global.proxy.resources.requests.cpu":          "50m",
				"pilot.env.ENABLE_NATIVE_SIDECARS":             "false",
			},
		},
		"native sidecars unset leave istiod to decide": {
			spec: meshv1.MeshControlPlaneSpec{Injection: &meshv1.InjectionSpec{Proxy: &meshv1.ProxySpec{LogLevel: "info"}}},
			want: map[string]any{"pilot.env.ENABLE_NATIVE_SIDECARS": nil, "global.proxy.holdApplicationUntilProxyStarts": nil},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := For(&tc.spec)
			if err != nil {
				t.Fatalf("For: %v", err)
			}
			for path, want := range tc.want {
				if v := lookup(got, path); !reflect.DeepEqual(v, want) {
					t.Errorf("%s = %#v, want %#v", path, v, want)
				}
			}
		})
	}
}

func TestForRejects(t *testing.T) {
	tests := map[string]struct {
		spec  meshv1.MeshControlPlaneSpec
		field string
	}{
		"a version of another minor release": {spec: meshv1.MeshControlPlaneSpec{Version: "1.30.2"}, field: "spec.version"},
		"an unknown future version":          {spec: meshv1.MeshControlPlaneSpec{Version: "1.99.0"}, field: "spec.version"},
		"a malformed version":                {spec: meshv1.MeshControlPlaneSpec{Version: "latest"}, field: "spec.version"},
		"raw values that are not an object":  {spec: meshv1.MeshControlPlaneSpec{Values: raw(`[1,2]`)}, field: "spec.values"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := For(&tc.spec)
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("want a FieldError, got %v", err)
			}
			if fe.Field != tc.field {
				t.Errorf("field = %q, want %q (%v)", fe.Field, tc.field, err)
			}
		})
	}
}

// TestForRefusesOwnedValues protects the running control plane from a raw value that
// renames or moves its objects (see OwnedValues), for objects the CRD admitted before it
// refused them: For names the path and what to use instead, and renders nothing.
func TestForRefusesOwnedValues(t *testing.T) {
	for _, o := range OwnedValues {
		t.Run(o.Path, func(t *testing.T) {
			doc := `"x"`
			for _, p := range slices.Backward(strings.Split(o.Path, ".")) {
				doc = `{"` + p + `":` + doc + `}`
			}
			_, err := For(&meshv1.MeshControlPlaneSpec{Values: raw(doc)})
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("%s: want a FieldError, got %v", doc, err)
			}
			if fe.Field != "spec.values."+o.Path || fe.Detail != o.Instead {
				t.Errorf("got %q", err)
			}
		})
	}
	cases := map[string]struct {
		values string
		field  string // "" when admitted
	}{
		"spec.namespace is the way to the namespace":                {values: `{"global":{"istioNamespace":"istio-system"}}`, field: "spec.values.global.istioNamespace"},
		"the istiod chart reads pilot.revision as revision":         {values: `{"pilot":{"revision":"canary","env":{"A":"b"}}}`, field: "spec.values.pilot.revision"},
		"a null is no value (Helm drops it)":                        {values: `{"revision":null,"global":{"istioNamespace":null}}`},
		"other keys beside an owned one's parents":                  {values: `{"global":{"hub":"registry.corp/istio","logAsJson":true},"base":{"excludedCRDs":[]},"pilot":{"env":{"A":"b"}}}`},
		"left alone: the remote pilot address without istiodRemote": {values: `{"global":{"remotePilotAddress":"10.0.0.1","externalIstiod":true}}`},
		"pilot.defaultRevision is read by no chart":                 {values: `{"pilot":{"defaultRevision":"x"}}`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := For(&meshv1.MeshControlPlaneSpec{Values: raw(tc.values)})
			var fe *FieldError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field):
				t.Fatalf("got %v, want a FieldError on %s", err, tc.field)
			}
		})
	}
}

// TestCheckNamespace protects the operator and Kubernetes' own namespaces from holding a
// control plane (and being emptied by its uninstall), for objects stored before admission
// refused them.
func TestCheckNamespace(t *testing.T) {
	tests := map[string]struct {
		namespace, operator string
		refused             string // part of the message; "" when allowed
	}{
		"the default namespace":                    {namespace: "", operator: "capstan-system"},
		"a namespace of its own":                   {namespace: "mesh", operator: "capstan-system"},
		"kube-system":                              {namespace: "kube-system", operator: "capstan-system", refused: "Kubernetes' own namespaces"},
		"kube-public":                              {namespace: "kube-public", refused: "Kubernetes' own namespaces"},
		"kube-node-lease":                          {namespace: "kube-node-lease", refused: "Kubernetes' own namespaces"},
		"the operator's namespace":                 {namespace: "capstan-system", operator: "capstan-system", refused: "operator's own namespace"},
		"the operator's namespace is the default":  {namespace: "", operator: "istio-system", refused: "istio-system is the Capstan operator's own namespace"},
		"an unknown operator namespace skips that": {namespace: "capstan-system", operator: ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckNamespace(&meshv1.MeshControlPlaneSpec{Namespace: tc.namespace}, tc.operator)
			var fe *FieldError
			switch {
			case tc.refused == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refused == "":
			case !errors.As(err, &fe):
				t.Fatalf("got %v, want a FieldError containing %q", err, tc.refused)
			case fe.Field != "spec.namespace" || !strings.Contains(fe.Detail, tc.refused):
				t.Fatalf("got %q, want spec.namespace and %q", err, tc.refused)
			}
		})
	}
}

func TestForDoesNotChangeTheSpec(t *testing.T) {
	spec := meshv1.MeshControlPlaneSpec{Values: raw(`{"global":{"tag":"x"}}`)}
	if _, err := For(&spec); err != nil {
		t.Fatal(err)
	}
	if string(spec.Values.Raw) != `{"global":{"tag":"x"}}` {
		t.Errorf("spec.values changed to %s", spec.Values.Raw)
	}
}

func raw(s string) *apiextensionsv1.JSON { return &apiextensionsv1.JSON{Raw: []byte(s)} }

func lookup(v map[string]any, path string) any {
	var cur any = v
	start := 0
	for i := 0; i <= len(path); i++ {
		if i < len(path) && path[i] != '.' {
			continue
		}
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[path[start:i]]
		start = i + 1
	}
	return cur
}

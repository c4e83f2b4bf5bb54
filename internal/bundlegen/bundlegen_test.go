package bundlegen_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	operatorsv1alpha1 "github.com/operator-framework/api/pkg/operators/v1alpha1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/capstan-mesh/capstan/internal/bundlegen"
)

// config is a synthetic rendered configuration with one object of every kind Build sorts:
// what kustomize prints for an operator with a webhook (certificate from cert-manager),
// leader election, metrics, an extra auth-delegator binding, and a Secrets Role in another
// namespace (op-data), as Capstan's CA has in the control-plane namespace.
const config = `
apiVersion: v1
kind: Namespace
metadata: {name: op-system, labels: {pod-security.kubernetes.io/enforce: restricted}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: op, namespace: op-system}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: op, namespace: op-system, labels: {app: op}}
spec:
  selector: {matchLabels: {app: op}}
  template:
    metadata: {labels: {app: op}}
    spec:
      serviceAccountName: op
      containers:
      - name: manager
        image: example.com/op:v1.2.3
        args: [--secret-namespaces=op-data]
        ports: [{name: webhook, containerPort: 9443}]
        volumeMounts:
        - {name: cert, mountPath: /tmp/k8s-webhook-server/serving-certs/}
        - {name: cache, mountPath: /cache}
      volumes:
      - {name: cert, secret: {secretName: op-cert}}
      - {name: cache, emptyDir: {}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: op-manager}
rules: [{apiGroups: [apps], resources: [deployments], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: op-manager}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: op-manager}
subjects: [{kind: ServiceAccount, name: op, namespace: op-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: op-auth-delegator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:auth-delegator}
subjects: [{kind: ServiceAccount, name: op, namespace: op-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: op-metrics-reader}
rules: [{nonResourceURLs: [/metrics], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: op-leader, namespace: op-system}
rules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: op-leader, namespace: op-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: op-leader}
subjects: [{kind: ServiceAccount, name: op, namespace: op-system}]
---
apiVersion: v1
kind: Namespace
metadata: {name: op-data}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: op-manager, namespace: op-data}
rules: [{apiGroups: [""], resources: [secrets], verbs: [get, create]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: op-manager, namespace: op-data}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: op-manager}
subjects: [{kind: ServiceAccount, name: op, namespace: op-system}]
---
apiVersion: v1
kind: Service
metadata: {name: op-webhook, namespace: op-system}
spec:
  selector: {app: op}
  ports: [{port: 443, targetPort: webhook}]
---
apiVersion: v1
kind: Service
metadata: {name: op-metrics, namespace: op-system}
spec:
  selector: {app: op}
  ports: [{port: 8443}]
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: op, namespace: op-system}
spec: {secretName: op-cert}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: op}
webhooks:
- name: v.example.com
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  clientConfig: {service: {name: op-webhook, namespace: op-system, path: /validate}}
  rules: [{apiGroups: [mesh.capstan.dev], apiVersions: [v1alpha1], operations: [CREATE], resources: [meshcontrolplanes]}]
`

// sample is the example resource (alm-examples).
const sample = `
apiVersion: mesh.capstan.dev/v1alpha1
kind: MeshControlPlane
metadata: {name: default}
spec: {version: 1.31.1}
`

// inputs decodes the synthetic configuration plus the real MeshControlPlane CRD (whose
// schema the console descriptors are checked against), and the sample.
func inputs(t *testing.T) (objs, samples []*unstructured.Unstructured) {
	t.Helper()
	crd, err := os.ReadFile(filepath.Join(repoRoot, "config/crd/bases/mesh.capstan.dev_meshcontrolplanes.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err = bundlegen.Decode(append([]byte(config+"\n---\n"), crd...))
	if err != nil {
		t.Fatal(err)
	}
	samples, err = bundlegen.Decode([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	return objs, samples
}

// csvOf decodes the CSV of a generated bundle.
func csvOf(t *testing.T, files bundlegen.Files) *operatorsv1alpha1.ClusterServiceVersion {
	t.Helper()
	var csv operatorsv1alpha1.ClusterServiceVersion
	if err := yaml.Unmarshal(files[bundlegen.ManifestsDir+"/capstan.clusterserviceversion.yaml"], &csv); err != nil {
		t.Fatal(err)
	}
	return &csv
}

// TestBuild checks where each kind of configuration object ends up.
func TestBuild(t *testing.T) {
	objs, samples := inputs(t)
	files, err := bundlegen.Build(objs, samples)
	if err != nil {
		t.Fatal(err)
	}

	wantFiles := []string{
		"bundle.Dockerfile",
		"bundle/manifests/capstan.clusterserviceversion.yaml",
		"bundle/manifests/mesh.capstan.dev_meshcontrolplanes.yaml",
		"bundle/manifests/op-auth-delegator_rbac.authorization.k8s.io_v1_clusterrolebinding.yaml",
		"bundle/manifests/op-metrics-reader_rbac.authorization.k8s.io_v1_clusterrole.yaml",
		"bundle/manifests/op-metrics_v1_service.yaml",
		"bundle/metadata/annotations.yaml",
	}
	if got := files.Paths(); !slices.Equal(got, wantFiles) {
		t.Errorf("files:\n got %q\nwant %q", got, wantFiles)
	}
	if svc := string(files["bundle/manifests/op-metrics_v1_service.yaml"]); strings.Contains(svc, "namespace:") {
		t.Errorf("the metrics Service keeps its namespace (OLM picks it):\n%s", svc)
	}

	csv := csvOf(t, files)
	strategy := csv.Spec.InstallStrategy.StrategySpec
	checks := []struct {
		what      string
		got, want any
	}{
		{"name", csv.Name, "capstan.v1.2.3"},
		{"container image", csv.Annotations["containerImage"], "example.com/op:v1.2.3"},
		{"suggested namespace", csv.Annotations["operatorframework.io/suggested-namespace"], "op-system"},
		{"deployments", len(strategy.DeploymentSpecs), 1},
		{"deployment label", strategy.DeploymentSpecs[0].Label["app"], "op"},
		{"volumes (certificate removed)", len(strategy.DeploymentSpecs[0].Spec.Template.Spec.Volumes), 1},
		{"mounts (certificate removed)", len(strategy.DeploymentSpecs[0].Spec.Template.Spec.Containers[0].VolumeMounts), 1},
		{"cluster permissions", len(strategy.ClusterPermissions), 1},
		{"cluster permissions SA", strategy.ClusterPermissions[0].ServiceAccountName, "op"},
		{"cluster permission rules (ClusterRole, then the op-data Role widened)", len(strategy.ClusterPermissions[0].Rules), 2},
		{"cluster permission resource", strategy.ClusterPermissions[0].Rules[0].Resources[0], "deployments"},
		{"widened cluster permission resource", strategy.ClusterPermissions[0].Rules[1].Resources[0], "secrets"},
		{"permissions", len(strategy.Permissions), 1},
		{"permission rules (only the operator namespace's Role)", len(strategy.Permissions[0].Rules), 1},
		{"permission resource", strategy.Permissions[0].Rules[0].Resources[0], "leases"},
		{"webhooks", len(csv.Spec.WebhookDefinitions), 1},
		{"webhook type", csv.Spec.WebhookDefinitions[0].Type, operatorsv1alpha1.ValidatingAdmissionWebhook},
		{"webhook deployment", csv.Spec.WebhookDefinitions[0].DeploymentName, "op"},
		{"webhook containerPort", csv.Spec.WebhookDefinitions[0].ContainerPort, int32(443)},
		{"webhook targetPort (named port resolved)", csv.Spec.WebhookDefinitions[0].TargetPort.IntValue(), 9443},
		{"webhook path", *csv.Spec.WebhookDefinitions[0].WebhookPath, "/validate"},
		{"related pilot image", csv.Spec.RelatedImages[1].Image, "docker.io/istio/pilot:1.31.1"},
		{"owned CRDs", len(csv.Spec.CustomResourceDefinitions.Owned), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
}

// TestBuildWidensForeignRoles checks that the rules of a Role bound to the operator in
// another namespace, which OLM cannot create, are granted cluster-wide and that the CSV
// description says so, naming the rules and the operator's own limit; and that a
// configuration without such a Role says nothing of it.
func TestBuildWidensForeignRoles(t *testing.T) {
	objs, samples := inputs(t)
	files, err := bundlegen.Build(objs, samples)
	if err != nil {
		t.Fatal(err)
	}
	desc := csvOf(t, files).Spec.Description
	for _, want := range []string{"## Permissions under OLM", "`op-data`", "* `secrets` (core): get, create (Role `op-manager` in `op-data`)", "`--secret-namespaces=op-data`"} {
		if !strings.Contains(desc, want) {
			t.Errorf("the CSV description lacks %q:\n%s", want, desc)
		}
	}

	objs = slices.DeleteFunc(objs, func(o *unstructured.Unstructured) bool { return o.GetNamespace() == "op-data" })
	files, err = bundlegen.Build(objs, samples)
	if err != nil {
		t.Fatal(err)
	}
	csv := csvOf(t, files)
	if desc := csv.Spec.Description; strings.Contains(desc, "Permissions under OLM") {
		t.Errorf("without a Role in another namespace the description still has the note:\n%s", desc)
	}
	if rules := csv.Spec.InstallStrategy.StrategySpec.ClusterPermissions[0].Rules; len(rules) != 1 {
		t.Errorf("cluster permission rules %+v, want only the ClusterRole's", rules)
	}
}

// TestBuildDescriptors checks the console form against the CRD schema: selects list the
// schema's enum, and every descriptor has a description.
func TestBuildDescriptors(t *testing.T) {
	objs, samples := inputs(t)
	files, err := bundlegen.Build(objs, samples)
	if err != nil {
		t.Fatal(err)
	}
	owned := csvOf(t, files).Spec.CustomResourceDefinitions.Owned[0]
	byPath := map[string][]string{}
	for _, d := range owned.SpecDescriptors {
		if d.Description == "" || d.DisplayName == "" {
			t.Errorf("spec descriptor %s lacks a display name or description", d.Path)
		}
		byPath[d.Path] = d.XDescriptors
	}
	select_ := "urn:alm:descriptor:com.tectonic.ui:select:"
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"profile", []string{select_ + "default", select_ + "demo", select_ + "minimal", select_ + "preview", select_ + "stable", select_ + "openshift"}},
		{"meshConfig.outboundTrafficPolicy.mode", []string{select_ + "ALLOW_ANY", select_ + "REGISTRY_ONLY"}},
		{"components.pilot.replicas", []string{"urn:alm:descriptor:com.tectonic.ui:podCount"}},
		{"uninstall.removeCRDs", []string{"urn:alm:descriptor:com.tectonic.ui:booleanSwitch", "urn:alm:descriptor:com.tectonic.ui:advanced"}},
		{"security.ca.type", []string{select_ + "SelfSigned", select_ + "Provided", select_ + "CertManager"}},
		{"security.ca.provided.secretName", []string{"urn:alm:descriptor:com.tectonic.ui:text", "urn:alm:descriptor:com.tectonic.ui:fieldDependency:security.ca.type:Provided"}},
		{"security.ca.certManager.issuerRef.kind", []string{"urn:alm:descriptor:com.tectonic.ui:fieldDependency:security.ca.type:CertManager", select_ + "Issuer", select_ + "ClusterIssuer"}},
		{"security.ca.rootTTL", []string{"urn:alm:descriptor:com.tectonic.ui:text", "urn:alm:descriptor:com.tectonic.ui:advanced"}},
		{"security.ca.rotation.automatic", []string{"urn:alm:descriptor:com.tectonic.ui:booleanSwitch"}},
		{"injection.rollout.restartStaleWorkloads", []string{select_ + "Never", select_ + "OnUpgrade", select_ + "Always"}},
		{"injection.namespaceSelector", []string{"urn:alm:descriptor:com.tectonic.ui:selector:core:v1:Namespace"}},
		{"upgrade.strategy", []string{select_ + "RevisionBased", select_ + "InPlace"}},
		{"upgrade.canary.batchSize", []string{"urn:alm:descriptor:com.tectonic.ui:number"}},
		{"upgrade.canary.autoPromote", []string{"urn:alm:descriptor:com.tectonic.ui:booleanSwitch"}},
		{"upgrade.canary.rollbackOnFailure", []string{"urn:alm:descriptor:com.tectonic.ui:booleanSwitch"}},
		{"upgrade.canary.readinessTimeout", []string{"urn:alm:descriptor:com.tectonic.ui:text", "urn:alm:descriptor:com.tectonic.ui:advanced"}},
		{"upgrade.canary.pauseBetweenBatches", []string{"urn:alm:descriptor:com.tectonic.ui:text", "urn:alm:descriptor:com.tectonic.ui:advanced"}},
		{"upgrade.inactiveRevisionGracePeriod", []string{"urn:alm:descriptor:com.tectonic.ui:text", "urn:alm:descriptor:com.tectonic.ui:advanced"}},
	} {
		if got := byPath[tc.path]; !slices.Equal(got, tc.want) {
			t.Errorf("%s: x-descriptors %q, want %q", tc.path, got, tc.want)
		}
	}
	var status []string
	for _, d := range owned.StatusDescriptors {
		status = append(status, d.Path)
	}
	// The upgrade's progress is shown; the fields that only let Capstan resume it are not.
	if want := []string{"conditions", "version", "activeRevision", "components", "ca.type", "ca.phase", "ca.rootExpiry", "ca.intermediateExpiry",
		"ca.nextAction", "ca.nextActionReason", "ca.rotationReason",
		"injection.meshedNamespaces", "injection.injectedPods", "injection.uninjectedPods", "injection.stalePods",
		"injection.restartsInProgress", "revisions",
		"upgrade.phase", "upgrade.from", "upgrade.to", "upgrade.batchesDone", "upgrade.batchesTotal", "upgrade.currentBatch", "upgrade.startedAt", "upgrade.message",
		"observedGeneration"}; !slices.Equal(status, want) {
		t.Errorf("status descriptors %q, want %q", status, want)
	}
}

// TestBuildDeterministic feeds the objects in random orders: the files must not change.
func TestBuildDeterministic(t *testing.T) {
	objs, samples := inputs(t)
	first, err := bundlegen.Build(objs, samples)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		shuffled := slices.Clone(objs)
		rand.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		again, err := bundlegen.Build(shuffled, samples)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range first.Paths() {
			if !bytes.Equal(first[p], again[p]) {
				t.Errorf("run %d: %s changed with the input order", i, p)
			}
		}
	}
}

// TestBuildErrors checks that Build refuses what it cannot bundle faithfully.
func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(objs []*unstructured.Unstructured) []*unstructured.Unstructured
		want   string
	}{{
		name: "no deployment",
		mutate: func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
			return slices.DeleteFunc(objs, func(o *unstructured.Unstructured) bool { return o.GetKind() == "Deployment" })
		},
		want: "no Deployment",
	}, {
		name: "image tag not a version",
		mutate: func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
			d := find(objs, "Deployment")
			containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
			containers[0].(map[string]any)["image"] = "example.com/op:latest"
			_ = unstructured.SetNestedSlice(d.Object, containers, "spec", "template", "spec", "containers")
			return objs
		},
		want: "not a semantic version",
	}, {
		name: "kind OLM cannot install",
		mutate: func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
			return append(objs, &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": map[string]any{"name": "x"},
			}})
		},
		want: "OLM cannot install this kind",
	}, {
		name: "webhook by URL",
		mutate: func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
			w := find(objs, "ValidatingWebhookConfiguration")
			hooks, _, _ := unstructured.NestedSlice(w.Object, "webhooks")
			hooks[0].(map[string]any)["clientConfig"] = map[string]any{"url": "https://example.com/validate"}
			_ = unstructured.SetNestedSlice(w.Object, hooks, "webhooks")
			return objs
		},
		want: "only webhooks served by a Service",
	}, {
		name: "descriptor for a field the CRD lacks",
		mutate: func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
			unstructured.RemoveNestedField(schemaOf(find(objs, "CustomResourceDefinition")), "properties", "spec", "properties", "profile")
			return objs
		},
		want: "descriptor spec.profile: no such field",
	}, {
		name: "select without enum",
		mutate: func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
			unstructured.RemoveNestedField(schemaOf(find(objs, "CustomResourceDefinition")), "properties", "spec", "properties", "profile", "enum")
			return objs
		},
		want: "a select needs an enum",
	}, {
		name: "dependency on a value the control field's enum lacks",
		mutate: func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
			typ, _, _ := unstructured.NestedFieldNoCopy(schemaOf(find(objs, "CustomResourceDefinition")), "properties", "spec", "properties", "security", "properties", "ca", "properties", "type")
			typ.(map[string]any)["enum"] = []any{"SelfSigned", "CertManager"}
			return objs
		},
		want: `descriptor spec.security.ca.provided.secretName: depends on spec.security.ca.type being "Provided", which its enum [SelfSigned CertManager] lacks`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			objs, samples := inputs(t)
			_, err := bundlegen.Build(tc.mutate(objs), samples)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// find is the first object of a kind.
func find(objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind {
			return o
		}
	}
	panic("no " + kind)
}

// schemaOf is the OpenAPI schema of a CRD's first version, to edit in place.
func schemaOf(crd *unstructured.Unstructured) map[string]any {
	versions := crd.Object["spec"].(map[string]any)["versions"].([]any) // not NestedSlice: it copies
	return versions[0].(map[string]any)["schema"].(map[string]any)["openAPIV3Schema"].(map[string]any)
}

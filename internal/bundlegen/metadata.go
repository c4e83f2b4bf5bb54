package bundlegen

import (
	_ "embed"

	operatorsv1alpha1 "github.com/operator-framework/api/pkg/operators/v1alpha1"
)

// The catalog-facing facts about Capstan that config/ does not hold. Everything else in the
// ClusterServiceVersion (deployment, permissions, webhooks, CRDs, images, version) is taken
// from what kustomize renders, so it cannot drift from `make deploy`.
const (
	// PackageName is the OLM package, and the prefix of the CSV name (capstan.v<version>).
	PackageName = "capstan"
	// Channel is the only channel the bundle is published in, and its default. "alpha"
	// matches the API version (v1alpha1): no upgrade guarantees yet.
	Channel = "alpha"
	// CreatedAt is the CSV's createdAt annotation. It is fixed, not the time of the run, so
	// that regenerating an unchanged config/ gives byte-identical files; bump it on release.
	CreatedAt = "2026-11-22T00:00:00Z"
	// Builder is the operators.operatorframework.io/builder annotation: what generated the
	// bundle (there is no operator-sdk here).
	Builder = "capstan-bundlegen"
	// MinKubeVersion is the oldest Kubernetes the bundle installs on: Istio's base chart
	// installs a ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, GA in 1.30),
	// and the CRD's CEL rules need 1.25+.
	MinKubeVersion = "1.30.0"
	// Capabilities is the operator capability level. Basic Install is what Capstan does
	// today; Seamless Upgrades (canary control-plane upgrades) is planned, not built.
	Capabilities = "Basic Install"
	// Categories are OperatorHub's standard categories Capstan belongs to.
	Categories = "Networking, Security"
	// Repository is the source repository, used for links and the repository annotation.
	Repository = "https://github.com/capstan-mesh/capstan"
	// IstioHub is the registry path of Istio's images; the tag is the CRD's default
	// spec.version, the Istio release Capstan installs unless told otherwise.
	IstioHub = "docker.io/istio"
	// ShortDescription is the one-line description shown on catalog tiles.
	ShortDescription = "Installs Istio's control plane from one MeshControlPlane resource and keeps it as declared."
)

// description is the CSV's spec.description (Markdown), shown on the operator's catalog page.
//
//go:embed description.md
var description string

// icon is the catalog icon, an original SVG (a capstan drum with its bars and rope).
//
//go:embed icon.svg
var icon []byte

// keywords help users find the operator in a catalog.
var keywords = []string{"istio", "service mesh", "istiod", "control plane", "mtls", "networking"}

// maintainers are who answers for the operator.
var maintainers = []operatorsv1alpha1.Maintainer{
	{Name: "Capstan maintainers", Email: "maintainers@capstan.dev"},
}

// links are shown on the catalog page.
var links = []operatorsv1alpha1.AppLink{
	{Name: "Source code", URL: Repository},
	{Name: "Documentation", URL: Repository + "#readme"},
	{Name: "Istio", URL: "https://istio.io"},
}

// provider is the organisation shipping the bundle.
var provider = operatorsv1alpha1.AppLink{Name: "Capstan", URL: "https://github.com/capstan-mesh"}

// ownedKinds describes each CRD kind Capstan owns: its display name, the objects a resource
// of that kind makes Capstan create (the console's "Resources" tab), and the form fields.
var ownedKinds = map[string]ownedKind{
	"MeshControlPlane": {
		DisplayName: "Mesh Control Plane",
		Resources: []operatorsv1alpha1.APIResourceReference{
			{Kind: "Namespace", Version: "v1"},
			{Kind: "Deployment", Version: "v1"},
			{Kind: "Service", Version: "v1"},
			{Kind: "ConfigMap", Version: "v1"},
			{Kind: "ServiceAccount", Version: "v1"},
			{Kind: "HorizontalPodAutoscaler", Version: "v2"},
			{Kind: "PodDisruptionBudget", Version: "v1"},
			{Kind: "MutatingWebhookConfiguration", Version: "v1"},
			{Kind: "ValidatingWebhookConfiguration", Version: "v1"},
			{Kind: "CustomResourceDefinition", Version: "v1"},
			{Kind: "Secret", Version: "v1"},
			{Kind: "Certificate", Version: "v1"},
		},
		Spec:   meshControlPlaneSpecFields,
		Status: meshControlPlaneStatusFields,
	},
}

// ownedKind is the console metadata of one owned CRD kind.
type ownedKind struct {
	DisplayName string
	Resources   []operatorsv1alpha1.APIResourceReference
	Spec        []field // paths under .spec
	Status      []field // paths under .status
}

// field is one spec or status descriptor. Its description is not written here: it is the
// field's description in the CRD schema (the same text kubectl explain shows), so the form
// cannot say something the API does not.
type field struct {
	// Path is the dotted path below .spec or .status; it must exist in the CRD schema.
	Path string
	// DisplayName is the form label.
	DisplayName string
	// XDescriptors are the console widgets and hints (urn:alm:descriptor:...).
	XDescriptors []string
	// SelectFromEnum adds one select option per value of the field's enum in the schema.
	SelectFromEnum bool
	// DependsOn shows the field only when another spec field has a value (a console
	// fieldDependency); both the path and the value are checked against the schema.
	DependsOn *dependency
}

// dependency is a console fieldDependency: the dotted spec path of the controlling field
// and the value that shows the dependent one.
type dependency struct{ Path, Value string }

// whenCAType shows a CA field only for the CA type it configures.
func whenCAType(t string) *dependency { return &dependency{Path: "security.ca.type", Value: t} }

// Console descriptors (https://github.com/openshift/console/blob/main/frontend/packages/operator-lifecycle-manager/src/components/descriptors/reference/reference.md).
const (
	xText          = "urn:alm:descriptor:com.tectonic.ui:text"
	xNumber        = "urn:alm:descriptor:com.tectonic.ui:number"
	xPodCount      = "urn:alm:descriptor:com.tectonic.ui:podCount"
	xResources     = "urn:alm:descriptor:com.tectonic.ui:resourceRequirements"
	xBooleanSwitch = "urn:alm:descriptor:com.tectonic.ui:booleanSwitch"
	xAdvanced      = "urn:alm:descriptor:com.tectonic.ui:advanced"
	xHidden        = "urn:alm:descriptor:com.tectonic.ui:hidden"
	xSelectPrefix  = "urn:alm:descriptor:com.tectonic.ui:select:"
	// xNamespaceSelector is the label-selector widget, for Namespaces.
	xNamespaceSelector = "urn:alm:descriptor:com.tectonic.ui:selector:core:v1:Namespace"
	xDependsPrefix     = "urn:alm:descriptor:com.tectonic.ui:fieldDependency:"
	xStatusText        = "urn:alm:descriptor:text"
	xConditions        = "urn:alm:descriptor:io.kubernetes.conditions"
)

// meshControlPlaneSpecFields is the MeshControlPlane form, in the order the console shows it.
var meshControlPlaneSpecFields = []field{
	{Path: "version", DisplayName: "Istio version", XDescriptors: []string{xText}},
	{Path: "profile", DisplayName: "Profile", SelectFromEnum: true},
	{Path: "namespace", DisplayName: "Control plane namespace", XDescriptors: []string{xText, xAdvanced}},
	{Path: "components.pilot.replicas", DisplayName: "istiod replicas", XDescriptors: []string{xPodCount}},
	{Path: "components.pilot.resources", DisplayName: "istiod resources", XDescriptors: []string{xResources}},
	{Path: "components.pilot.autoscale.min", DisplayName: "istiod autoscale minimum", XDescriptors: []string{xNumber, xAdvanced}},
	{Path: "components.pilot.autoscale.max", DisplayName: "istiod autoscale maximum", XDescriptors: []string{xNumber, xAdvanced}},
	{Path: "components.pilot.autoscale.targetCPUUtilizationPercentage", DisplayName: "istiod autoscale CPU target (%)", XDescriptors: []string{xNumber, xAdvanced}},
	{Path: "meshConfig.accessLogFile", DisplayName: "Access log file", XDescriptors: []string{xText}},
	{Path: "meshConfig.accessLogEncoding", DisplayName: "Access log encoding", SelectFromEnum: true},
	{Path: "meshConfig.trustDomain", DisplayName: "Trust domain", XDescriptors: []string{xText, xAdvanced}},
	{Path: "meshConfig.outboundTrafficPolicy.mode", DisplayName: "Outbound traffic policy", SelectFromEnum: true},
	// The mesh CA: the type, then what each type needs, then lifetimes and rotation, which
	// have working defaults.
	{Path: "security.ca.type", DisplayName: "CA type", SelectFromEnum: true},
	{Path: "security.ca.provided.secretName", DisplayName: "Provided CA Secret", XDescriptors: []string{xText}, DependsOn: whenCAType("Provided")},
	{Path: "security.ca.certManager.issuerRef.name", DisplayName: "cert-manager issuer name", XDescriptors: []string{xText}, DependsOn: whenCAType("CertManager")},
	{Path: "security.ca.certManager.issuerRef.kind", DisplayName: "cert-manager issuer kind", SelectFromEnum: true, DependsOn: whenCAType("CertManager")},
	{Path: "security.ca.certManager.issuerRef.group", DisplayName: "cert-manager issuer group", XDescriptors: []string{xText, xAdvanced}, DependsOn: whenCAType("CertManager")},
	{Path: "security.ca.certManager.duration", DisplayName: "cert-manager intermediate lifetime", XDescriptors: []string{xText, xAdvanced}, DependsOn: whenCAType("CertManager")},
	{Path: "security.ca.certManager.renewBefore", DisplayName: "cert-manager renew before", XDescriptors: []string{xText, xAdvanced}, DependsOn: whenCAType("CertManager")},
	{Path: "security.ca.keyAlgorithm", DisplayName: "CA key algorithm", XDescriptors: []string{xAdvanced}, SelectFromEnum: true},
	{Path: "security.ca.rootTTL", DisplayName: "Root CA lifetime", XDescriptors: []string{xText, xAdvanced}},
	{Path: "security.ca.intermediateTTL", DisplayName: "Intermediate CA lifetime", XDescriptors: []string{xText, xAdvanced}},
	{Path: "security.ca.workloadCertTTL", DisplayName: "Workload certificate lifetime", XDescriptors: []string{xText, xAdvanced}},
	{Path: "security.ca.rotation.automatic", DisplayName: "Rotate the CA automatically", XDescriptors: []string{xBooleanSwitch}},
	{Path: "security.ca.rotation.rootRenewBefore", DisplayName: "Rotate the root before expiry by", XDescriptors: []string{xText, xAdvanced}},
	{Path: "security.ca.rotation.intermediateRenewBefore", DisplayName: "Renew the intermediate before expiry by", XDescriptors: []string{xText, xAdvanced}},
	{Path: "security.ca.rotation.requestedAt", DisplayName: "Request a root rotation (time)", XDescriptors: []string{xText, xAdvanced}},
	{Path: "security.ca.rotation.abortRequestedAt", DisplayName: "Abort the rotation (time)", XDescriptors: []string{xText, xAdvanced}},
	// The data plane: which namespaces, which sidecar, and how stale ones are replaced.
	{Path: "injection.namespaceSelector", DisplayName: "Namespaces to mesh", XDescriptors: []string{xNamespaceSelector}},
	{Path: "injection.rollout.restartStaleWorkloads", DisplayName: "Restart workloads with stale sidecars", SelectFromEnum: true},
	{Path: "injection.rollout.maxConcurrent", DisplayName: "Workloads restarting at once", XDescriptors: []string{xNumber}},
	{Path: "injection.rollout.pauseBetween", DisplayName: "Pause between restarts", XDescriptors: []string{xText, xAdvanced}},
	{Path: "injection.rollout.restartTimeout", DisplayName: "Restart timeout", XDescriptors: []string{xText, xAdvanced}},
	{Path: "injection.proxy.resources", DisplayName: "Sidecar resources", XDescriptors: []string{xResources}},
	{Path: "injection.proxy.holdApplicationUntilProxyStarts", DisplayName: "Start applications after the sidecar", XDescriptors: []string{xBooleanSwitch}},
	{Path: "injection.proxy.logLevel", DisplayName: "Sidecar log level", XDescriptors: []string{xAdvanced}, SelectFromEnum: true},
	{Path: "injection.proxy.nativeSidecars", DisplayName: "Native sidecars", XDescriptors: []string{xBooleanSwitch, xAdvanced}},
	// Upgrades: how a change of spec.version rolls out. No fieldDependency on the strategy:
	// it has no default (unset, a new control plane is RevisionBased and one running in
	// place stays InPlace), so a dependency on RevisionBased would hide the canary fields
	// in the common case where the strategy is left unset. The promote and abort
	// timestamps are the actions of a running upgrade, edited like the CA's requestedAt.
	{Path: "upgrade.strategy", DisplayName: "Upgrade strategy", SelectFromEnum: true},
	{Path: "upgrade.canary.batchSize", DisplayName: "Namespaces per batch", XDescriptors: []string{xNumber}},
	{Path: "upgrade.canary.autoPromote", DisplayName: "Promote without stopping after the first batch", XDescriptors: []string{xBooleanSwitch}},
	{Path: "upgrade.canary.rollbackOnFailure", DisplayName: "Roll back a failed batch", XDescriptors: []string{xBooleanSwitch}},
	{Path: "upgrade.canary.readinessTimeout", DisplayName: "Batch readiness timeout", XDescriptors: []string{xText, xAdvanced}},
	{Path: "upgrade.canary.pauseBetweenBatches", DisplayName: "Pause between batches", XDescriptors: []string{xText, xAdvanced}},
	{Path: "upgrade.promote", DisplayName: "Promote the upgrade (time)", XDescriptors: []string{xText, xAdvanced}},
	{Path: "upgrade.abort", DisplayName: "Abort the upgrade (time)", XDescriptors: []string{xText, xAdvanced}},
	{Path: "upgrade.inactiveRevisionGracePeriod", DisplayName: "Remove unused revisions after", XDescriptors: []string{xText, xAdvanced}},
	{Path: "uninstall.removeCRDs", DisplayName: "Remove Istio CRDs on uninstall", XDescriptors: []string{xBooleanSwitch, xAdvanced}},
	// Free-form Helm values do not fit a form: hidden there, edited in the YAML view.
	{Path: "values", DisplayName: "Helm values", XDescriptors: []string{xAdvanced, xHidden}},
}

// meshControlPlaneStatusFields is what the console shows of a MeshControlPlane's status.
var meshControlPlaneStatusFields = []field{
	{Path: "conditions", DisplayName: "Conditions", XDescriptors: []string{xConditions}},
	{Path: "version", DisplayName: "Installed Istio version", XDescriptors: []string{xStatusText}},
	{Path: "activeRevision", DisplayName: "Active revision", XDescriptors: []string{xStatusText}},
	{Path: "components", DisplayName: "Components", XDescriptors: []string{xStatusText}},
	{Path: "ca.type", DisplayName: "CA type in use", XDescriptors: []string{xStatusText}},
	{Path: "ca.phase", DisplayName: "CA rotation phase", XDescriptors: []string{xStatusText}},
	{Path: "ca.rootExpiry", DisplayName: "Root CA expiry", XDescriptors: []string{xStatusText}},
	{Path: "ca.intermediateExpiry", DisplayName: "Intermediate CA expiry", XDescriptors: []string{xStatusText}},
	{Path: "ca.nextAction", DisplayName: "Next CA action", XDescriptors: []string{xStatusText}},
	{Path: "ca.nextActionReason", DisplayName: "Next CA action reason", XDescriptors: []string{xStatusText}},
	{Path: "ca.rotationReason", DisplayName: "CA rotation reason", XDescriptors: []string{xStatusText}},
	{Path: "injection.meshedNamespaces", DisplayName: "Meshed namespaces", XDescriptors: []string{xStatusText}},
	{Path: "injection.injectedPods", DisplayName: "Pods with a sidecar", XDescriptors: []string{xStatusText}},
	{Path: "injection.uninjectedPods", DisplayName: "Pods missing a sidecar", XDescriptors: []string{xStatusText}},
	{Path: "injection.stalePods", DisplayName: "Pods with a stale sidecar", XDescriptors: []string{xStatusText}},
	{Path: "injection.restartsInProgress", DisplayName: "Workload restarts in progress", XDescriptors: []string{xStatusText}},
	{Path: "revisions", DisplayName: "Control plane revisions", XDescriptors: []string{xStatusText}},
	// The canary upgrade's progress (the Upgrading condition is among the conditions).
	// The fields Capstan keeps to resume an upgrade after a restart (namespaces, batch,
	// batchStartedAt, batchDoneAt, rollBack, aborting, failure, handledPromote,
	// handledAbort) are its own bookkeeping, not shown.
	{Path: "upgrade.phase", DisplayName: "Upgrade phase", XDescriptors: []string{xStatusText}},
	{Path: "upgrade.from", DisplayName: "Upgrading from revision", XDescriptors: []string{xStatusText}},
	{Path: "upgrade.to", DisplayName: "Upgrading to revision", XDescriptors: []string{xStatusText}},
	{Path: "upgrade.batchesDone", DisplayName: "Upgrade batches done", XDescriptors: []string{xStatusText}},
	{Path: "upgrade.batchesTotal", DisplayName: "Upgrade batches in all", XDescriptors: []string{xStatusText}},
	{Path: "upgrade.currentBatch", DisplayName: "Namespaces moving now", XDescriptors: []string{xStatusText}},
	{Path: "upgrade.startedAt", DisplayName: "Upgrade started", XDescriptors: []string{xStatusText}},
	{Path: "upgrade.message", DisplayName: "Upgrade message", XDescriptors: []string{xStatusText}},
	{Path: "observedGeneration", DisplayName: "Observed generation", XDescriptors: []string{xHidden}},
}

package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SingletonName is the only name a MeshControlPlane may have: a cluster runs one mesh.
const SingletonName = "default"

// MeshControlPlaneSpec declares the Istio control plane Capstan keeps installed.
//
// spec.namespace cannot change: Capstan would install a second control plane there and
// prune the first under the workloads still injected for it. The rule sits on the spec,
// not on the field, so that a namespace set, removed or never set compares as what it
// means: 'istio-system', the field's default. namespace is a CEL keyword, so the rule
// names the field __namespace__, as Kubernetes escapes it; self.namespace compiles too, but
// to a value whose size the apiserver's cost estimate cannot bound, and it refuses the CRD.
//
// +kubebuilder:validation:XValidation:rule="has(self.__namespace__) && has(oldSelf.__namespace__) ? self.__namespace__ == oldSelf.__namespace__ : has(self.__namespace__) ? self.__namespace__ == 'istio-system' : !has(oldSelf.__namespace__) || oldSelf.__namespace__ == 'istio-system'",fieldPath=".namespace",reason=FieldValueForbidden,message="spec.namespace: cannot be changed; to move the control plane, delete this MeshControlPlane with spec.uninstall.removeCRDs unset (Istio's CRDs, and with them your Istio objects, stay), create it again with the new spec.namespace, then restart the injected workloads so that their sidecars reach the new istiod"
// +kubebuilder:validation:XValidation:rule="!has(self.components) || !has(self.components.pilot) || !(has(self.components.pilot.replicas) && has(self.components.pilot.autoscale))",message="spec.components.pilot: set either replicas or autoscale, not both"
type MeshControlPlaneSpec struct {
	// Version is the Istio version to run, as x.y.z (for example 1.31.1). It selects the
	// image tag of every control-plane component; the charts are the ones Capstan embeds,
	// so only versions of the embedded minor release are accepted. Changing it upgrades
	// the control plane as spec.upgrade.strategy says: a canary revision beside the running
	// one (RevisionBased), or in place.
	// +kubebuilder:default="1.31.1"
	// +kubebuilder:validation:Pattern=`^[0-9]+\.[0-9]+\.[0-9]+$`
	// +kubebuilder:validation:MaxLength=32
	// +optional
	Version string `json:"version,omitempty"`

	// Namespace is where the control plane runs. Capstan creates it when it is missing.
	// It cannot be changed later, nor be one of Kubernetes' own namespaces or the
	// operator's.
	// +kubebuilder:default="istio-system"
	// +kubebuilder:validation:XValidation:rule="!(self in ['kube-system', 'kube-public', 'kube-node-lease'])",message="spec.namespace: Kubernetes' own namespaces (kube-system, kube-public, kube-node-lease) cannot hold the control plane; use a namespace of its own, such as istio-system"
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// Profile is the Istio configuration profile the charts start from: default, demo,
	// minimal, preview, stable, or openshift (the default profile with OpenShift's platform
	// settings).
	// +kubebuilder:default=default
	// +kubebuilder:validation:Enum=default;demo;minimal;preview;stable;openshift
	// +optional
	Profile string `json:"profile,omitempty"`

	// Components tunes the control-plane components.
	// +optional
	Components *ComponentsSpec `json:"components,omitempty"`

	// MeshConfig is the part of Istio's mesh-wide configuration that Capstan types and
	// validates. Anything else can be set through values.meshConfig.
	// +optional
	MeshConfig *MeshConfigSpec `json:"meshConfig,omitempty"`

	// Values are raw Helm values passed to Istio's charts, for settings Capstan does not
	// type. The typed fields of this spec win over them. A value the charts reject is
	// reported in the Degraded condition and changes nothing in the cluster. Values that
	// decide the names or the place of what Capstan installs (revision, revisionTags,
	// defaultRevision, global.istioNamespace, istiodRemote, ...) are refused; the refusal
	// names the field to use instead.
	// +kubebuilder:validation:Type=object
	// +kubebuilder:pruning:PreserveUnknownFields
	// +optional
	Values *apiextensionsv1.JSON `json:"values,omitempty"`

	// Security holds the mesh's identity settings: the certificate authority.
	// +kubebuilder:default={}
	// +optional
	Security *SecuritySpec `json:"security,omitempty"`

	// Uninstall says what happens when this resource is deleted.
	// +optional
	Uninstall *UninstallSpec `json:"uninstall,omitempty"`

	// Injection says which namespaces Capstan puts in the mesh.
	// +optional
	Injection *InjectionSpec `json:"injection,omitempty"`

	// Upgrade says how a change of spec.version reaches the control plane and the
	// workloads: in place, or as a canary revision beside the running one.
	// +optional
	Upgrade *UpgradeSpec `json:"upgrade,omitempty"`
}

// UpgradeStrategy says how a version change is rolled out.
// +kubebuilder:validation:Enum=RevisionBased;InPlace
type UpgradeStrategy string

// The upgrade strategies.
const (
	// UpgradeRevisionBased runs each Istio version as a revision of its own, named after
	// the version (1-31-1 for 1.31.1), and moves the workloads to a new one in batches.
	UpgradeRevisionBased UpgradeStrategy = "RevisionBased"
	// UpgradeInPlace runs one istiod, the revision "default", and replaces it on a version
	// change; the sidecars follow as their workloads restart.
	UpgradeInPlace UpgradeStrategy = "InPlace"
)

// UpgradeSpec says how version changes are rolled out.
//
// +kubebuilder:validation:XValidation:rule="!has(self.inactiveRevisionGracePeriod) || duration(self.inactiveRevisionGracePeriod) >= duration('0s')",message="spec.upgrade.inactiveRevisionGracePeriod: must not be negative"
type UpgradeSpec struct {
	// Strategy is RevisionBased or InPlace. Unset, a new control plane is RevisionBased,
	// and one already running in place (revision default) stays InPlace until this is
	// set. Switching from InPlace to RevisionBased is a canary upgrade from the revision
	// default to the revision of spec.version: every sidecar keeps running until its
	// namespace's batch moves. Switching back to InPlace is refused while more than the
	// default revision runs.
	// +optional
	Strategy UpgradeStrategy `json:"strategy,omitempty"`

	// Canary says how workloads move to a new revision.
	// +optional
	Canary *CanarySpec `json:"canary,omitempty"`

	// Promote, set to a time after the upgrade started, moves the remaining batches once
	// the first batch runs on the new revision (with canary.autoPromote false). Each new
	// value is acted on once.
	// +optional
	Promote *metav1.Time `json:"promote,omitempty"`

	// Abort, set to a time after the upgrade started, moves every migrated namespace back
	// to the old revision and restarts its workloads there; the old revision stays active.
	// Each new value is acted on once.
	// +optional
	Abort *metav1.Time `json:"abort,omitempty"`

	// InactiveRevisionGracePeriod is how long a revision that is no longer active must be
	// unused (no pod runs its sidecar, no namespace or tag selects it) before it is
	// removed. Default 1h.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^-?([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +optional
	InactiveRevisionGracePeriod *metav1.Duration `json:"inactiveRevisionGracePeriod,omitempty"`
}

// CanarySpec says how the workloads move to a new revision: namespace by namespace, in
// batches, each waiting until its pods are Ready on the new revision.
//
// +kubebuilder:validation:XValidation:rule="!has(self.readinessTimeout) || duration(self.readinessTimeout) >= duration('10s')",message="spec.upgrade.canary.readinessTimeout: must be at least 10s; restarted pods need time to become Ready"
// +kubebuilder:validation:XValidation:rule="!has(self.pauseBetweenBatches) || duration(self.pauseBetweenBatches) >= duration('0s')",message="spec.upgrade.canary.pauseBetweenBatches: must not be negative"
type CanarySpec struct {
	// BatchSize is how many namespaces move at once.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:default=1
	// +optional
	BatchSize int32 `json:"batchSize,omitempty"`

	// ReadinessTimeout is how long the pods of a batch have to be Ready on the new
	// revision; a batch that takes longer has failed. Default 10m.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^-?([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +optional
	ReadinessTimeout *metav1.Duration `json:"readinessTimeout,omitempty"`

	// PauseBetweenBatches is the least time between one batch being done and the next
	// starting.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^-?([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +optional
	PauseBetweenBatches *metav1.Duration `json:"pauseBetweenBatches,omitempty"`

	// AutoPromote moves every batch without stopping. Off (the default), the upgrade stops
	// after the first batch until spec.upgrade.promote is set.
	// +optional
	AutoPromote bool `json:"autoPromote,omitempty"`

	// RollbackOnFailure moves a failed batch back to the old revision (the default).
	// Off, a failed batch is left where it is for someone to look at.
	// +kubebuilder:default=true
	// +optional
	RollbackOnFailure *bool `json:"rollbackOnFailure,omitempty"`
}

// InjectionSpec says which namespaces Capstan puts in the mesh, so that their new pods get
// a sidecar.
type InjectionSpec struct {
	// NamespaceSelector selects the namespaces Capstan meshes: it labels each one for the
	// control plane's revision (istio-injection=enabled for an in-place control plane) and
	// marks it with the annotation capstan.dev/injection-labelled. A namespace that already
	// has an istio-injection or istio.io/rev label is left as it is; the control-plane
	// namespace, Kubernetes' own namespaces and the operator's are never labelled. When a
	// namespace Capstan labelled stops matching, or the selector is removed, Capstan removes
	// its label, unless someone changed it since. Existing pods get their sidecar when they
	// are restarted.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// Proxy sets the sidecar that new pods get. A change here makes running sidecars stale
	// (reason ProxyConfigChanged) until their pods are restarted.
	// +optional
	Proxy *ProxySpec `json:"proxy,omitempty"`

	// Rollout says whether and how Capstan restarts workloads whose sidecars are stale.
	// +optional
	Rollout *RolloutSpec `json:"rollout,omitempty"`
}

// ProxySpec is the sidecar the injector gives new pods.
type ProxySpec struct {
	// Resources of the istio-proxy container (the chart's global.proxy.resources).
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// HoldApplicationUntilProxyStarts starts the application's containers only once the
	// proxy is ready, so they never send traffic before the mesh can carry it (the chart's
	// global.proxy.holdApplicationUntilProxyStarts). With native sidecars this is implied.
	// +optional
	HoldApplicationUntilProxyStarts *bool `json:"holdApplicationUntilProxyStarts,omitempty"`

	// LogLevel of the proxy (the chart's global.proxy.logLevel; Istio's default is warning).
	// +kubebuilder:validation:Enum=trace;debug;info;warning;error;critical;off
	// +optional
	LogLevel string `json:"logLevel,omitempty"`

	// NativeSidecars runs the proxy as a Kubernetes native sidecar (an init container that
	// keeps running, which also lets Jobs finish). Unset, istiod decides from the cluster's
	// support (its ENABLE_NATIVE_SIDECARS=auto); true or false forces it.
	// +optional
	NativeSidecars *bool `json:"nativeSidecars,omitempty"`
}

// RestartPolicy says which workloads with stale sidecars Capstan restarts.
// +kubebuilder:validation:Enum=Never;OnUpgrade;Always
type RestartPolicy string

// The restart policies.
const (
	// RestartNever restarts nothing; stale workloads are reported.
	RestartNever RestartPolicy = "Never"
	// RestartOnUpgrade restarts workloads whose sidecars come from another revision or
	// Istio version; a change of proxy settings alone, or a pod injected before Capstan
	// managed the injector, is reported, not restarted.
	RestartOnUpgrade RestartPolicy = "OnUpgrade"
	// RestartAlways restarts every workload with a stale sidecar.
	RestartAlways RestartPolicy = "Always"
)

// RolloutSpec says how stale sidecars are replaced. Capstan restarts a workload the way
// `kubectl rollout restart` does (an annotation on its pod template), one workload after
// another; a workload annotated capstan.dev/restart: "false" is never restarted.
//
// +kubebuilder:validation:XValidation:rule="!has(self.pauseBetween) || duration(self.pauseBetween) >= duration('0s')",message="spec.injection.rollout.pauseBetween: must not be negative"
// +kubebuilder:validation:XValidation:rule="!has(self.restartTimeout) || duration(self.restartTimeout) >= duration('10s')",message="spec.injection.rollout.restartTimeout: must be at least 10s; a restart needs time to roll out"
type RolloutSpec struct {
	// RestartStaleWorkloads is which workloads with stale sidecars Capstan restarts: Never
	// (the default), OnUpgrade (another revision or Istio version) or Always (any stale
	// sidecar, proxy settings included).
	// +kubebuilder:default=Never
	// +optional
	RestartStaleWorkloads RestartPolicy `json:"restartStaleWorkloads,omitempty"`

	// MaxConcurrent is how many workloads may be restarting at once; the next starts when a
	// restart's rollout is complete and available.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:default=1
	// +optional
	MaxConcurrent int32 `json:"maxConcurrent,omitempty"`

	// PauseBetween is the least time between one restart finishing and the next starting.
	// +optional
	PauseBetween *metav1.Duration `json:"pauseBetween,omitempty"`

	// RestartTimeout is how long a restarted workload has to become available; one that
	// does not is reported (RestartTimedOut) and skipped, and the others go on. Default 10m.
	// +optional
	RestartTimeout *metav1.Duration `json:"restartTimeout,omitempty"`
}

// ComponentsSpec holds the settings of each control-plane component.
type ComponentsSpec struct {
	// Pilot is istiod, the control plane's discovery, configuration and certificate server.
	// +optional
	Pilot *PilotSpec `json:"pilot,omitempty"`
}

// PilotSpec tunes the istiod Deployment.
type PilotSpec struct {
	// Replicas is a fixed number of istiod pods. Setting it turns autoscaling off.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Autoscale runs istiod under a HorizontalPodAutoscaler. When neither replicas nor
	// autoscale is set, Istio's default applies: 1 to 5 pods at 80% CPU.
	// +optional
	Autoscale *AutoscaleSpec `json:"autoscale,omitempty"`

	// Resources are the compute requests and limits of the discovery container.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// Env sets extra environment variables on istiod, by name.
	// +kubebuilder:validation:MaxProperties=64
	// +optional
	Env map[string]string `json:"env,omitempty"`

	// NodeSelector restricts istiod to nodes with these labels.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// Tolerations let istiod run on tainted nodes.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
}

// AutoscaleSpec bounds istiod's HorizontalPodAutoscaler.
//
// +kubebuilder:validation:XValidation:rule="self.min <= self.max",message="spec.components.pilot.autoscale: min must not exceed max"
type AutoscaleSpec struct {
	// Min is the fewest istiod pods.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:default=1
	Min int32 `json:"min"`

	// Max is the most istiod pods.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +kubebuilder:default=5
	Max int32 `json:"max"`

	// TargetCPUUtilizationPercentage is the average CPU use, in percent of the request,
	// that the autoscaler aims for.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +kubebuilder:default=80
	// +optional
	TargetCPUUtilizationPercentage int32 `json:"targetCPUUtilizationPercentage,omitempty"`
}

// MeshConfigSpec is the typed subset of Istio's MeshConfig.
type MeshConfigSpec struct {
	// AccessLogFile is where sidecars write access logs; /dev/stdout sends them to the
	// container log, and an empty value turns them off.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	AccessLogFile *string `json:"accessLogFile,omitempty"`

	// AccessLogEncoding is the access log format.
	// +kubebuilder:validation:Enum=TEXT;JSON
	// +optional
	AccessLogEncoding string `json:"accessLogEncoding,omitempty"`

	// TrustDomain is the SPIFFE trust domain of the mesh's workload identities.
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	// +kubebuilder:validation:MaxLength=253
	// +optional
	TrustDomain string `json:"trustDomain,omitempty"`

	// OutboundTrafficPolicy says whether sidecars let traffic reach hosts outside the
	// mesh's service registry.
	// +optional
	OutboundTrafficPolicy *OutboundTrafficPolicy `json:"outboundTrafficPolicy,omitempty"`
}

// OutboundTrafficPolicy mirrors Istio's mesh-wide outbound traffic policy.
type OutboundTrafficPolicy struct {
	// Mode is ALLOW_ANY (pass unknown destinations through) or REGISTRY_ONLY (block them).
	// +kubebuilder:validation:Enum=ALLOW_ANY;REGISTRY_ONLY
	Mode string `json:"mode"`
}

// UninstallSpec controls clean-up on deletion.
type UninstallSpec struct {
	// RemoveCRDs deletes Istio's CustomResourceDefinitions when this resource is deleted.
	// Off by default, because deleting a CRD deletes every object of that kind in the
	// cluster (every VirtualService, PeerAuthentication, ...).
	// +optional
	RemoveCRDs bool `json:"removeCRDs,omitempty"`
}

// MeshControlPlaneStatus is what Capstan last observed of the control plane.
type MeshControlPlaneStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions are Ready (the control plane serves), Progressing (a change is being
	// rolled out) and Degraded (Capstan cannot reach the declared state; the message says
	// which field to fix).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Version is the Istio version whose objects are applied.
	// +optional
	Version string `json:"version,omitempty"`

	// Components reports the readiness of each control-plane component.
	// +listType=map
	// +listMapKey=name
	// +optional
	Components []ComponentStatus `json:"components,omitempty"`

	// CA is the state of the mesh certificate authority and of its rotation.
	// +optional
	CA *CAStatus `json:"ca,omitempty"`

	// Injection is the data plane at a glance: how many pods carry a sidecar, how many
	// should and do not, how many run a stale one, and a short list of what needs attention.
	// +optional
	Injection *InjectionStatus `json:"injection,omitempty"`

	// Revisions are the control-plane revisions installed, with what uses each.
	// +listType=map
	// +listMapKey=name
	// +optional
	Revisions []RevisionStatus `json:"revisions,omitempty"`

	// ActiveRevision is the revision the default and stable tags point at: the one new
	// namespaces and new workloads get.
	// +optional
	ActiveRevision string `json:"activeRevision,omitempty"`

	// Upgrade is the canary upgrade in progress, or the last one.
	// +optional
	Upgrade *UpgradeStatus `json:"upgrade,omitempty"`
}

// UpgradeStatus is a canary upgrade: where it stands, and everything Capstan needs to
// resume it after a restart.
type UpgradeStatus struct {
	// Phase is WaitingForRevision, Migrating, AwaitingPromotion, Promoting, RollingBack,
	// Complete, Failed or Aborted.
	Phase string `json:"phase"`
	// From is the old revision, active until the upgrade completes.
	From string `json:"from"`
	// To is the new revision, the one spec.version runs as.
	To string `json:"to"`
	// StartedAt is when the upgrade began.
	StartedAt metav1.Time `json:"startedAt"`
	// BatchesDone is how many batches of namespaces have moved.
	// +optional
	BatchesDone int32 `json:"batchesDone,omitempty"`
	// BatchesTotal is how many batches the upgrade moves.
	// +optional
	BatchesTotal int32 `json:"batchesTotal,omitempty"`
	// CurrentBatch are the namespaces moving now (at most 10 shown).
	// +kubebuilder:validation:MaxItems=10
	// +listType=atomic
	// +optional
	CurrentBatch []string `json:"currentBatch,omitempty"`
	// Message says where the upgrade stands and, when it failed, which namespace and
	// workload failed.
	// +optional
	Message string `json:"message,omitempty"`

	// Namespaces are the namespaces the upgrade moves, in batch order, fixed when it began.
	// +listType=atomic
	// +optional
	Namespaces []string `json:"namespaces,omitempty"`
	// Batch is the index of the batch moving, or of the next one.
	// +optional
	Batch int32 `json:"batch,omitempty"`
	// BatchStartedAt is when the moving batch began; unset between batches.
	// +optional
	BatchStartedAt *metav1.Time `json:"batchStartedAt,omitempty"`
	// BatchDoneAt is when the last batch was done.
	// +optional
	BatchDoneAt *metav1.Time `json:"batchDoneAt,omitempty"`
	// RollBack are the namespaces a rollback moves back.
	// +listType=atomic
	// +optional
	RollBack []string `json:"rollBack,omitempty"`
	// Aborting says the rollback is an abort's.
	// +optional
	Aborting bool `json:"aborting,omitempty"`
	// Failure says what failed.
	// +optional
	Failure string `json:"failure,omitempty"`
	// HandledPromote is the last spec.upgrade.promote acted on.
	// +optional
	HandledPromote *metav1.Time `json:"handledPromote,omitempty"`
	// HandledAbort is the last spec.upgrade.abort acted on.
	// +optional
	HandledAbort *metav1.Time `json:"handledAbort,omitempty"`
}

// RevisionUse says whether a revision is in use.
type RevisionUse string

// The values of RevisionStatus.InUse.
const (
	RevisionInUse  RevisionUse = "True"
	RevisionUnused RevisionUse = "False"
	// RevisionUseUnknown: some pod's injection cannot be read, or pods are not known yet;
	// no revision is taken for unused while any use is unknown.
	RevisionUseUnknown RevisionUse = "Unknown"
)

// RevisionStatus is one control-plane revision. Two controllers write it: the install
// (version, ready) and the data plane (inUse, pods, namespaces).
type RevisionStatus struct {
	// Name of the revision; "default" for an in-place control plane.
	Name string `json:"name"`
	// Version is the Istio version the revision runs.
	// +optional
	Version string `json:"version,omitempty"`
	// Ready: the revision's istiod is available.
	// +optional
	Ready *bool `json:"ready,omitempty"`
	// InUse is True when pods run its sidecar, namespaces select it or a tag points at it;
	// False when nothing does; Unknown when that cannot be told.
	// +optional
	InUse RevisionUse `json:"inUse,omitempty"`
	// Pods are the pods carrying its sidecar that have not terminated: running, or pending
	// and about to run it.
	// +optional
	Pods *int32 `json:"pods,omitempty"`
	// Namespaces are the namespaces whose labels select it for new pods.
	// +optional
	Namespaces *int32 `json:"namespaces,omitempty"`
	// Tags are the revision tags (default, stable, canary) that point at it.
	// +listType=atomic
	// +optional
	Tags []string `json:"tags,omitempty"`
	// UnusedSince is when it was last seen to become unused; a revision that is not active
	// is removed once it has been unused for spec.upgrade.inactiveRevisionGracePeriod.
	// +optional
	UnusedSince *metav1.Time `json:"unusedSince,omitempty"`
}

// InjectionStatus is the data plane in counts, so that status stays small however many
// pods and namespaces the cluster has: never one entry per pod.
type InjectionStatus struct {
	// MeshedNamespaces are the namespaces whose labels ask for sidecars (istio-injection=enabled
	// or istio.io/rev), including those naming a revision that does not exist.
	MeshedNamespaces int32 `json:"meshedNamespaces"`
	// InjectedPods are the pods that carry a sidecar, in any namespace. Here and below a pod
	// counts until it terminates (Succeeded or Failed): a pending pod already carries the
	// sidecar it will run, and keeps its revision in use.
	InjectedPods int32 `json:"injectedPods"`
	// UninjectedPods are the pods without a sidecar in meshed namespaces, except those
	// that opted out with sidecar.istio.io/inject=false.
	UninjectedPods int32 `json:"uninjectedPods"`
	// StalePods are the pods whose sidecar is not the one their revision injects
	// now (another revision, Istio version or proxy configuration).
	StalePods int32 `json:"stalePods"`
	// RestartsInProgress are the workloads Capstan restarted whose rollout is not yet
	// complete and available.
	// +optional
	RestartsInProgress int32 `json:"restartsInProgress,omitempty"`
	// Attention lists what needs someone, most important first: namespaces labelled for a
	// revision that does not exist, then workloads with stale sidecars. At most 10 entries;
	// moreNeedingAttention counts the rest.
	// +kubebuilder:validation:MaxItems=10
	// +listType=atomic
	// +optional
	Attention []InjectionAttention `json:"attention,omitempty"`
	// MoreNeedingAttention is how many more need attention than the list holds.
	// +optional
	MoreNeedingAttention int32 `json:"moreNeedingAttention,omitempty"`
}

// InjectionAttention is one namespace or workload that needs attention.
type InjectionAttention struct {
	// Kind is the workload's kind (Deployment, StatefulSet, Job, Pod, ...), or Namespace.
	Kind string `json:"kind"`
	// Namespace is the workload's namespace; empty for a Namespace.
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// Name is the workload's or namespace's name.
	Name string `json:"name"`
	// Reason is a CamelCase word for why it needs attention.
	Reason string `json:"reason"`
	// Message says what is wrong and what to do.
	Message string `json:"message"`
}

// ComponentStatus is one control-plane component's readiness.
type ComponentStatus struct {
	// Name of the component, such as istiod.
	Name string `json:"name"`
	// Ready is true when every desired replica is available.
	Ready bool `json:"ready"`
	// DesiredReplicas is the replica count the component's Deployment asks for.
	DesiredReplicas int32 `json:"desiredReplicas"`
	// ReadyReplicas is how many of those replicas are available.
	ReadyReplicas int32 `json:"readyReplicas"`
}

// Condition types reported on a MeshControlPlane.
const (
	ConditionReady       = "Ready"
	ConditionProgressing = "Progressing"
	ConditionDegraded    = "Degraded"
	// ConditionUpgrading is True while a canary upgrade is under way; False says how the
	// last one ended (reasons: the final phases, Complete, Failed, Aborted) or why none can
	// start (UpgradeBlocked).
	ConditionUpgrading = "Upgrading"
	// ReasonUpgradeBlocked: a pre-upgrade check fails; the message names it.
	ReasonUpgradeBlocked = "UpgradeBlocked"
	// ReasonUpgradeBatch (an Event): a batch of namespaces moved, or was moved back.
	ReasonUpgradeBatch = "UpgradeBatch"
	// ReasonRevisionPruned (an Event): a revision unused for the grace period was removed.
	ReasonRevisionPruned = "RevisionPruned"
	// ConditionSidecarsCurrent is True when no running pod has a stale sidecar; False names
	// the most important stale reason (RevisionChanged, VersionChanged, UnreadableStatus,
	// Unstamped, ProxyConfigChanged) and counts the stale pods. The data-plane controller
	// owns it.
	ConditionSidecarsCurrent = "SidecarsCurrent"
	// ReasonSidecarsCurrent: every running sidecar is the one its revision injects now.
	ReasonSidecarsCurrent = "SidecarsCurrent"
	// ConditionInjectionConfigured is True when spec.injection.namespaceSelector is applied
	// to every namespace it selects, and False when it is invalid or selects a namespace
	// Capstan never labels. Set only while the selector is. The data-plane controller owns it.
	ConditionInjectionConfigured = "InjectionConfigured"
	// ReasonNamespacesLabelled: every namespace the selector selects is labelled, or already
	// was by its owner.
	ReasonNamespacesLabelled = "NamespacesLabelled"
	// ReasonSelectorMatchesControlPlane: the selector selects the control-plane namespace,
	// one of Kubernetes' own or the operator's; those are left unlabelled.
	ReasonSelectorMatchesControlPlane = "SelectorMatchesControlPlane"
	// ReasonInvalidSelector: the selector cannot be parsed; no namespace is labelled or
	// unlabelled until it is fixed.
	ReasonInvalidSelector = "InvalidSelector"
	// ReasonRestartingWorkloads (an Event): Capstan restarted a batch of workloads whose
	// sidecars are stale.
	ReasonRestartingWorkloads = "RestartingWorkloads"
	// ReasonRestartRefused (an Event): the API server refused a restart; the workload is
	// reported and the others go on.
	ReasonRestartRefused = "RestartRefused"
)

// MeshControlPlane declares the cluster's Istio control plane. There is one per cluster,
// named default.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=mcp
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.status.version`
// +kubebuilder:printcolumn:name="Revision",type=string,JSONPath=`.status.activeRevision`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Upgrade",type=string,JSONPath=`.status.upgrade.phase`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'default'",message="metadata.name: a cluster has one MeshControlPlane and it must be named default"
type MeshControlPlane struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired control plane.
	// +kubebuilder:default={}
	// +optional
	Spec MeshControlPlaneSpec `json:"spec,omitempty"`
	// Status is the observed control plane.
	// +optional
	Status MeshControlPlaneStatus `json:"status,omitempty"`
}

// MeshControlPlaneList is a list of MeshControlPlanes.
//
// +kubebuilder:object:root=true
type MeshControlPlaneList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshControlPlane `json:"items"`
}

func init() {
	SchemeBuilder.Register(&MeshControlPlane{}, &MeshControlPlaneList{})
}

// Condition reasons, also used as Event reasons.
const (
	ReasonInvalidSpec        = "InvalidSpec"
	ReasonRenderFailed       = "RenderFailed"
	ReasonApplyFailed        = "ApplyFailed"
	ReasonUninstallFailed    = "UninstallFailed"
	ReasonComponentsReady    = "ComponentsReady"
	ReasonComponentsNotReady = "ComponentsNotReady"
	ReasonReconciled         = "Reconciled"
	ReasonInstalled          = "Installed"
	ReasonUpgraded           = "Upgraded"
	ReasonUpdated            = "Updated"
	ReasonDriftReverted      = "DriftReverted"
	ReasonUninstalled        = "Uninstalled"
	// ReasonServingPrevious: the declared state cannot be reached, but the control plane
	// last applied is observed serving (Ready=True beside Degraded=True).
	ReasonServingPrevious = "ServingPreviousState"
	// ReasonNamespaceChanged: spec.namespace differs from where the control plane runs.
	ReasonNamespaceChanged = "NamespaceChanged"
	// Reasons of the install's phases, when one of them fails (see the controller's
	// reconcileNormal): each names the step that could not be done.
	ReasonFinalizerFailed = "FinalizerFailed"
	ReasonInventoryFailed = "InventoryFailed"
	ReasonNamespaceFailed = "NamespaceFailed"
	ReasonCACheckFailed   = "CACheckFailed"
	ReasonPruneFailed     = "PruneFailed"
	ReasonObserveFailed   = "ObserveFailed"
)

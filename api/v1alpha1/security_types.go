package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SecuritySpec holds the mesh's identity settings.
type SecuritySpec struct {
	// CA is the mesh certificate authority istiod signs workload certificates with.
	// +kubebuilder:default={}
	// +optional
	CA *CASpec `json:"ca,omitempty"`
}

// CAType says where the mesh CA's key material comes from.
// +kubebuilder:validation:Enum=SelfSigned;Provided;CertManager
type CAType string

// The CA types.
const (
	// CASelfSigned: Capstan creates a root and an intermediate, and renews and rotates both.
	CASelfSigned CAType = "SelfSigned"
	// CAProvided: the user's Secret holds the intermediate, its key, the chain and the root.
	CAProvided CAType = "Provided"
	// CACertManager: cert-manager issues the intermediate from the user's issuer.
	CACertManager CAType = "CertManager"
)

// CASpec declares the mesh CA. Changing the type, the provided Secret's root or the key
// algorithm of a SelfSigned root starts a root rotation, which keeps every workload trusted
// throughout.
//
// +kubebuilder:validation:XValidation:rule="!has(self.type) || self.type != 'Provided' || has(self.provided)",message="spec.security.ca.provided: required when type is Provided; name the Secret holding the CA"
// +kubebuilder:validation:XValidation:rule="!has(self.type) || self.type != 'CertManager' || has(self.certManager)",message="spec.security.ca.certManager: required when type is CertManager; give the issuerRef"
// +kubebuilder:validation:XValidation:rule="!has(self.workloadCertTTL) || !has(self.intermediateTTL) || duration(self.workloadCertTTL) < duration(self.intermediateTTL)",message="spec.security.ca.workloadCertTTL: must be shorter than intermediateTTL"
// +kubebuilder:validation:XValidation:rule="!has(self.intermediateTTL) || !has(self.rootTTL) || duration(self.intermediateTTL) <= duration(self.rootTTL)",message="spec.security.ca.intermediateTTL: must not exceed rootTTL"
// +kubebuilder:validation:XValidation:rule="!has(self.rotation) || !has(self.rotation.rootRenewBefore) || !has(self.workloadCertTTL) || duration(self.rotation.rootRenewBefore) > duration(self.workloadCertTTL)",message="spec.security.ca.rotation.rootRenewBefore: must be longer than workloadCertTTL, or the root expires before its rotation can finish"
// +kubebuilder:validation:XValidation:rule="!has(self.rotation) || !has(self.rotation.rootRenewBefore) || !has(self.rootTTL) || duration(self.rotation.rootRenewBefore) < duration(self.rootTTL)",message="spec.security.ca.rotation.rootRenewBefore: must be shorter than rootTTL, or every root is rotated as soon as it is made"
// +kubebuilder:validation:XValidation:rule="!has(self.rotation) || !has(self.rotation.intermediateRenewBefore) || !has(self.intermediateTTL) || duration(self.rotation.intermediateRenewBefore) < duration(self.intermediateTTL)",message="spec.security.ca.rotation.intermediateRenewBefore: must be shorter than intermediateTTL, or every intermediate is renewed as soon as it is made"
type CASpec struct {
	// Type is SelfSigned (Capstan creates and rotates the root and the intermediate),
	// Provided (the user's Secret) or CertManager (cert-manager issues the intermediate).
	// +kubebuilder:default=SelfSigned
	// +optional
	Type CAType `json:"type,omitempty"`

	// Provided names the user's CA Secret, for type Provided.
	// +optional
	Provided *ProvidedCASpec `json:"provided,omitempty"`

	// CertManager says how to ask cert-manager for the intermediate, for type CertManager.
	// +optional
	CertManager *CertManagerCASpec `json:"certManager,omitempty"`

	// KeyAlgorithm of the keys Capstan (or cert-manager) generates: ECDSAP256, ECDSAP384,
	// RSA3072 or RSA4096. Changing it rotates a SelfSigned root.
	// +kubebuilder:default=ECDSAP256
	// +kubebuilder:validation:Enum=ECDSAP256;ECDSAP384;RSA3072;RSA4096
	// +optional
	KeyAlgorithm string `json:"keyAlgorithm,omitempty"`

	// RootTTL is the lifetime of a root Capstan creates.
	// +kubebuilder:default="87600h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="spec.security.ca.rootTTL: must be at least 1m"
	// +optional
	RootTTL *metav1.Duration `json:"rootTTL,omitempty"`

	// IntermediateTTL is the lifetime of an intermediate Capstan creates (or asks
	// cert-manager for, unless certManager.duration is set).
	// +kubebuilder:default="8760h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="spec.security.ca.intermediateTTL: must be at least 1m"
	// +optional
	IntermediateTTL *metav1.Duration `json:"intermediateTTL,omitempty"`

	// WorkloadCertTTL is the lifetime istiod gives workload certificates, and the most it
	// grants. A root rotation waits at least this long before it stops trusting the old root.
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s')",message="spec.security.ca.workloadCertTTL: must be at least 10s"
	// +optional
	WorkloadCertTTL *metav1.Duration `json:"workloadCertTTL,omitempty"`

	// Rotation says when Capstan renews and rotates the CA.
	// +kubebuilder:default={}
	// +optional
	Rotation *CARotationSpec `json:"rotation,omitempty"`
}

// ProvidedCASpec names the user's CA Secret.
type ProvidedCASpec struct {
	// SecretName is a Secret in the control-plane namespace with ca-cert.pem, ca-key.pem,
	// cert-chain.pem and root-cert.pem (or tls.crt, tls.key and ca.crt). Capstan copies it
	// into istiod's cacerts Secret after checking it; a new root in it starts a rotation.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName"`
}

// CertManagerCASpec asks cert-manager for the mesh's intermediate CA.
type CertManagerCASpec struct {
	// IssuerRef is the cert-manager Issuer or ClusterIssuer that signs the intermediate.
	IssuerRef IssuerReference `json:"issuerRef"`

	// Duration of the intermediate; intermediateTTL when unset.
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`

	// RenewBefore is how long before expiry cert-manager renews the intermediate;
	// rotation.intermediateRenewBefore when unset.
	// +optional
	RenewBefore *metav1.Duration `json:"renewBefore,omitempty"`
}

// IssuerReference names a cert-manager issuer.
type IssuerReference struct {
	// Name of the issuer.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Kind is Issuer (in the control-plane namespace) or ClusterIssuer.
	// +kubebuilder:default=Issuer
	// +kubebuilder:validation:Enum=Issuer;ClusterIssuer
	// +optional
	Kind string `json:"kind,omitempty"`
	// Group of the issuer; cert-manager.io by default, or an external issuer's group.
	// +kubebuilder:default="cert-manager.io"
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Group string `json:"group,omitempty"`
}

// CARotationSpec says when the CA is renewed and rotated.
type CARotationSpec struct {
	// Automatic renews the intermediate and rotates the root as they near expiry. Off,
	// only a requestedAt or a new CA source starts a rotation.
	// +kubebuilder:default=true
	// +optional
	Automatic *bool `json:"automatic,omitempty"`

	// RootRenewBefore is how long before the root expires its rotation starts. It must
	// leave time for a whole rotation, which takes a little more than workloadCertTTL.
	// +kubebuilder:default="720h"
	// +optional
	RootRenewBefore *metav1.Duration `json:"rootRenewBefore,omitempty"`

	// IntermediateRenewBefore is how long before the intermediate expires it is renewed
	// under the same root.
	// +kubebuilder:default="720h"
	// +optional
	IntermediateRenewBefore *metav1.Duration `json:"intermediateRenewBefore,omitempty"`

	// RequestedAt asks for a root rotation now: set it to the current time. A rotation
	// starts once for each new value.
	// +optional
	RequestedAt *metav1.Time `json:"requestedAt,omitempty"`

	// AbortRequestedAt asks to abandon the rotation in progress, when set to a time after
	// it started. Before Finalizing the mesh goes back to the old root, safely: certificates
	// already issued under the new root stay trusted until they have expired. From
	// Finalizing on, a rotation can no longer be abandoned.
	// +optional
	AbortRequestedAt *metav1.Time `json:"abortRequestedAt,omitempty"`
}

// CAStatus is what Capstan last observed of the mesh CA.
type CAStatus struct {
	// Type is the CA type the material in use came from.
	// +optional
	Type CAType `json:"type,omitempty"`
	// Phase of the root rotation: Idle (no rotation yet), Trusting, Switching, Soaking,
	// Finalizing, Done, RollingBack or RolledBack.
	// +optional
	Phase string `json:"phase,omitempty"`
	// RotationReason says why the current or last rotation started.
	// +optional
	RotationReason string `json:"rotationReason,omitempty"`
	// RootExpiry is when the signing root expires.
	// +optional
	RootExpiry *metav1.Time `json:"rootExpiry,omitempty"`
	// IntermediateExpiry is when the signing intermediate expires.
	// +optional
	IntermediateExpiry *metav1.Time `json:"intermediateExpiry,omitempty"`
	// RootFingerprints are the SHA-256 fingerprints (hex) of the roots istiod is given to
	// trust: one, or two during a rotation.
	// +kubebuilder:validation:MaxItems=4
	// +optional
	RootFingerprints []string `json:"rootFingerprints,omitempty"`
	// NextAction is when Capstan acts on the CA next, without a change to the spec.
	// +optional
	NextAction *metav1.Time `json:"nextAction,omitempty"`
	// NextActionReason says what happens at nextAction and why.
	// +optional
	NextActionReason string `json:"nextActionReason,omitempty"`
}

// CA condition type and reasons.
const (
	// ConditionCARotating is True while a root rotation is under way.
	ConditionCARotating = "CARotating"
	// ConditionCAReady is True when istiod has valid CA material from the declared source.
	ConditionCAReady = "CAReady"

	ReasonCAIssued            = "CAIssued"
	ReasonCARenewed           = "IntermediateRenewed"
	ReasonCAPhase             = "RotationPhase"
	ReasonCARotated           = "RotationDone"
	ReasonCARolledBack        = "RotationRolledBack"
	ReasonCAInvalid           = "CAMaterialInvalid"
	ReasonCAWaiting           = "WaitingForCA"
	ReasonCertManagerMissing  = "CertManagerNotInstalled"
	ReasonCertManagerNotReady = "CertificateNotReady"
	ReasonNoRotation          = "NoRotation"
	ReasonCAForbidden         = "SecretsForbidden"
	// ReasonCAStateLost: the CA's state Secret, with the root key, was lost; istiod keeps
	// the CA in cacerts until a root rotation moves the mesh off it.
	ReasonCAStateLost = "CAStateLost"
)

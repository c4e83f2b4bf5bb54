package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/ca"
	"github.com/capstan-mesh/capstan/internal/render"
	"github.com/capstan-mesh/capstan/internal/values"
)

type caPhaseFunc func(context.Context, *caScope) (ctrl.Result, error)

// caScope is what the phases of one CA reconcile share.
type caScope struct {
	mcp, before *meshv1.MeshControlPlane
	now         time.Time
	ns          string
	spec        meshv1.CASpec
	policy      ca.Policy

	stateSecret *corev1.Secret
	state       *ca.State
	source      *ca.Material
	cacerts     *corev1.Secret

	// problem is why istiod cannot be given the declared CA; it keeps the last good one.
	problem    *caProblem
	wake       time.Time
	wakeReason string
	// poll is how soon to look again at inputs that are not watched; pollRotation, how soon
	// a rotation waiting on signals looks again.
	poll, pollRotation time.Duration
	stop               bool
}

type caProblem struct{ reason, message string }

func (s *caScope) fail(reason string, err error) {
	s.problem = &caProblem{reason: reason, message: err.Error()}
	s.stop = true
}

func newCAScope(mcp *meshv1.MeshControlPlane, now time.Time) *caScope {
	s := &caScope{mcp: mcp, before: mcp.DeepCopy(), now: now, ns: mcp.Spec.Namespace}
	if s.ns == "" {
		s.ns = "istio-system"
	}
	if sec := mcp.Spec.Security; sec != nil && sec.CA != nil {
		s.spec = *sec.CA
	}
	return s
}

// caPolicy turns the CA spec into the state machine's policy, with the CRD's defaults for
// what is unset (objects written before the field existed have none).
func (r *CAReconciler) caPolicy(s *caScope) ca.Policy {
	c := s.spec
	dur := func(d *metav1.Duration, def time.Duration) time.Duration {
		if d == nil || d.Duration <= 0 {
			return def
		}
		return d.Duration
	}
	p := ca.Policy{
		Source:                  ca.SourceSelfSigned,
		KeyAlgorithm:            ca.KeyAlgorithm(c.KeyAlgorithm),
		RootTTL:                 dur(c.RootTTL, ca.DefaultRootTTL),
		IntermediateTTL:         dur(c.IntermediateTTL, ca.DefaultIntermediateTTL),
		Automatic:               true,
		RootRenewBefore:         720 * time.Hour,
		IntermediateRenewBefore: 720 * time.Hour,
		Timing:                  ca.Timing{WorkloadCertTTL: values.WorkloadCertTTL(&s.mcp.Spec), Propagation: r.Propagation},
	}
	if p.KeyAlgorithm == "" {
		p.KeyAlgorithm = ca.DefaultKeyAlgorithm
	}
	if m := s.mcp.Spec.MeshConfig; m != nil && m.TrustDomain != "" {
		p.TrustDomain = m.TrustDomain
	}
	if rot := c.Rotation; rot != nil {
		if rot.Automatic != nil {
			p.Automatic = *rot.Automatic
		}
		p.RootRenewBefore = dur(rot.RootRenewBefore, p.RootRenewBefore)
		p.IntermediateRenewBefore = dur(rot.IntermediateRenewBefore, p.IntermediateRenewBefore)
		if rot.RequestedAt != nil {
			p.RequestedAt = rot.RequestedAt.Time
		}
		if rot.AbortRequestedAt != nil {
			p.AbortRequestedAt = rot.AbortRequestedAt.Time
		}
	}
	switch c.Type {
	case meshv1.CAProvided:
		if c.Provided != nil {
			p.Source = "Provided:" + s.ns + "/" + c.Provided.SecretName
		}
	case meshv1.CACertManager:
		p.Source = "CertManager:" + s.ns + "/" + CertManagerCertificate
	}
	return p
}

// checkNamespace stops when the operator may not manage Secrets in the control-plane
// namespace, or that namespace does not exist yet (the install creates it).
func (r *CAReconciler) checkNamespace(ctx context.Context, s *caScope) (ctrl.Result, error) {
	if !r.secretsAllowed(s.ns) {
		s.fail(meshv1.ReasonCAForbidden, fmt.Errorf("spec.namespace: the operator may manage Secrets only in %v, not in %s; grant it the capstan-manager Role there (Helm value controlPlaneNamespace) and start it with --secret-namespaces=%s",
			r.SecretNamespaces, s.ns, s.ns))
		return ctrl.Result{}, nil
	}
	if err := r.Get(ctx, client.ObjectKey{Name: s.ns}, metadataOf(namespaceGVK)); err != nil { // every namespace is cached
		if apierrors.IsNotFound(err) {
			s.stop = true
			return ctrl.Result{RequeueAfter: time.Second}, nil
		}
		return ctrl.Result{}, err
	}
	s.policy = r.caPolicy(s)
	return ctrl.Result{}, nil
}

// loadState reads the CA's persisted state, if any.
func (r *CAReconciler) loadState(ctx context.Context, s *caScope) (ctrl.Result, error) {
	sec := &corev1.Secret{}
	err := r.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: CAStateSecret}, sec)
	if apierrors.IsNotFound(err) {
		return ctrl.Result{}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if leftover(sec, s.mcp) {
		return s.awaitGarbageCollection(sec), nil
	}
	st, err := ca.DecodeState(sec.Data, sec.Annotations[ca.StateAnnotation])
	if err != nil {
		s.fail(meshv1.ReasonCAInvalid, fmt.Errorf("secret %s/%s, where Capstan keeps the CA's state, is damaged (%v); istiod keeps signing with the cacerts it has. Restore the Secret from a backup, or delete it to issue a new CA, which breaks trust with workloads until they restart", s.ns, CAStateSecret, err))
		return ctrl.Result{}, nil
	}
	s.stateSecret, s.state = sec, st
	return ctrl.Result{}, nil
}

// resolveSource reads and checks the material of a Provided or CertManager CA. Bad
// material stops here: istiod keeps the last good CA, and the condition names the Secret,
// the key and the fix.
func (r *CAReconciler) resolveSource(ctx context.Context, s *caScope) (ctrl.Result, error) {
	var field, secretName string
	switch s.spec.Type {
	case meshv1.CAProvided:
		if s.spec.Provided == nil {
			s.fail(meshv1.ReasonCAInvalid, errors.New("spec.security.ca.provided: required when type is Provided; name the Secret holding the CA"))
			return ctrl.Result{}, nil
		}
		field, secretName = "spec.security.ca.provided.secretName", s.spec.Provided.SecretName
		s.poll = r.SourcePollInterval
	case meshv1.CACertManager:
		s.poll = r.SourcePollInterval
		ready, err := r.ensureCertificate(ctx, s)
		if err != nil || !ready {
			return ctrl.Result{RequeueAfter: s.poll}, err
		}
		field, secretName = "spec.security.ca.certManager", CertManagerSecret
	default:
		return ctrl.Result{}, nil
	}
	name := s.ns + "/" + secretName
	sec := &corev1.Secret{}
	var m *ca.Material
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: secretName}, sec)
	switch {
	case apierrors.IsNotFound(err):
		err = ca.SecretMissing(name)
	case err != nil:
		return ctrl.Result{}, err
	default:
		if m, err = ca.ParseSecretData(sec.Data); err == nil {
			err = ca.Validate(m, ca.ValidateOptions{Now: s.now, WorkloadCertTTL: s.policy.Timing.WorkloadCertTTL, TrustDomain: s.policy.TrustDomain})
		}
	}
	if err != nil {
		var me *ca.MaterialError
		if errors.As(err, &me) {
			me.Secret = name
		}
		s.fail(meshv1.ReasonCAInvalid, fmt.Errorf("%s: %w; istiod keeps signing with its current CA", field, err))
		return ctrl.Result{RequeueAfter: s.poll}, nil
	}
	s.source = m
	return ctrl.Result{}, nil
}

// ensureCertificate applies the Certificate that asks cert-manager for the intermediate
// and says whether cert-manager reports it Ready.
func (r *CAReconciler) ensureCertificate(ctx context.Context, s *caScope) (bool, error) {
	cm := s.spec.CertManager
	if cm == nil {
		s.fail(meshv1.ReasonCAInvalid, errors.New("spec.security.ca.certManager: required when type is CertManager; give the issuerRef"))
		return false, nil
	}
	err := r.Apply(ctx, client.ApplyConfigurationFromUnstructured(certificateFor(s)), client.FieldOwner(CAFieldManager), client.ForceOwnership)
	if meta.IsNoMatchError(err) {
		s.fail(meshv1.ReasonCertManagerMissing, errors.New("spec.security.ca.type: CertManager needs cert-manager, and its Certificate CRD (certificates.cert-manager.io) is not installed; install cert-manager or choose another CA type. istiod keeps signing with its current CA"))
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("applying Certificate %s/%s: %w", s.ns, CertManagerCertificate, err)
	}
	live := &unstructured.Unstructured{}
	live.SetGroupVersionKind(schema.GroupVersionKind{Group: certManagerGroup, Version: "v1", Kind: "Certificate"})
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: CertManagerCertificate}, live); err != nil {
		return false, err
	}
	conds, _, _ := unstructured.NestedSlice(live.Object, "status", "conditions")
	for _, c := range conds {
		c, _ := c.(map[string]any)
		if c["type"] == "Ready" {
			if c["status"] == string(metav1.ConditionTrue) {
				return true, nil
			}
			s.fail(meshv1.ReasonCertManagerNotReady, fmt.Errorf("spec.security.ca.certManager: Certificate %s/%s is not Ready (%v: %v); check the issuer %s and cert-manager's logs. istiod keeps signing with its current CA", s.ns, CertManagerCertificate, c["reason"], c["message"], cm.IssuerRef.Name))
			return false, nil
		}
	}
	s.fail(meshv1.ReasonCertManagerNotReady, fmt.Errorf("spec.security.ca.certManager: cert-manager has not reported on Certificate %s/%s yet; is cert-manager running, and does issuer %s exist? istiod keeps signing with its current CA", s.ns, CertManagerCertificate, cm.IssuerRef.Name))
	return false, nil
}

// certificateFor is the cert-manager Certificate for the mesh's intermediate: a CA whose key
// is new at every issuance, stored in a Secret cert-manager labels as Capstan's.
//
// It is written as the unstructured object server-side apply sends, without cert-manager's
// Go types: those would link cert-manager's and Gateway API's types and schemes into the
// operator for one object. A unit test checks it against cert-manager's own types, and the
// envtest suite applies it to cert-manager's real CRD.
func certificateFor(s *caScope) *unstructured.Unstructured {
	cm := s.spec.CertManager
	alg, size := "ECDSA", int64(256)
	switch ca.KeyAlgorithm(s.spec.KeyAlgorithm) {
	case ca.ECDSAP384:
		size = 384
	case ca.RSA3072:
		alg, size = "RSA", 3072
	case ca.RSA4096:
		alg, size = "RSA", 4096
	}
	duration := cm.Duration
	if duration == nil {
		duration = &metav1.Duration{Duration: s.policy.IntermediateTTL}
	}
	renew := cm.RenewBefore
	if renew == nil {
		renew = &metav1.Duration{Duration: s.policy.IntermediateRenewBefore}
	}
	if renew.Duration >= duration.Duration {
		renew = &metav1.Duration{Duration: duration.Duration / 3}
	}
	trustDomain := s.policy.TrustDomain
	if trustDomain == "" {
		trustDomain = ca.DefaultTrustDomain
	}
	labels := map[string]any{}
	for k, v := range caInventory.Labels() {
		labels[k] = v
	}
	issuer := map[string]any{"name": cm.IssuerRef.Name}
	if cm.IssuerRef.Kind != "" {
		issuer["kind"] = cm.IssuerRef.Kind
	}
	if cm.IssuerRef.Group != "" {
		issuer["group"] = cm.IssuerRef.Group
	}
	obj := map[string]any{
		"apiVersion": certManagerGroup + "/v1",
		"kind":       "Certificate",
		"metadata":   map[string]any{"name": CertManagerCertificate, "namespace": s.ns, "labels": labels},
		"spec": map[string]any{
			"isCA":           true,
			"commonName":     ca.DefaultIntermediateCommonName,
			"subject":        map[string]any{"organizations": []any{trustDomain}},
			"duration":       duration.Duration.String(),
			"renewBefore":    renew.Duration.String(),
			"secretName":     CertManagerSecret,
			"secretTemplate": map[string]any{"labels": labels},
			"issuerRef":      issuer,
			"privateKey": map[string]any{
				"rotationPolicy": "Always", // a new key at every issuance
				"algorithm":      alg,
				"size":           size,
				"encoding":       "PKCS8",
			},
			"usages": []any{"cert sign", "crl sign", "digital signature"},
		},
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetOwnerReferences([]metav1.OwnerReference{ownerRef(s.mcp)})
	return u
}

// certManagerGroup is cert-manager's API group.
const certManagerGroup = "cert-manager.io"

// leftover says whether a CA Secret belongs to an earlier MeshControlPlane, deleted since:
// the garbage collector removes it, as it removes everything that MeshControlPlane owned.
// Capstan neither signs with it nor adopts it, for that CA went with its control plane;
// a new one is issued once it is gone. Were it used, the collector would delete it under
// the new control plane, and istiod, started on it, would have to switch roots.
func leftover(sec *corev1.Secret, mcp *meshv1.MeshControlPlane) bool {
	if !sec.DeletionTimestamp.IsZero() {
		return true
	}
	ref := metav1.GetControllerOf(sec)
	return ref != nil && ref.UID != mcp.UID
}

// awaitGarbageCollection stops the CA until a leftover Secret is gone. Its deletion is a
// watch event; the requeue is only a backstop.
func (s *caScope) awaitGarbageCollection(sec *corev1.Secret) ctrl.Result {
	s.fail(meshv1.ReasonCAWaiting, fmt.Errorf("secret %s/%s belongs to a MeshControlPlane deleted before this one and is being garbage-collected; a new CA is issued once it is gone (if it stays, check that the kube-controller-manager's garbage collector runs)", sec.Namespace, sec.Name))
	return ctrl.Result{RequeueAfter: 5 * time.Second}
}

// checkCACerts reads istiod's cacerts Secret and refuses to take over one Capstan did not
// create: istiod may be signing with it.
func (r *CAReconciler) checkCACerts(ctx context.Context, s *caScope) (ctrl.Result, error) {
	sec := &corev1.Secret{}
	err := r.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: CACertsSecret}, sec)
	if err == nil {
		if leftover(sec, s.mcp) {
			return s.awaitGarbageCollection(sec), nil
		}
		s.cacerts = sec
		return ctrl.Result{}, nil
	}
	if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	// The cache holds only Capstan's Secrets: look for one of the user's.
	m := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}}
	err = r.APIReader.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: CACertsSecret}, m)
	if err == nil {
		s.fail(meshv1.ReasonCAInvalid, fmt.Errorf("secret %s/%s exists and Capstan did not create it; Capstan will not overwrite a CA istiod may be signing with. To keep that CA, copy it to another Secret, set spec.security.ca.type to Provided with provided.secretName naming the copy, and delete %s", s.ns, CACertsSecret, CACertsSecret))
		return ctrl.Result{}, nil
	}
	return ctrl.Result{}, client.IgnoreNotFound(err)
}

// drive runs the state machine: one decision, one write, until it has nothing to write.
func (r *CAReconciler) drive(ctx context.Context, s *caScope) (ctrl.Result, error) {
	logger := log.FromContext(ctx)
	served := s.served(ctx)
	for range 12 {
		in := ca.Inputs{Policy: s.policy, State: s.state, Source: s.source, Now: s.now,
			CACertsName: s.ns + "/" + CACertsSecret, StateName: s.ns + "/" + CAStateSecret}
		if s.cacerts != nil {
			in.CACerts = s.cacerts.Data
		}
		if s.state != nil && s.state.Rotation.Phase.InProgress() {
			var err error
			if in.Published, err = r.published(ctx, served, s.state.TrustedRoots()); err != nil {
				return ctrl.Result{}, err
			}
			if in.IstiodReady, err = r.istiodReady(ctx, s.ns); err != nil {
				return ctrl.Result{}, err
			}
		}
		a, err := ca.Decide(in, r.Generator)
		if err != nil {
			s.fail(meshv1.ReasonCAInvalid, fmt.Errorf("spec.security.ca: %w", err))
			return ctrl.Result{}, err
		}
		switch a.Kind {
		case ca.ActionNone:
			s.wake, s.wakeReason = a.Wake, a.WakeReason
			return s.requeue(), nil
		case ca.ActionWriteState:
			data, ann, err := a.State.Encode()
			if err != nil {
				return ctrl.Result{}, err
			}
			sec, err := r.writeSecret(ctx, s, s.stateSecret, CAStateSecret, data, map[string]string{ca.StateAnnotation: ann})
			if err != nil {
				return ctrl.Result{}, fmt.Errorf("writing the CA state to %s/%s: %w", s.ns, CAStateSecret, err)
			}
			s.stateSecret, s.state = sec, a.State
			logger.Info("CA state written", "phase", a.State.Rotation.Phase, "reason", a.State.Rotation.Reason)
		case ca.ActionWriteCACerts:
			sec, err := r.writeSecret(ctx, s, s.cacerts, CACertsSecret, a.CACerts, nil)
			if err != nil {
				return ctrl.Result{}, fmt.Errorf("writing %s/%s: %w", s.ns, CACertsSecret, err)
			}
			s.cacerts = sec
			logger.Info("cacerts written", "phase", s.state.Rotation.Phase, "roots", s.state.TrustedRoots())
		}
		if ev := a.Event; ev != nil {
			typ := corev1.EventTypeNormal
			if ev.Warning() {
				typ = corev1.EventTypeWarning
			}
			r.Recorder.Eventf(s.mcp, nil, typ, ev.Reason, "CA", "%s", ev.Message)
		}
	}
	return ctrl.Result{RequeueAfter: time.Second}, nil
}

// requeue is when to look again: at the next timed action, at least as often as unwatched
// inputs need, and, while a rotation waits on other components (whose signals are
// watched), at the backstop poll.
func (s *caScope) requeue() ctrl.Result {
	after := time.Duration(0)
	if !s.wake.IsZero() {
		after = max(s.wake.Sub(s.now), time.Second)
	}
	limit := s.poll
	if s.state != nil && s.state.Rotation.Phase.InProgress() {
		limit = s.pollRotation
	}
	if limit > 0 && (after == 0 || after > limit) {
		after = limit
	}
	// Long waits are cut to an hour, so that a clock change is noticed.
	if after == 0 || after > time.Hour {
		after = time.Hour
	}
	return ctrl.Result{RequeueAfter: after}
}

// writeSecret creates the named Secret, owned by the MeshControlPlane, or updates the
// version of it that was read: a concurrent change makes the update fail rather than be
// overwritten.
func (r *CAReconciler) writeSecret(ctx context.Context, s *caScope, existing *corev1.Secret, name string, data map[string][]byte, annotations map[string]string) (*corev1.Secret, error) {
	if existing == nil {
		sec := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.ns, Annotations: annotations,
				Labels:          caInventory.Labels(),
				OwnerReferences: []metav1.OwnerReference{ownerRef(s.mcp)}},
			Type: corev1.SecretTypeOpaque,
			Data: data,
		}
		return sec, r.Create(ctx, sec)
	}
	sec := existing.DeepCopy()
	sec.Data = data
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	maps.Copy(sec.Labels, caInventory.Labels()) // Secrets written before the writer label gain it
	for k, v := range annotations {
		if sec.Annotations == nil {
			sec.Annotations = map[string]string{}
		}
		sec.Annotations[k] = v
	}
	return sec, r.Update(ctx, sec)
}

// caInventory labels what the CA controller writes.
var caInventory = apply.Inventory{Component: CAComponent, Writer: apply.WriterCA}

func ownerRef(mcp *meshv1.MeshControlPlane) metav1.OwnerReference {
	return *metav1.NewControllerRef(mcp, meshv1.GroupVersion.WithKind("MeshControlPlane"))
}

// istiodReady says whether every istiod Deployment of the control plane (one per
// revision, each signing with cacerts) has rolled out with every replica available; false
// while there is none.
func (r *CAReconciler) istiodReady(ctx context.Context, ns string) (bool, error) {
	l := &unstructured.UnstructuredList{}
	l.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("DeploymentList"))
	if err := r.List(ctx, l, client.InNamespace(ns), client.MatchingLabels{apply.ManagedByLabel: apply.ManagedByValue, apply.ComponentLabel: render.Istiod.Name}); err != nil {
		return false, fmt.Errorf("listing istiod's Deployments in %s: %w", ns, err)
	}
	found := false
	for i := range l.Items {
		u := &l.Items[i]
		if inv, ok := apply.InventoryOf(u.GetLabels()); !ok || !installsIstiod(inv) || u.GetDeletionTimestamp() != nil {
			continue
		}
		d := &appsv1.Deployment{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, d); err != nil {
			return false, err
		}
		if !deploymentStatus(d.Name, d).Ready {
			return false, nil
		}
		found = true
	}
	return found, nil
}

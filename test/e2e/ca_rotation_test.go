//go:build e2e

package e2e

// The mesh CA's root rotation on the local cluster, checked by the one invariant that
// matters to the workloads: at every phase, every workload certificate istiod can be issuing
// (or have issued and still valid) verifies against every trust bundle that can be
// distributed at that moment, so that no mutual-TLS handshake between sidecars fails.
//
// Real: the operator binary (its CA controller writes cacerts and its state Secret, under its
// own ServiceAccount and RBAC); the apiserver (TokenRequest, TokenReview, admission); istiod,
// the real pilot-discovery, which loads ./etc/cacerts, publishes istio-ca-root-cert to every
// namespace and signs real workload certificates through its CA service
// (IstioCertificateService.CreateCertificate over TLS, authenticated with a TokenRequest
// token); TLS 1.3 mutual-authentication handshakes over loopback.
//
// Simulated: the kubelet's Secret volume sync (the harness Mirror copies the cacerts Secret
// into istiod's ./etc/cacerts, at once rather than within a minute); the istiod pods the
// operator waits for (kwok marks the Deployment's pods Ready; the istiod serving the mesh is
// the local process); Envoy sidecars (Go TLS peers that verify SPIFFE identities as Envoy
// does, each holding one certificate from istiod and one trust bundle — the one published in
// its namespace, the one in cacerts, or the one it held at the end of the previous phase,
// since a sidecar may lag by one phase but no more: that is what each phase waits for).
// Durations are shrunk: workload certificates live 20s and the propagation allowance is 3s.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/internal/ca"
	"github.com/capstan-mesh/capstan/test/harness"
)

const (
	// rotationCertTTL is spec.security.ca.workloadCertTTL: istiod's maximum and default
	// workload certificate lifetime, and the soak of a rotation.
	rotationCertTTL = 20 * time.Second
	// rotationPropagation is the operator's --ca-propagation.
	rotationPropagation = 3 * time.Second
	// rotationNS holds the workloads whose certificates the test asks istiod for.
	rotationNS = "ca-rotation"
)

var rotationSAs = []string{"alpha", "beta"}

var _ = Describe("the mesh CA's root rotation with the real istiod", Ordered, func() {
	var (
		op        *harness.Operator
		istiod    *harness.Istiod
		probe     *meshProbe
		opWorkDir int
	)
	startOperator := func(ctx context.Context) {
		GinkgoHelper()
		op = startOwnOperator(ctx, "capstan-ca", &opWorkDir, "--ca-propagation="+rotationPropagation.String())
	}

	BeforeAll(func(ctx SpecContext) {
		// The suite's operator allows the default 3m of propagation; this one 3s.
		Expect(operator.Stop()).To(Succeed())
		startOperator(ctx)

		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
		Expect(client.IgnoreNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(m), m))).To(Succeed())
		Expect(m.UID).To(BeEmpty(), "another spec left a MeshControlPlane behind")
		m.Spec.Security = &meshv1.SecuritySpec{CA: &meshv1.CASpec{WorkloadCertTTL: &metav1.Duration{Duration: rotationCertTTL}}}
		m.Spec.Upgrade = inPlace
		Expect(k8s.Create(ctx, m)).To(Succeed())

		// istiod must find cacerts when it starts, as the chart's pod would: the operator
		// writes it before it applies istiod's Deployment.
		Eventually(ctx, func(g Gomega) {
			st := caStatusOf(ctx, g)
			g.Expect(st.Phase).To(Equal(string(ca.PhaseIdle)))
			d := istiodDeployment(ctx, g)
			g.Expect(d.Status.AvailableReplicas).To(Equal(int32(1)))
		}).Should(Succeed())
		var err error
		istiod, err = harness.StartIstiod(ctx, cluster, harness.IstiodOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(istiod.LogTail(1<<20)).To(ContainSubstring("Use root cert from etc/cacerts/root-cert.pem"), "istiod signs with the operator's CA")
		// The workloads' namespace, so that istiod publishes its trust bundle there.
		Expect(harness.ServiceAccountToken(ctx, cluster, rotationNS, rotationSAs[0], harness.IstioCAAudience)).NotTo(BeEmpty())
		probe = newMeshProbe(istiod)
		Eventually(ctx, func(g Gomega) {
			roots, _ := cacertsOf(ctx, g)
			g.Expect(publishedRoots(ctx, g)).To(haveRoots(roots))
		}).Should(Succeed(), "istiod publishes the operator's root to "+rotationNS)
	}, NodeTimeout(3*time.Minute))

	AfterEach(func() {
		if CurrentSpecReport().Failed() && istiod != nil {
			AddReportEntry("istiod log", istiod.LogTail(6000))
		}
	})

	AfterAll(func(ctx SpecContext) {
		if istiod != nil {
			Expect(istiod.Stop()).To(Succeed())
		}
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}}
		Expect(client.IgnoreNotFound(k8s.Delete(ctx, m))).To(Succeed())
		// config/rbac ships istio-system, so the namespace stays; what Capstan made in it goes,
		// the CA's Secrets with their owner.
		Eventually(ctx, func(g Gomega) {
			err := k8s.Get(ctx, client.ObjectKeyFromObject(m), m)
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "MeshControlPlane: finalizers %v, conditions %+v", m.Finalizers, m.Status.Conditions)
			for _, name := range []string{controllers.CACertsSecret, controllers.CAStateSecret} {
				err := k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: name}, &corev1.Secret{})
				g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "Secret %s/%s: %v", istioNS, name, err)
			}
			g.Expect(apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: "istiod"}, &appsv1.Deployment{}))).To(BeTrue(), "Deployment istiod")
		}).Should(Succeed(), "the control plane is gone, for the specs that install it again")
		restoreSuiteOperator(ctx, op)
	}, NodeTimeout(3*time.Minute))

	It("rotates the root through Trusting, Switching, Soaking and Finalizing to Done without one failed handshake", func(ctx SpecContext) {
		rec := recordCAState(ctx)
		defer rec.stop()
		before := caStatusOf(ctx, Default)
		Expect(before.RootFingerprints).To(HaveLen(1))
		oldRoots, oldSigner := cacertsOf(ctx, Default)
		probe.check(ctx, string(ca.PhaseIdle), "", nil)

		// Switching lasts no longer than one write: the reconcile that enters it writes the new
		// intermediate to cacerts and, istiod's Deployment being ready, moves on to Soaking. To
		// check the mesh in it, the test holds it: an admission policy (real admission in the
		// apiserver) refuses the operator's cacerts writes that change the intermediate, until
		// the test has checked Switching and removes the policy. The operator retries.
		release := holdIntermediateSwitch(ctx)
		defer release()
		requestRotation(ctx)

		var newRoot *x509.Certificate
		seen := probe.follow(ctx, before.Phase, []string{string(ca.PhaseDone)}, func(phase string) {
			switch ca.Phase(phase) {
			case ca.PhaseTrusting, ca.PhaseSwitching:
				probe.check(ctx, phase, "", func(s snapshot) {
					Expect(s.cacertsRoots).To(haveRoots(slices.Concat(oldRoots, s.newRoots(oldRoots))), "both roots are trusted")
					Expect(s.newRoots(oldRoots)).To(HaveLen(1))
					newRoot = s.newRoots(oldRoots)[0]
					Expect(s.signer.Equal(oldSigner)).To(BeTrue(), "the old intermediate still signs in %s", phase)
					for _, c := range s.issued {
						Expect(signedBy(c, oldSigner)).To(BeTrue(), "istiod signs with the old intermediate in %s", phase)
					}
				})
				if phase == string(ca.PhaseSwitching) {
					release()
				}
			case ca.PhaseSoaking:
				probe.check(ctx, phase, "", func(s snapshot) {
					Expect(s.cacertsRoots).To(haveRoots([]*x509.Certificate{oldRoots[0], newRoot}))
					Expect(chainsTo(s.signer, newRoot)).To(BeTrue(), "the new intermediate signs in Soaking")
				})
				// istiod picks the new intermediate up; its certificates must meet every
				// old one still valid, and a sidecar that never got the new root (the reason
				// Trusting waits) would reject them.
				fresh := probe.awaitSigner(ctx, phase, newRoot)
				Expect(probe.liveUnder(oldRoots[0])).NotTo(BeEmpty(), "a certificate of the old root is still valid, so the handshakes crossed roots")
				Expect(harness.Handshake(ctx, fresh.TLS, probe.liveUnder(oldRoots[0])[0].TLS, harness.CertPool(oldRoots[0], newRoot), harness.CertPool(oldRoots...))).
					To(MatchError(ContainSubstring("the client rejected the server's certificate")), "the check can fail: a sidecar trusting the old root alone rejects the new intermediate's certificates")
			case ca.PhaseFinalizing, ca.PhaseDone:
				probe.check(ctx, phase, "", func(s snapshot) {
					Expect(s.cacertsRoots).To(haveRoots([]*x509.Certificate{newRoot}), "only the new root is trusted from %s on", phase)
					for _, c := range s.issued {
						Expect(leafUnder(c, newRoot)).To(BeTrue())
					}
				})
			default:
				Fail("unexpected phase " + phase)
			}
		})
		Expect(seen).To(Equal([]string{"Trusting", "Switching", "Soaking", "Finalizing", "Done"}), "status.ca.phase went through every phase, each checked")
		Expect(rec.phases()).To(Equal([]string{"Trusting", "Switching", "Soaking", "Finalizing", "Done"}), "the CA state Secret went through every phase once")
		Expect(rec.nextRoots()).To(ConsistOf(ca.Fingerprint(newRoot)), "one new root for the whole rotation")

		after := caStatusOf(ctx, Default)
		Expect(after.RootFingerprints).To(Equal([]string{ca.Fingerprint(newRoot)}))
		Expect(after.RootFingerprints).NotTo(Equal(before.RootFingerprints))
		expectCARotating(ctx, meshv1.ReasonCARotated)
		Eventually(ctx, func(g Gomega) {
			g.Expect(publishedRoots(ctx, g)).To(haveRoots([]*x509.Certificate{newRoot}))
		}).Should(Succeed(), "istiod publishes the new root alone")
		Eventually(ctx, func(g Gomega) []string { return caEvents(ctx, g) }).Should(ContainElements(
			HavePrefix(ca.EventRotationStarted+": root rotation started (Requested)"),
			And(HavePrefix(ca.EventRotationPhase), ContainSubstring("Trusting → Switching")),
			And(HavePrefix(ca.EventRotationPhase), ContainSubstring("Switching → Soaking")),
			And(HavePrefix(ca.EventRotationPhase), ContainSubstring("Soaking → Finalizing")),
			HavePrefix(ca.EventRotationDone+": root rotation (Requested) done"),
		))
	}, SpecTimeout(3*time.Minute))

	It("rolls a rotation aborted in Soaking back to the old root alone without one failed handshake", func(ctx SpecContext) {
		rec := recordCAState(ctx)
		defer rec.stop()
		before := caStatusOf(ctx, Default)
		oldRoots, oldSigner := cacertsOf(ctx, Default)
		Expect(oldRoots).To(HaveLen(1))
		probe.check(ctx, before.Phase, "before the rotation", nil)
		requestRotation(ctx)

		var newRoot *x509.Certificate
		seen := probe.follow(ctx, before.Phase, []string{string(ca.PhaseRolledBack), string(ca.PhaseDone)}, func(phase string) {
			switch ca.Phase(phase) {
			case ca.PhaseTrusting:
				probe.check(ctx, phase, "", func(s snapshot) {
					Expect(s.newRoots(oldRoots)).To(HaveLen(1))
					newRoot = s.newRoots(oldRoots)[0]
				})
			case ca.PhaseSoaking:
				probe.check(ctx, phase, "", func(s snapshot) {
					Expect(chainsTo(s.signer, newRoot)).To(BeTrue())
				})
				probe.awaitSigner(ctx, phase, newRoot)
				// Abort with certificates of the new root out in the mesh.
				patchRotation(ctx, func(r *meshv1.CARotationSpec) { r.AbortRequestedAt = ptr.To(metav1.Now()) })
			case ca.PhaseRollingBack:
				probe.check(ctx, phase, "", func(s snapshot) {
					Expect(s.cacertsRoots).To(haveRoots([]*x509.Certificate{oldRoots[0], newRoot}), "both roots stay trusted while the new root's certificates live")
					Expect(s.signer.Equal(oldSigner)).To(BeTrue(), "the old intermediate signs again")
				})
				probe.awaitSigner(ctx, phase, oldRoots[0])
				Expect(probe.liveUnder(newRoot)).NotTo(BeEmpty(), "a certificate of the abandoned root is still valid, so the handshakes crossed roots")
			case ca.PhaseRolledBack:
				probe.check(ctx, phase, "", func(s snapshot) {
					Expect(s.cacertsRoots).To(haveRoots(oldRoots), "the old root alone is trusted again")
					Expect(s.signer.Equal(oldSigner)).To(BeTrue())
				})
			default:
				Fail("unexpected phase " + phase)
			}
		})
		Expect(seen).To(Equal([]string{"Trusting", "Soaking", "RollingBack", "RolledBack"}))
		Expect(rec.phases()).To(Equal([]string{"Trusting", "Switching", "Soaking", "RollingBack", "RolledBack"}))

		after := caStatusOf(ctx, Default)
		Expect(after.RootFingerprints).To(Equal(before.RootFingerprints), "the old root alone, as before the rotation")
		expectCARotating(ctx, meshv1.ReasonCARolledBack)
		Eventually(ctx, func(g Gomega) {
			g.Expect(publishedRoots(ctx, g)).To(haveRoots(oldRoots))
		}).Should(Succeed(), "istiod publishes the old root alone again")
		Eventually(ctx, func(g Gomega) []string { return caEvents(ctx, g) }).Should(ContainElement(HavePrefix(ca.EventRolledBack + ": root rotation (Requested) rolled back")))
	}, SpecTimeout(3*time.Minute))

	It("resumes the same rotation when the operator is killed in Trusting, and makes no second root", func(ctx SpecContext) {
		rec := recordCAState(ctx)
		defer rec.stop()
		before := caStatusOf(ctx, Default)
		oldRoots, _ := cacertsOf(ctx, Default)
		probe.check(ctx, before.Phase, "before the rotation", nil)
		// abortRequestedAt is still set from the abort: it predates this rotation, so it
		// must not abort it.
		requestRotation(ctx)

		var newRoot *x509.Certificate
		seen := probe.follow(ctx, before.Phase, []string{string(ca.PhaseTrusting)}, func(string) {})
		Expect(seen).To(Equal([]string{"Trusting"}))
		st := caStatusOf(ctx, Default)
		Expect(st.RootFingerprints).To(HaveLen(2))
		Expect(op.Kill()).To(Succeed(), "the operator crashes mid-rotation")
		// istiod carries on with what the operator left: the mesh stays whole meanwhile.
		probe.check(ctx, string(ca.PhaseTrusting), "operator down", func(s snapshot) {
			Expect(s.newRoots(oldRoots)).To(HaveLen(1))
			newRoot = s.newRoots(oldRoots)[0]
			Expect(st.RootFingerprints).To(ContainElement(ca.Fingerprint(newRoot)))
		})
		startOperator(ctx)

		// The restarted operator may have left Trusting before the first poll: follow from
		// the phase it was killed in.
		seen = probe.follow(ctx, string(ca.PhaseTrusting), []string{string(ca.PhaseDone)}, func(phase string) {
			probe.check(ctx, phase, "", func(s snapshot) {
				Expect(s.newRoots(oldRoots)).To(haveRoots([]*x509.Certificate{newRoot}), "the restarted operator goes on to the same new root")
			})
			if phase == string(ca.PhaseSoaking) {
				probe.awaitSigner(ctx, phase, newRoot)
			}
		})
		Expect(seen).To(Equal([]string{"Soaking", "Finalizing", "Done"}))
		Expect(rec.phases()).To(Equal([]string{"Trusting", "Switching", "Soaking", "Finalizing", "Done"}))
		Expect(rec.nextRoots()).To(ConsistOf(ca.Fingerprint(newRoot)), "the state Secret never held a second new root")
		after := caStatusOf(ctx, Default)
		Expect(after.RootFingerprints).To(Equal([]string{ca.Fingerprint(newRoot)}))
		Expect(after.RootFingerprints).NotTo(Equal(before.RootFingerprints))
		expectCARotating(ctx, meshv1.ReasonCARotated)
	}, SpecTimeout(3*time.Minute))

	It("keeps istiod signing with its CA when the state Secret is lost, and rotates to a new root without one failed handshake", func(ctx SpecContext) {
		lostStateRotation(ctx, probe)
	}, SpecTimeout(3*time.Minute))
})

// meshProbe stands in for the mesh's sidecars: it asks istiod for workload certificates at
// every phase, keeps them while they are valid, and checks every valid one against every
// trust bundle in play, with verification and with real mTLS handshakes.
type meshProbe struct {
	istiod *harness.Istiod
	// certs are every certificate istiod issued to the probe, oldest first.
	certs []*issuedCert
	// phase is the phase of the latest check, and bundle the trust bundle cacerts held then.
	phase  string
	bundle []*x509.Certificate
	// held is the trust bundle of the previous phase: every sidecar had it by the end of
	// that phase (which is what each phase waits for), and some may hold it still.
	held []*x509.Certificate
	// names are short names of the roots seen, R1, R2, ..., by fingerprint; roots, those
	// roots in that order.
	names map[string]string
	roots []*x509.Certificate
	// handshakes counts the handshakes that completed.
	handshakes int
}

type issuedCert struct {
	phase string
	*harness.WorkloadCert
}

func newMeshProbe(d *harness.Istiod) *meshProbe {
	return &meshProbe{istiod: d, names: map[string]string{}}
}

// snapshot is what a phase's check saw.
type snapshot struct {
	// cacertsRoots and signer are the cacerts Secret's root-cert.pem and ca-cert.pem.
	cacertsRoots []*x509.Certificate
	signer       *x509.Certificate
	// published is istio-ca-root-cert in rotationNS.
	published []*x509.Certificate
	// issued are the certificates istiod issued in this check.
	issued []*issuedCert
}

// newRoots are the roots cacerts trusts that are not in old.
func (s snapshot) newRoots(old []*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, r := range s.cacertsRoots {
		if !slices.ContainsFunc(old, r.Equal) {
			out = append(out, r)
		}
	}
	return out
}

// follow waits for status.ca.phase to leave from, polling every 100ms, and calls at with
// each new phase, until a phase in final has been handled. It returns the phases it saw.
func (p *meshProbe) follow(ctx context.Context, from string, final []string, at func(phase string)) []string {
	GinkgoHelper()
	phase := from
	var seen []string
	for len(seen) == 0 || !slices.Contains(final, phase) {
		prev := phase
		Eventually(ctx, func(g Gomega) string {
			phase = caStatusOf(ctx, g).Phase
			return phase
		}).WithTimeout(90*time.Second).WithPolling(100*time.Millisecond).ShouldNot(Equal(prev), "status.ca.phase leaves %s", prev)
		seen = append(seen, phase)
		at(phase)
	}
	return seen
}

// check takes a snapshot of phase, has istiod issue a certificate to each of rotationSAs,
// and checks the invariant: every certificate still valid verifies against every trust
// bundle in play (cacerts' roots, the bundle published in rotationNS, the previous phase's
// bundle), and every new certificate completes an mTLS handshake, in both roles, with every
// valid certificate, each side trusting any of those bundles. then, if set, checks the
// snapshot further. note tells checks within one phase apart in the log.
func (p *meshProbe) check(ctx context.Context, phase, note string, then func(snapshot)) snapshot {
	GinkgoHelper()
	start := time.Now()
	var s snapshot
	s.cacertsRoots, s.signer = cacertsOf(ctx, Default)
	s.published = publishedRoots(ctx, Default)
	if phase != p.phase {
		p.held = p.bundle
		p.phase = phase
	}
	p.bundle = s.cacertsRoots
	for _, sa := range rotationSAs {
		s.issued = append(s.issued, p.issue(ctx, Default, phase, sa, s.published))
	}
	bundles := uniqueBundles(s.cacertsRoots, s.published, p.held)
	if note != "" {
		phase += " (" + note + ")"
	}

	// Every valid certificate against every bundle, at one instant.
	at := time.Now()
	var live []*issuedCert
	var failures []string
	for _, c := range p.certs {
		if !c.Leaf.NotAfter.After(at) {
			continue
		}
		live = append(live, c)
		for _, b := range bundles {
			if err := verifyAt(c.WorkloadCert, b, at); err != nil {
				failures = append(failures, fmt.Sprintf("%s against %s: %v", p.describe(c), p.bundleName(b), err))
			}
		}
	}
	Expect(failures).To(BeEmpty(), "%s: a valid workload certificate does not verify against a trust bundle in play", phase)

	// Real handshakes: each new certificate with every certificate valid for a few more
	// seconds, each side trusting any bundle in play.
	margin := time.Now().Add(3 * time.Second)
	n := 0
	for _, fresh := range s.issued {
		for _, other := range live {
			if other == fresh || !other.Leaf.NotAfter.After(margin) {
				continue
			}
			for _, sb := range bundles {
				for _, cb := range bundles {
					for _, pair := range [][2]*issuedCert{{fresh, other}, {other, fresh}} {
						err := harness.Handshake(ctx, pair[0].TLS, pair[1].TLS, harness.CertPool(sb...), harness.CertPool(cb...))
						Expect(err).NotTo(HaveOccurred(), "%s: server %s trusting %s, client %s trusting %s",
							phase, p.describe(pair[0]), p.bundleName(sb), p.describe(pair[1]), p.bundleName(cb))
						n++
					}
				}
			}
		}
	}
	p.handshakes += n
	var names, issuers []string
	for _, b := range bundles {
		names = append(names, p.bundleName(b))
	}
	for _, c := range s.issued {
		name := "an unknown root"
		for _, r := range p.roots {
			if leafUnder(c, r) {
				name = p.rootName(r)
			}
		}
		issuers = append(issuers, name)
	}
	fmt.Fprintf(GinkgoWriter, "%s: cacerts trusts %s, signer under %s; published %s; istiod issued under %v; bundles in play %v; %d valid certificates, %d handshakes, all good (%v)\n",
		phase, p.bundleName(s.cacertsRoots), p.rootOf(s.signer), p.bundleName(s.published), issuers, names, len(live), n, time.Since(start).Round(time.Millisecond))
	if then != nil {
		then(s)
	}
	return s
}

// issue asks istiod for a certificate for sa, over TLS trusting the bundle a sidecar of
// rotationNS holds.
func (p *meshProbe) issue(ctx context.Context, g Gomega, phase, sa string, trust []*x509.Certificate) *issuedCert {
	wc, err := p.istiod.WorkloadCertificate(ctx, harness.WorkloadCertRequest{
		Namespace: rotationNS, ServiceAccount: sa, TTL: rotationCertTTL, Trust: harness.CertPool(trust...),
	})
	g.Expect(err).NotTo(HaveOccurred(), "%s: istiod issues a workload certificate to %s", phase, sa)
	g.Expect(wc.Leaf.NotAfter.Sub(time.Now())).To(BeNumerically("<=", rotationCertTTL), "istiod grants no more than workloadCertTTL")
	c := &issuedCert{phase: phase, WorkloadCert: wc}
	p.certs = append(p.certs, c)
	return c
}

// awaitSigner waits until istiod issues certificates under root (it reloads ./etc/cacerts
// once the Secret changed; every certificate it issues meanwhile joins the checks), checks
// phase again and returns a certificate under root.
func (p *meshProbe) awaitSigner(ctx context.Context, phase string, root *x509.Certificate) *issuedCert {
	GinkgoHelper()
	Eventually(ctx, func(g Gomega) {
		c := p.issue(ctx, g, phase, rotationSAs[0], publishedRoots(ctx, g))
		g.Expect(leafUnder(c, root)).To(BeTrue(), "issued by %q", c.Leaf.Issuer)
	}).WithTimeout(15*time.Second).WithPolling(100*time.Millisecond).Should(Succeed(), "istiod signs under %s", p.rootName(root))
	s := p.check(ctx, phase, "istiod signs under "+p.rootName(root), nil)
	for _, c := range s.issued {
		Expect(leafUnder(c, root)).To(BeTrue())
	}
	return s.issued[0]
}

// liveUnder are the certificates, valid for a few more seconds, that chain to root.
func (p *meshProbe) liveUnder(root *x509.Certificate) []*issuedCert {
	var out []*issuedCert
	margin := time.Now().Add(3 * time.Second)
	for _, c := range p.certs {
		if c.Leaf.NotAfter.After(margin) && leafUnder(c, root) {
			out = append(out, c)
		}
	}
	return out
}

func (p *meshProbe) rootName(r *x509.Certificate) string {
	fp := ca.Fingerprint(r)
	if p.names[fp] == "" {
		p.names[fp] = fmt.Sprintf("R%d", len(p.names)+1)
		p.roots = append(p.roots, r)
	}
	return p.names[fp]
}

func (p *meshProbe) bundleName(b []*x509.Certificate) string {
	var names []string
	for _, r := range b {
		names = append(names, p.rootName(r))
	}
	slices.Sort(names)
	return "{" + strings.Join(names, ",") + "}"
}

// rootOf names the root, among those seen, that signed the intermediate c.
func (p *meshProbe) rootOf(c *x509.Certificate) string {
	for _, r := range p.roots {
		if chainsTo(c, r) {
			return p.rootName(r)
		}
	}
	return "an unknown root"
}

func (p *meshProbe) describe(c *issuedCert) string {
	return fmt.Sprintf("%s (issued in %s by %q, expires %s)", c.SPIFFEID, c.phase, c.Leaf.Issuer.CommonName, c.Leaf.NotAfter.Format(time.TimeOnly))
}

// uniqueBundles drops empty and repeated bundles (same roots in any order).
func uniqueBundles(bs ...[]*x509.Certificate) [][]*x509.Certificate {
	var out [][]*x509.Certificate
	for _, b := range bs {
		if len(b) == 0 || slices.ContainsFunc(out, func(o []*x509.Certificate) bool { return harness.SameCerts(o, b) }) {
			continue
		}
		out = append(out, b)
	}
	return out
}

// verifyAt verifies a workload certificate's chain to bundle at the instant at, as a
// sidecar's validation context would (no name check, any usage).
func verifyAt(wc *harness.WorkloadCert, bundle []*x509.Certificate, at time.Time) error {
	inter := harness.CertPool(wc.Intermediates...)
	_, err := wc.Leaf.Verify(x509.VerifyOptions{Roots: harness.CertPool(bundle...), Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// chainsTo says whether the intermediate c was signed by root.
func chainsTo(c, root *x509.Certificate) bool {
	return c.CheckSignatureFrom(root) == nil
}

// leafUnder says whether the workload certificate chains to root: its leaf signed by an
// intermediate istiod sent with it, signed by root (istiod's chains are leaf, intermediate,
// root).
func leafUnder(c *issuedCert, root *x509.Certificate) bool {
	for _, inter := range c.Intermediates {
		if c.Leaf.CheckSignatureFrom(inter) == nil && inter.CheckSignatureFrom(root) == nil {
			return true
		}
	}
	return false
}

// signedBy says whether the workload certificate's leaf was signed by signer.
func signedBy(c *issuedCert, signer *x509.Certificate) bool {
	return c.Leaf.CheckSignatureFrom(signer) == nil
}

// haveRoots matches a bundle holding exactly the given roots, in any order.
func haveRoots(want []*x509.Certificate) OmegaMatcher {
	var fps []string
	for _, r := range want {
		fps = append(fps, ca.Fingerprint(r))
	}
	return WithTransform(func(got []*x509.Certificate) []string { return ca.Fingerprints(got) }, ConsistOf(fps))
}

func caStatusOf(ctx context.Context, g Gomega) *meshv1.CAStatus {
	m := &meshv1.MeshControlPlane{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	g.Expect(m.Status.CA).NotTo(BeNil(), "status.ca")
	return m.Status.CA
}

// cacertsOf returns the roots and the intermediate of istiod's cacerts Secret.
func cacertsOf(ctx context.Context, g Gomega) ([]*x509.Certificate, *x509.Certificate) {
	s := &corev1.Secret{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: controllers.CACertsSecret}, s)).To(Succeed())
	roots, err := ca.ParseBundle(s.Data[ca.IstioKeys.Roots])
	g.Expect(err).NotTo(HaveOccurred())
	signer, err := ca.ParseBundle(s.Data[ca.IstioKeys.Cert])
	g.Expect(err).NotTo(HaveOccurred())
	return roots, signer[0]
}

// publishedRoots is the trust bundle istiod published to rotationNS.
func publishedRoots(ctx context.Context, g Gomega) []*x509.Certificate {
	roots, err := cluster.MeshRoots(ctx, rotationNS)
	g.Expect(err).NotTo(HaveOccurred())
	return roots
}

func patchRotation(ctx context.Context, edit func(*meshv1.CARotationSpec)) {
	GinkgoHelper()
	m := &meshv1.MeshControlPlane{}
	Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	patch := client.MergeFrom(m.DeepCopy())
	if m.Spec.Security.CA.Rotation == nil {
		m.Spec.Security.CA.Rotation = &meshv1.CARotationSpec{}
	}
	edit(m.Spec.Security.CA.Rotation)
	Expect(k8s.Patch(ctx, m, patch)).To(Succeed())
}

// requestRotation sets spec.security.ca.rotation.requestedAt to now, a second after the
// last request (the field has a resolution of seconds).
func requestRotation(ctx context.Context) {
	GinkgoHelper()
	m := &meshv1.MeshControlPlane{}
	Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	if r := m.Spec.Security.CA.Rotation; r != nil && r.RequestedAt != nil {
		Eventually(ctx, func() bool { return time.Now().Truncate(time.Second).After(r.RequestedAt.Time) }).Should(BeTrue())
	}
	patchRotation(ctx, func(r *meshv1.CARotationSpec) { r.RequestedAt = ptr.To(metav1.Now()) })
}

func expectCARotating(ctx context.Context, reason string) {
	GinkgoHelper()
	m := &meshv1.MeshControlPlane{}
	Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	c := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionCARotating)
	Expect(c).NotTo(BeNil())
	Expect(c.Status).To(Equal(metav1.ConditionFalse), "CARotating: %s: %s", c.Reason, c.Message)
	Expect(c.Reason).To(Equal(reason), c.Message)
	ready := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionCAReady)
	Expect(ready).NotTo(BeNil())
	Expect(ready.Status).To(Equal(metav1.ConditionTrue), "CAReady: %s: %s", ready.Reason, ready.Message)
}

// caEvents are the notes of the CA's Events on the MeshControlPlane, "Reason: note".
func caEvents(ctx context.Context, g Gomega) []string {
	evs := &eventsv1.EventList{}
	g.Expect(k8s.List(ctx, evs)).To(Succeed())
	var notes []string
	for _, e := range evs.Items {
		if e.Regarding.Kind == "MeshControlPlane" && e.Action == "CA" {
			notes = append(notes, e.Reason+": "+e.Note)
		}
	}
	return notes
}

// holdIntermediateSwitch installs a ValidatingAdmissionPolicy that refuses the operator's
// updates of cacerts that change its intermediate (ca-cert.pem), and waits until the
// apiserver enforces it. release removes it; calling it again does nothing.
func holdIntermediateSwitch(ctx context.Context) (release func()) {
	GinkgoHelper()
	const name = "e2e-hold-ca-intermediate-switch"
	cs := cluster.Clientset
	fail := admissionregistrationv1.Fail
	_, err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"secrets"}},
				},
			}}},
			MatchConditions: []admissionregistrationv1.MatchCondition{{
				Name:       "operator-writes-cacerts",
				Expression: fmt.Sprintf("request.userInfo.username == %q && object.metadata.namespace == %q && object.metadata.name == %q", harness.OperatorUser, istioNS, controllers.CACertsSecret),
			}},
			Validations: []admissionregistrationv1.Validation{{
				Expression: "!has(object.data) || !has(oldObject.data) || !('ca-cert.pem' in object.data) || !('ca-cert.pem' in oldObject.data) || object.data['ca-cert.pem'] == oldObject.data['ca-cert.pem']",
				Message:    "e2e: the test holds the rotation in Switching",
			}},
		},
	}, metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())
	_, err = cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}, metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())

	// Enforced once a dry-run switch, as the operator, is refused.
	impersonated := rest.CopyConfig(cluster.RESTConfig)
	impersonated.Impersonate = rest.ImpersonationConfig{UserName: harness.OperatorUser}
	asOperator, err := kubernetes.NewForConfig(impersonated)
	Expect(err).NotTo(HaveOccurred())
	Eventually(ctx, func(g Gomega) {
		s, err := asOperator.CoreV1().Secrets(istioNS).Get(ctx, controllers.CACertsSecret, metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		s.Data[ca.IstioKeys.Cert] = append(s.Data[ca.IstioKeys.Cert], '\n')
		_, err = asOperator.CoreV1().Secrets(istioNS).Update(ctx, s, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
		g.Expect(err).To(MatchError(ContainSubstring("holds the rotation in Switching")))
	}).WithTimeout(30*time.Second).Should(Succeed(), "the apiserver enforces the policy")

	var once sync.Once
	return func() {
		once.Do(func() {
			// A fresh context: release also runs deferred, when ctx may be done.
			c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			Expect(client.IgnoreNotFound(cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(c, name, metav1.DeleteOptions{}))).To(Succeed())
			Expect(client.IgnoreNotFound(cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(c, name, metav1.DeleteOptions{}))).To(Succeed())
		})
	}
}

// caStateRecorder watches the CA's state Secret and records every phase it passes through
// and every next root it holds: a watch sees each write, however short the phase.
type caStateRecorder struct {
	mu     sync.Mutex
	seen   []string
	next   map[string]bool
	err    error
	cancel context.CancelFunc
	done   <-chan struct{}
}

func recordCAState(ctx context.Context) *caStateRecorder {
	GinkgoHelper()
	s, err := cluster.Clientset.CoreV1().Secrets(istioNS).Get(ctx, controllers.CAStateSecret, metav1.GetOptions{})
	Expect(err).NotTo(HaveOccurred())
	r := &caStateRecorder{next: map[string]bool{}}
	r.cancel, r.done = watchSecretChanges(ctx, controllers.CAStateSecret, s.ResourceVersion, r.record, r.fail)
	return r
}

func (r *caStateRecorder) record(s *corev1.Secret) {
	var rec struct {
		Rotation struct {
			Phase string `json:"phase"`
		} `json:"rotation"`
	}
	err := json.Unmarshal([]byte(s.Annotations[ca.StateAnnotation]), &rec)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.err = errors.Join(r.err, err)
		return
	}
	if n := len(r.seen); n == 0 || r.seen[n-1] != rec.Rotation.Phase {
		r.seen = append(r.seen, rec.Rotation.Phase)
	}
	if b, ok := s.Data[ca.NextPrefix+ca.IstioKeys.Roots]; ok {
		roots, err := ca.ParseBundle(b)
		if err != nil {
			r.err = errors.Join(r.err, err)
		}
		for _, fp := range ca.Fingerprints(roots) {
			r.next[fp] = true
		}
	}
}

func (r *caStateRecorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = errors.Join(r.err, err)
}

func (r *caStateRecorder) phases() []string {
	GinkgoHelper()
	r.mu.Lock()
	defer r.mu.Unlock()
	Expect(r.err).NotTo(HaveOccurred())
	return slices.Clone(r.seen)
}

func (r *caStateRecorder) nextRoots() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for fp := range r.next {
		out = append(out, fp)
	}
	return out
}

func (r *caStateRecorder) stop() {
	r.cancel()
	<-r.done
}

// watchSecretChanges hands record every version of the Secret name in istioNS written after
// resourceVersion, until cancel is called; done closes once it has stopped. An event other
// than a change, or the watch ending, goes to fail.
func watchSecretChanges(ctx context.Context, name, resourceVersion string, record func(*corev1.Secret), fail func(error)) (cancel context.CancelFunc, done <-chan struct{}) {
	GinkgoHelper()
	w, err := cluster.Clientset.CoreV1().Secrets(istioNS).Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", name).String(),
		ResourceVersion: resourceVersion,
	})
	Expect(err).NotTo(HaveOccurred())
	wctx, cancel := context.WithCancel(ctx)
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		defer w.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case ev, ok := <-w.ResultChan():
				if !ok {
					fail(fmt.Errorf("the watch of Secret %s ended", name))
					return
				}
				sec, isSecret := ev.Object.(*corev1.Secret)
				if ev.Type != watch.Modified || !isSecret {
					fail(fmt.Errorf("unexpected %s event on Secret %s", ev.Type, name))
					continue
				}
				record(sec)
			}
		}
	}()
	return cancel, closed
}

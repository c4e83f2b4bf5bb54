//go:build e2e

package e2e

// Losing the mesh CA's state Secret (capstan-ca, which holds the root key) with the real
// istiod running: istiod must keep signing with the CA in cacerts, and the mesh moves to a
// new root only by a rotation that trusts it beside the old one first.
//
// It runs inside the root rotation's Describe (ca_rotation_test.go), on its operator,
// istiod and probe, and is simulated the same way: the harness Mirror copies the cacerts
// Secret into istiod's ./etc/cacerts as a kubelet would (at once rather than within a
// minute); kwok marks istiod's pods Ready while the local pilot-discovery serves the mesh;
// Go TLS peers holding certificates istiod really issued (CreateCertificate) stand in for
// sidecars. Real: the operator binary, the apiserver, istiod, the handshakes.

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/internal/ca"
	"github.com/capstan-mesh/capstan/test/harness"
)

// lostStateRotation deletes the CA's state Secret under a running mesh and follows what
// happens, checking at every phase that every valid workload certificate verifies against
// every trust bundle in play and that certificates of the old and the new root complete
// mTLS handshakes with each other.
func lostStateRotation(ctx context.Context, probe *meshProbe) {
	before := caStatusOf(ctx, Default)
	Expect(before.Phase).NotTo(BeElementOf(inProgress()), "the spec starts with no rotation under way")
	oldRoots, oldSigner := cacertsOf(ctx, Default)
	Expect(oldRoots).To(HaveLen(1))
	oldRoot := oldRoots[0]
	probe.check(ctx, before.Phase, "before the state is lost", nil)
	rec := recordCACerts(ctx)
	defer rec.stop()

	// Switching lasts one write; hold it, as the rotation spec does, to check the mesh in it.
	release := holdIntermediateSwitch(ctx)
	defer release()

	state := &corev1.Secret{}
	Expect(k8s.Get(ctx, client.ObjectKey{Namespace: istioNS, Name: controllers.CAStateSecret}, state)).To(Succeed())
	lostAt := time.Now()
	Expect(k8s.Delete(ctx, state, client.Preconditions{UID: &state.UID})).To(Succeed())

	By("the operator says the state is lost, and istiod goes on signing with the same CA")
	Eventually(ctx, func(g Gomega) {
		c := caCondition(ctx, g, meshv1.ConditionCAReady)
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(Equal(meshv1.ReasonCAStateLost))
		g.Expect(c.Message).To(ContainSubstring("secret " + istioNS + "/" + controllers.CAStateSecret))
	}).Should(Succeed())
	Eventually(ctx, func(g Gomega) []string { return caWarnings(ctx, g) }).Should(ContainElement(
		And(HavePrefix(ca.EventStateLost+": secret "+istioNS+"/"+controllers.CAStateSecret), ContainSubstring("a root rotation moves the mesh to a new root"))))
	probe.check(ctx, caStatusOf(ctx, Default).Phase, "state lost", func(s snapshot) {
		Expect(s.signer.Equal(oldSigner)).To(BeTrue(), "istiod signs with the intermediate it had")
		Expect(s.cacertsRoots).To(ContainElement(oldRoot), "cacerts still trusts the root every workload holds")
		for _, c := range s.issued {
			Expect(signedBy(c, oldSigner)).To(BeTrue(), "istiod issues under the intermediate it had")
		}
	})

	By("a rotation to a new root follows, every phase checked")
	var newRoot *x509.Certificate
	// untilSwitching is how long after the loss the rotation was seen past Trusting.
	var untilSwitching time.Duration
	seen := probe.follow(ctx, before.Phase, []string{string(ca.PhaseDone)}, func(phase string) {
		if phase == string(ca.PhaseSwitching) {
			untilSwitching = time.Since(lostAt)
		}
		switch ca.Phase(phase) {
		case ca.PhaseIdle:
			// the recovered state, at rest for the instant before its rotation starts
			probe.check(ctx, phase, "recovered", nil)
		case ca.PhaseTrusting, ca.PhaseSwitching:
			probe.check(ctx, phase, "", func(s snapshot) {
				Expect(s.newRoots(oldRoots)).To(HaveLen(1))
				newRoot = s.newRoots(oldRoots)[0]
				Expect(s.cacertsRoots).To(haveRoots([]*x509.Certificate{oldRoot, newRoot}), "both roots are trusted")
				Expect(s.signer.Equal(oldSigner)).To(BeTrue(), "the old intermediate still signs in %s", phase)
			})
			if phase == string(ca.PhaseSwitching) {
				release()
			}
		case ca.PhaseSoaking:
			probe.check(ctx, phase, "", func(s snapshot) {
				Expect(s.cacertsRoots).To(haveRoots([]*x509.Certificate{oldRoot, newRoot}))
				Expect(chainsTo(s.signer, newRoot)).To(BeTrue(), "the new intermediate signs in Soaking")
			})
			fresh := probe.awaitSigner(ctx, phase, newRoot)
			old := probe.liveUnder(oldRoot)
			Expect(old).NotTo(BeEmpty(), "a certificate of the old root is still valid, so the handshakes cross roots")
			Expect(signedBy(old[0], oldSigner)).To(BeTrue())
			for _, pair := range [][2]*issuedCert{{fresh, old[0]}, {old[0], fresh}} {
				both := harness.CertPool(oldRoot, newRoot)
				Expect(harness.Handshake(ctx, pair[0].TLS, pair[1].TLS, both, both)).To(Succeed(),
					"a sidecar with a certificate from before the loss and one with a certificate under the new root")
			}
		case ca.PhaseFinalizing, ca.PhaseDone:
			probe.check(ctx, phase, "", func(s snapshot) {
				Expect(s.cacertsRoots).To(haveRoots([]*x509.Certificate{newRoot}), "only the new root is trusted from %s on", phase)
			})
		default:
			Fail("unexpected phase " + phase)
		}
	})
	Expect(slices.DeleteFunc(seen, func(p string) bool { return p == string(ca.PhaseIdle) })).
		To(Equal([]string{"Trusting", "Switching", "Soaking", "Finalizing", "Done"}), "status.ca.phase went through every phase of a rotation")
	// What ends Trusting is istiod publishing both roots, which reaches the operator as a
	// watch event of istio-ca-root-cert: without it, the operator would look again only at
	// its backstop poll, a minute after it wrote cacerts.
	fmt.Fprintf(GinkgoWriter, "from the loss to Switching: %s\n", untilSwitching.Round(time.Millisecond))
	Expect(untilSwitching).To(BeNumerically("<", 40*time.Second), "Trusting ends when istiod publishes, not at the next poll")

	By("cacerts was never given a new root in place of the old one")
	versions := rec.versions()
	Expect(versions).NotTo(BeEmpty())
	roots := map[string]bool{}
	prev := cacertsVersion{roots: ca.Fingerprints(oldRoots), signer: ca.Fingerprint(oldSigner)}
	for i, v := range versions {
		superset := !slices.ContainsFunc(prev.roots, func(fp string) bool { return !slices.Contains(v.roots, fp) })
		subset := !slices.ContainsFunc(v.roots, func(fp string) bool { return !slices.Contains(prev.roots, fp) })
		Expect(superset || subset).To(BeTrue(), "cacerts version %d swapped roots %v for %v", i+1, prev.roots, v.roots)
		if v.signer != prev.signer {
			Expect(prev.roots).To(ContainElement(v.issuer), "cacerts version %d signs under a root the version before did not trust", i+1)
		}
		for _, fp := range v.roots {
			roots[fp] = true
		}
		prev = v
	}
	Expect(roots).To(HaveLen(2), "one new root for the whole recovery")
	Expect(versions[0].signer).To(Equal(ca.Fingerprint(oldSigner)), "the first write after the loss keeps the intermediate")

	Eventually(ctx, func(g Gomega) {
		c := caCondition(ctx, g, meshv1.ConditionCAReady)
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "CAReady: %s: %s", c.Reason, c.Message)
	}).Should(Succeed(), "the CA is ready once the mesh is on a root Capstan holds the key of")
	Expect(caStatusOf(ctx, Default).RotationReason).To(Equal(ca.RotationStateLost))
	Eventually(ctx, func(g Gomega) {
		g.Expect(publishedRoots(ctx, g)).To(haveRoots([]*x509.Certificate{newRoot}))
	}).Should(Succeed(), "istiod publishes the new root alone")
}

func inProgress() []string {
	var out []string
	for _, p := range []ca.Phase{ca.PhaseTrusting, ca.PhaseSwitching, ca.PhaseSoaking, ca.PhaseFinalizing, ca.PhaseRollingBack} {
		out = append(out, string(p))
	}
	return out
}

func caCondition(ctx context.Context, g Gomega, typ string) metav1.Condition {
	m := &meshv1.MeshControlPlane{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	for _, c := range m.Status.Conditions {
		if c.Type == typ {
			return c
		}
	}
	g.Expect(typ).To(BeEmpty(), "condition %s is not set", typ)
	return metav1.Condition{}
}

// caWarnings are the notes of the CA's Warning Events on the MeshControlPlane, "Reason: note".
func caWarnings(ctx context.Context, g Gomega) []string {
	m := &meshv1.MeshControlPlane{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	evs := &eventsv1.EventList{}
	g.Expect(k8s.List(ctx, evs)).To(Succeed())
	var out []string
	for _, e := range evs.Items {
		if e.Type == corev1.EventTypeWarning && e.Regarding.UID == m.UID {
			out = append(out, e.Reason+": "+e.Note)
		}
	}
	return out
}

// cacertsVersion is what one version of the cacerts Secret trusted and signed with.
type cacertsVersion struct {
	roots []string
	// signer is the fingerprint of ca-cert.pem, issuer that of the root in the chain that
	// signed it.
	signer, issuer string
}

// cacertsRecorder watches istiod's cacerts Secret and records every version written.
type cacertsRecorder struct {
	mu     sync.Mutex
	seen   []cacertsVersion
	err    error
	cancel context.CancelFunc
	done   <-chan struct{}
}

func recordCACerts(ctx context.Context) *cacertsRecorder {
	GinkgoHelper()
	sec, err := cluster.Clientset.CoreV1().Secrets(istioNS).Get(ctx, controllers.CACertsSecret, metav1.GetOptions{})
	Expect(err).NotTo(HaveOccurred())
	r := &cacertsRecorder{}
	r.cancel, r.done = watchSecretChanges(ctx, controllers.CACertsSecret, sec.ResourceVersion, r.record, r.fail)
	return r
}

func (r *cacertsRecorder) record(sec *corev1.Secret) {
	roots, err := ca.ParseBundle(sec.Data[ca.IstioKeys.Roots])
	var v cacertsVersion
	if err == nil {
		var m *ca.Material
		if m, err = ca.ParseSecretData(sec.Data); err == nil {
			v = cacertsVersion{roots: ca.Fingerprints(roots), signer: ca.Fingerprint(m.Intermediate.Cert)}
			for _, root := range roots {
				if chainsTo(m.Intermediate.Cert, root) {
					v.issuer = ca.Fingerprint(root)
				}
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.err = errors.Join(r.err, err)
		return
	}
	r.seen = append(r.seen, v)
}

func (r *cacertsRecorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = errors.Join(r.err, err)
}

func (r *cacertsRecorder) versions() []cacertsVersion {
	GinkgoHelper()
	r.mu.Lock()
	defer r.mu.Unlock()
	Expect(r.err).NotTo(HaveOccurred())
	return slices.Clone(r.seen)
}

func (r *cacertsRecorder) stop() {
	r.cancel()
	<-r.done
}

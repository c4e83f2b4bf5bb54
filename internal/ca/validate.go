package ca

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// Code classifies a MaterialError, for condition reasons and for tests.
type Code string

const (
	// CodeSecretMissing: the Secret itself does not exist.
	CodeSecretMissing Code = "SecretMissing"
	// CodeKeyMissing: a required key is absent or empty.
	CodeKeyMissing Code = "KeyMissing"
	// CodeMalformed: a value is not the PEM it should be.
	CodeMalformed Code = "Malformed"
	// CodeUnsupportedKey: a key type or size istiod and Envoy should not be given.
	CodeUnsupportedKey Code = "UnsupportedKey"
	// CodeKeyMismatch: the private key is not the key of the CA certificate.
	CodeKeyMismatch Code = "KeyMismatch"
	// CodeNotCA: a certificate lacks basicConstraints CA:TRUE.
	CodeNotCA Code = "NotCA"
	// CodeNoCertSign: a CA certificate's key usage does not allow signing certificates.
	CodeNoCertSign Code = "NoCertSign"
	// CodeNotRoot: a certificate in the trust bundle is not self-signed. Go would trust it,
	// but Envoy needs every chain to end at a self-signed root.
	CodeNotRoot Code = "NotRoot"
	// CodeChainBroken: the chain does not start at the CA certificate or a link is not
	// signed by the next certificate.
	CodeChainBroken Code = "ChainBroken"
	// CodeUntrusted: no root in the trust bundle signed the top of the chain.
	CodeUntrusted Code = "Untrusted"
	// CodeNotYetValid: a certificate's NotBefore is after now.
	CodeNotYetValid Code = "NotYetValid"
	// CodeExpired: a certificate's NotAfter is before now.
	CodeExpired Code = "Expired"
	// CodeExpiringSoon: a certificate expires before a workload certificate issued now would.
	CodeExpiringSoon Code = "ExpiringSoon"
	// CodeRejected: a workload certificate signed with this material would not verify for
	// another reason (path length, name or usage constraints, weak signature algorithm).
	CodeRejected Code = "Rejected"
)

// MaterialError is a problem with CA material, tied to the Secret key the user must fix.
// Its text never contains key material.
type MaterialError struct {
	// Secret is "namespace/name" of the Secret, when the caller knows it.
	Secret string
	// Key is the Secret key at fault, such as "ca-key.pem"; empty when the Secret is missing.
	Key string
	// Code classifies the problem.
	Code Code
	// Reason says what is wrong.
	Reason string
	// Fix says what to do about it.
	Fix string
}

// Error reads "secret ns/name: key: reason; fix", leaving out the parts that are empty.
func (e *MaterialError) Error() string {
	s := ""
	if e.Secret != "" {
		s = "secret " + e.Secret + ": "
	}
	if e.Key != "" {
		s += e.Key + ": "
	}
	s += e.Reason
	if e.Fix != "" {
		s += "; " + e.Fix
	}
	return s
}

// SecretMissing is the error for a CA Secret that does not exist; secret is "namespace/name".
func SecretMissing(secret string) *MaterialError {
	return &MaterialError{Secret: secret, Code: CodeSecretMissing, Reason: "not found",
		Fix: "create it with ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem (or tls.crt, tls.key and ca.crt)"}
}

// ValidateOptions are the facts Validate checks material against.
type ValidateOptions struct {
	// Now is the current time, from the caller's clock. Required.
	Now time.Time
	// WorkloadCertTTL is the lifetime istiod gives workload certificates; zero means
	// DefaultWorkloadCertTTL. Every CA certificate must outlive Now+WorkloadCertTTL.
	WorkloadCertTTL time.Duration
	// TrustDomain is the mesh's SPIFFE trust domain; empty means DefaultTrustDomain. A
	// workload certificate in this trust domain must verify, so CA name constraints that
	// exclude it are caught.
	TrustDomain string
}

// Validate reports whether istiod can sign workload certificates with m that every workload
// trusting m.Roots accepts, as a *MaterialError naming the Secret key at fault (in m.Keys).
// Checks run in this order, and the first failure is returned: keys present; key types
// supported; the private key matches ca-cert.pem; every certificate a CA allowed to sign
// certificates; every root self-signed; cert-chain.pem starts at ca-cert.pem and each link
// is signed by the next; a root in root-cert.pem signed the top of the chain; validity at Now
// and for a whole WorkloadCertTTL after it; and last, a probe workload certificate (SPIFFE
// URI SAN in TrustDomain, server and client auth) signed with the key verifies against the
// roots at Now, as a peer would check it.
func Validate(m *Material, opts ValidateOptions) error {
	if opts.Now.IsZero() {
		return errors.New("validate: Now is required")
	}
	if m == nil {
		return missingKey(IstioKeys.Cert, "")
	}
	k := m.Keys
	if k == (KeyNames{}) {
		k = IstioKeys
	}
	ttl := orDuration(opts.WorkloadCertTTL, DefaultWorkloadCertTTL)
	trustDomain := opts.TrustDomain
	if trustDomain == "" {
		trustDomain = DefaultTrustDomain
	}

	// Presence.
	switch {
	case m.Intermediate == nil || m.Intermediate.Cert == nil:
		return missingKey(k.Cert, "")
	case m.Intermediate.Key == nil:
		return missingKey(k.Key, "")
	case len(m.Chain) == 0:
		return missingKey(k.Chain, "")
	case len(m.Roots) == 0:
		return missingKey(k.Roots, "")
	}
	for _, c := range m.Chain {
		if c == nil {
			return &MaterialError{Key: k.Chain, Code: CodeMalformed, Reason: "holds an empty certificate entry", Fix: "rebuild " + k.Chain}
		}
	}
	for _, c := range m.Roots {
		if c == nil {
			return &MaterialError{Key: k.Roots, Code: CodeMalformed, Reason: "holds an empty certificate entry", Fix: "rebuild " + k.Roots}
		}
	}
	ic, key := m.Intermediate.Cert, m.Intermediate.Key

	// Key types, then the key against the certificate.
	if r := checkPublicKey(ic.PublicKey); r != "" {
		return &MaterialError{Key: k.Cert, Code: CodeUnsupportedKey, Reason: "the certificate " + describeCert(ic) + ": " + r, Fix: reissueFix}
	}
	if r := checkPublicKey(key.Public()); r != "" {
		return &MaterialError{Key: k.Key, Code: CodeUnsupportedKey, Reason: r, Fix: reissueFix}
	}
	if !publicKeysEqual(ic.PublicKey, key.Public()) {
		return &MaterialError{Key: k.Key, Code: CodeKeyMismatch,
			Reason: "the private key does not match the certificate in " + k.Cert,
			Fix:    "store the key that " + k.Cert + " was issued for, or both of a new pair"}
	}

	// CA constraints on every certificate.
	if err := checkCA(ic, k.Cert, "the certificate"); err != nil {
		return err
	}
	for i, c := range m.Chain[1:] {
		what := fmt.Sprintf("certificate %d of the chain", i+2)
		if r := checkPublicKey(c.PublicKey); r != "" {
			return &MaterialError{Key: k.Chain, Code: CodeUnsupportedKey, Reason: what + " " + describeCert(c) + ": " + r, Fix: reissueFix}
		}
		if err := checkCA(c, k.Chain, what); err != nil {
			return err
		}
	}
	for i, c := range m.Roots {
		what := fmt.Sprintf("root %d", i+1)
		if r := checkPublicKey(c.PublicKey); r != "" {
			return &MaterialError{Key: k.Roots, Code: CodeUnsupportedKey, Reason: what + " " + describeCert(c) + ": " + r, Fix: reissueFix}
		}
		if err := checkCA(c, k.Roots, what); err != nil {
			return err
		}
		if !selfSigned(c) {
			return &MaterialError{Key: k.Roots, Code: CodeNotRoot,
				Reason: fmt.Sprintf("%s %s is not self-signed: it was issued by %q", what, describeCert(c), c.Issuer.String()),
				Fix:    "put only root certificates in " + k.Roots + "; intermediates belong in " + k.Chain}
		}
	}

	// The chain, link by link, then its anchor in the trust bundle.
	if !m.Chain[0].Equal(ic) {
		return &MaterialError{Key: k.Chain, Code: CodeChainBroken,
			Reason: fmt.Sprintf("starts with %s instead of the certificate in %s", describeCert(m.Chain[0]), k.Cert),
			Fix:    "build it as the " + k.Cert + " certificate followed by its issuers up to the root"}
	}
	for i := 0; i+1 < len(m.Chain); i++ {
		if err := m.Chain[i].CheckSignatureFrom(m.Chain[i+1]); err != nil {
			return &MaterialError{Key: k.Chain, Code: CodeChainBroken,
				Reason: fmt.Sprintf("certificate %d %s is not signed by certificate %d %s: %v", i+1, describeCert(m.Chain[i]), i+2, describeCert(m.Chain[i+1]), err),
				Fix:    "put each certificate's issuer right after it"}
		}
	}
	top := m.Chain[len(m.Chain)-1]
	var anchors []*x509.Certificate
	for _, r := range m.Roots {
		if r.Equal(top) || top.CheckSignatureFrom(r) == nil {
			anchors = append(anchors, r)
		}
	}
	if len(anchors) == 0 {
		return &MaterialError{Key: k.Roots, Code: CodeUntrusted,
			Reason: fmt.Sprintf("no root here signed the top of the chain, %s, issued by %q", describeCert(top), top.Issuer.String()),
			Fix:    "add the root that issued the chain to " + k.Roots}
	}

	// Validity now and for one workload certificate lifetime.
	if err := checkTime(ic, k.Cert, "the certificate", opts.Now, ttl); err != nil {
		return err
	}
	for i, c := range m.Chain[1:] {
		if isAnchor(c, anchors) {
			continue // a root at the end of the chain is checked, and blamed, as a root
		}
		if err := checkTime(c, k.Chain, fmt.Sprintf("certificate %d of the chain", i+2), opts.Now, ttl); err != nil {
			return err
		}
	}
	var rootErr error
	for _, r := range anchors {
		if rootErr = checkTime(r, k.Roots, "the root", opts.Now, ttl); rootErr == nil {
			break
		}
	}
	if rootErr != nil {
		return rootErr
	}

	// End to end: what a workload would check.
	return probe(m, k, opts.Now, ttl, trustDomain)
}

// reissueFix is the advice for a certificate or key of the wrong type.
const reissueFix = "use an ECDSA P-256 or P-384 key, or RSA of 2048 bits or more"

func checkCA(c *x509.Certificate, key, what string) error {
	if !c.BasicConstraintsValid || !c.IsCA {
		return &MaterialError{Key: key, Code: CodeNotCA,
			Reason: fmt.Sprintf("%s %s is not a CA (basicConstraints CA:TRUE is missing)", what, describeCert(c)),
			Fix:    "use a CA certificate; a workload or server certificate cannot sign others"}
	}
	// An absent keyUsage extension parses as 0 and allows every use (RFC 5280, 4.2.1.3).
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return &MaterialError{Key: key, Code: CodeNoCertSign,
			Reason: fmt.Sprintf("%s %s has a key usage without certificate signing (keyCertSign)", what, describeCert(c)),
			Fix:    "reissue it with key usage keyCertSign and cRLSign"}
	}
	return nil
}

func checkTime(c *x509.Certificate, key, what string, now time.Time, ttl time.Duration) error {
	switch {
	case now.Before(c.NotBefore):
		return &MaterialError{Key: key, Code: CodeNotYetValid,
			Reason: fmt.Sprintf("%s %s is not valid until %s", what, describeCert(c), c.NotBefore.UTC().Format(time.RFC3339)),
			Fix:    "check the clocks of the issuing machine and the cluster, or wait"}
	case now.After(c.NotAfter):
		return &MaterialError{Key: key, Code: CodeExpired,
			Reason: fmt.Sprintf("%s %s expired", what, describeCert(c)),
			Fix:    "renew it"}
	case now.Add(ttl).After(c.NotAfter):
		return &MaterialError{Key: key, Code: CodeExpiringSoon,
			Reason: fmt.Sprintf("%s %s expires within the workload certificate TTL (%s)", what, describeCert(c), ttl),
			Fix:    "renew it; workload certificates issued now would outlive it"}
	}
	return nil
}

func isAnchor(c *x509.Certificate, anchors []*x509.Certificate) bool {
	for _, a := range anchors {
		if a.Equal(c) {
			return true
		}
	}
	return false
}

// probe signs a workload certificate as istiod would (SPIFFE URI SAN, server and client
// auth) and verifies it against the roots at now, as a peer would.
func probe(m *Material, k KeyNames, now time.Time, ttl time.Duration, trustDomain string) error {
	ic := m.Intermediate.Cert
	spiffe := &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/ns/capstan-probe/sa/probe"}
	tmpl := &x509.Certificate{
		SerialNumber: newSerialOrOne(),
		Subject:      pkix.Name{},
		URIs:         []*url.URL{spiffe},
		NotBefore:    now.Add(-Backdate),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	// The probe certifies the intermediate's own public key: any key will do, and this one
	// costs no key generation.
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ic, ic.PublicKey, m.Intermediate.Key)
	if err != nil {
		return &MaterialError{Key: k.Key, Code: CodeRejected,
			Reason: "cannot sign a workload certificate with the private key: " + err.Error(),
			Fix:    "store a software ECDSA or RSA key"}
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return &MaterialError{Key: k.Cert, Code: CodeRejected, Reason: "a workload certificate signed with it does not parse: " + err.Error(), Fix: reissueFix}
	}
	roots := x509.NewCertPool()
	for _, r := range m.Roots {
		roots.AddCert(r)
	}
	inters := x509.NewCertPool()
	for _, c := range m.Chain {
		inters.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
		if err == nil {
			continue
		}
		key := k.Chain
		var invalid x509.CertificateInvalidError
		if errors.As(err, &invalid) && invalid.Cert != nil {
			switch {
			case invalid.Cert.Equal(ic), invalid.Cert.Equal(leaf):
				// A fault found at the probe itself comes from a constraint of its issuer.
				key = k.Cert
			case isAnchor(invalid.Cert, m.Roots):
				key = k.Roots
			}
		}
		return &MaterialError{Key: key, Code: CodeRejected,
			Reason: fmt.Sprintf("a workload certificate for %s signed with this material does not verify: %v", spiffe, err),
			Fix:    "reissue the CA without constraints that forbid SPIFFE workload certificates"}
	}
	return nil
}

func newSerialOrOne() *big.Int {
	n, err := newSerial(nil)
	if err != nil {
		return big.NewInt(1)
	}
	return n
}

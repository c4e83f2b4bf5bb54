package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"time"
)

const (
	// DefaultTrustDomain is Istio's default SPIFFE trust domain.
	DefaultTrustDomain = "cluster.local"
	// DefaultRootTTL is the lifetime of a generated root: ten years.
	DefaultRootTTL = 87600 * time.Hour
	// DefaultIntermediateTTL is the lifetime of a generated intermediate: one year.
	DefaultIntermediateTTL = 8760 * time.Hour
	// DefaultWorkloadCertTTL is the lifetime istiod gives workload certificates. Material
	// that expires sooner than this cannot issue a certificate that lives its full term.
	DefaultWorkloadCertTTL = 24 * time.Hour

	// DefaultRootCommonName is the subject common name of a generated root.
	DefaultRootCommonName = "Capstan Root CA"
	// DefaultIntermediateCommonName is the subject common name of a generated intermediate.
	DefaultIntermediateCommonName = "Capstan Intermediate CA"

	// Backdate is how far before Now a generated certificate becomes valid, so that a node
	// whose clock runs a little behind the operator's still accepts it.
	Backdate = 5 * time.Minute
)

// KeyPair is a CA certificate with its private key: a root, or the intermediate istiod signs
// workload certificates with. Its String, GoString, JSON and log forms name the certificate
// and never include the key.
type KeyPair struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// CertPEM is the certificate as one "CERTIFICATE" PEM block.
func (k *KeyPair) CertPEM() []byte {
	return certPEM(k.Cert)
}

// KeyPEM is the private key as one PKCS#8 "PRIVATE KEY" PEM block. It fails only for a key
// type crypto/x509 cannot encode (such as a hardware-backed signer).
func (k *KeyPair) KeyPEM() ([]byte, error) {
	return marshalKeyPEM(k.Key)
}

// Fingerprint is the certificate's SHA-256 fingerprint; see Fingerprint.
func (k *KeyPair) Fingerprint() string {
	return Fingerprint(k.Cert)
}

// String describes the certificate (subject, fingerprint, expiry) without the key.
func (k KeyPair) String() string {
	return describeCert(k.Cert)
}

// GoString keeps %#v from printing the private key.
func (k KeyPair) GoString() string {
	return "ca.KeyPair{" + describeCert(k.Cert) + "}"
}

// MarshalJSON keeps json.Marshal (and loggers that use it) from printing the private key.
func (k KeyPair) MarshalJSON() ([]byte, error) {
	return json.Marshal(k.summary())
}

// LogValue keeps log/slog from printing the private key.
func (k KeyPair) LogValue() slog.Value {
	s := k.summary()
	return slog.GroupValue(slog.String("subject", s.Subject), slog.String("fingerprint", s.Fingerprint), slog.Time("notAfter", s.NotAfter))
}

// MarshalLog keeps logr (through its logr.Marshaler interface) from printing the private key.
func (k KeyPair) MarshalLog() any {
	return k.summary()
}

// certSummary is what the printable forms of KeyPair show.
type certSummary struct {
	Subject     string    `json:"subject"`
	Fingerprint string    `json:"fingerprint"`
	NotAfter    time.Time `json:"notAfter"`
}

func (k KeyPair) summary() certSummary {
	if k.Cert == nil {
		return certSummary{}
	}
	return certSummary{Subject: k.Cert.Subject.String(), Fingerprint: Fingerprint(k.Cert), NotAfter: k.Cert.NotAfter}
}

// Fingerprint is the SHA-256 of a certificate's DER as 64 lowercase hex digits, without
// colons: the form `sha256sum` prints, and what status.ca.rootFingerprints holds. It equals
// `openssl x509 -noout -fingerprint -sha256` with the colons removed, lowercased.
func Fingerprint(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Options say how to make a CA certificate, a root or an intermediate.
type Options struct {
	// Algorithm of the generated key; empty means DefaultKeyAlgorithm. Ignored when Key is set.
	Algorithm KeyAlgorithm
	// Key, when set, is used instead of a new key: renewing a root with its old key keeps
	// every intermediate it signed valid under the renewed certificate.
	Key crypto.Signer
	// TrustDomain is the mesh's SPIFFE trust domain, written as the subject's organization;
	// empty means DefaultTrustDomain.
	TrustDomain string
	// CommonName of the subject; empty means DefaultRootCommonName or
	// DefaultIntermediateCommonName.
	CommonName string
	// TTL is the lifetime from Now; zero means DefaultRootTTL or DefaultIntermediateTTL. An
	// intermediate never outlives its parent: its NotAfter is clamped to the parent's.
	TTL time.Duration
	// Now is the current time, from the caller's clock. Required.
	Now time.Time
	// Rand is the source of serial numbers; nil means crypto/rand.
	Rand io.Reader
}

// RootOptions say how to make a self-signed root.
type RootOptions = Options

// IntermediateOptions say how to make an intermediate signed by a root.
type IntermediateOptions = Options

// material checks opts and returns the lifetime, key and serial number of a new CA
// certificate; what names it in errors.
func (opts Options) material(what string, defaultTTL time.Duration) (time.Duration, crypto.Signer, *big.Int, error) {
	if opts.Now.IsZero() {
		return 0, nil, nil, fmt.Errorf("new %s: Now is required", what)
	}
	ttl := orDuration(opts.TTL, defaultTTL)
	if ttl < 0 {
		return 0, nil, nil, fmt.Errorf("new %s: TTL %s is negative", what, ttl)
	}
	key, err := keyFor(opts.Key, opts.Algorithm)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("new %s: %w", what, err)
	}
	serial, err := newSerial(opts.Rand)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("new %s: %w", what, err)
	}
	return ttl, key, serial, nil
}

// NewRoot makes a self-signed root CA. It may sign intermediates, which may sign only
// workload certificates (path length 1), and its key usage is certificate and CRL signing.
func NewRoot(opts RootOptions) (*KeyPair, error) {
	ttl, key, serial, err := opts.material("root", DefaultRootTTL)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject(opts.CommonName, DefaultRootCommonName, opts.TrustDomain),
		NotBefore:             opts.Now.Add(-Backdate).UTC().Truncate(time.Second),
		NotAfter:              opts.Now.Add(ttl).UTC().Truncate(time.Second),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	return sign(tmpl, tmpl, key.Public(), key, key)
}

// NewIntermediate makes a CA signed by parent, for istiod to sign workload certificates with.
// It may sign only end-entity certificates (MaxPathLen 0) and never outlives parent.
func NewIntermediate(parent *KeyPair, opts IntermediateOptions) (*KeyPair, error) {
	if parent == nil || parent.Cert == nil || parent.Key == nil {
		return nil, errors.New("new intermediate: the parent needs both a certificate and a key")
	}
	if opts.Now.IsZero() {
		return nil, errors.New("new intermediate: Now is required")
	}
	p := parent.Cert
	if !p.BasicConstraintsValid || !p.IsCA {
		return nil, fmt.Errorf("new intermediate: the parent %s is not a CA", describeCert(p))
	}
	if p.MaxPathLen == 0 && p.MaxPathLenZero {
		return nil, fmt.Errorf("new intermediate: the parent %s may not sign another CA (path length 0)", describeCert(p))
	}
	if !publicKeysEqual(p.PublicKey, parent.Key.Public()) {
		return nil, fmt.Errorf("new intermediate: the parent's key does not match its certificate %s", describeCert(p))
	}
	if !opts.Now.Before(p.NotAfter) {
		return nil, fmt.Errorf("new intermediate: the parent %s expired at %s", describeCert(p), p.NotAfter.UTC().Format(time.RFC3339))
	}
	if opts.Now.Before(p.NotBefore) {
		return nil, fmt.Errorf("new intermediate: the parent %s is not valid until %s", describeCert(p), p.NotBefore.UTC().Format(time.RFC3339))
	}
	ttl, key, serial, err := opts.material("intermediate", DefaultIntermediateTTL)
	if err != nil {
		return nil, err
	}
	notBefore := opts.Now.Add(-Backdate).UTC().Truncate(time.Second)
	if notBefore.Before(p.NotBefore) {
		notBefore = p.NotBefore
	}
	notAfter := opts.Now.Add(ttl).UTC().Truncate(time.Second)
	if notAfter.After(p.NotAfter) {
		notAfter = p.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject(opts.CommonName, DefaultIntermediateCommonName, opts.TrustDomain),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	return sign(tmpl, p, key.Public(), parent.Key, key)
}

// sign issues tmpl for pub, signed by signer as parent, and pairs it with key.
func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer, key crypto.Signer) (*KeyPair, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse the new %s: %w", tmpl.Subject.CommonName, err)
	}
	return &KeyPair{Cert: cert, Key: key}, nil
}

// keyFor returns key, or a new key of alg when key is nil.
func keyFor(key crypto.Signer, alg KeyAlgorithm) (crypto.Signer, error) {
	if key != nil {
		if reason := checkPublicKey(key.Public()); reason != "" {
			return nil, errors.New(reason + "; " + reissueFix)
		}
		return key, nil
	}
	if alg == "" {
		alg = DefaultKeyAlgorithm
	}
	return GenerateKey(alg)
}

// newSerial is a random positive 127-bit serial number (RFC 5280 allows up to 20 octets).
func newSerial(r io.Reader) (*big.Int, error) {
	if r == nil {
		r = rand.Reader
	}
	b := make([]byte, 16)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("read a serial number: %w", err)
	}
	b[0] &= 0x7f
	n := new(big.Int).SetBytes(b)
	if n.Sign() == 0 {
		n.SetInt64(1)
	}
	return n, nil
}

func subject(cn, defaultCN, trustDomain string) pkix.Name {
	if cn == "" {
		cn = defaultCN
	}
	if trustDomain == "" {
		trustDomain = DefaultTrustDomain
	}
	return pkix.Name{CommonName: cn, Organization: []string{trustDomain}}
}

func orDuration(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func certPEM(cert *x509.Certificate) []byte {
	if cert == nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// describeCert names a certificate for messages: subject, short fingerprint, expiry.
func describeCert(cert *x509.Certificate) string {
	if cert == nil {
		return "<no certificate>"
	}
	return fmt.Sprintf("%q (sha256 %s, expires %s)", cert.Subject.String(), Fingerprint(cert)[:16], cert.NotAfter.UTC().Format(time.RFC3339))
}

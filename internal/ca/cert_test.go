package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"testing"
	"time"
)

func TestGenerateKey(t *testing.T) {
	tests := map[string]struct {
		alg       KeyAlgorithm
		wantCurve elliptic.Curve
		wantBits  int
		wantErr   bool
	}{
		"ECDSAP256 is a P-256 key":                  {alg: ECDSAP256, wantCurve: elliptic.P256()},
		"ECDSAP384 is a P-384 key":                  {alg: ECDSAP384, wantCurve: elliptic.P384()},
		"RSA3072 is 3072 bits":                      {alg: RSA3072, wantBits: 3072},
		"RSA4096 is 4096 bits":                      {alg: RSA4096, wantBits: 4096},
		"an empty name is refused":                  {alg: "", wantErr: true},
		"an unknown name is refused, with the enum": {alg: "Ed25519", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.wantErr {
				_, err := GenerateKey(tc.alg)
				if err == nil || !regexp.MustCompile(`ECDSAP256, ECDSAP384, RSA3072, RSA4096`).MatchString(err.Error()) {
					t.Fatalf("got %v, want an error listing the algorithms", err)
				}
				return
			}
			k := cachedKey(t, tc.alg)
			switch pub := k.Public().(type) {
			case *ecdsa.PublicKey:
				if pub.Curve != tc.wantCurve {
					t.Errorf("curve %s, want %s", pub.Curve.Params().Name, tc.wantCurve.Params().Name)
				}
			case *rsa.PublicKey:
				if pub.N.BitLen() != tc.wantBits {
					t.Errorf("%d bits, want %d", pub.N.BitLen(), tc.wantBits)
				}
			default:
				t.Fatalf("unexpected key type %T", pub)
			}
			if got, err := AlgorithmOf(k.Public()); err != nil || got != tc.alg {
				t.Errorf("AlgorithmOf = %q, %v; want %q", got, err, tc.alg)
			}
		})
	}
}

// TestRootAndIntermediateIssueVerifiableWorkloadCerts protects the whole point of the CA: a
// workload certificate signed by the intermediate verifies against the root for both mTLS
// directions, for every algorithm and for a root and intermediate of different algorithms.
func TestRootAndIntermediateIssueVerifiableWorkloadCerts(t *testing.T) {
	tests := map[string]struct {
		root, intermediate KeyAlgorithm
		wantSigAlg         x509.SignatureAlgorithm
	}{
		"ECDSAP256":                 {root: ECDSAP256, intermediate: ECDSAP256, wantSigAlg: x509.ECDSAWithSHA256},
		"ECDSAP384":                 {root: ECDSAP384, intermediate: ECDSAP384, wantSigAlg: x509.ECDSAWithSHA384},
		"RSA3072":                   {root: RSA3072, intermediate: RSA3072, wantSigAlg: x509.SHA256WithRSA},
		"RSA4096":                   {root: RSA4096, intermediate: RSA4096, wantSigAlg: x509.SHA256WithRSA},
		"RSA4096 root, P-256 below": {root: RSA4096, intermediate: ECDSAP256, wantSigAlg: x509.SHA256WithRSA},
		"P-384 root, RSA3072 below": {root: ECDSAP384, intermediate: RSA3072, wantSigAlg: x509.ECDSAWithSHA384},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			root := mustRoot(t, RootOptions{Key: cachedKey(t, tc.root), TrustDomain: "example.org"})
			inter := mustIntermediate(t, root, IntermediateOptions{Key: cachedKey(t, tc.intermediate), TrustDomain: "example.org"})
			if inter.Cert.SignatureAlgorithm != tc.wantSigAlg {
				t.Errorf("intermediate signed with %s, want %s", inter.Cert.SignatureAlgorithm, tc.wantSigAlg)
			}

			leaf := issue(t, &x509.Certificate{
				URIs:        []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/default/sa/x"}},
				NotBefore:   now.Add(-time.Minute),
				NotAfter:    now.Add(DefaultWorkloadCertTTL),
				KeyUsage:    x509.KeyUsageDigitalSignature,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
			}, inter, ecKey(t))
			roots, inters := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(root.Cert)
			inters.AddCert(inter.Cert)
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				chains, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
				if err != nil {
					t.Fatalf("leaf does not verify for %v: %v", usage, err)
				}
				if len(chains[0]) != 3 {
					t.Errorf("chain of %d, want leaf, intermediate, root", len(chains[0]))
				}
			}

			m := &Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert, root.Cert}, Roots: []*x509.Certificate{root.Cert}}
			if err := Validate(m, ValidateOptions{Now: now, TrustDomain: "cluster.local"}); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

// TestCAConstraints protects the extensions istiod and Envoy rely on, and the limits that
// keep a leaked intermediate from minting further CAs.
func TestCAConstraints(t *testing.T) {
	root := mustRoot(t, RootOptions{TrustDomain: "mesh.example", TTL: 1000 * time.Hour})
	inter := mustIntermediate(t, root, IntermediateOptions{TrustDomain: "mesh.example", TTL: 100 * time.Hour})

	tests := map[string]struct {
		cert                 *x509.Certificate
		wantCN               string
		wantMaxPathLen       int
		wantMaxPathLenZero   bool
		wantNotBefore        time.Time
		wantNotAfter         time.Time
		wantAuthorityKeyIDOf *x509.Certificate
	}{
		"the root may sign intermediates only": {
			cert: root.Cert, wantCN: DefaultRootCommonName, wantMaxPathLen: 1,
			wantNotBefore: now.Add(-Backdate), wantNotAfter: now.Add(1000 * time.Hour),
		},
		"the intermediate may sign workload certificates only": {
			cert: inter.Cert, wantCN: DefaultIntermediateCommonName, wantMaxPathLen: 0, wantMaxPathLenZero: true,
			wantNotBefore: now.Add(-Backdate), wantNotAfter: now.Add(100 * time.Hour), wantAuthorityKeyIDOf: root.Cert,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := tc.cert
			if !c.BasicConstraintsValid || !c.IsCA {
				t.Errorf("not a CA: basicConstraints valid=%v CA=%v", c.BasicConstraintsValid, c.IsCA)
			}
			if c.MaxPathLen != tc.wantMaxPathLen || c.MaxPathLenZero != tc.wantMaxPathLenZero {
				t.Errorf("path length %d (zero=%v), want %d (zero=%v)", c.MaxPathLen, c.MaxPathLenZero, tc.wantMaxPathLen, tc.wantMaxPathLenZero)
			}
			if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
				t.Errorf("key usage %b, want certSign|cRLSign", c.KeyUsage)
			}
			if len(c.ExtKeyUsage) != 0 {
				t.Errorf("extended key usage %v, want none (it would restrict every workload certificate)", c.ExtKeyUsage)
			}
			if c.Subject.CommonName != tc.wantCN || len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != "mesh.example" {
				t.Errorf("subject %s, want CN=%s O=mesh.example", c.Subject, tc.wantCN)
			}
			if !c.NotBefore.Equal(tc.wantNotBefore) || !c.NotAfter.Equal(tc.wantNotAfter) {
				t.Errorf("valid %s to %s, want %s to %s", c.NotBefore, c.NotAfter, tc.wantNotBefore, tc.wantNotAfter)
			}
			var wantAKI []byte // a self-signed root names no authority key
			if tc.wantAuthorityKeyIDOf != nil {
				wantAKI = tc.wantAuthorityKeyIDOf.SubjectKeyId
			}
			if len(c.SubjectKeyId) == 0 || !bytes.Equal(c.AuthorityKeyId, wantAKI) {
				t.Errorf("key identifiers: subject %x, authority %x, want authority %x", c.SubjectKeyId, c.AuthorityKeyId, wantAKI)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 127 {
				t.Errorf("serial %s is not a positive number of at most 127 bits", c.SerialNumber)
			}
		})
	}

	if _, err := NewIntermediate(inter, IntermediateOptions{Now: now, Key: ecKey(t)}); err == nil {
		t.Error("NewIntermediate accepted an intermediate (path length 0) as parent")
	}
}

func TestIntermediateNotAfterIsClampedToTheParent(t *testing.T) {
	root := mustRoot(t, RootOptions{TTL: 1000 * time.Hour})
	tests := map[string]struct {
		ttl          time.Duration
		now          time.Time
		wantNotAfter time.Time
		wantErr      bool
	}{
		"a TTL within the root's life is kept":     {ttl: 100 * time.Hour, now: now, wantNotAfter: now.Add(100 * time.Hour)},
		"the default TTL is cut to the root's end": {ttl: 0, now: now, wantNotAfter: root.Cert.NotAfter},
		"a TTL past the root's end is cut to it":   {ttl: 999*time.Hour + time.Minute, now: now.Add(time.Hour), wantNotAfter: root.Cert.NotAfter},
		"a root that has expired cannot sign":      {ttl: time.Hour, now: root.Cert.NotAfter.Add(time.Second), wantErr: true},
		"a root that is not yet valid cannot sign": {ttl: time.Hour, now: root.Cert.NotBefore.Add(-time.Second), wantErr: true},
		"a negative TTL is refused":                {ttl: -time.Hour, now: now, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := NewIntermediate(root, IntermediateOptions{Key: ecKey(t), TTL: tc.ttl, Now: tc.now})
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got an intermediate valid to %s, want an error", got.Cert.NotAfter)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.Cert.NotAfter.Equal(tc.wantNotAfter) {
				t.Errorf("NotAfter %s, want %s", got.Cert.NotAfter, tc.wantNotAfter)
			}
			if got.Cert.NotAfter.After(root.Cert.NotAfter) || got.Cert.NotBefore.Before(root.Cert.NotBefore) {
				t.Errorf("intermediate %s..%s is not within the root's %s..%s", got.Cert.NotBefore, got.Cert.NotAfter, root.Cert.NotBefore, root.Cert.NotAfter)
			}
		})
	}
}

func TestNewRootOptions(t *testing.T) {
	tests := map[string]struct {
		opts    RootOptions
		check   func(t *testing.T, r *KeyPair)
		wantErr bool
	}{
		"defaults: P-256, ten years, cluster.local": {
			opts: RootOptions{Now: now},
			check: func(t *testing.T, r *KeyPair) {
				if alg, _ := AlgorithmOf(r.Cert.PublicKey); alg != ECDSAP256 {
					t.Errorf("algorithm %s, want ECDSAP256", alg)
				}
				if !r.Cert.NotAfter.Equal(now.Add(DefaultRootTTL)) {
					t.Errorf("NotAfter %s, want %s", r.Cert.NotAfter, now.Add(DefaultRootTTL))
				}
				if r.Cert.Subject.Organization[0] != DefaultTrustDomain {
					t.Errorf("organization %v, want %s", r.Cert.Subject.Organization, DefaultTrustDomain)
				}
			},
		},
		"a common name can be set, so that old and new roots read apart": {
			opts: RootOptions{Now: now, CommonName: "Capstan Root CA 2026"},
			check: func(t *testing.T, r *KeyPair) {
				if r.Cert.Subject.CommonName != "Capstan Root CA 2026" {
					t.Errorf("CN %q", r.Cert.Subject.CommonName)
				}
			},
		},
		"the serial number comes from the given source": {
			opts: RootOptions{Now: now, Rand: bytes.NewReader(bytes.Repeat([]byte{0xff}, 16))},
			check: func(t *testing.T, r *KeyPair) {
				if want := "7fffffffffffffffffffffffffffffff"; r.Cert.SerialNumber.Text(16) != want {
					t.Errorf("serial %x, want %s", r.Cert.SerialNumber, want)
				}
			},
		},
		"a zero Now is refused":               {opts: RootOptions{}, wantErr: true},
		"an unknown algorithm is refused":     {opts: RootOptions{Now: now, Algorithm: "DSA"}, wantErr: true},
		"a too-small supplied key is refused": {opts: RootOptions{Now: now, Key: cachedKey(t, rsa1024)}, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := NewRoot(tc.opts)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, r)
		})
	}
}

// TestRenewedRootKeepsIntermediatesValid protects renewal with the same key: an intermediate
// signed by the old root certificate verifies under the renewed one.
func TestRenewedRootKeepsIntermediatesValid(t *testing.T) {
	old := mustRoot(t, RootOptions{TTL: 100 * time.Hour})
	inter := mustIntermediate(t, old, IntermediateOptions{TTL: 90 * time.Hour})
	renewed := mustRoot(t, RootOptions{Key: old.Key, Now: now.Add(40 * time.Hour)})
	if renewed.Fingerprint() == old.Fingerprint() {
		t.Fatal("the renewed root is the old certificate")
	}
	m := &Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert}, Roots: []*x509.Certificate{renewed.Cert}}
	if err := Validate(m, ValidateOptions{Now: now.Add(41 * time.Hour)}); err != nil {
		t.Fatalf("intermediate of the old root does not validate under the renewed root: %v", err)
	}
}

func TestFingerprint(t *testing.T) {
	a := mustRoot(t, RootOptions{})
	b := mustRoot(t, RootOptions{})
	reparsed, err := x509.ParseCertificate(a.Cert.Raw)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(a.Cert.Raw)
	tests := map[string]struct {
		got, want string
	}{
		"is the SHA-256 of the DER in lowercase hex": {got: a.Fingerprint(), want: hex.EncodeToString(sum[:])},
		"is stable across calls":                     {got: a.Fingerprint(), want: Fingerprint(a.Cert)},
		"is stable across parsing":                   {got: Fingerprint(reparsed), want: a.Fingerprint()},
		"of nothing is empty":                        {got: Fingerprint(nil), want: ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(a.Fingerprint()) {
		t.Errorf("fingerprint %q is not 64 lowercase hex digits", a.Fingerprint())
	}
	if a.Fingerprint() == b.Fingerprint() {
		t.Error("two roots share a fingerprint")
	}
}

// TestPrintedFormsHoldNoKey protects against a KeyPair or Material reaching a log or an
// error with its private key.
func TestPrintedFormsHoldNoKey(t *testing.T) {
	root := mustRoot(t, RootOptions{})
	inter := mustIntermediate(t, root, IntermediateOptions{Key: cachedKey(t, RSA3072)})
	m := Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert, root.Cert}, Roots: []*x509.Certificate{root.Cert}}
	jsonKP, err := json.Marshal(inter)
	if err != nil {
		t.Fatal(err)
	}
	jsonM, err := json.Marshal(struct{ KP *KeyPair }{inter})
	if err != nil {
		t.Fatal(err)
	}
	var slogBuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&slogBuf, nil)).Info("x", "intermediate", inter, "root", *root)

	forms := map[string]string{
		"%v of a KeyPair":      fmt.Sprintf("%v", inter),
		"%+v of a KeyPair":     fmt.Sprintf("%+v", *inter),
		"%#v of a KeyPair":     fmt.Sprintf("%#v", inter),
		"%v of a Material":     fmt.Sprintf("%v", m),
		"%+v of a Material":    fmt.Sprintf("%+v", &m),
		"%#v of a Material":    fmt.Sprintf("%#v", m),
		"JSON of a KeyPair":    string(jsonKP),
		"JSON of a field":      string(jsonM),
		"slog of a KeyPair":    slogBuf.String(),
		"logr form of KeyPair": fmt.Sprintf("%+v", inter.MarshalLog()),
	}
	for name, text := range forms {
		t.Run(name, func(t *testing.T) {
			assertNoKeyMaterial(t, text, root.Key, inter.Key)
			if !bytes.Contains([]byte(text), []byte(inter.Fingerprint()[:16])) {
				t.Errorf("%s does not name the certificate: %s", name, text)
			}
		})
	}
}

func TestKeyPEMIsPKCS8(t *testing.T) {
	for _, alg := range KeyAlgorithms {
		t.Run(string(alg), func(t *testing.T) {
			kp := &KeyPair{Key: cachedKey(t, alg)}
			out, err := kp.KeyPEM()
			if err != nil {
				t.Fatal(err)
			}
			b, _ := pem.Decode(out)
			if b == nil || b.Type != "PRIVATE KEY" {
				t.Fatalf("not one PKCS#8 PEM block: %q", out[:min(len(out), 40)])
			}
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if !publicKeysEqual(kp.Key.Public(), k.(interface{ Public() crypto.PublicKey }).Public()) {
				t.Error("the encoded key is another key")
			}
		})
	}
}

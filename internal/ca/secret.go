package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"
	"strings"
)

// KeyNames are the Secret keys one naming scheme stores CA material under.
type KeyNames struct {
	// Cert holds the signing CA (intermediate) certificate.
	Cert string
	// Key holds the signing CA's private key.
	Key string
	// Chain holds the chain from the signing CA up to the root.
	Chain string
	// Roots holds the trust bundle.
	Roots string
}

var (
	// IstioKeys is the scheme of istiod's `cacerts` Secret, the one SecretData writes.
	IstioKeys = KeyNames{Cert: "ca-cert.pem", Key: "ca-key.pem", Chain: "cert-chain.pem", Roots: "root-cert.pem"}
	// CertManagerKeys is the scheme of a kubernetes.io/tls Secret as cert-manager writes it:
	// tls.crt holds the CA certificate followed by its chain, ca.crt the root.
	CertManagerKeys = KeyNames{Cert: "tls.crt", Key: "tls.key", Chain: "tls.crt", Roots: "ca.crt"}
)

// Material is what a `cacerts` Secret holds: the intermediate istiod signs with, the chain
// it hands out with every workload certificate, and the roots every workload trusts.
type Material struct {
	// Intermediate is the signing CA and its key.
	Intermediate *KeyPair
	// Chain runs from the intermediate's certificate up to the root; by Istio's convention it
	// ends with the root, though a chain that stops just below it is accepted.
	Chain []*x509.Certificate
	// Roots is the trust bundle: one root, or two during a root rotation.
	Roots []*x509.Certificate
	// Keys names the Secret keys the material was read from, so that errors name the key
	// the user must fix. The zero value means IstioKeys.
	Keys KeyNames
}

// SecretData is the Data of a `cacerts` Secret, with exactly the keys ca-cert.pem,
// ca-key.pem, cert-chain.pem and root-cert.pem whatever scheme m was read from. A Material
// without a Chain gets the intermediate alone as its chain. root-cert.pem is TrustBundle(Roots).
func (m *Material) SecretData() (map[string][]byte, error) {
	if m == nil || m.Intermediate == nil || m.Intermediate.Cert == nil {
		return nil, fmt.Errorf("secret data: no intermediate certificate")
	}
	key, err := m.Intermediate.KeyPEM()
	if err != nil {
		return nil, fmt.Errorf("secret data: %w", err)
	}
	if len(m.Roots) == 0 {
		return nil, fmt.Errorf("secret data: no roots")
	}
	chain := m.Chain
	if len(chain) == 0 {
		chain = []*x509.Certificate{m.Intermediate.Cert}
	}
	var chainPEM bytes.Buffer
	for _, c := range chain {
		chainPEM.Write(certPEM(c))
	}
	return map[string][]byte{
		IstioKeys.Cert:  m.Intermediate.CertPEM(),
		IstioKeys.Key:   key,
		IstioKeys.Chain: chainPEM.Bytes(),
		IstioKeys.Roots: TrustBundle(m.Roots...),
	}, nil
}

// String names the material's certificates without the key.
func (m Material) String() string {
	var roots []string
	for _, r := range m.Roots {
		roots = append(roots, describeCert(r))
	}
	var inter string
	if m.Intermediate != nil {
		inter = describeCert(m.Intermediate.Cert)
	} else {
		inter = describeCert(nil)
	}
	return fmt.Sprintf("intermediate %s, chain of %d, roots [%s]", inter, len(m.Chain), strings.Join(roots, ", "))
}

// GoString keeps %#v from printing the private key.
func (m Material) GoString() string {
	return "ca.Material{" + m.String() + "}"
}

// ParseSecretData reads CA material from a Secret's Data in either scheme: IstioKeys
// (chosen when ca-cert.pem or ca-key.pem is present) or CertManagerKeys. With
// CertManagerKeys and no ca.crt, a self-signed last certificate of tls.crt is taken as the
// root. Problems are returned as *MaterialError naming the key at fault. ParseSecretData only
// reads; Validate says whether the material is fit for istiod.
func ParseSecretData(data map[string][]byte) (*Material, error) {
	_, hasCert := data[IstioKeys.Cert]
	_, hasKey := data[IstioKeys.Key]
	_, hasTLSCert := data[CertManagerKeys.Cert]
	_, hasTLSKey := data[CertManagerKeys.Key]
	if !hasCert && !hasKey && (hasTLSCert || hasTLSKey) {
		return parseCertManager(data)
	}
	return parseIstio(data)
}

func parseIstio(data map[string][]byte) (*Material, error) {
	k := IstioKeys
	certs, err := certsAt(data, k.Cert)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, &MaterialError{Key: k.Cert, Code: CodeMalformed,
			Reason: fmt.Sprintf("holds %d certificates where istiod reads only the first", len(certs)),
			Fix:    "keep only the signing CA certificate in ca-cert.pem and put its chain in cert-chain.pem"}
	}
	key, err := keyAt(data, k.Key)
	if err != nil {
		return nil, err
	}
	chain, err := certsAt(data, k.Chain)
	if err != nil {
		return nil, err
	}
	roots, err := certsAt(data, k.Roots)
	if err != nil {
		return nil, err
	}
	return &Material{Intermediate: &KeyPair{Cert: certs[0], Key: key}, Chain: chain, Roots: roots, Keys: k}, nil
}

func parseCertManager(data map[string][]byte) (*Material, error) {
	k := CertManagerKeys
	chain, err := certsAt(data, k.Cert)
	if err != nil {
		return nil, err
	}
	key, err := keyAt(data, k.Key)
	if err != nil {
		return nil, err
	}
	var roots []*x509.Certificate
	if _, ok := data[k.Roots]; ok {
		if roots, err = certsAt(data, k.Roots); err != nil {
			return nil, err
		}
	} else if top := chain[len(chain)-1]; len(chain) > 1 && selfSigned(top) {
		roots = []*x509.Certificate{top}
	} else {
		return nil, missingKey(k.Roots, "put the root certificate in ca.crt")
	}
	return &Material{Intermediate: &KeyPair{Cert: chain[0], Key: key}, Chain: chain, Roots: roots, Keys: k}, nil
}

func certsAt(data map[string][]byte, key string) ([]*x509.Certificate, error) {
	v, ok := data[key]
	if !ok || len(bytes.TrimSpace(v)) == 0 {
		return nil, missingKey(key, "")
	}
	certs, reason := parseCertsPEM(v)
	if reason != "" {
		return nil, &MaterialError{Key: key, Code: CodeMalformed, Reason: "the value " + reason, Fix: "store PEM-encoded certificates in " + key}
	}
	return certs, nil
}

func keyAt(data map[string][]byte, key string) (crypto.Signer, error) {
	v, ok := data[key]
	if !ok || len(bytes.TrimSpace(v)) == 0 {
		return nil, missingKey(key, "")
	}
	k, reason := parseKeyPEM(v)
	if reason != "" {
		return nil, &MaterialError{Key: key, Code: CodeMalformed, Reason: "the value " + reason, Fix: "store the CA's private key, PEM-encoded, in " + key}
	}
	return k, nil
}

func missingKey(key, fix string) *MaterialError {
	if fix == "" {
		fix = "add " + key + " to the Secret"
	}
	return &MaterialError{Key: key, Code: CodeKeyMissing, Reason: "missing or empty", Fix: fix}
}

// selfSigned reports whether c is signed by its own key.
func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

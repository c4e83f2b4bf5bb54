package ca

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
)

// KeyAlgorithm names the kind of key Capstan generates for a CA certificate. Its values are
// those of the MeshControlPlane field spec.security.ca.keyAlgorithm.
type KeyAlgorithm string

const (
	// ECDSAP256 is ECDSA on NIST P-256, signing with SHA-256: small, fast, and the default.
	ECDSAP256 KeyAlgorithm = "ECDSAP256"
	// ECDSAP384 is ECDSA on NIST P-384, signing with SHA-384.
	ECDSAP384 KeyAlgorithm = "ECDSAP384"
	// RSA3072 is a 3072-bit RSA key, for meshes whose policy asks for RSA.
	RSA3072 KeyAlgorithm = "RSA3072"
	// RSA4096 is a 4096-bit RSA key. Generating one takes about a second.
	RSA4096 KeyAlgorithm = "RSA4096"

	// DefaultKeyAlgorithm is used when no algorithm is given.
	DefaultKeyAlgorithm = ECDSAP256
)

// KeyAlgorithms lists every algorithm Capstan can generate, in the CRD enum's order.
var KeyAlgorithms = []KeyAlgorithm{ECDSAP256, ECDSAP384, RSA3072, RSA4096}

// Validate reports whether a is one of KeyAlgorithms; the empty value is not.
func (a KeyAlgorithm) Validate() error {
	for _, k := range KeyAlgorithms {
		if a == k {
			return nil
		}
	}
	return fmt.Errorf("unsupported key algorithm %q: use one of ECDSAP256, ECDSAP384, RSA3072, RSA4096", string(a))
}

// GenerateKey creates a new private key of algorithm alg from crypto/rand.
func GenerateKey(alg KeyAlgorithm) (crypto.Signer, error) {
	switch alg {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, alg.Validate()
}

// AlgorithmOf names the KeyAlgorithm of a public key, or returns an error for a key Capstan
// would not generate (including RSA 2048, which Validate still accepts in provided material).
func AlgorithmOf(pub crypto.PublicKey) (KeyAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256, nil
		case elliptic.P384():
			return ECDSAP384, nil
		}
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 3072:
			return RSA3072, nil
		case 4096:
			return RSA4096, nil
		}
	}
	return "", fmt.Errorf("a %s key is not one of ECDSAP256, ECDSAP384, RSA3072, RSA4096", describeKey(pub))
}

// minRSABits is the smallest RSA modulus accepted in provided material.
const minRSABits = 2048

// checkPublicKey returns a reason, without advice, when pub is a key type istiod and Envoy should not be given:
// anything but RSA of at least 2048 bits, ECDSA P-256 or ECDSA P-384.
func checkPublicKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fmt.Sprintf("the %s key is too small (RSA needs at least %d bits)", describeKey(pub), minRSABits)
		}
		return ""
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return ""
		}
	}
	return fmt.Sprintf("the %s key is not supported", describeKey(pub))
}

// describeKey names a key's type and size without any of its material.
func describeKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d-bit", k.N.BitLen())
	case *ecdsa.PublicKey:
		if k.Curve == nil {
			return "ECDSA"
		}
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	case *ecdh.PublicKey:
		return "ECDH"
	case nil:
		return "missing"
	}
	return fmt.Sprintf("%T", pub)
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// marshalKeyPEM encodes key as a PKCS#8 "PRIVATE KEY" PEM block.
func marshalKeyPEM(key crypto.Signer) ([]byte, error) {
	if key == nil {
		return nil, fmt.Errorf("no private key")
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		// The error text names only the key's Go type.
		return nil, fmt.Errorf("cannot encode the %s private key as PKCS#8", describeKey(key.Public()))
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseKeyPEM reads exactly one private key (PKCS#8, PKCS#1 or SEC 1) from PEM. "EC
// PARAMETERS" blocks, which `openssl ecparam -genkey` writes before the key, are skipped.
// Its error reasons never quote the input.
func parseKeyPEM(data []byte) (crypto.Signer, string) {
	var key crypto.Signer
	rest := data
	blocks := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks++
		if b.Type == "EC PARAMETERS" {
			continue
		}
		if key != nil {
			return nil, "holds more than one private key; keep only the key of the CA certificate"
		}
		if _, encrypted := b.Headers["Proc-Type"]; encrypted || b.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, "holds an encrypted private key; store the key unencrypted (the Secret is the protection)"
		}
		var (
			parsed any
			err    error
		)
		switch b.Type {
		case "PRIVATE KEY":
			parsed, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			parsed, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			parsed, err = x509.ParseECPrivateKey(b.Bytes)
		default:
			if strings.Contains(b.Type, "PRIVATE") {
				return nil, "holds a private key in an unsupported format (such as OpenSSH or DSA); convert it to PKCS#8"
			}
			return nil, fmt.Sprintf("holds a %q PEM block where a private key belongs", safeBlockType(b.Type))
		}
		if err != nil {
			// The parser's own error is not passed on: keep any detail of the key out of messages.
			return nil, "holds a private key that cannot be parsed; it must be PKCS#8, PKCS#1 (RSA) or SEC 1 (EC)"
		}
		signer, ok := parsed.(crypto.Signer)
		if !ok {
			return nil, "holds a private key of a type that cannot sign"
		}
		key = signer
	}
	if key == nil {
		if blocks == 0 {
			return nil, "is not PEM; it must hold one PEM-encoded private key"
		}
		return nil, "holds no private key"
	}
	return key, ""
}

// safeBlockType is a PEM block type fit to quote in a message.
func safeBlockType(t string) string {
	if len(t) > 40 {
		return t[:40] + "..."
	}
	return t
}

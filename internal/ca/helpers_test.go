package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// now is the fixed clock of every test.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// keyCache holds one key per algorithm, so that slow RSA keys are generated once per run.
var keyCache = struct {
	sync.Mutex
	m map[KeyAlgorithm]crypto.Signer
}{m: map[KeyAlgorithm]crypto.Signer{}}

// Key kinds Capstan refuses, for cachedKey.
const (
	rsa1024    KeyAlgorithm = "test-rsa1024"
	p224       KeyAlgorithm = "test-p224"
	ed25519Alg KeyAlgorithm = "test-ed25519"
)

// cachedKey returns the run's one key of alg, generating it through GenerateKey.
func cachedKey(t *testing.T, alg KeyAlgorithm) crypto.Signer {
	t.Helper()
	keyCache.Lock()
	defer keyCache.Unlock()
	if k, ok := keyCache.m[alg]; ok {
		return k
	}
	var (
		k   crypto.Signer
		err error
	)
	switch alg {
	case rsa1024:
		k, err = rsa.GenerateKey(rand.Reader, 1024)
	case p224:
		k, err = ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	case ed25519Alg:
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		k, err = GenerateKey(alg)
	}
	if err != nil {
		t.Fatalf("GenerateKey(%s): %v", alg, err)
	}
	keyCache.m[alg] = k
	return k
}

// ecKey is a fresh P-256 key, for tests that need distinct keys.
func ecKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustRoot(t *testing.T, opts RootOptions) *KeyPair {
	t.Helper()
	if opts.Now.IsZero() {
		opts.Now = now
	}
	if opts.Key == nil && opts.Algorithm == "" {
		opts.Key = ecKey(t)
	}
	r, err := NewRoot(opts)
	if err != nil {
		t.Fatalf("NewRoot: %v", err)
	}
	return r
}

func mustIntermediate(t *testing.T, parent *KeyPair, opts IntermediateOptions) *KeyPair {
	t.Helper()
	if opts.Now.IsZero() {
		opts.Now = now
	}
	if opts.Key == nil && opts.Algorithm == "" {
		opts.Key = ecKey(t)
	}
	i, err := NewIntermediate(parent, opts)
	if err != nil {
		t.Fatalf("NewIntermediate: %v", err)
	}
	return i
}

// issue signs tmpl for key's public key by parent, or self-signed when parent is nil. It
// makes the malformed certificates NewRoot and NewIntermediate refuse to make.
func issue(t *testing.T, tmpl *x509.Certificate, parent *KeyPair, key crypto.Signer) *KeyPair {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = newSerialOrOne()
	}
	parentCert, signer := tmpl, key
	if parent != nil {
		parentCert, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), signer)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &KeyPair{Cert: c, Key: key}
}

// caTemplate is a valid CA template from now for d.
func caTemplate(cn string, d time.Duration) *x509.Certificate {
	return &x509.Certificate{
		Subject:               subject(cn, "", ""),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(d),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

// assertNoKeyMaterial fails when text holds a PEM private key header or any 24-character
// run of the base64 DER (PKCS#8) of one of keys.
func assertNoKeyMaterial(t *testing.T, text string, keys ...crypto.Signer) {
	t.Helper()
	if strings.Contains(text, "PRIVATE KEY") {
		t.Errorf("text holds a private key header: %s", text)
	}
	for _, k := range keys {
		if k == nil {
			continue
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			continue
		}
		b64 := base64.StdEncoding.EncodeToString(der)
		for i := 0; i+24 <= len(b64); i += 12 {
			if strings.Contains(text, b64[i:i+24]) {
				t.Errorf("text holds base64 of a private key: %s", text)
				return
			}
		}
		if e, ok := k.(*ecdsa.PrivateKey); ok {
			if d := e.D.String(); strings.Contains(text, d) {
				t.Errorf("text holds the private scalar: %s", text)
			}
		}
	}
}

// wantMaterialError checks that err is a *MaterialError naming key with code.
func wantMaterialError(t *testing.T, err error, key string, code Code) {
	t.Helper()
	var me *MaterialError
	if !errors.As(err, &me) {
		t.Fatalf("got error %v (%T), want a *MaterialError", err, err)
	}
	if me.Key != key || me.Code != code {
		t.Errorf("got key %q code %s (%v), want key %q code %s", me.Key, me.Code, err, key, code)
	}
	if !strings.HasPrefix(err.Error(), key+": ") {
		t.Errorf("message %q does not start with the key %q", err.Error(), key)
	}
	if me.Fix == "" {
		t.Errorf("error %v says no fix", err)
	}
}

package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"maps"
	"slices"
	"testing"
	"time"
)

// pemKey encodes key in one of the formats found in the wild.
func pemKey(t *testing.T, key crypto.Signer, format string) []byte {
	t.Helper()
	switch format {
	case "PKCS1":
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))})
	case "SEC1":
		der, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		// openssl ecparam -genkey writes the curve's parameters first.
		params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
		return append(params, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
	}
	out, err := marshalKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func pemCerts(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		b.Write(certPEM(c))
	}
	return b.Bytes()
}

// TestSecretDataRoundTrip protects reading back what Capstan writes, and reading
// cert-manager's Secrets as the same material.
func TestSecretDataRoundTrip(t *testing.T) {
	root := mustRoot(t, RootOptions{})
	newRoot := mustRoot(t, RootOptions{Now: now.Add(time.Hour)})
	inter := mustIntermediate(t, root, IntermediateOptions{})
	rsaInter := mustIntermediate(t, root, IntermediateOptions{Key: cachedKey(t, RSA3072)})
	chain := []*x509.Certificate{inter.Cert, root.Cert}

	tests := map[string]struct {
		data      map[string][]byte
		wantKeys  KeyNames
		wantInter *KeyPair
		wantChain []*x509.Certificate
		wantRoots []*x509.Certificate
	}{
		"Istio's names, as SecretData writes them": {
			data:     mustSecretData(t, &Material{Intermediate: inter, Chain: chain, Roots: []*x509.Certificate{root.Cert}}),
			wantKeys: IstioKeys, wantInter: inter, wantChain: chain, wantRoots: []*x509.Certificate{root.Cert},
		},
		"Istio's names with two roots, mid-rotation": {
			data:     mustSecretData(t, &Material{Intermediate: inter, Chain: chain, Roots: []*x509.Certificate{newRoot.Cert, root.Cert}}),
			wantKeys: IstioKeys, wantInter: inter, wantChain: chain, wantRoots: []*x509.Certificate{root.Cert, newRoot.Cert},
		},
		"Istio's names with a SEC 1 EC key after EC PARAMETERS": {
			data: map[string][]byte{
				"ca-cert.pem": pemCerts(inter.Cert), "ca-key.pem": pemKey(t, inter.Key, "SEC1"),
				"cert-chain.pem": pemCerts(chain...), "root-cert.pem": pemCerts(root.Cert),
			},
			wantKeys: IstioKeys, wantInter: inter, wantChain: chain, wantRoots: []*x509.Certificate{root.Cert},
		},
		"cert-manager's names: tls.crt with the chain, ca.crt the root, PKCS#1 key": {
			data: map[string][]byte{
				"tls.crt": pemCerts(rsaInter.Cert, root.Cert), "tls.key": pemKey(t, rsaInter.Key, "PKCS1"), "ca.crt": pemCerts(root.Cert),
			},
			wantKeys: CertManagerKeys, wantInter: rsaInter, wantChain: []*x509.Certificate{rsaInter.Cert, root.Cert}, wantRoots: []*x509.Certificate{root.Cert},
		},
		"cert-manager's names with tls.crt holding only the intermediate": {
			data: map[string][]byte{
				"tls.crt": pemCerts(inter.Cert), "tls.key": pemKey(t, inter.Key, "PKCS8"), "ca.crt": pemCerts(root.Cert),
			},
			wantKeys: CertManagerKeys, wantInter: inter, wantChain: []*x509.Certificate{inter.Cert}, wantRoots: []*x509.Certificate{root.Cert},
		},
		"cert-manager's names without ca.crt take the self-signed end of tls.crt as root": {
			data: map[string][]byte{
				"tls.crt": pemCerts(inter.Cert, root.Cert), "tls.key": pemKey(t, inter.Key, "PKCS8"),
			},
			wantKeys: CertManagerKeys, wantInter: inter, wantChain: chain, wantRoots: []*x509.Certificate{root.Cert},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := ParseSecretData(tc.data)
			if err != nil {
				t.Fatalf("ParseSecretData: %v", err)
			}
			checkMaterial(t, m, tc.wantKeys, tc.wantInter, tc.wantChain, tc.wantRoots)
			if err := Validate(m, ValidateOptions{Now: now.Add(2 * time.Hour)}); err != nil {
				t.Errorf("Validate: %v", err)
			}

			// Whatever it was read from, it is written in Istio's names and reads back the same.
			out := mustSecretData(t, m)
			if got := slices.Sorted(maps.Keys(out)); !slices.Equal(got, []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"}) {
				t.Errorf("SecretData keys %v", got)
			}
			again, err := ParseSecretData(out)
			if err != nil {
				t.Fatalf("ParseSecretData(SecretData()): %v", err)
			}
			checkMaterial(t, again, IstioKeys, tc.wantInter, tc.wantChain, tc.wantRoots)
			if twice := mustSecretData(t, again); !maps.EqualFunc(out, twice, bytes.Equal) {
				t.Error("SecretData of the re-read material differs: a Secret would be rewritten for nothing")
			}
		})
	}
}

func mustSecretData(t *testing.T, m *Material) map[string][]byte {
	t.Helper()
	d, err := m.SecretData()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func checkMaterial(t *testing.T, m *Material, keys KeyNames, inter *KeyPair, chain, roots []*x509.Certificate) {
	t.Helper()
	if m.Keys != keys {
		t.Errorf("keys %+v, want %+v", m.Keys, keys)
	}
	if !m.Intermediate.Cert.Equal(inter.Cert) {
		t.Error("the intermediate certificate differs")
	}
	if !publicKeysEqual(m.Intermediate.Key.Public(), inter.Key.Public()) {
		t.Error("the intermediate key differs")
	}
	if !slices.EqualFunc(m.Chain, chain, (*x509.Certificate).Equal) {
		t.Errorf("chain of %d differs from the %d wanted", len(m.Chain), len(chain))
	}
	if !slices.EqualFunc(m.Roots, roots, (*x509.Certificate).Equal) {
		t.Errorf("roots of %d differ from the %d wanted", len(m.Roots), len(roots))
	}
}

// TestParseSecretDataErrors protects the key each unreadable Secret is blamed on.
func TestParseSecretDataErrors(t *testing.T) {
	root := mustRoot(t, RootOptions{})
	inter := mustIntermediate(t, root, IntermediateOptions{})
	good := func() map[string][]byte {
		return mustSecretData(t, &Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert, root.Cert}, Roots: []*x509.Certificate{root.Cert}})
	}
	keyPEM := pemKey(t, inter.Key, "PKCS8")
	with := func(key string, value []byte) map[string][]byte {
		d := good()
		if value == nil {
			delete(d, key)
		} else {
			d[key] = value
		}
		return d
	}
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00"}, Bytes: []byte{1, 2, 3}})

	tests := map[string]struct {
		data     map[string][]byte
		wantKey  string
		wantCode Code
	}{
		"an empty Secret lacks ca-cert.pem":          {data: map[string][]byte{}, wantKey: "ca-cert.pem", wantCode: CodeKeyMissing},
		"no ca-cert.pem":                             {data: with("ca-cert.pem", nil), wantKey: "ca-cert.pem", wantCode: CodeKeyMissing},
		"no ca-key.pem":                              {data: with("ca-key.pem", nil), wantKey: "ca-key.pem", wantCode: CodeKeyMissing},
		"no cert-chain.pem":                          {data: with("cert-chain.pem", nil), wantKey: "cert-chain.pem", wantCode: CodeKeyMissing},
		"no root-cert.pem":                           {data: with("root-cert.pem", nil), wantKey: "root-cert.pem", wantCode: CodeKeyMissing},
		"a blank root-cert.pem":                      {data: with("root-cert.pem", []byte(" \n")), wantKey: "root-cert.pem", wantCode: CodeKeyMissing},
		"ca-cert.pem is not PEM":                     {data: with("ca-cert.pem", []byte("hello")), wantKey: "ca-cert.pem", wantCode: CodeMalformed},
		"ca-cert.pem holds a broken certificate":     {data: with("ca-cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x01}})), wantKey: "ca-cert.pem", wantCode: CodeMalformed},
		"ca-cert.pem holds the whole chain":          {data: with("ca-cert.pem", pemCerts(inter.Cert, root.Cert)), wantKey: "ca-cert.pem", wantCode: CodeMalformed},
		"ca-key.pem holds a certificate":             {data: with("ca-key.pem", pemCerts(inter.Cert)), wantKey: "ca-key.pem", wantCode: CodeMalformed},
		"ca-key.pem holds two keys":                  {data: with("ca-key.pem", append(slices.Clone(keyPEM), keyPEM...)), wantKey: "ca-key.pem", wantCode: CodeMalformed},
		"ca-key.pem is encrypted":                    {data: with("ca-key.pem", encrypted), wantKey: "ca-key.pem", wantCode: CodeMalformed},
		"ca-key.pem is a corrupt key":                {data: with("ca-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x00}})), wantKey: "ca-key.pem", wantCode: CodeMalformed},
		"root-cert.pem holds the private key":        {data: with("root-cert.pem", append(pemCerts(root.Cert), keyPEM...)), wantKey: "root-cert.pem", wantCode: CodeMalformed},
		"cert-chain.pem holds an unrelated PEM type": {data: with("cert-chain.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1}})), wantKey: "cert-chain.pem", wantCode: CodeMalformed},
		"cert-manager's names without tls.key": {
			data: map[string][]byte{"tls.crt": pemCerts(inter.Cert, root.Cert), "ca.crt": pemCerts(root.Cert)}, wantKey: "tls.key", wantCode: CodeKeyMissing,
		},
		"cert-manager's names without ca.crt or a root in tls.crt": {
			data: map[string][]byte{"tls.crt": pemCerts(inter.Cert), "tls.key": keyPEM}, wantKey: "ca.crt", wantCode: CodeKeyMissing,
		},
		"cert-manager's names with a broken tls.crt": {
			data: map[string][]byte{"tls.crt": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "tls.key": keyPEM}, wantKey: "tls.crt", wantCode: CodeMalformed,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := ParseSecretData(tc.data)
			if err == nil {
				t.Fatalf("got material %v, want an error", m)
			}
			t.Log(err)
			wantMaterialError(t, err, tc.wantKey, tc.wantCode)
			assertNoKeyMaterial(t, err.Error(), inter.Key, root.Key)
		})
	}
}

func TestSecretDataRefusesIncompleteMaterial(t *testing.T) {
	root := mustRoot(t, RootOptions{})
	inter := mustIntermediate(t, root, IntermediateOptions{})
	tests := map[string]*Material{
		"no intermediate":     {Roots: []*x509.Certificate{root.Cert}},
		"no intermediate key": {Intermediate: &KeyPair{Cert: inter.Cert}, Roots: []*x509.Certificate{root.Cert}},
		"no roots":            {Intermediate: inter},
	}
	for name, m := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := m.SecretData(); err == nil {
				t.Error("want an error")
			}
		})
	}
	// Without a chain, the intermediate alone is written as cert-chain.pem.
	d := mustSecretData(t, &Material{Intermediate: inter, Roots: []*x509.Certificate{root.Cert}})
	if !bytes.Equal(d["cert-chain.pem"], d["ca-cert.pem"]) {
		t.Error("cert-chain.pem of a chainless material is not ca-cert.pem")
	}
}

package ca

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestValidate protects the verdict on CA material, and the Secret key each bad input is
// blamed on, so that the condition message tells the user what to fix.
func TestValidate(t *testing.T) {
	root := mustRoot(t, RootOptions{})
	inter := mustIntermediate(t, root, IntermediateOptions{})
	newRoot := mustRoot(t, RootOptions{Now: now.Add(time.Hour), CommonName: "Capstan Root CA 2"})
	newInter := mustIntermediate(t, newRoot, IntermediateOptions{Now: now.Add(time.Hour)})
	shortInter := mustIntermediate(t, root, IntermediateOptions{TTL: 10 * time.Hour})
	otherRoot := mustRoot(t, RootOptions{})

	// Certificates NewRoot and NewIntermediate refuse to make.
	leafKey := ecKey(t)
	leafTmpl := caTemplate("not a CA", 1000*time.Hour)
	leafTmpl.IsCA, leafTmpl.KeyUsage = false, x509.KeyUsageDigitalSignature
	notCA := issue(t, leafTmpl, root, leafKey)
	noSignTmpl := caTemplate("no certSign", 1000*time.Hour)
	noSignTmpl.KeyUsage = x509.KeyUsageDigitalSignature
	noCertSign := issue(t, noSignTmpl, root, ecKey(t))
	noKeyUsageTmpl := caTemplate("no keyUsage extension", 1000*time.Hour)
	noKeyUsageTmpl.KeyUsage = 0
	noKeyUsage := issue(t, noKeyUsageTmpl, root, ecKey(t))
	notCARootTmpl := caTemplate("self-signed leaf", 1000*time.Hour)
	notCARootTmpl.IsCA, notCARootTmpl.KeyUsage = false, x509.KeyUsageDigitalSignature
	notCARoot := issue(t, notCARootTmpl, nil, ecKey(t))
	ed25519Inter := issue(t, caTemplate("Ed25519", 1000*time.Hour), root, cachedKey(t, ed25519Alg))
	p224Inter := issue(t, caTemplate("P-224", 1000*time.Hour), root, cachedKey(t, p224))
	rsa1024Inter := issue(t, caTemplate("RSA 1024", 1000*time.Hour), root, cachedKey(t, rsa1024))
	ed25519Root := issue(t, caTemplate("Ed25519 root", 1000*time.Hour), nil, cachedKey(t, ed25519Alg))
	shortRoot := issue(t, caTemplate("short root", 10*time.Hour), nil, ecKey(t))
	longUnderShortTmpl := caTemplate("outlives its root", 1000*time.Hour)
	longUnderShortTmpl.MaxPathLen, longUnderShortTmpl.MaxPathLenZero = 0, true
	longUnderShort := issue(t, longUnderShortTmpl, shortRoot, ecKey(t))
	constrainedTmpl := caTemplate("other trust domain only", 1000*time.Hour)
	constrainedTmpl.PermittedURIDomains = []string{"other.example"}
	constrained := issue(t, constrainedTmpl, root, ecKey(t))
	serverOnlyTmpl := caTemplate("server auth only", 1000*time.Hour)
	serverOnlyTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	serverOnly := issue(t, serverOnlyTmpl, root, ecKey(t))
	pathLenZeroRootTmpl := caTemplate("root without room for an intermediate", 1000*time.Hour)
	pathLenZeroRootTmpl.MaxPathLen, pathLenZeroRootTmpl.MaxPathLenZero = 0, true
	pathLenZeroRoot := issue(t, pathLenZeroRootTmpl, nil, ecKey(t))
	underPathLenZero := issue(t, caTemplate("under a path length 0 root", 1000*time.Hour), pathLenZeroRoot, ecKey(t))

	certs := func(c ...*x509.Certificate) []*x509.Certificate { return c }
	// under is a material of one intermediate, its chain up to the root, and that root.
	under := func(i *KeyPair, r *x509.Certificate) *Material {
		return &Material{Intermediate: i, Chain: certs(i.Cert, r), Roots: certs(r)}
	}

	tests := map[string]struct {
		m        *Material
		opts     ValidateOptions // Now defaults to now
		wantKey  string          // empty: valid
		wantCode Code
	}{
		"generated material is valid":                      {m: under(inter, root.Cert)},
		"a chain that stops below the root is valid":       {m: &Material{Intermediate: inter, Chain: certs(inter.Cert), Roots: certs(root.Cert)}},
		"rotation step 1: old signer, both roots":          {m: &Material{Intermediate: inter, Chain: certs(inter.Cert, root.Cert), Roots: certs(root.Cert, newRoot.Cert)}, opts: ValidateOptions{Now: now.Add(2 * time.Hour)}},
		"rotation step 2: new signer, both roots":          {m: &Material{Intermediate: newInter, Chain: certs(newInter.Cert, newRoot.Cert), Roots: certs(root.Cert, newRoot.Cert)}, opts: ValidateOptions{Now: now.Add(2 * time.Hour)}},
		"rotation step 3: new signer, new root":            {m: under(newInter, newRoot.Cert), opts: ValidateOptions{Now: now.Add(2 * time.Hour)}},
		"a CA without a keyUsage extension is accepted":    {m: under(noKeyUsage, root.Cert)},
		"a short intermediate passes a short workload TTL": {m: under(shortInter, root.Cert), opts: ValidateOptions{Now: now.Add(5 * time.Hour), WorkloadCertTTL: time.Hour}},
		"cert-manager material is blamed on tls.* keys": {
			m:       &Material{Intermediate: &KeyPair{Cert: inter.Cert, Key: ecKey(t)}, Chain: certs(inter.Cert, root.Cert), Roots: certs(root.Cert), Keys: CertManagerKeys},
			wantKey: "tls.key", wantCode: CodeKeyMismatch,
		},

		"nothing at all":                                             {m: nil, wantKey: "ca-cert.pem", wantCode: CodeKeyMissing},
		"no intermediate certificate":                                {m: &Material{Intermediate: &KeyPair{Key: inter.Key}, Chain: certs(inter.Cert), Roots: certs(root.Cert)}, wantKey: "ca-cert.pem", wantCode: CodeKeyMissing},
		"no intermediate key":                                        {m: &Material{Intermediate: &KeyPair{Cert: inter.Cert}, Chain: certs(inter.Cert), Roots: certs(root.Cert)}, wantKey: "ca-key.pem", wantCode: CodeKeyMissing},
		"no chain":                                                   {m: &Material{Intermediate: inter, Roots: certs(root.Cert)}, wantKey: "cert-chain.pem", wantCode: CodeKeyMissing},
		"no roots":                                                   {m: &Material{Intermediate: inter, Chain: certs(inter.Cert)}, wantKey: "root-cert.pem", wantCode: CodeKeyMissing},
		"the key of another certificate":                             {m: under(&KeyPair{Cert: inter.Cert, Key: newInter.Key}, root.Cert), wantKey: "ca-key.pem", wantCode: CodeKeyMismatch},
		"ca-cert.pem is a workload cert":                             {m: under(notCA, root.Cert), wantKey: "ca-cert.pem", wantCode: CodeNotCA},
		"ca-cert.pem may not sign certs":                             {m: under(noCertSign, root.Cert), wantKey: "ca-cert.pem", wantCode: CodeNoCertSign},
		"root-cert.pem holds a non-CA":                               {m: &Material{Intermediate: inter, Chain: certs(inter.Cert, root.Cert), Roots: certs(root.Cert, notCARoot.Cert)}, wantKey: "root-cert.pem", wantCode: CodeNotCA},
		"root-cert.pem holds the intermediate":                       {m: &Material{Intermediate: inter, Chain: certs(inter.Cert), Roots: certs(inter.Cert)}, wantKey: "root-cert.pem", wantCode: CodeNotRoot},
		"cert-chain.pem holds a non-CA":                              {m: &Material{Intermediate: inter, Chain: certs(inter.Cert, notCA.Cert, root.Cert), Roots: certs(root.Cert)}, wantKey: "cert-chain.pem", wantCode: CodeNotCA},
		"cert-chain.pem starts elsewhere":                            {m: &Material{Intermediate: inter, Chain: certs(newInter.Cert, newRoot.Cert), Roots: certs(root.Cert)}, wantKey: "cert-chain.pem", wantCode: CodeChainBroken},
		"cert-chain.pem names another root":                          {m: &Material{Intermediate: inter, Chain: certs(inter.Cert, otherRoot.Cert), Roots: certs(root.Cert)}, wantKey: "cert-chain.pem", wantCode: CodeChainBroken},
		"root-cert.pem lacks the root":                               {m: &Material{Intermediate: inter, Chain: certs(inter.Cert), Roots: certs(otherRoot.Cert)}, wantKey: "root-cert.pem", wantCode: CodeUntrusted},
		"root-cert.pem lacks the root named at the end of the chain": {m: &Material{Intermediate: inter, Chain: certs(inter.Cert, root.Cert), Roots: certs(otherRoot.Cert)}, wantKey: "root-cert.pem", wantCode: CodeUntrusted},
		"the intermediate is not yet valid":                          {m: under(inter, root.Cert), opts: ValidateOptions{Now: now.Add(-time.Hour)}, wantKey: "ca-cert.pem", wantCode: CodeNotYetValid},
		"the intermediate has expired":                               {m: under(shortInter, root.Cert), opts: ValidateOptions{Now: now.Add(11 * time.Hour)}, wantKey: "ca-cert.pem", wantCode: CodeExpired},
		"the intermediate expires within the workload TTL":           {m: under(shortInter, root.Cert), wantKey: "ca-cert.pem", wantCode: CodeExpiringSoon},
		"the intermediate expires within a longer workload TTL":      {m: under(inter, root.Cert), opts: ValidateOptions{Now: now, WorkloadCertTTL: DefaultIntermediateTTL + time.Second}, wantKey: "ca-cert.pem", wantCode: CodeExpiringSoon},
		"the root expires within the workload TTL":                   {m: under(longUnderShort, shortRoot.Cert), wantKey: "root-cert.pem", wantCode: CodeExpiringSoon},
		"the root has expired":                                       {m: under(longUnderShort, shortRoot.Cert), opts: ValidateOptions{Now: now.Add(11 * time.Hour)}, wantKey: "root-cert.pem", wantCode: CodeExpired},
		"an Ed25519 intermediate":                                    {m: under(ed25519Inter, root.Cert), wantKey: "ca-cert.pem", wantCode: CodeUnsupportedKey},
		"a P-224 intermediate":                                       {m: under(p224Inter, root.Cert), wantKey: "ca-cert.pem", wantCode: CodeUnsupportedKey},
		"an RSA 1024 intermediate":                                   {m: under(rsa1024Inter, root.Cert), wantKey: "ca-cert.pem", wantCode: CodeUnsupportedKey},
		"an Ed25519 key for a P-256 cert":                            {m: under(&KeyPair{Cert: inter.Cert, Key: cachedKey(t, ed25519Alg)}, root.Cert), wantKey: "ca-key.pem", wantCode: CodeUnsupportedKey},
		"an Ed25519 root in the bundle":                              {m: &Material{Intermediate: inter, Chain: certs(inter.Cert, root.Cert), Roots: certs(root.Cert, ed25519Root.Cert)}, wantKey: "root-cert.pem", wantCode: CodeUnsupportedKey},
		"name constraints exclude the trust domain":                  {m: under(constrained, root.Cert), wantKey: "ca-cert.pem", wantCode: CodeRejected},
		"name constraints admit their trust domain":                  {m: under(constrained, root.Cert), opts: ValidateOptions{Now: now, TrustDomain: "other.example"}},
		"the intermediate allows server auth only":                   {m: under(serverOnly, root.Cert), wantKey: "ca-cert.pem", wantCode: CodeRejected},
		"the root allows no intermediate":                            {m: under(underPathLenZero, pathLenZeroRoot.Cert), wantKey: "root-cert.pem", wantCode: CodeRejected},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.opts.Now.IsZero() {
				tc.opts.Now = now
			}
			err := Validate(tc.m, tc.opts)
			if tc.wantKey == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want %s on %s, got valid", tc.wantCode, tc.wantKey)
			}
			t.Log(err)
			wantMaterialError(t, err, tc.wantKey, tc.wantCode)
			assertNoKeyMaterial(t, err.Error(), root.Key, inter.Key, newInter.Key, leafKey, cachedKey(t, ed25519Alg))
			if tc.m != nil && tc.m.Intermediate != nil && tc.m.Intermediate.Key != nil {
				assertNoKeyMaterial(t, err.Error(), tc.m.Intermediate.Key)
			}
		})
	}
}

func TestValidateNeedsAClock(t *testing.T) {
	root := mustRoot(t, RootOptions{})
	inter := mustIntermediate(t, root, IntermediateOptions{})
	err := Validate(&Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert}, Roots: []*x509.Certificate{root.Cert}}, ValidateOptions{})
	if err == nil || !strings.Contains(err.Error(), "Now") {
		t.Fatalf("got %v, want an error asking for Now", err)
	}
}

func TestMaterialErrorText(t *testing.T) {
	tests := map[string]struct {
		err  *MaterialError
		want string
	}{
		"key, reason and fix": {
			err:  &MaterialError{Key: "ca-key.pem", Code: CodeKeyMismatch, Reason: "the private key does not match the certificate in ca-cert.pem", Fix: "store the key that ca-cert.pem was issued for, or both of a new pair"},
			want: "ca-key.pem: the private key does not match the certificate in ca-cert.pem; store the key that ca-cert.pem was issued for, or both of a new pair",
		},
		"with the Secret the caller named": {
			err:  &MaterialError{Secret: "istio-system/cacerts", Key: "root-cert.pem", Reason: "missing or empty"},
			want: "secret istio-system/cacerts: root-cert.pem: missing or empty",
		},
		"a missing Secret": {
			err:  SecretMissing("istio-system/my-ca"),
			want: "secret istio-system/my-ca: not found; create it with ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem (or tls.crt, tls.key and ca.crt)",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
	// A mismatch found by Validate reads exactly as the issue asks.
	root := mustRoot(t, RootOptions{})
	inter := mustIntermediate(t, root, IntermediateOptions{})
	err := Validate(&Material{Intermediate: &KeyPair{Cert: inter.Cert, Key: ecKey(t)}, Chain: []*x509.Certificate{inter.Cert}, Roots: []*x509.Certificate{root.Cert}}, ValidateOptions{Now: now})
	var me *MaterialError
	if !errors.As(err, &me) || !strings.HasPrefix(me.Error(), "ca-key.pem: the private key does not match the certificate in ca-cert.pem") {
		t.Errorf("got %v", err)
	}
	if got := SecretMissing("a/b"); got.Code != CodeSecretMissing || got.Key != "" {
		t.Errorf("SecretMissing gives code %s key %q", got.Code, got.Key)
	}
}

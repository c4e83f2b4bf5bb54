package ca

import (
	"bytes"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTrustBundle(t *testing.T) {
	older := mustRoot(t, RootOptions{})
	newer := mustRoot(t, RootOptions{Now: now.Add(time.Hour)})
	tests := map[string]struct {
		roots []*x509.Certificate
		want  []*x509.Certificate
	}{
		"one root":                          {roots: []*x509.Certificate{older.Cert}, want: []*x509.Certificate{older.Cert}},
		"roots are sorted oldest first":     {roots: []*x509.Certificate{newer.Cert, older.Cert}, want: []*x509.Certificate{older.Cert, newer.Cert}},
		"the same order whatever the input": {roots: []*x509.Certificate{older.Cert, newer.Cert}, want: []*x509.Certificate{older.Cert, newer.Cert}},
		"duplicates are dropped":            {roots: []*x509.Certificate{newer.Cert, older.Cert, newer.Cert, older.Cert}, want: []*x509.Certificate{older.Cert, newer.Cert}},
		"nil entries are dropped":           {roots: []*x509.Certificate{nil, older.Cert}, want: []*x509.Certificate{older.Cert}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out := TrustBundle(tc.roots...)
			if !bytes.Equal(out, pemCerts(tc.want...)) {
				t.Errorf("bundle:\n%s\nwant the PEM of %d roots", out, len(tc.want))
			}
			got, err := ParseBundle(out)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(got, tc.want, (*x509.Certificate).Equal) {
				t.Errorf("ParseBundle gave %d roots, want %d", len(got), len(tc.want))
			}
		})
	}
}

func TestParseBundleErrors(t *testing.T) {
	root := mustRoot(t, RootOptions{})
	keyPEM, err := root.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		data []byte
		want string
	}{
		"empty":                        {data: nil, want: "empty"},
		"not PEM":                      {data: []byte("not a certificate"), want: "not PEM"},
		"a private key after the root": {data: append(root.CertPEM(), keyPEM...), want: "private key"},
		"text between blocks is fine but a broken block is not": {data: append([]byte("subject=CN=x\n"), []byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n")...), want: "cannot be parsed"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseBundle(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			assertNoKeyMaterial(t, err.Error(), root.Key)
		})
	}
	withText := append([]byte("subject=CN=Capstan Root CA\n"), root.CertPEM()...)
	if got, err := ParseBundle(withText); err != nil || len(got) != 1 {
		t.Errorf("openssl's subject line before a root: %d roots, %v", len(got), err)
	}
}

// TestBundleRelation protects the rule istiod applies to a change of root-cert.pem.
func TestBundleRelation(t *testing.T) {
	a := mustRoot(t, RootOptions{}).Cert
	b := mustRoot(t, RootOptions{}).Cert
	c := mustRoot(t, RootOptions{}).Cert
	reparsedA, err := x509.ParseCertificate(a.Raw)
	if err != nil {
		t.Fatal(err)
	}
	type roots = []*x509.Certificate
	tests := map[string]struct {
		old, new                 roots
		wantSuperset, wantSubset bool
	}{
		"unchanged":                            {old: roots{a}, new: roots{a}, wantSuperset: true, wantSubset: true},
		"the same root parsed again":           {old: roots{a}, new: roots{reparsedA}, wantSuperset: true, wantSubset: true},
		"order does not matter":                {old: roots{a, b}, new: roots{b, a}, wantSuperset: true, wantSubset: true},
		"step 1 adds the new root":             {old: roots{a}, new: roots{a, b}, wantSuperset: true},
		"step 3 drops the old root":            {old: roots{a, b}, new: roots{b}, wantSubset: true},
		"a swap in one go is neither":          {old: roots{a}, new: roots{b}, wantSuperset: false, wantSubset: false},
		"adding one and dropping another":      {old: roots{a, b}, new: roots{b, c}},
		"from nothing, anything is a superset": {old: nil, new: roots{a}, wantSuperset: true},
		"duplicates do not count":              {old: roots{a, a}, new: roots{a}, wantSuperset: true, wantSubset: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			superset, subset := BundleRelation(tc.old, tc.new)
			if superset != tc.wantSuperset || subset != tc.wantSubset {
				t.Errorf("superset=%v subset=%v, want %v %v", superset, subset, tc.wantSuperset, tc.wantSubset)
			}
		})
	}
}

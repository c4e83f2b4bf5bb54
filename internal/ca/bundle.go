package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// TrustBundle is the PEM trust bundle for root-cert.pem: roots deduplicated by fingerprint
// and sorted by NotBefore, then fingerprint. The order depends only on the set of roots, so
// the same set always gives the same bytes and a Secret is never rewritten for nothing.
func TrustBundle(roots ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range uniqueSorted(roots) {
		buf.Write(certPEM(c))
	}
	return buf.Bytes()
}

// ParseBundle reads every certificate of a PEM bundle (root-cert.pem, ca.crt, a chain). It
// fails on an empty bundle, on a block that is not a certificate, and on a certificate that
// does not parse. Text between blocks, such as openssl's "subject=" lines, is ignored.
func ParseBundle(data []byte) ([]*x509.Certificate, error) {
	certs, reason := parseCertsPEM(data)
	if reason != "" {
		return nil, errors.New(reason)
	}
	return certs, nil
}

// BundleRelation compares a new trust bundle with the current one by fingerprint. istiod
// accepts a change of root-cert.pem only when the new bundle is a superset (roots added, as
// in the first step of a root rotation) or a subset (roots removed, as in the last step) of
// the old one. Equal bundles are both; bundles that swap one root for another are neither.
func BundleRelation(old, new []*x509.Certificate) (superset, subset bool) {
	o, n := fingerprintSet(old), fingerprintSet(new)
	return containsAll(n, o), containsAll(o, n)
}

func fingerprintSet(certs []*x509.Certificate) map[string]bool {
	s := make(map[string]bool, len(certs))
	for _, c := range certs {
		if c != nil {
			s[Fingerprint(c)] = true
		}
	}
	return s
}

func containsAll(set, of map[string]bool) bool {
	for fp := range of {
		if !set[fp] {
			return false
		}
	}
	return true
}

// uniqueSorted drops nil and duplicate certificates and sorts the rest by NotBefore, then
// fingerprint.
func uniqueSorted(certs []*x509.Certificate) []*x509.Certificate {
	seen := map[string]bool{}
	out := make([]*x509.Certificate, 0, len(certs))
	for _, c := range certs {
		if c == nil || seen[Fingerprint(c)] {
			continue
		}
		seen[Fingerprint(c)] = true
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *x509.Certificate) int {
		if c := a.NotBefore.Compare(b.NotBefore); c != 0 {
			return c
		}
		return strings.Compare(Fingerprint(a), Fingerprint(b))
	})
	return out
}

// parseCertsPEM reads every CERTIFICATE block of data. Its reasons read after a key name
// ("root-cert.pem holds ...") and never quote a private key.
func parseCertsPEM(data []byte) ([]*x509.Certificate, string) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			if strings.Contains(b.Type, "PRIVATE") {
				return nil, "holds a private key; only certificates belong here, and the key should be treated as exposed"
			}
			return nil, fmt.Sprintf("holds a %q PEM block; only CERTIFICATE blocks belong here", safeBlockType(b.Type))
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Sprintf("holds certificate %d that cannot be parsed: %v", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil, "is empty"
		}
		return nil, "is not PEM; it must hold PEM-encoded certificates"
	}
	return certs, ""
}

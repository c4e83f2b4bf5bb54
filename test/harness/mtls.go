package harness

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RootCertConfigMap is the ConfigMap istiod publishes the mesh trust bundle in, in every
// namespace, under the key RootCertKey; sidecars read it to verify their peers.
const (
	RootCertConfigMap = "istio-ca-root-cert"
	RootCertKey       = "root-cert.pem"
)

// MeshRoots returns the trust bundle istiod published in namespace: the certificates of
// the istio-ca-root-cert ConfigMap's root-cert.pem, in their order. Pass them to CertPool
// for a pool to verify peers or istiod with.
func (c *Cluster) MeshRoots(ctx context.Context, namespace string) ([]*x509.Certificate, error) {
	cm, err := c.Clientset.CoreV1().ConfigMaps(namespace).Get(ctx, RootCertConfigMap, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM([]byte(cm.Data[RootCertKey]))
	if err != nil {
		return nil, fmt.Errorf("ConfigMap %s/%s key %s: %w", namespace, RootCertConfigMap, RootCertKey, err)
	}
	return certs, nil
}

// CertPool is a pool holding certs.
func CertPool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// SameCerts reports whether a and b hold the same certificates, ignoring order and
// duplicates: e.g. whether the published trust bundle is exactly the expected set of roots.
func SameCerts(a, b []*x509.Certificate) bool {
	set := func(cs []*x509.Certificate) map[string]bool {
		m := map[string]bool{}
		for _, c := range cs {
			m[string(c.Raw)] = true
		}
		return m
	}
	sa, sb := set(a), set(b)
	if len(sa) != len(sb) {
		return false
	}
	for k := range sa {
		if !sb[k] {
			return false
		}
	}
	return true
}

// VerifySPIFFEPeer checks a peer's certificate chain (leaf first, as sent in a TLS
// handshake) the way Envoy's validation context does for Istio mTLS: the chain must verify
// to a root in trust (any extended key usage; no DNS name check), and the leaf must carry
// exactly one spiffe:// URI SAN, which it returns.
func VerifySPIFFEPeer(chain []*x509.Certificate, trust *x509.CertPool) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("no certificate presented")
	}
	leaf := chain[0]
	var ids []string
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" {
			ids = append(ids, u.String())
		}
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("certificate with subject %q, serial %s (issuer %q) has %d spiffe:// URI SANs, want exactly one", leaf.Subject, leaf.SerialNumber, leaf.Issuer, len(ids))
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: trust, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return ids[0], fmt.Errorf("certificate %s (issuer %q) does not verify to a trusted root: %w", ids[0], leaf.Issuer, err)
	}
	return ids[0], nil
}

// Handshake runs a real TLS 1.3 mutual-authentication handshake between two Go TLS peers
// over a loopback TCP connection (127.0.0.1), standing in for two sidecars: the server
// presents server and verifies the client's chain against serverTrust, the client presents
// client and verifies the server's chain against clientTrust, both with VerifySPIFFEPeer.
// After the handshake the server sends one byte the client must read, so a rejection by
// the server (which TLS 1.3 reports to the client only after its own handshake returned) is
// seen. It returns nil when both sides accepted, or an error that says which side rejected
// which certificate and why.
func Handshake(ctx context.Context, server, client tls.Certificate, serverTrust, clientTrust *x509.CertPool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()

	var mu sync.Mutex
	var serverRejected, clientRejected error
	verify := func(trust *x509.CertPool, rejected *error) func([][]byte, [][]*x509.Certificate) error {
		return func(raw [][]byte, _ [][]*x509.Certificate) error {
			chain := make([]*x509.Certificate, 0, len(raw))
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			_, err := VerifySPIFFEPeer(chain, trust)
			if err != nil {
				mu.Lock()
				*rejected = err
				mu.Unlock()
			}
			return err
		}
	}
	serverConf := &tls.Config{
		Certificates:          []tls.Certificate{server},
		MinVersion:            tls.VersionTLS13,
		ClientAuth:            tls.RequireAnyClientCert, // verified below, against serverTrust
		VerifyPeerCertificate: verify(serverTrust, &serverRejected),
	}
	clientConf := &tls.Config{
		Certificates: []tls.Certificate{client},
		MinVersion:   tls.VersionTLS13,
		// No DNS name check (Envoy's sidecars match SPIFFE URIs, not host names); the chain is
		// verified by VerifyPeerCertificate against clientTrust.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verify(clientTrust, &clientRejected),
	}

	serverDone := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			serverDone <- err
			return
		}
		defer conn.Close()
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		tc := tls.Server(conn, serverConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			serverDone <- err
			return
		}
		_, err = tc.Write([]byte{1})
		serverDone <- err
	}()

	clientErr := func() error {
		var dialer net.Dialer
		conn, err := dialer.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer conn.Close()
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		tc := tls.Client(conn, clientConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(tc, b); err != nil {
			return fmt.Errorf("reading the server's byte: %w", err)
		}
		if !bytes.Equal(b, []byte{1}) {
			return fmt.Errorf("the server sent %v, want [1]", b)
		}
		return nil
	}()
	if clientErr != nil {
		ln.Close() // the server may still wait in Accept if the dial failed
	}
	serverErr := <-serverDone

	mu.Lock()
	defer mu.Unlock()
	switch {
	case clientRejected != nil:
		return fmt.Errorf("harness: mTLS handshake: the client rejected the server's certificate: %w", clientRejected)
	case serverRejected != nil:
		return fmt.Errorf("harness: mTLS handshake: the server rejected the client's certificate: %w", serverRejected)
	case clientErr != nil || serverErr != nil:
		var parts []string
		if clientErr != nil {
			parts = append(parts, "client: "+clientErr.Error())
		}
		if serverErr != nil {
			parts = append(parts, "server: "+serverErr.Error())
		}
		return fmt.Errorf("harness: mTLS handshake failed: %s", strings.Join(parts, "; "))
	}
	return nil
}

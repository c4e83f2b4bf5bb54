package harness

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// IstioCAAudience is the token audience istiod's CA accepts (the audience of the projected
// token a sidecar sends).
const IstioCAAudience = "istio-ca"

// WorkloadCertRequest asks istiod's CA for a workload certificate, the way istio-agent does
// for a sidecar.
type WorkloadCertRequest struct {
	// Namespace and ServiceAccount are the workload's identity. Both are created if missing.
	Namespace, ServiceAccount string
	// TrustDomain of the SPIFFE URI in the CSR; default "cluster.local".
	TrustDomain string
	// TTL is the requested validity (IstioCertificateRequest.validity_duration); istiod caps
	// it at its maximum workload TTL. Default one hour.
	TTL time.Duration
	// Trust verifies istiod's serving certificate on the secure gRPC port. istiod signs that
	// certificate with its CA, so pass the current mesh root, or during a root rotation a pool
	// holding both roots. Required.
	Trust *x509.CertPool
	// ServerName checked in istiod's certificate; default "<ServiceName>.<Namespace>.svc" of
	// the Istiod.
	ServerName string
	// Token, if set, is sent instead of a fresh TokenRequest token (for tests of rejection).
	// istiod issues for the token's identity whatever the CSR says, so a token of another
	// ServiceAccount makes WorkloadCertificate fail.
	Token string
}

// WorkloadCert is a workload certificate as istiod issued it, with its private key: what a
// sidecar's Envoy would serve and present.
type WorkloadCert struct {
	// TLS is ready for tls.Config.Certificates: the leaf followed by the intermediates istiod
	// returned (self-signed roots left out, as peers must not take trust from the chain), the
	// private key, and Leaf set.
	TLS tls.Certificate
	// Leaf is the workload certificate.
	Leaf *x509.Certificate
	// Intermediates are the non-self-signed certificates istiod returned after the leaf.
	Intermediates []*x509.Certificate
	// Roots are the self-signed certificates istiod returned at the end of the chain (by
	// Istio's convention cert-chain.pem ends with the root).
	Roots []*x509.Certificate
	// Key is the workload's private key; it never left this process.
	Key *ecdsa.PrivateKey
	// SPIFFEID is the workload's identity, spiffe://<trust domain>/ns/<ns>/sa/<sa>: the URI
	// the CSR asked for and the leaf's only URI SAN (WorkloadCertificate checks).
	SPIFFEID string
	// ChainPEM is the response's cert_chain, each element as istiod sent it, concatenated.
	ChainPEM []byte
	// IstiodChain is the certificate chain istiod presented on its secure gRPC port.
	IstiodChain []*x509.Certificate
}

// WorkloadCertificate gets a real workload certificate from this istiod's CA service
// (IstioCertificateService.CreateCertificate on SecureGRPCAddr, over TLS): it creates the
// namespace and ServiceAccount if missing, gets a token by TokenRequest with audience
// istio-ca, generates an ECDSA P-256 key and a CSR for the workload's SPIFFE URI, and sends
// it with the metadata istio-agent sends (authorization: Bearer <token>, ClusterID:
// Kubernetes). It fails when istiod refuses (gRPC status in the error), when istiod's
// serving certificate does not verify to req.Trust, or when the leaf is not for the
// requested identity or key. Everything in it is real: the apiserver's TokenRequest and TokenReview,
// istiod's authentication and signing, TLS to istiod.
func (d *Istiod) WorkloadCertificate(ctx context.Context, req WorkloadCertRequest) (*WorkloadCert, error) {
	if req.Namespace == "" || req.ServiceAccount == "" {
		return nil, errors.New("harness: workload certificate: Namespace and ServiceAccount are required")
	}
	if req.Trust == nil {
		return nil, errors.New("harness: workload certificate: Trust (the mesh roots that sign istiod's serving certificate) is required")
	}
	if req.TrustDomain == "" {
		req.TrustDomain = "cluster.local"
	}
	if req.TTL <= 0 {
		req.TTL = time.Hour
	}
	if req.ServerName == "" {
		req.ServerName = d.ServiceName + "." + d.Namespace + ".svc"
	}
	what := fmt.Sprintf("harness: workload certificate for %s/%s from istiod %s", req.Namespace, req.ServiceAccount, d.Revision)

	token := req.Token
	if token == "" {
		var err error
		if token, err = ServiceAccountToken(ctx, d.cluster, req.Namespace, req.ServiceAccount, IstioCAAudience); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id := &url.URL{Scheme: "spiffe", Host: req.TrustDomain, Path: "/ns/" + req.Namespace + "/sa/" + req.ServiceAccount}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
	if err != nil {
		return nil, fmt.Errorf("%s: CSR: %w", what, err)
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})

	var mu sync.Mutex // the handshake runs on gRPC's goroutine
	var istiodChain []*x509.Certificate
	tlsConf := &tls.Config{
		RootCAs:    req.Trust,
		ServerName: req.ServerName,
		MinVersion: tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			mu.Lock()
			defer mu.Unlock()
			istiodChain = cs.PeerCertificates
			return nil
		},
	}
	conn, err := grpc.NewClient("passthrough:///"+d.SecureGRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer conn.Close()
	callCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token, "ClusterID", "Kubernetes")
	out, err := securityv1alpha1.NewIstioCertificateServiceClient(conn).CreateCertificate(callCtx, &securityv1alpha1.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(req.TTL / time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("%s (server name %s): %w", what, req.ServerName, err)
	}

	mu.Lock()
	wc := &WorkloadCert{Key: key, SPIFFEID: id.String(), IstiodChain: istiodChain}
	mu.Unlock()
	var certs []*x509.Certificate
	for _, s := range out.GetCertChain() {
		wc.ChainPEM = append(wc.ChainPEM, s...)
		cs, err := parseCertsPEM([]byte(s))
		if err != nil {
			return nil, fmt.Errorf("%s: response cert_chain: %w", what, err)
		}
		certs = append(certs, cs...)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: the response holds no certificate", what)
	}
	wc.Leaf = certs[0]
	if pub, ok := wc.Leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("%s: the leaf %q is not for the CSR's key", what, wc.Leaf.Subject)
	}
	// istiod takes the identity from the token, not from the CSR: a leaf for someone else
	// means the token (e.g. a Token override) is another ServiceAccount's.
	if len(wc.Leaf.URIs) != 1 || wc.Leaf.URIs[0].String() != wc.SPIFFEID {
		return nil, fmt.Errorf("%s: istiod issued a certificate for %v, not %s (it takes the identity from the token, not the CSR)", what, wc.Leaf.URIs, wc.SPIFFEID)
	}
	wc.TLS = tls.Certificate{Certificate: [][]byte{wc.Leaf.Raw}, PrivateKey: key, Leaf: wc.Leaf}
	seen := map[string]bool{string(wc.Leaf.Raw): true}
	for _, c := range certs[1:] {
		if seen[string(c.Raw)] {
			continue
		}
		seen[string(c.Raw)] = true
		if isSelfSigned(c) {
			wc.Roots = append(wc.Roots, c)
			continue
		}
		wc.Intermediates = append(wc.Intermediates, c)
		wc.TLS.Certificate = append(wc.TLS.Certificate, c.Raw)
	}
	return wc, nil
}

// ServiceAccountToken returns a token for namespace/name with the given audience, by
// TokenRequest, after creating the namespace and the ServiceAccount if they are missing.
func ServiceAccountToken(ctx context.Context, c *Cluster, namespace, name, audience string) (string, error) {
	cs := c.Clientset
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("namespace %s: %w", namespace, err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("ServiceAccount %s/%s: %w", namespace, name, err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr.To[int64](600)},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("TokenRequest for ServiceAccount %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// parseCertsPEM reads every CERTIFICATE block of data; it fails on no certificate at all.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected %q PEM block", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

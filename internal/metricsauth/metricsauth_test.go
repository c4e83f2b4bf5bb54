package metricsauth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authenticationclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
	authorizationclient "k8s.io/client-go/kubernetes/typed/authorization/v1"
)

// fakeAPI answers TokenReviews from tokens (token to user; absent: not authenticated) and
// SubjectAccessReviews from allowed (user to allowed "verb path"), and counts the requests.
type fakeAPI struct {
	authenticationclient.TokenReviewInterface
	authorizationclient.SubjectAccessReviewInterface
	tokens      map[string]string
	allowed     map[string]string
	err         error
	reviews     int
	sars        []authorizationv1.SubjectAccessReviewSpec
	tokenReview authenticationv1.TokenReviewSpec
}

func (f *fakeAPI) Create(_ context.Context, tr *authenticationv1.TokenReview, _ metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	f.reviews++
	f.tokenReview = tr.Spec
	if f.err != nil {
		return nil, f.err
	}
	if u, ok := f.tokens[tr.Spec.Token]; ok {
		tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: u, Groups: []string{"system:authenticated"}}}
	}
	return tr, nil
}

type fakeSARs struct{ *fakeAPI }

func (f fakeSARs) Create(_ context.Context, sar *authorizationv1.SubjectAccessReview, _ metav1.CreateOptions) (*authorizationv1.SubjectAccessReview, error) {
	f.sars = append(f.sars, sar.Spec)
	if f.err != nil {
		return nil, f.err
	}
	na := sar.Spec.NonResourceAttributes
	sar.Status.Allowed = na != nil && f.allowed[sar.Spec.User] == na.Verb+" "+na.Path
	return sar, nil
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func serve(t *testing.T, f *fakeAPI, c *clock, method, token string) int {
	t.Helper()
	filter := New(f, fakeSARs{f}, c.now)
	h, err := filter(logr.Discard(), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("metrics")) }))
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(method, "/metrics", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code
}

func TestFilterAsksTheAPIServer(t *testing.T) {
	for name, tc := range map[string]struct {
		token, method string
		err           error
		want          int
	}{
		"no token is unauthorized":                              {method: http.MethodGet, want: http.StatusUnauthorized},
		"a token the apiserver does not know is unauthorized":   {token: "forged", method: http.MethodGet, want: http.StatusUnauthorized},
		"an authenticated caller without the role is forbidden": {token: "stranger-token", method: http.MethodGet, want: http.StatusForbidden},
		"a caller allowed to get /metrics reads them":           {token: "prometheus-token", method: http.MethodGet, want: http.StatusOK},
		"the verb comes from the method":                        {token: "prometheus-token", method: http.MethodPost, want: http.StatusForbidden},
		"an apiserver error is not a denial":                    {token: "prometheus-token", method: http.MethodGet, err: errors.New("connection refused"), want: http.StatusInternalServerError},
	} {
		t.Run(name, func(t *testing.T) {
			f := &fakeAPI{
				tokens:  map[string]string{"stranger-token": "system:serviceaccount:default:stranger", "prometheus-token": "system:serviceaccount:default:prometheus"},
				allowed: map[string]string{"system:serviceaccount:default:prometheus": "get /metrics"},
				err:     tc.err,
			}
			if got := serve(t, f, &clock{t: time.Unix(0, 0)}, tc.method, tc.token); got != tc.want {
				t.Errorf("status %d, want %d", got, tc.want)
			}
		})
	}
}

func TestFilterSendsTheCallersIdentity(t *testing.T) {
	f := &fakeAPI{tokens: map[string]string{"t": "alice"}, allowed: map[string]string{"alice": "get /metrics"}}
	serve(t, f, &clock{}, http.MethodGet, "t")
	if f.tokenReview.Token != "t" {
		t.Errorf("TokenReview of %q, want the bearer token", f.tokenReview.Token)
	}
	if len(f.sars) != 1 {
		t.Fatalf("%d SubjectAccessReviews, want 1", len(f.sars))
	}
	s := f.sars[0]
	if s.User != "alice" || len(s.Groups) != 1 || s.Groups[0] != "system:authenticated" || s.ResourceAttributes != nil {
		t.Errorf("SubjectAccessReview %+v: want alice, her groups and no resource attributes", s)
	}
}

// A scraper asks every few seconds: answers are remembered, denials for less long.
func TestFilterRemembersAnswers(t *testing.T) {
	f := &fakeAPI{tokens: map[string]string{"p": "prometheus", "s": "stranger"}, allowed: map[string]string{"prometheus": "get /metrics"}}
	c := &clock{t: time.Unix(0, 0)}
	filter := New(f, fakeSARs{f}, c.now)
	h, _ := filter(logr.Discard(), http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	get := func(token string) int {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for range 3 {
		get("p")
		get("s")
	}
	if f.reviews != 2 || len(f.sars) != 2 {
		t.Fatalf("%d TokenReviews and %d SubjectAccessReviews for 6 requests of 2 callers, want 2 and 2", f.reviews, len(f.sars))
	}
	c.t = c.t.Add(denyTTL)
	delete(f.allowed, "prometheus")
	f.allowed["stranger"] = "get /metrics"
	if got := get("s"); got != http.StatusOK {
		t.Errorf("a denial is remembered past %s: status %d", denyTTL, got)
	}
	if got := get("p"); got != http.StatusOK {
		t.Errorf("an allowed caller is asked again within %s: status %d", allowTTL, got)
	}
	c.t = c.t.Add(allowTTL)
	if got := get("p"); got != http.StatusForbidden {
		t.Errorf("a revoked caller still reads metrics %s later: status %d", allowTTL+denyTTL, got)
	}
}

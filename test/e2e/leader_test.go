//go:build e2e

package e2e

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/capstan-mesh/capstan/test/harness"
)

var _ = Describe("leader election", func() {
	// The lock's events go through the operator's events.k8s.io recorder
	// (internal/leaselock), not through a broadcaster of client-go's older API.
	It("records the operator's leadership as an event on its Lease", func(ctx SpecContext) {
		Eventually(func(g Gomega) []string {
			l := &eventsv1.EventList{}
			g.Expect(k8s.List(ctx, l, client.InNamespace(harness.OperatorNamespace))).To(Succeed())
			var notes []string
			for _, e := range l.Items {
				if e.Reason == "LeaderElection" && e.Regarding.Kind == "Lease" && e.Regarding.Name == "capstan.mesh.capstan.dev" {
					notes = append(notes, e.Note)
				}
			}
			return notes
		}).Should(ContainElement(ContainSubstring("became leader")))
	})
})

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
	// controller-runtime's default lock records a core Event on the Lease, which the
	// events.k8s.io API lists too (the leader-election Role grants core events).
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

// Command crdvalues declares the Helm values Capstan owns in the MeshControlPlane CRD that
// controller-gen writes, each with the CEL rule that refuses it (see
// internal/values.OwnedSchema). make manifests runs it after controller-gen.
package main

import (
	"fmt"
	"os"

	"github.com/capstan-mesh/capstan/internal/values"
)

func main() {
	in, err := os.ReadFile(values.CRDPath)
	if err == nil {
		var out []byte
		if out, err = values.WithOwnedSchema(in); err == nil {
			err = os.WriteFile(values.CRDPath, out, 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "crdvalues:", err)
		os.Exit(1)
	}
}

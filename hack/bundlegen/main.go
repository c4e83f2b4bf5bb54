// Command bundlegen writes Capstan's OLM bundle (bundle/manifests, bundle/metadata,
// bundle.Dockerfile) from config/. `make bundle` runs it from the repository root; the
// logic is in internal/bundlegen, which the bundle tests call too.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/capstan-mesh/capstan/internal/bundlegen"
)

func main() {
	var opts bundlegen.Options
	flag.StringVar(&opts.Root, "root", ".", "repository root")
	flag.StringVar(&opts.ConfigDir, "config", "", "kustomization to bundle, relative to -root (default config/manifests, else config/default)")
	flag.StringVar(&opts.SamplesDir, "samples", "", "kustomization of the alm-examples, relative to -root (default config/samples)")
	flag.StringVar(&opts.Kubectl, "kubectl", "", "kubectl that renders kustomizations (default <root>/bin/kubectl)")
	flag.Parse()

	files, err := bundlegen.Generate(opts)
	if err == nil {
		err = bundlegen.Write(opts.Root, files)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bundlegen:", err)
		os.Exit(1)
	}
	for _, p := range files.Paths() {
		fmt.Println("wrote", p)
	}
}

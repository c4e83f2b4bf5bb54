package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// repoRoot is found once: the first directory above the working directory (or above this
// test binary, if that fails) whose go.mod declares the Capstan module.
var repoRoot = sync.OnceValues(func() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && isCapstanGoMod(b) {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("harness: no Capstan go.mod above %v (set CAPSTAN_ROOT to the repository)", starts)
})

func isCapstanGoMod(b []byte) bool {
	const mod = "module github.com/capstan-mesh/capstan\n"
	return len(b) >= len(mod) && string(b[:len(mod)]) == mod
}

// RepoRoot is the repository's root directory: $CAPSTAN_ROOT if set, else the first directory
// above the working directory (go test runs a package's tests in its own directory) or above
// the test binary that holds the Capstan go.mod.
func RepoRoot() (string, error) {
	if r := os.Getenv("CAPSTAN_ROOT"); r != "" {
		return filepath.Abs(r)
	}
	return repoRoot()
}

// BinDir is RepoRoot()/bin, where hack/build-tools.sh links the cluster binaries, kwokctl,
// pilot-discovery and `make build` puts the operator (bin/capstan).
func BinDir() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin"), nil
}

// Bin is the absolute path of bin/NAME. It does not check that the file exists (see
// RequireBins); if the repository root cannot be found it returns "bin/NAME" relative.
func Bin(name string) string {
	dir, err := BinDir()
	if err != nil {
		return filepath.Join("bin", name)
	}
	return filepath.Join(dir, name)
}

// RequireBins fails with a hint to run `make tools` unless every bin/NAME is executable.
func RequireBins(names ...string) error {
	for _, n := range names {
		p := Bin(n)
		st, err := os.Stat(p)
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("harness: %s is missing or not executable: run `make tools` (hack/build-tools.sh %s)", p, n)
		}
	}
	return nil
}

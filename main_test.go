package main

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDockerfile protects the image's properties without a Docker engine (none runs here):
// a static binary built with CGO_ENABLED=0, on a distroless base, run as the base's named
// non-root user — never root and never a pinned numeric UID, which OpenShift replaces.
func TestDockerfile(t *testing.T) {
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var froms, users []string
	var cgoOff bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		fields := strings.Fields(line)
		if len(fields) < 2 || strings.HasPrefix(line, "#") {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			froms = append(froms, fields[1])
		case "USER":
			users = append(users, fields[1])
		case "RUN":
			if strings.Contains(line, "go build") && strings.Contains(line, "CGO_ENABLED=0") {
				cgoOff = true
			}
		}
	}
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage build, got FROM %v", froms)
	}
	if final := froms[len(froms)-1]; !strings.HasPrefix(final, "gcr.io/distroless/static") || !strings.HasSuffix(final, ":nonroot") {
		t.Errorf("final stage %s: want gcr.io/distroless/static:nonroot", final)
	}
	if !cgoOff {
		t.Error("the binary is not built with CGO_ENABLED=0")
	}
	if len(users) == 0 {
		t.Fatal("no USER: the image would run as root")
	}
	user := strings.Split(users[len(users)-1], ":")[0]
	if user == "root" || user == "0" || strings.Trim(user, "0123456789") == "" {
		t.Errorf("USER %s: want a named non-root user, not root or a numeric UID", users[len(users)-1])
	}
}

// TestStaticBuild builds the operator as the Dockerfile does and checks that the result
// needs no dynamic loader, so it runs on distroless/static.
func TestStaticBuild(t *testing.T) {
	out := filepath.Join(t.TempDir(), "capstan")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	bin, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer bin.Close()
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the binary asks for a dynamic loader; distroless/static has none")
		}
	}
	if libs, _ := bin.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("the binary links %v", libs)
	}
}

// Package version knows which Istio versions Capstan can install: those whose charts it
// embeds, from the pinned istio.io/istio module.
package version

import (
	"fmt"
	"regexp"
	"strconv"
)

// Embedded is the Istio release whose charts this build of Capstan carries, and the
// default spec.version.
const Embedded = "1.31.1"

var semver = regexp.MustCompile(`^([0-9]+)\.([0-9]+)\.([0-9]+)$`)

// Parse splits an x.y.z version.
func Parse(v string) (major, minor, patch int, err error) {
	m := semver.FindStringSubmatch(v)
	if m == nil {
		return 0, 0, 0, fmt.Errorf("%q is not a version of the form x.y.z", v)
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	patch, _ = strconv.Atoi(m[3])
	return major, minor, patch, nil
}

// Supported says whether Capstan can install v. The embedded charts serve every patch
// release of their minor version; other minors need the charts of that release.
func Supported(v string) error {
	major, minor, _, err := Parse(v)
	if err != nil {
		return err
	}
	emaj, emin, _, _ := Parse(Embedded)
	if major != emaj || minor != emin {
		return fmt.Errorf("Istio %s is not supported by this Capstan, which embeds the charts of Istio %d.%d; use a %d.%d.x version", v, emaj, emin, emaj, emin)
	}
	return nil
}

// Less says whether version a is older than b; a version that does not parse is older
// than every one that does.
func Less(a, b string) bool {
	amaj, amin, apat, aerr := Parse(a)
	bmaj, bmin, bpat, berr := Parse(b)
	switch {
	case aerr != nil || berr != nil:
		return aerr != nil && berr == nil
	case amaj != bmaj:
		return amaj < bmaj
	case amin != bmin:
		return amin < bmin
	}
	return apat < bpat
}

package webhook

import (
	"strings"
	"testing"
)

func TestCheckVersion(t *testing.T) {
	tests := map[string]struct {
		want, running string
		// refused is a part of the message, or "" when the change is allowed.
		refused string
	}{
		"a fresh install of the embedded version":          {want: "1.31.1", running: ""},
		"the defaulted version":                            {want: "", running: "1.31.0"},
		"a patch upgrade":                                  {want: "1.31.4", running: "1.31.1"},
		"a patch downgrade within the running minor":       {want: "1.31.0", running: "1.31.2"},
		"one minor up, when this Capstan embeds it":        {want: "1.32.0", running: "1.31.1", refused: "not supported by this Capstan"},
		"a version this Capstan does not embed":            {want: "1.99.0", running: "", refused: "not supported by this Capstan"},
		"a jump of two minors from an older control plane": {want: "1.31.1", running: "1.29.3", refused: "one minor version at a time"},
		"one minor up from the previous release":           {want: "1.31.0", running: "1.30.5"},
		"a downgrade past the oldest running minor":        {want: "1.31.0", running: "1.32.1", refused: "downgrade"},
		"a change of major version":                        {want: "1.31.0", running: "2.0.0", refused: "major"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := checkVersion(tc.want, tc.running)
			switch {
			case tc.refused == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refused != "" && err == nil:
				t.Fatalf("allowed; want a refusal containing %q", tc.refused)
			case err != nil && !strings.Contains(err.Error(), tc.refused):
				t.Fatalf("message %q lacks %q", err.Error(), tc.refused)
			case err != nil && !strings.HasPrefix(err.Error(), "spec.version"):
				t.Fatalf("message %q does not name spec.version", err.Error())
			}
		})
	}
}

package version

import "testing"

func TestSupported(t *testing.T) {
	tests := map[string]bool{
		Embedded: true, "1.31.0": true, "1.31.12": true,
		"1.30.9": false, "1.32.0": false, "2.31.1": false, "1.31": false, "v1.31.1": false, "": false,
	}
	for v, ok := range tests {
		if err := Supported(v); (err == nil) != ok {
			t.Errorf("Supported(%q) = %v, want ok=%t", v, err, ok)
		}
	}
}

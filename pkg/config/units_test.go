package config

import (
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
		ok   bool
	}{
		{"0", 0, true}, {"4096", 4096, true}, {"4096B", 4096, true},
		{"500MB", 500_000_000, true}, {"10GiB", 10 << 30, true}, {"1KiB", 1024, true},
		{"2kB", 2000, true}, {"1.5GiB", 3 << 29, true}, {"1TiB", 1 << 40, true},
		{"10 GB", 0, false}, {"GB", 0, false}, {"-1", 0, false}, {"1XB", 0, false},
		{"", 0, false}, {"99999999999TiB", 0, false}, {"1e3", 0, false}, {"+5", 0, false},
		// Sizes are compared with int64 file sizes: at most math.MaxInt64.
		{"9223372036854775807", 1<<63 - 1, true}, {"9223372036854775808", 0, false},
		{"8388607TiB", 8388607 << 40, true}, {"8388608TiB", 0, false}, {"18000000TB", 0, false},
		{"8388607.5TiB", 8388607<<40 + 1<<39, true}, {"8388608.5TiB", 0, false},
		// A fraction needs a unit larger than a byte.
		{"1.5", 0, false}, {"1.5B", 0, false}, {"0.5kB", 500, true},
		// A fraction rounds down to a byte, never to 0; 0 itself stays.
		{"0.0000000001KiB", 0, false}, {"0.4B", 0, false}, {"0.0009kB", 0, false},
		{"0.001kB", 1, true}, {"1.0009kB", 1000, true}, {"0KiB", 0, true}, {"0.0GiB", 0, true}, {"0B", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d ok=%v", tt.in, got, err, tt.want, tt.ok)
			}
			if tt.ok {
				if back, err := ParseSize(got.String()); err != nil || back != got {
					t.Errorf("String %q does not parse back: %d %v", got.String(), back, err)
				}
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30s", 30 * time.Second, true}, {"1h30m", 90 * time.Minute, true},
		{"7d", 7 * 24 * time.Hour, true}, {"2w", 14 * 24 * time.Hour, true},
		{"1d12h", 36 * time.Hour, true}, {"1w1d", 8 * 24 * time.Hour, true}, {"0", 0, true},
		{"5", 0, false}, {"d", 0, false}, {"-1s", 0, false}, {"7x", 0, false},
		{"1d-1h", 0, false}, {"", 0, false}, {"99999999999999d", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if (err == nil) != tt.ok || time.Duration(got) != tt.want {
				t.Fatalf("ParseDuration(%q) = %v, %v; want %v ok=%v", tt.in, time.Duration(got), err, tt.want, tt.ok)
			}
			if tt.ok {
				if back, err := ParseDuration(got.String()); err != nil || back != got {
					t.Errorf("String %q does not parse back: %v %v", got.String(), back, err)
				}
			}
		})
	}
}

func TestThreshold(t *testing.T) {
	tests := []struct {
		in    string
		total uint64
		floor uint64
		ok    bool
	}{
		{"10%", 1000, 100, true}, {"0.5%", 1000, 5, true}, {"0%", 1000, 0, true},
		{"1GiB", 1 << 40, 1 << 30, true}, {"100%", 0, 0, false}, {"-1%", 0, 0, false},
		{"1e1%", 0, 0, false}, {"%", 0, 0, false}, {"NaN%", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			th, err := ParseThreshold(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseThreshold(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if tt.ok {
				if got := th.Floor(tt.total); got != tt.floor {
					t.Errorf("Floor(%d) = %d, want %d", tt.total, got, tt.floor)
				}
				if back, err := ParseThreshold(th.String()); err != nil || back != th {
					t.Errorf("String %q does not parse back", th.String())
				}
			}
		})
	}
}

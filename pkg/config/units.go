package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Size is a number of bytes. In YAML it is written as a plain integer
// (bytes) or with a unit: B, kB/KB, MB, GB, TB (powers of 1000) or KiB, MiB,
// GiB, TiB (powers of 1024), with no space: "500MB", "10GiB".
type Size uint64

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{
	// Longest suffixes first so "GiB" is not read as "B".
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1000}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"TB", 1000 * 1000 * 1000 * 1000},
	{"B", 1},
}

var errSyntax = errors.New("syntax")

// Errors for sizes that are well formed but not accepted.
var (
	// errTooLarge: sizes are compared with file sizes and offsets, which
	// are int64 (off_t), so a larger one would turn negative there.
	errTooLarge = errors.New("too large")
	// errFraction: "1.5" or "1.5B" is a fraction of a byte.
	errFraction = errors.New("fraction of a byte")
	// errRoundsToZero: "0.0000000001KiB" is below one byte. Zero means
	// "no limit" for several keys, so a tiny size must not quietly
	// become one; a zero written as zero ("0", "0KiB", "0.0GiB") stays.
	errRoundsToZero = errors.New("rounds down to 0 bytes")
)

// maxSize is the largest size accepted, the largest file size (off_t).
const maxSize = Size(math.MaxInt64)

// ParseSize parses "10GiB", "500MB", "1.5GiB", "4096" or "4096B", up to
// maxSize. A fraction is rounded down to a byte; one that rounds down to
// 0 ("0.0000000001KiB") is an error.
func ParseSize(s string) (Size, error) {
	num, mult := s, uint64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	if num == "" || strings.ContainsAny(num, " \t+-_") {
		return 0, fmt.Errorf("size %q: %w", s, errSyntax)
	}
	// A fraction is allowed with a unit ("1.5GiB"), rounded down to a byte.
	if strings.Contains(num, ".") {
		f, err := strconv.ParseFloat(num, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			return 0, fmt.Errorf("size %q: %w", s, errSyntax)
		}
		if mult == 1 {
			return 0, fmt.Errorf("size %q: %w", s, errFraction)
		}
		// 2^63 is exact in a float64; anything below it converts to at
		// most math.MaxInt64.
		v := f * float64(mult)
		if v >= 1<<63 {
			return 0, fmt.Errorf("size %q: %w", s, errTooLarge)
		}
		if f > 0 && v < 1 {
			return 0, fmt.Errorf("size %q: %w", s, errRoundsToZero)
		}
		return Size(v), nil
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Errorf("size %q: %w", s, errTooLarge)
	}
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, errSyntax)
	}
	if n != 0 && mult > uint64(maxSize)/n {
		return 0, fmt.Errorf("size %q: %w", s, errTooLarge)
	}
	return Size(n * mult), nil
}

// String formats s with the largest binary unit that divides it exactly,
// so that ParseSize(s.String()) == s.
func (s Size) String() string {
	v := uint64(s)
	if v == 0 {
		return "0"
	}
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v%u.mult == 0 {
			return strconv.FormatUint(v/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatUint(v, 10) + "B"
}

// MarshalYAML writes the size in its readable form.
func (s Size) MarshalYAML() (any, error) {
	if s == 0 {
		return 0, nil
	}
	return s.String(), nil
}

// Duration is a time.Duration that YAML accepts as Go durations ("30s",
// "1h30m") and also whole days and weeks ("7d", "2w", "1d12h").
type Duration time.Duration

// ParseDuration parses "30s", "1h30m", "7d", "2w" or "1d12h". Negative
// durations are refused.
func ParseDuration(s string) (Duration, error) {
	rest, total := s, time.Duration(0)
	// Leading whole weeks and days, which time.ParseDuration lacks.
	for _, u := range []struct {
		suffix byte
		d      time.Duration
	}{{'w', 7 * 24 * time.Hour}, {'d', 24 * time.Hour}} {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i > 0 && i < len(rest) && rest[i] == u.suffix {
			n, err := strconv.ParseInt(rest[:i], 10, 64)
			if err != nil || n > int64(math.MaxInt64/u.d) {
				return 0, fmt.Errorf("duration %q: %w", s, errSyntax)
			}
			if total > math.MaxInt64-time.Duration(n)*u.d {
				return 0, fmt.Errorf("duration %q: %w", s, errSyntax)
			}
			total += time.Duration(n) * u.d
			rest = rest[i+1:]
		}
	}
	if rest == "" {
		if rest == s {
			return 0, fmt.Errorf("duration %q: %w", s, errSyntax)
		}
		return Duration(total), nil
	}
	if strings.HasPrefix(rest, "-") || strings.HasPrefix(rest, "+") {
		return 0, fmt.Errorf("duration %q: %w", s, errSyntax)
	}
	d, err := time.ParseDuration(rest)
	if err != nil || d < 0 || total > math.MaxInt64-d {
		return 0, fmt.Errorf("duration %q: %w", s, errSyntax)
	}
	// "0" alone is a valid zero duration; "5" (no unit) is not.
	if d != 0 && !strings.ContainsAny(rest, "hmsµnu") {
		return 0, fmt.Errorf("duration %q: %w", s, errSyntax)
	}
	return Duration(total + d), nil
}

// String formats d so that ParseDuration(d.String()) == d, using days when
// d is a whole number of days.
func (d Duration) String() string {
	td := time.Duration(d)
	const day = 24 * time.Hour
	if td == 0 {
		return "0s"
	}
	if td%day == 0 {
		return strconv.FormatInt(int64(td/day), 10) + "d"
	}
	return td.String()
}

// MarshalYAML writes the duration in its readable form.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// Threshold is a free-space floor: a percentage of the filesystem or a
// number of bytes. In YAML "10%" or "2GiB".
type Threshold struct {
	Percent float64 // 0 ≤ Percent < 100, used when Bytes is 0 and IsPercent
	Bytes   Size
	// IsPercent tells which of the two is meant.
	IsPercent bool
}

// ParseThreshold parses "10%", "0.5%" or a size.
func ParseThreshold(s string) (Threshold, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || math.IsNaN(f) || f < 0 || f >= 100 || strings.ContainsAny(p, " +-eExXpP_") {
			return Threshold{}, fmt.Errorf("percentage %q: %w", s, errSyntax)
		}
		return Threshold{Percent: f, IsPercent: true}, nil
	}
	b, err := ParseSize(s)
	if err != nil {
		return Threshold{}, err
	}
	return Threshold{Bytes: b}, nil
}

// Floor returns the number of bytes to keep free on a filesystem of
// total bytes.
func (t Threshold) Floor(total uint64) uint64 {
	if t.IsPercent {
		return uint64(float64(total) * t.Percent / 100)
	}
	return uint64(t.Bytes)
}

// String formats t as it is written in YAML.
func (t Threshold) String() string {
	if t.IsPercent {
		return strconv.FormatFloat(t.Percent, 'f', -1, 64) + "%"
	}
	return t.Bytes.String()
}

// MarshalYAML writes the threshold in its readable form.
func (t Threshold) MarshalYAML() (any, error) { return t.String(), nil }

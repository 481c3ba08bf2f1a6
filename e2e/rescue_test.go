package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/internal/testfs"
)

// baseConfig is a configuration rescuing files under watched into rescued.
func baseConfig(interval string, events bool, rules, rescued string) string {
	return fmt.Sprintf(`scan:
  interval: %s
  events: %v
watch:
%s
rescue:
  dirs: [%q]
  min_free: 1%%
  max_file_size: 0
  max_total_size: 0
  per_user:
    max_files: 0
    max_bytes: 0
log:
  level: debug
`, interval, events, rules, rescued)
}

func rule(name, action string, paths []string, exclude ...string) string {
	q := func(ss []string) string {
		var out []string
		for _, s := range ss {
			out = append(out, fmt.Sprintf("%q", s))
		}
		return "[" + strings.Join(out, ", ") + "]"
	}
	s := fmt.Sprintf("  - name: %s\n    paths: %s\n    action: %s\n", name, q(paths), action)
	if len(exclude) > 0 {
		s += fmt.Sprintf("    exclude: %s\n", q(exclude))
	}
	return s
}

// holdDeleted is a shell holder: it opens FILE on fd 3, deletes it, says
// ready and sleeps until killed.
const holdDeleted = `exec 3<>"$1"; rm "$1"; echo ready; exec sleep 600`

// holdFile writes data to path and starts a holder that deletes it.
func holdFile(t *testing.T, path string, data []byte) *Shell {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return startShell(t, holdDeleted, path)
}

// TestRescueOnFilesystems: the method follows the filesystem (copy on ext4,
// reflink on XFS and btrfs), the bytes are right, and unwatched or excluded
// files are left alone.
func TestRescueOnFilesystems(t *testing.T) {
	testfs.RequireRoot(t)
	for _, tc := range []struct {
		fstype string
		method string
	}{
		{"ext4", "copy"},
		{"xfs", "reflink"},
		{"btrfs", "reflink"},
	} {
		t.Run(tc.fstype, func(t *testing.T) {
			mnt := testfs.Mount(t, tc.fstype, 64)
			watched, other, rescued := filepath.Join(mnt, "watched"), filepath.Join(mnt, "other"), filepath.Join(mnt, "rescued")
			mkdirs(t, filepath.Join(watched, "sub"), other)
			cfg := writeConfig(t, baseConfig("1h", true,
				rule("data", "rescue", []string{watched + "/**"}, "**/*.tmp"), rescued))
			d := startDaemon(t, cfg)

			// Unwatched and excluded files first, the watched one last:
			// by the time it is rescued, the others went through the same
			// sweep.
			unwatched := filepath.Join(other, "u.log")
			excluded := filepath.Join(watched, "sub", "x.tmp")
			holdFile(t, unwatched, []byte("unwatched data"))
			holdFile(t, excluded, []byte("excluded data"))
			want := content("w.log", 200_000)
			target := filepath.Join(watched, "sub", "w.log")
			holdFile(t, target, want)
			// tail -f on a second watched file: the classic holder.
			tailed := filepath.Join(watched, "t.log")
			if err := os.WriteFile(tailed, []byte("tail data\n"), 0o640); err != nil {
				t.Fatal(err)
			}
			// Delete the file once tail has it open (not merely once it
			// has some descriptor: it opens locale files first).
			startShell(t, `tail -f "$1" >/dev/null & pid=$!
while :; do
  for f in /proc/$pid/fd/*; do [ "$(readlink "$f")" = "$1" ] && break 2; done
done
rm "$1"; echo ready; wait`, tailed)

			ev := d.Wait("rescue of "+target, 30*time.Second, Rescued(target))
			if got := ev.str("method"); got != tc.method {
				t.Errorf("method = %q, want %q", got, tc.method)
			}
			if got := ev.num("bytes"); got != int64(len(want)) {
				t.Errorf("bytes = %d, want %d", got, len(want))
			}
			if ev.str("rule") != "data" || (ev.str("comm") != "sh" && ev.str("comm") != "sleep") || ev["uid"] == nil || ev["duration"] == nil || ev["fd"] == nil {
				t.Errorf("event lacks fields: %v", ev)
			}
			to := ev.str("rescued_to")
			if !strings.HasPrefix(to, rescued+"/") {
				t.Errorf("rescued_to %q is not under %s", to, rescued)
			}
			if got := sha(t, to); got != shaBytes(want) {
				t.Errorf("rescued content differs")
			}
			tev := d.Wait("rescue of "+tailed, 30*time.Second, Rescued(tailed))
			if got := sha(t, tev.str("rescued_to")); got != shaBytes([]byte("tail data\n")) {
				t.Errorf("tail -f file: rescued content differs")
			}
			st, err := os.Stat(tev.str("rescued_to"))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o640 {
				t.Errorf("rescued mode %v, want 0640", st.Mode().Perm())
			}

			for _, p := range []string{unwatched, excluded} {
				if evs := d.Events(About(p)); len(evs) > 0 {
					t.Errorf("%s should be left alone, got %v", p, evs)
				}
			}
			files := regularFiles(t, rescued)
			slices.Sort(files)
			wantFiles := []string{to, tev.str("rescued_to")}
			slices.Sort(wantFiles)
			if !slices.Equal(files, wantFiles) {
				t.Errorf("rescue dir holds\n%q\nwant\n%q", files, wantFiles)
			}
			// Exactly one event per file.
			if n := len(d.Events(Rescued(target))); n != 1 {
				t.Errorf("%d rescue events for %s", n, target)
			}
		})
	}
}

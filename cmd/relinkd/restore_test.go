package main

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/internal/testfs"
	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/relink"
)

// restoreRun runs `restore --json` and returns its objects and exit status.
func restoreRun(t *testing.T, args ...string) ([]restoreLine, int) {
	t.Helper()
	out, errOut, code := runBinary(t, append([]string{"restore", "--json"}, args...)...)
	t.Logf("relinkd restore %v: exit %d\n%s%s", args, code, out, errOut)
	var lines []restoreLine
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var r restoreLine
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("restore: %q: %v", l, err)
		}
		lines = append(lines, r)
	}
	return lines, code
}

func statuses(lines []restoreLine) map[string]string {
	m := map[string]string{}
	for _, l := range lines {
		m[filepath.Base(l.To)] = l.Status
	}
	return m
}

// TestRestoreCommand: a set rescued together is restored together, under
// the original names or side by side under --to; an existing file is
// never replaced without --force (and then atomically); a symlink in the
// target path is refused and nothing is written through it; a dry run
// writes nothing.
func TestRestoreCommand(t *testing.T) {
	testfs.RequireRoot(t)
	cfg, _, rescued := rescueSetup(t, "ext4", map[string]string{
		"/src/db/app.db": "database pages", "/src/db/app.db-wal": "write-ahead log", "/src/db/app.db-shm": "index",
		"/src/db/other.log": "unrelated",
	})
	db := rescued["/src/db/app.db"]
	dbPath, dir := db.Path, filepath.Dir(db.Path)
	mnt := strings.TrimSuffix(dbPath, "/src/db/app.db")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	t.Run("dry run", func(t *testing.T) {
		lines, code := restoreRun(t, "--config", cfg, "--dry-run", dbPath)
		want := map[string]string{"app.db": "would_restore", "app.db-wal": "would_restore", "app.db-shm": "would_restore"}
		if code != 0 || !maps.Equal(statuses(lines), want) {
			t.Errorf("exit %d, %v; want 0, %v (the companions come with the database, other.log does not)", code, statuses(lines), want)
		}
		if lines[len(lines)-1].To != dbPath || lines[0].Set != 3 {
			t.Errorf("the database must come last, after its journal, as a set of 3: %+v", lines)
		}
		if got := regular(t, dir); len(got) != 0 {
			t.Errorf("a dry run wrote %v", got)
		}
	})

	t.Run("existing file refuses the set", func(t *testing.T) {
		if err := os.WriteFile(dbPath, []byte("newer"), 0o600); err != nil {
			t.Fatal(err)
		}
		lines, code := restoreRun(t, "--config", cfg, dbPath)
		want := map[string]string{"app.db": "refused", "app.db-wal": "refused", "app.db-shm": "refused"}
		if code != 1 || !maps.Equal(statuses(lines), want) {
			t.Errorf("exit %d, %v; want 1, %v", code, statuses(lines), want)
		}
		if got := regular(t, dir); len(got) != 1 || string(readFile(t, dbPath)) != "newer" {
			t.Errorf("a refused restore changed things: %v, %q", got, readFile(t, dbPath))
		}
	})

	t.Run("force replaces atomically", func(t *testing.T) {
		before := statOf(t, dbPath)
		lines, code := restoreRun(t, "--config", cfg, "--force", dbPath)
		want := map[string]string{"app.db": "restored", "app.db-wal": "restored", "app.db-shm": "restored"}
		if code != 0 || !maps.Equal(statuses(lines), want) {
			t.Fatalf("exit %d, %v; want 0, %v", code, statuses(lines), want)
		}
		after := statOf(t, dbPath)
		if string(readFile(t, dbPath)) != "database pages" || after.Ino == before.Ino || !lines[len(lines)-1].Replaced {
			t.Errorf("not replaced: %q, inode %d (was %d), %+v", readFile(t, dbPath), after.Ino, before.Ino, lines)
		}
		if after.Uid != 1000 || after.Gid != 1001 || after.Mode&0o7777 != 0o640 {
			t.Errorf("restored %d:%d %#o, want the rescued 1000:1001 0640", after.Uid, after.Gid, after.Mode&0o7777)
		}
		if string(readFile(t, dbPath+"-wal")) != "write-ahead log" {
			t.Errorf("wal: %q", readFile(t, dbPath+"-wal"))
		}
		for _, f := range regular(t, dir) {
			if strings.Contains(f, "relinkd-tmp") {
				t.Errorf("temporary left: %s", f)
			}
		}
	})

	t.Run("to a new directory, side by side", func(t *testing.T) {
		to := filepath.Join(mnt, "restored/here")
		lines, code := restoreRun(t, "--config", cfg, "--to", to, db.RescuedTo)
		if code != 0 || len(lines) != 3 {
			t.Fatalf("exit %d, %d lines", code, len(lines))
		}
		for name, want := range map[string]string{"app.db": "database pages", "app.db-wal": "write-ahead log", "app.db-shm": "index"} {
			if got := string(readFile(t, filepath.Join(to, name))); got != want {
				t.Errorf("%s: %q, want %q", name, got, want)
			}
		}
	})

	t.Run("one file under another name", func(t *testing.T) {
		to := filepath.Join(mnt, "other-name.log")
		lines, code := restoreRun(t, "--config", cfg, "--to", to, rescued["/src/db/other.log"].RescuedTo)
		if code != 0 || len(lines) != 1 || string(readFile(t, to)) != "unrelated" {
			t.Errorf("exit %d, %+v", code, lines)
		}
	})

	t.Run("symlink in the target path", func(t *testing.T) {
		elsewhere := t.TempDir()
		// The original directory's parent becomes a symlink elsewhere.
		src := filepath.Join(mnt, "src")
		if err := os.Rename(src, src+".real"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(elsewhere, src); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(elsewhere, "db"), 0o755); err != nil {
			t.Fatal(err)
		}
		lines, code := restoreRun(t, "--config", cfg, "--force", dbPath)
		if code != 1 || len(lines) != 3 || lines[0].Status != "refused" || !strings.Contains(lines[0].Error+lines[1].Error+lines[2].Error, "symlink") {
			t.Errorf("exit %d, %+v; want 1 and the set refused for the symlink", code, lines)
		}
		link := filepath.Join(mnt, "link")
		if err := os.Symlink(elsewhere, link); err != nil {
			t.Fatal(err)
		}
		lines, code = restoreRun(t, "--config", cfg, "--to", link+"/new", dbPath)
		if code != 1 || len(lines) != 3 || lines[0].Status != "refused" {
			t.Errorf("--to through a symlink: exit %d, %+v", code, lines)
		}
		if got := regular(t, elsewhere); len(got) != 0 {
			t.Errorf("written through a symlink: %v", got)
		}
	})

	t.Run("restored by link, then changed", func(t *testing.T) {
		// other-name.log is other.log's rescued inode (restored by link
		// above): what is appended to it changes the rescued file too.
		to := filepath.Join(mnt, "other-name.log")
		f, err := os.OpenFile(to, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(" and more"); err != nil {
			t.Fatal(err)
		}
		f.Close()
		other := rescued["/src/db/other.log"]
		got, _ := listRun(t, "--config", cfg)
		if l := got[other.RescuedTo]; l.Sidecar != "changed" || l.Path != other.Path || l.Links != 2 || !strings.Contains(l.Problem, "restored by link") {
			t.Errorf("list: %+v; want sidecar changed, its claims shown, 2 links", l)
		}
		lines, code := restoreRun(t, "--config", cfg, "--to", filepath.Join(mnt, "again.log"), other.RescuedTo)
		if code != 1 || len(lines) != 1 || lines[0].Status != "refused" {
			t.Errorf("restoring a changed file again: exit %d, %+v; want it refused", code, lines)
		}
	})

	t.Run("mistakes", func(t *testing.T) {
		if _, code := restoreRun(t, "--config", cfg, "/nothing/like/this"); code != 1 {
			t.Errorf("unmatched: exit %d, want 1", code)
		}
		for _, args := range [][]string{{"restore"}, {"restore", "[bad"}, {"restore", "--bogus", "x"}} {
			if _, _, code := runBinary(t, args...); code != 2 {
				t.Errorf("%v: exit %d, want 2", args, code)
			}
		}
	})
}

// regular lists the regular files below dir.
func regular(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}

// TestPlanRestore: sets are the files rescued within a minute of each
// other from one directory; a file brings its companions (names that
// extend its own) and nothing else; a file held in a container is not
// restored under its container path; two files bound for one name are
// both refused.
func TestPlanRestore(t *testing.T) {
	at := time.Date(2026, 11, 21, 20, 30, 0, 0, time.UTC)
	res := func(path string, after time.Duration, container string) rescue {
		return rescue{root: "/r", rel: strings.TrimPrefix(path, "/") + ".x", path: "/r" + path + ".x", at: at.Add(after),
			status: sidecarOK, sc: relink.Sidecar{Path: path, Dev: 1, ContainerID: container}}
	}
	all := []rescue{
		res("/db/app.db", 0, ""),                     // 0
		res("/db/app.db-wal", time.Second, ""),       // 1: companion
		res("/db/app.db-shm", 50*time.Second, ""),    // 2: companion, same round
		res("/db/app.db-journal", 2*time.Minute, ""), // 3: another round
		res("/db/other.db", 0, ""),                   // 4: same round, not a companion
		res("/db/app.db", time.Hour, ""),             // 5: a later rescue of the same name
		res("/ctr/app.log", 0, "0123456789abcdef"),   // 6: in a container
	}
	sets := groupSets(all)
	if sets[0] != sets[1] || sets[0] != sets[2] || sets[0] != sets[4] || sets[3] == sets[0] || sets[5] == sets[0] {
		t.Errorf("sets %v: want 0, 1, 2, 4 together, 3 and 5 apart", sets)
	}
	pol := policy.New(config.Defaults(), zap.NewNop())
	targets := func(items []item) map[string]string {
		m := map[string]string{}
		for _, it := range items {
			m[it.r.path] = it.t.Path
			if it.refuse != "" {
				m[it.r.path] = "refused"
			}
		}
		return m
	}
	got := targets(planRestore(all, []int{0}, sets, restoreOptions{}, pol))
	want := map[string]string{"/r/db/app.db.x": "/db/app.db", "/r/db/app.db-wal.x": "/db/app.db-wal", "/r/db/app.db-shm.x": "/db/app.db-shm"}
	if !maps.Equal(got, want) {
		t.Errorf("app.db brings %v, want %v", got, want)
	}
	got = targets(planRestore(all, []int{0, 5}, sets, restoreOptions{to: "/new/"}, pol))
	if got["/r/db/app.db.x"] != "refused" || got["/r/db/app.db-wal.x"] != "/new/app.db-wal" {
		t.Errorf("two rescues of app.db into one directory: %v", got)
	}
	got = targets(planRestore(all, []int{6}, sets, restoreOptions{}, pol))
	if got["/r/ctr/app.log.x"] != "refused" {
		t.Errorf("a container's file restored under its container path: %v", got)
	}
	got = targets(planRestore(all, []int{6}, sets, restoreOptions{to: "/new/app.log"}, pol))
	if got["/r/ctr/app.log.x"] != "/new/app.log" {
		t.Errorf("a container's file with --to FILE: %v", got)
	}
}

package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/relinkd/relinkd/configs"
)

func TestEmbeddedDefaultEqualsDefaults(t *testing.T) {
	cfg, err := LoadDefault()
	if err != nil {
		t.Fatalf("embedded default does not parse:\n%v", err)
	}
	want := Defaults()
	if !cfg.RulesFromFile {
		t.Error("RulesFromFile = false for a file with a watch key")
	}
	cfg.File, want.File = "", ""
	cfg.RulesFromFile = false
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("configs/relinkd.yaml and Defaults() differ:\n-want\n%s\n+got\n%s", want.YAML(), cfg.YAML())
	}
}

// TestEmptyFile: a file with no settings at all is an error (a failed
// write is likelier than a wish for the defaults); "{}" is the explicit
// way to take every default.
func TestEmptyFile(t *testing.T) {
	for _, tt := range []struct{ name, yaml, want string }{
		{"zero bytes", "", `c.yaml:1: empty: no settings (write "{}" to take every default)`},
		{"blank lines", "\n  \n\n", `c.yaml:1: empty: no settings (write "{}" to take every default)`},
		{"comments only", "# relinkd\n# nothing yet\n", `c.yaml:1: empty: no settings (write "{}" to take every default)`},
		{"null", "# x\n~\n", `c.yaml:2: empty: no settings (write "{}" to take every default)`},
		{"bare document start", "---\n", `c.yaml:1: empty: no settings (write "{}" to take every default)`},
		{"bare document start after comments", "# x\n\n---\n", `c.yaml:3: empty: no settings (write "{}" to take every default)`},
		{"byte order mark only", "\ufeff", `c.yaml:1: empty: no settings (write "{}" to take every default)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("/etc/relinkd/c.yaml", []byte(tt.yaml))
			if err == nil || cfg != nil {
				t.Fatalf("no error; parsed:\n%s", cfg.YAML())
			}
			if !errors.Is(err, ErrInvalid) || err.Error() != tt.want {
				t.Errorf("-want %s\n+got  %v", tt.want, err)
			}
		})
	}
	cfg, err := Parse("c.yaml", []byte("{}\n"))
	if err != nil {
		t.Fatalf("{}: %v", err)
	}
	want := Defaults()
	want.File = "c.yaml"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("{}: not the defaults:\n%s", cfg.YAML())
	}
}

func TestParseValues(t *testing.T) {
	cfg, err := Parse("/etc/relinkd/relinkd.yaml", []byte(`
scan: {interval: 2m, events: false, max_watches: 100, fs_timeout: 500ms, stall_timeout: 2m, backend: proc}
watch:
  - name: app
    paths: /srv/app/**
    commands: [java*, "nginx"]
    users: [root, 1000]
    min_size: 1KiB
    max_size: 1.5GB
    action: report
rescue:
  dirs: [/data/rescue, /var/rescue]
  fs_dir: ""
  cross_fs: true
  methods: [copy]
  min_free: 2GiB
  max_file_size: 0
  retention: 1d12h
  per_user: {max_files: 3, window: 10m, max_share: 5%}
  containers: inside
  container_dir: /data/containers/
log: {level: debug, format: console}
metrics: {listen: "127.0.0.1:9847"}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	want.File = "/etc/relinkd/relinkd.yaml"
	want.RulesFromFile = true
	want.Scan = ScanConfig{Interval: Duration(2 * time.Minute), Events: false, MaxWatches: 100,
		FSTimeout: Duration(500 * time.Millisecond), StallTimeout: Duration(2 * time.Minute), Backend: "proc"}
	want.Watch = []Rule{{Name: "app", Paths: []string{"/srv/app/**"}, Commands: []string{"java*", "nginx"},
		Users: []string{"root", "1000"}, MinSize: 1024, MaxSize: 1500 * 1000 * 1000, Action: ActionReport}}
	want.Rescue.Dirs = []string{"/data/rescue", "/var/rescue"}
	want.Rescue.FSDir = ""
	want.Rescue.CrossFS = true
	want.Rescue.Methods = []string{"copy"}
	want.Rescue.MinFree = Threshold{Bytes: 2 << 30}
	want.Rescue.MaxFileSize = 0
	want.Rescue.Retention = Duration(36 * time.Hour)
	want.Rescue.PerUser = PerUser{MaxFiles: 3, MaxBytes: 2 << 30, Window: Duration(10 * time.Minute), MaxShare: Threshold{Percent: 5, IsPercent: true}}
	want.Rescue.Containers, want.Rescue.ContainerDir = ContainersInside, "/data/containers"
	want.Log = LogConfig{Level: "debug", Format: "console"}
	want.Metrics.Listen = "127.0.0.1:9847"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("-want\n%s\n+got\n%s", want.YAML(), cfg.YAML())
	}
	// The effective configuration parses back to itself.
	again, err := Parse(cfg.File, cfg.YAML())
	if err != nil {
		t.Fatalf("effective config does not parse: %v\n%s", err, cfg.YAML())
	}
	if !reflect.DeepEqual(again, cfg) {
		t.Errorf("round trip differs:\n-want\n%s\n+got\n%s", cfg.YAML(), again.YAML())
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"unknown top key", "scan: {}\nfoo: 1\n", `c.yaml:2: foo: unknown key`},
		{"unknown nested key", "scan:\n  intervl: 30s\n", `c.yaml:2: scan.intervl: unknown key`},
		{"unknown rule key", "watch:\n  - name: a\n    paths: [/x]\n    path: /y\n", `c.yaml:4: watch[0].path: unknown key`},
		{"duplicate key", "log:\n  level: info\n  level: debug\n", `c.yaml:3: log.level: duplicate key`},
		{"section not a mapping", "rescue: [a]\n", `c.yaml:1: rescue: expected a mapping, got a list`},
		{"watch not a list", "watch: {name: a}\n", `c.yaml:1: watch: expected a list of rules, got a mapping`},
		{"rule not a mapping", "watch:\n  - /var/log\n", `c.yaml:2: watch[0]: expected a mapping, got a string`},
		{"bad size with space", "watch:\n  - name: a\n    paths: [/x]\n  - name: b\n    paths: [/y]\n    max_size: 10 GB\n", `c.yaml:6: watch[1].max_size: "10 GB" is not a size (e.g. 500MB, 10GiB)`},
		{"bad size unit", "rescue:\n  max_file_size: 10GB2\n", `c.yaml:2: rescue.max_file_size: "10GB2" is not a size (e.g. 500MB, 10GiB)`},
		{"negative size", "rescue:\n  max_total_size: -1\n", `c.yaml:2: rescue.max_total_size: "-1" is not a size (e.g. 500MB, 10GiB)`},
		{"size is a list", "rescue:\n  max_total_size: [1]\n", `c.yaml:2: rescue.max_total_size: expected a size, got a list`},
		{"bad duration", "scan:\n  interval: 7x\n", `c.yaml:2: scan.interval: "7x" is not a duration (e.g. 30s, 1h, 7d)`},
		{"duration without unit", "rescue:\n  retention: 5\n", `c.yaml:2: rescue.retention: "5" is not a duration (e.g. 30s, 1h, 7d)`},
		{"negative duration", "rescue:\n  retention: -1h\n", `c.yaml:2: rescue.retention: "-1h" is not a duration (e.g. 30s, 1h, 7d)`},
		{"interval too short", "scan:\n  interval: 10ms\n", `c.yaml:2: scan.interval: "10ms" is too short (at least 1s)`},
		{"bad percentage", "rescue:\n  min_free: 110%\n", `c.yaml:2: rescue.min_free: "110%" is not a percentage (0-99.9%) or a size`},
		{"percentage word", "rescue:\n  min_free: ten%\n", `c.yaml:2: rescue.min_free: "ten%" is not a percentage (0-99.9%) or a size`},
		{"bad boolean", "scan:\n  events: yes\n", `c.yaml:2: scan.events: "yes" is not a boolean (true or false)`},
		{"boolean is a string", "rescue:\n  follow: \"true\"\n", `c.yaml:2: rescue.follow: "true" is not a boolean (true or false)`},
		{"bad glob", "watch:\n  - name: a\n    paths: [/var/log/**, \"/var/[log\"]\n", `c.yaml:3: watch[0].paths[1]: "/var/[log" is not a valid glob`},
		{"relative glob", "watch:\n  - name: a\n    paths: [var/log/*]\n", `c.yaml:3: watch[0].paths[0]: "var/log/*" is not an absolute path glob (starts with / or **)`},
		{"bad exclude glob", "watch:\n  - name: a\n    paths: [/x/**]\n    exclude: [\"/x/{a\"]\n", `c.yaml:4: watch[0].exclude[0]: "/x/{a" is not a valid glob`},
		{"bad command", "watch:\n  - name: a\n    paths: [/x]\n    commands: [/usr/bin/java]\n", `c.yaml:4: watch[0].commands[0]: "/usr/bin/java" is not a command glob (a name such as nginx or java*, without /)`},
		{"bad user", "watch:\n  - name: a\n    paths: [/x]\n    users: [\"a b\"]\n", `c.yaml:4: watch[0].users[0]: "a b" is not a user name or uid`},
		{"uid too big", "watch:\n  - name: a\n    paths: [/x]\n    users: [99999999999]\n", `c.yaml:4: watch[0].users[0]: "99999999999" is not a user name or uid`},
		{"bad action", "watch:\n  - name: a\n    paths: [/x]\n    action: keep\n", `c.yaml:4: watch[0].action: "keep" is not one of rescue, report`},
		{"missing name", "watch:\n  - paths: [/x]\n", `c.yaml:2: watch[0].name: missing (every rule needs a name; it appears in logs)`},
		{"duplicate name", "watch:\n  - name: a\n    paths: [/x]\n  - name: a\n    paths: [/y]\n", `c.yaml:4: watch[1].name: "a" is already the name of watch[0]`},
		{"missing paths", "watch:\n  - name: a\n", `c.yaml:2: watch[0].paths: missing (at least one path glob)`},
		{"empty paths", "watch:\n  - name: a\n    paths: []\n", `c.yaml:3: watch[0].paths: empty (at least one path glob)`},
		{"min above max", "watch:\n  - name: a\n    paths: [/x]\n    min_size: 2MiB\n    max_size: 1MiB\n", `c.yaml:5: watch[0].max_size: 1MiB is below min_size 2MiB`},
		{"bad method", "rescue:\n  methods: [link, move]\n", `c.yaml:2: rescue.methods[1]: "move" is not one of link, reflink, copy`},
		{"no methods", "rescue:\n  methods: []\n", `c.yaml:2: rescue.methods: empty (at least one of link, reflink, copy)`},
		{"relative dir", "rescue:\n  dirs: [rescued]\n", `c.yaml:2: rescue.dirs[0]: "rescued" is not an absolute directory (and not /)`},
		{"bad fs_dir", "rescue:\n  fs_dir: a/b\n", `c.yaml:2: rescue.fs_dir: "a/b" is not a directory name (one name, no /; empty disables it)`},
		{"bad containers", "rescue:\n  containers: outside\n", `c.yaml:2: rescue.containers: "outside" is not one of host, inside`},
		{"relative container_dir", "rescue:\n  container_dir: containers\n", `c.yaml:2: rescue.container_dir: "containers" is not an absolute directory (and not /)`},
		{"container_dir list", "rescue:\n  container_dir: [/a]\n", `c.yaml:2: rescue.container_dir: expected a directory, got a list`},
		{"bad backend", "scan:\n  backend: ebpf\n", `c.yaml:2: scan.backend: "ebpf" is not one of auto, proc, bpf`},
		{"zero watches", "scan:\n  max_watches: 0\n", `c.yaml:2: scan.max_watches: must be at least 1 (set events: false to watch nothing)`},
		{"max_share not a share", "rescue:\n  per_user:\n    max_share: 1GiB\n", `c.yaml:3: rescue.per_user.max_share: "1GiB" is not a percentage (0-99.9%; 0% for no cap)`},
		{"fs_timeout too short", "scan:\n  fs_timeout: 1ms\n", `c.yaml:2: scan.fs_timeout: "1ms" is out of range (100ms to 10m)`},
		{"stall_timeout too long", "scan:\n  stall_timeout: 2h\n", `c.yaml:2: scan.stall_timeout: "2h" is out of range (1s to 1h)`},
		{"bad count", "rescue:\n  per_user:\n    max_files: many\n", `c.yaml:3: rescue.per_user.max_files: "many" is not a count (a whole number ≥ 0)`},
		{"zero window", "rescue:\n  per_user:\n    window: 0s\n", `c.yaml:3: rescue.per_user.window: "0s" is too short (at least 1s)`},
		{"bad level", "log:\n  level: loud\n", `c.yaml:2: log.level: "loud" is not one of debug, info, warn, error`},
		{"bad format", "log:\n  format: xml\n", `c.yaml:2: log.format: "xml" is not one of json, console`},
		{"bad listen", "metrics:\n  listen: localhost\n", `c.yaml:2: metrics.listen: "localhost" is not a listen address (host:port, e.g. 127.0.0.1:9847)`},
		{"null value", "log:\n  level:\n", `c.yaml:2: log.level: expected a string, got null`},
		{"alias", "log: &l {level: info}\nmetrics: *l\n", `c.yaml:2: metrics: expected a mapping, got an alias`},
		{"not a mapping", "just text\n", `c.yaml:1: expected a mapping, got a string`},
		{"syntax error", "scan:\n  interval: 30s\n events: true\n", `c.yaml:3: syntax: did not find expected key`},
		{"tab indentation", "scan:\n\tinterval: 30s\n", `c.yaml:2: syntax: found character that cannot start any token`},
		{"second document", "log: {level: info}\n---\nlog: {level: debug}\n", `c.yaml:2: a second YAML document starts here (---): a configuration file holds one`},
		{"empty second document", "log: {level: info}\n\n---\n", `c.yaml:3: a second YAML document starts here (---): a configuration file holds one`},
		{"second document after an end marker", "log: {level: info}\n...\n--- {}\n", `c.yaml:3: a second YAML document starts here (---): a configuration file holds one`},
		{"empty name", "watch:\n  - name: \"\"\n    paths: [/x]\n", `c.yaml:2: watch[0].name: must not be empty (it names the rule in logs)`},
		{"null name", "watch:\n  - name:\n    paths: [/x]\n", `c.yaml:2: watch[0].name: expected a string, got null`},
		{"size too large", "watch:\n  - name: a\n    paths: [/x]\n    min_size: 18000000TB\n", `c.yaml:4: watch[0].min_size: "18000000TB" is too large (at most 9223372036854775807 bytes, the largest file size)`},
		{"size too large in bytes", "rescue:\n  max_total_size: 9223372036854775808\n", `c.yaml:2: rescue.max_total_size: "9223372036854775808" is too large (at most 9223372036854775807 bytes, the largest file size)`},
		{"size beyond 64 bits", "rescue:\n  max_total_size: 18446744073709551616\n", `c.yaml:2: rescue.max_total_size: "18446744073709551616" is too large (at most 9223372036854775807 bytes, the largest file size)`},
		{"fractional size too large", "rescue:\n  max_file_size: 8388608.5TiB\n", `c.yaml:2: rescue.max_file_size: "8388608.5TiB" is too large (at most 9223372036854775807 bytes, the largest file size)`},
		{"min_free too large", "rescue:\n  min_free: 10000000TiB\n", `c.yaml:2: rescue.min_free: "10000000TiB" is too large (at most 9223372036854775807 bytes, the largest file size)`},
		{"fraction without unit", "rescue:\n  max_file_size: 1.5\n", `c.yaml:2: rescue.max_file_size: "1.5" is a fraction of a byte (a fraction needs a unit, e.g. 1.5GiB)`},
		{"fraction of a byte", "rescue:\n  per_user:\n    max_bytes: 0.5B\n", `c.yaml:3: rescue.per_user.max_bytes: "0.5B" is a fraction of a byte (a fraction needs a unit, e.g. 1.5GiB)`},
		{"port not a number", "metrics:\n  listen: \"localhost:abc\"\n", `c.yaml:2: metrics.listen: "localhost:abc" is not a listen address (port "abc" is not a number 0-65535)`},
		{"port out of range", "metrics:\n  listen: \"127.0.0.1:65536\"\n", `c.yaml:2: metrics.listen: "127.0.0.1:65536" is not a listen address (port "65536" is not a number 0-65535)`},
		{"service name port", "metrics:\n  listen: \"[::1]:http\"\n", `c.yaml:2: metrics.listen: "[::1]:http" is not a listen address (port "http" is not a number 0-65535)`},
		{"duplicate method", "rescue:\n  methods: [copy, link, copy]\n", `c.yaml:2: rescue.methods[2]: "copy" is listed twice`},
		{"size rounds to zero", "rescue:\n  max_file_size: 0.0000000001KiB\n", `c.yaml:2: rescue.max_file_size: "0.0000000001KiB" rounds down to 0 bytes (write 0 if 0 is meant)`},
		{"rule size rounds to zero", "watch:\n  - name: a\n    paths: [/x]\n    min_size: 0.0009kB\n", `c.yaml:4: watch[0].min_size: "0.0009kB" rounds down to 0 bytes (write 0 if 0 is meant)`},
		{"min_free rounds to zero", "rescue:\n  min_free: 0.0000000000001TiB\n", `c.yaml:2: rescue.min_free: "0.0000000000001TiB" rounds down to 0 bytes (write 0 if 0 is meant)`},
		{"fraction of a byte below one", "rescue:\n  max_total_size: 0.4B\n", `c.yaml:2: rescue.max_total_size: "0.4B" is a fraction of a byte (a fraction needs a unit, e.g. 1.5GiB)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("/some/dir/c.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error; parsed:\n%s", cfg.YAML())
			}
			if cfg != nil {
				t.Errorf("config returned with an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error is %T, not Errors", err)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("-want %s\n+got  %s", tt.want, got)
			}
		})
	}
}

// TestParseZeroSizes: a zero written as zero stays "no limit"; only a
// non-zero fraction that rounds down to 0 is refused.
func TestParseZeroSizes(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte("rescue:\n  max_file_size: 0\n  max_total_size: 0KiB\n  per_user: {max_bytes: 0.0GiB}\n  min_free: 0B\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Rescue
	if r.MaxFileSize != 0 || r.MaxTotalSize != 0 || r.PerUser.MaxBytes != 0 || r.MinFree != (Threshold{}) {
		t.Errorf("zeros not kept: %+v", r)
	}
}

// TestSyntaxErrorLines: every YAML syntax error names its line, including
// those yaml.v3 reports without one (an unknown anchor, a control
// character, invalid UTF-8, anything on the first line) or one line too
// early (its parser's errors).
func TestSyntaxErrorLines(t *testing.T) {
	deep := strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"unknown anchor", "log:\n  level: info\nmetrics: *nope\n", `c.yaml:3: syntax: unknown anchor 'nope' referenced`},
		{"unknown anchor on the first line", "metrics: *nope\n", `c.yaml:1: syntax: unknown anchor 'nope' referenced`},
		{"unknown anchor after look-alikes", "# see *nope\nlog: {level: \"*nope\"}\nwatch:\n  - name: 'a *nope'\n    paths: [*nope]\n", `c.yaml:5: syntax: unknown anchor 'nope' referenced`},
		{"unknown anchor, a longer name first", "a: &nopes 1\nb: *nopes\nc: [*nope]\n", `c.yaml:3: syntax: unknown anchor 'nope' referenced`},
		{"unknown anchor used before its definition", "scan: *s\nlog: &s {level: info}\n", `c.yaml:1: syntax: unknown anchor 's' referenced`},
		{"unknown anchor in a second document", "{}\n---\nmetrics: *nope\n", `c.yaml:3: syntax: unknown anchor 'nope' referenced`},
		{"control character", "log:\n  level: in\x01fo\n", `c.yaml:2: syntax: control character U+0001 at column 12 (a configuration is UTF-8 text without control characters)`},
		{"control character in a key", "log:\n  level: info\n\x01: x\n", `c.yaml:3: syntax: control character U+0001 at column 1 (a configuration is UTF-8 text without control characters)`},
		{"NUL", "\x00", `c.yaml:1: syntax: control character U+0000 at column 1 (a configuration is UTF-8 text without control characters)`},
		{"control character after a byte order mark", "\ufefflog: \x02\n", `c.yaml:1: syntax: control character U+0002 at column 6 (a configuration is UTF-8 text without control characters)`},
		{"DEL in a comment", "# a\x7f\n{}\n", `c.yaml:1: syntax: control character U+007F at column 4 (a configuration is UTF-8 text without control characters)`},
		{"control character after CR LF lines", "log:\r\n  level: info\r\n\x1b[0m\r\n", `c.yaml:3: syntax: control character U+001B at column 1 (a configuration is UTF-8 text without control characters)`},
		{"control character after CR lines", "log:\r  level: info\r\x1b\r", `c.yaml:3: syntax: control character U+001B at column 1 (a configuration is UTF-8 text without control characters)`},
		{"invalid UTF-8", "log:\n  level: \xff\xfe\n", `c.yaml:2: syntax: invalid UTF-8 (byte 0xff) at column 10 (a configuration is UTF-8 text without control characters)`},
		{"invalid UTF-8 in a comment", "# c\nlog:\n  # \xc3\x28\n  level: info\n", `c.yaml:3: syntax: invalid UTF-8 (byte 0xc3) at column 5 (a configuration is UTF-8 text without control characters)`},
		{"truncated UTF-8", "log:\n  level: \xc3\xa9\xe2\x82", `c.yaml:2: syntax: invalid UTF-8 (byte 0xe2) at column 11 (a configuration is UTF-8 text without control characters)`},
		{"UTF-8 surrogate", "log: {level: \xed\xa0\x80}\n", `c.yaml:1: syntax: invalid UTF-8 (byte 0xed) at column 14 (a configuration is UTF-8 text without control characters)`},
		{"UTF-16 lone surrogate", "\xff\xfe{\x00}\x00\n\x00\x00\xd8", `c.yaml:2: syntax: invalid UTF-16 at column 1 (a lone surrogate or an odd byte)`},
		{"UTF-16 odd length", "\xfe\xff\x00{\x00}\x00", `c.yaml:1: syntax: invalid UTF-16 at column 3 (a lone surrogate or an odd byte)`},
		{"depth limit", "watch:\n  " + deep + "\n", `c.yaml:2: syntax: exceeded max depth of 10000`},
		{"depth limit on the first line", deep + "\n", `c.yaml:1: syntax: exceeded max depth of 10000`},
		{"depth limit of indentation", "a:\n" + strings.Repeat("- ", 10001) + "\n", `c.yaml:2: syntax: exceeded max depth of 10000`},
		{"depth limit of mappings", "a:\n  " + strings.Repeat("{", 10001) + "\n", `c.yaml:2: syntax: exceeded max depth of 10000`},
		{"YAML version", "%YAML 9.9\n---\nlog: {level: info}\n", `c.yaml:1: syntax: found incompatible YAML document (the parser knows only "%YAML 1.1"; the directive can be left out)`},
		{"YAML 1.2 after a comment", "# c\n%YAML 1.2\n---\n{}\n", `c.yaml:2: syntax: found incompatible YAML document (the parser knows only "%YAML 1.1"; the directive can be left out)`},
		{"duplicate YAML directive", "# c\n%YAML 1.1\n%YAML 1.1\n---\n{}\n", `c.yaml:3: syntax: found duplicate %YAML directive`},
		{"unknown directive", "%FOO bar\n---\n{}\n", `c.yaml:1: syntax: found unknown directive name`},
		{"bad TAG directive", "%TAG ! \n---\n{}\n", `c.yaml:1: syntax: did not find expected tag URI`},
		{"duplicate TAG directive", "%TAG !e! tag:e.com,2000:\n%TAG !e! tag:e.com,2000:\n---\n{}\n", `c.yaml:2: syntax: found duplicate %TAG directive`},
		{"undefined tag handle", "log:\n  level: !e!x info\n", `c.yaml:2: syntax: found undefined tag handle`},
		{"undefined tag handle on the first line", "log: !e!x {}\n", `c.yaml:1: syntax: found undefined tag handle`},
		{"reserved indicator on the first line", "log: @x\n", `c.yaml:1: syntax: found character that cannot start any token`},
		{"nested mapping on the first line", "log: level: info\n", `c.yaml:1: syntax: mapping values are not allowed in this context`},
		{"unclosed flow sequence", "log:\n  level: info\nwatch:\n  - name: a\n    paths: [/x", `c.yaml:5: syntax: did not find expected ',' or ']'`},
		{"unclosed flow mapping", "\nlog: {level: info\n", `c.yaml:2: syntax: did not find expected ',' or '}'`},
		{"block sequence broken", "watch:\n  - name: a\n  paths: [/x]\n", `c.yaml:2: syntax: did not find expected '-' indicator`},
		{"document end alone", "...\n", `c.yaml:1: syntax: did not find expected node content`},
		{"unterminated string", "log:\n  level: \"info\n", `c.yaml:2: syntax: found unexpected end of stream`},
		{"bad escape", "log:\n  level: \"\\q\"\n", `c.yaml:2: syntax: found unknown escape character`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("/some/dir/c.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error; parsed:\n%s", cfg.YAML())
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("-want %s\n+got  %s", tt.want, got)
			}
		})
	}
}

// TestUTF16 is read as yaml.v3 reads it, with either byte order mark.
func TestUTF16(t *testing.T) {
	for _, data := range []string{
		"\xff\xfel\x00o\x00g\x00:\x00 \x00{\x00l\x00e\x00v\x00e\x00l\x00:\x00 \x00w\x00a\x00r\x00n\x00}\x00\n\x00",
		"\xfe\xff\x00l\x00o\x00g\x00:\x00 \x00{\x00l\x00e\x00v\x00e\x00l\x00:\x00 \x00w\x00a\x00r\x00n\x00}\x00\n",
	} {
		cfg, err := Parse("c.yaml", []byte(data))
		if err != nil || cfg.Log.Level != "warn" {
			t.Errorf("%q: %v", data, err)
		}
	}
}

// TestLimits: at most MaxRules rules and MaxListItems items in a list;
// beyond, an error at the first item too many.
func TestLimits(t *testing.T) {
	rules := func(n int) string {
		var b strings.Builder
		b.WriteString("watch:\n")
		for i := range n {
			fmt.Fprintf(&b, "  - {name: r%d, paths: [/x/%d/**]}\n", i, i)
		}
		return b.String()
	}
	list := func(key string, n int, item func(int) string) string {
		var b strings.Builder
		b.WriteString("watch:\n  - name: a\n")
		if key != "paths" {
			b.WriteString("    paths: [/x]\n")
		}
		b.WriteString("    " + key + ":\n")
		for i := range n {
			b.WriteString("      - " + item(i) + "\n")
		}
		return b.String()
	}
	glob := func(i int) string { return fmt.Sprintf("/x/%d", i) }
	tests := []struct {
		name string
		yaml string
		want string // "" for no error
	}{
		{"rules at the limit", rules(MaxRules), ""},
		{"one rule too many", rules(MaxRules + 1), `c.yaml:1002: watch[1000]: beyond the limit of 1000 rules`},
		{"rules beyond the limit, errors within it", strings.Replace(rules(MaxRules+5), "paths: [/x/3/**]", "paths: [x]", 1),
			"c.yaml:5: watch[3].paths[0]: \"x\" is not an absolute path glob (starts with / or **)\n" +
				`c.yaml:1002: watch[1000]: beyond the limit of 1000 rules`},
		{"paths at the limit", list("paths", MaxListItems, glob), ""},
		{"one path too many", list("paths", MaxListItems+1, glob), `c.yaml:104: watch[0].paths[100]: beyond the limit of 100 items in a list`},
		{"excludes", list("exclude", MaxListItems+1, glob), `c.yaml:105: watch[0].exclude[100]: beyond the limit of 100 items in a list`},
		{"commands", list("commands", MaxListItems+1, func(i int) string { return fmt.Sprintf("c%d", i) }), `c.yaml:105: watch[0].commands[100]: beyond the limit of 100 items in a list`},
		{"users", list("users", MaxListItems+1, func(i int) string { return fmt.Sprint(i) }), `c.yaml:105: watch[0].users[100]: beyond the limit of 100 items in a list`},
		{"rescue dirs", "rescue:\n  dirs: [" + strings.Repeat("/r, ", MaxListItems) + "/r]\n", `c.yaml:2: rescue.dirs[100]: beyond the limit of 100 items in a list`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("c.yaml", []byte(tt.yaml))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || cfg != nil {
				t.Fatal("no error")
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("-want %s\n+got  %s", tt.want, got)
			}
		})
	}
}

func TestParseReportsAllErrors(t *testing.T) {
	data := `scan:
  interval: soon
  events: maybe
watch:
  - name: logs
    paths: [/var/log/**]
    max_size: 10 GB
  - name: x
    paths: ["/a/[b"]
    action: keep
rescue:
  min_free: 200%
  colour: blue
`
	_, err := Parse("relinkd.yaml", []byte(data))
	want := []string{
		`relinkd.yaml:2: scan.interval: "soon" is not a duration (e.g. 30s, 1h, 7d)`,
		`relinkd.yaml:3: scan.events: "maybe" is not a boolean (true or false)`,
		`relinkd.yaml:7: watch[0].max_size: "10 GB" is not a size (e.g. 500MB, 10GiB)`,
		`relinkd.yaml:9: watch[1].paths[0]: "/a/[b" is not a valid glob`,
		`relinkd.yaml:10: watch[1].action: "keep" is not one of rescue, report`,
		`relinkd.yaml:12: rescue.min_free: "200%" is not a percentage (0-99.9%) or a size`,
		`relinkd.yaml:13: rescue.colour: unknown key`,
	}
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v is not Errors", err)
	}
	if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("-want\n%s\n+got\n%s", strings.Join(want, "\n"), err)
	}
	if len(es) != len(want) {
		t.Errorf("%d errors, want %d", len(es), len(want))
	}
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	sys := dir + "/relinkd.yaml"
	// No system file: the embedded default.
	cfg, src, err := resolve("", sys)
	if err != nil || src != "(embedded)" || cfg.Rescue.MaxFileSize != Defaults().Rescue.MaxFileSize {
		t.Fatalf("no file: %q %v", src, err)
	}
	writeFile(t, sys, "log: {level: warn}\n")
	cfg, src, err = resolve("", sys)
	if err != nil || src != sys || cfg.Log.Level != "warn" {
		t.Fatalf("system file: %q %v %+v", src, err, cfg)
	}
	other := dir + "/other.yaml"
	writeFile(t, other, "log: {level: error}\n")
	cfg, src, err = resolve(other, sys)
	if err != nil || src != other || cfg.Log.Level != "error" {
		t.Fatalf("explicit file: %q %v", src, err)
	}
	if _, _, err := resolve(dir+"/missing.yaml", sys); err == nil {
		t.Fatal("missing explicit file: no error")
	}
	if len(configs.Default()) == 0 {
		t.Fatal("no embedded default")
	}
}

package config

import (
	"reflect"
	"testing"

	"github.com/relinkd/relinkd/configs"
)

// FuzzParse feeds arbitrary bytes to the decoder: it never panics, and a
// configuration it accepts prints as YAML that parses back to itself.
func FuzzParse(f *testing.F) {
	f.Add(configs.Default())
	for _, s := range []string{
		"", "~", "scan: {interval: 7d, events: true}\n",
		"watch:\n  - name: a\n    paths: [/x/**]\n    max_size: 10 GB\n",
		"rescue:\n  min_free: 10%\n  per_user: {max_files: 1, window: 1s}\n",
		"rescue: {dirs: [/r], fs_dir: \"\", methods: [copy], cross_fs: true}\n",
		"log: &a {level: info}\nmetrics: *a\n",
		"watch: [{name: b, paths: \"/[\", users: [0, root], commands: [\"*\"]}]\n",
		"- 1\n- 2\n", "a: b: c", "\t", "rescue: {max_file_size: 1.5GiB, retention: 1w2d}\n",
		"log: {level: info}\n---\nlog: {level: debug}\n", "scan: {}\n...\n",
		"watch: [{name: \"\", paths: [/x]}]\n", "watch: [{name: a, paths: [/x], min_size: 18000000TB}]\n",
		"rescue: {max_file_size: 1.5, max_total_size: 9223372036854775807, methods: [copy, copy]}\n",
		"metrics: {listen: \"localhost:abc\"}\n", "metrics: {listen: \":0\"}\n",
		"{}\n", "# c\n", "log: {level: in\x01fo}\n", "log: \xff\n", "metrics: *nope\n# *nope\n",
		"\xff\xfe{\x00}\x00", "\xfe\xff\x00{\x00}", "%YAML 9.9\n---\n{}\n", "rescue: {max_file_size: 0.0001kB}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			if cfg != nil {
				t.Fatal("config with error")
			}
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		again, err := Parse("fuzz.yaml", cfg.YAML())
		if err != nil {
			t.Fatalf("effective config does not parse: %v\n%s", err, cfg.YAML())
		}
		// The effective configuration lists the rules, built-in or not.
		if !again.RulesFromFile {
			t.Fatal("effective config: RulesFromFile = false")
		}
		again.RulesFromFile = cfg.RulesFromFile
		if !reflect.DeepEqual(again, cfg) {
			t.Fatalf("round trip differs:\n%s\n%s", cfg.YAML(), again.YAML())
		}
	})
}

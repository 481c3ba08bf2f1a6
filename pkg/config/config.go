// Package config is relinkd's configuration: the YAML file (Parse, Load,
// Resolve), its units (sizes, durations, thresholds), the defaults
// (Defaults, the embedded configs/relinkd.yaml) and the errors that name
// the file, line and field of each bad setting.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/configs"
)

// DefaultPath is where relinkd looks for its configuration when no
// --config flag is given.
const DefaultPath = "/etc/relinkd/relinkd.yaml"

// Action is what a watch rule does with a file it matches.
type Action string

// Rule actions.
const (
	ActionRescue Action = "rescue" // give the data a name again
	ActionReport Action = "report" // only log that the file is deleted but open
)

// Config is a parsed and validated configuration with every default filled.
type Config struct {
	Scan    ScanConfig    `yaml:"scan"`
	Watch   []Rule        `yaml:"watch"`
	Rescue  RescueConfig  `yaml:"rescue"`
	Log     LogConfig     `yaml:"log"`
	Metrics MetricsConfig `yaml:"metrics"`

	// File is the name the configuration was read from ("" for none).
	File string `yaml:"-"`
	// RulesFromFile is true when the file has a watch key (watch: [] too);
	// false when it has none and Watch holds the built-in rules. A reload
	// does not fall back to them silently (CheckReload).
	RulesFromFile bool `yaml:"-"`
}

// ScanConfig says how often and how the daemon looks for deleted files.
type ScanConfig struct {
	Interval Duration `yaml:"interval"` // period of the full /proc sweep
	Events   bool     `yaml:"events"`   // also react to deletions in watched directories at once
	// MaxWatches bounds the inotify watches of the event path; directories
	// beyond it are left to the sweeps.
	MaxWatches int `yaml:"max_watches"`
	// FSTimeout bounds a call that asks a holder's filesystem (the stat
	// that confirms a deletion, the open of the pin); past it the
	// filesystem is unresponsive and its files are skipped until the call
	// returns.
	FSTimeout Duration `yaml:"fs_timeout"`
	// StallTimeout is how long a rescue may go without copying a chunk
	// before its worker is taken for stuck and replaced.
	StallTimeout Duration `yaml:"stall_timeout"`
	// Backend is how sweeps find deleted-but-open files: "proc" reads
	// /proc/PID/fd, "bpf" walks the descriptor tables in the kernel (an
	// eBPF iterator: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN), "auto"
	// (the default) takes BPF where it loads and /proc elsewhere. BPF
	// that fails falls back to /proc.
	Backend string `yaml:"backend"`
}

// Rule is one watch rule. The first rule that matches a file decides.
type Rule struct {
	Name     string   `yaml:"name"`
	Paths    []string `yaml:"paths"`             // globs with ** on the holder's view of the path
	Exclude  []string `yaml:"exclude,omitempty"` // globs that take a file out of this rule
	Commands []string `yaml:"commands,omitempty"`
	Users    []string `yaml:"users,omitempty"`
	MinSize  Size     `yaml:"min_size"`
	MaxSize  Size     `yaml:"max_size"` // 0: no upper bound
	Action   Action   `yaml:"action"`
}

// RescueConfig says where rescued files go and within which limits.
type RescueConfig struct {
	Dirs         []string  `yaml:"dirs"`
	FSDir        string    `yaml:"fs_dir"`   // per-filesystem directory at a mount's root, "" disables it
	CrossFS      bool      `yaml:"cross_fs"` // allow a copy onto another filesystem
	Methods      []string  `yaml:"methods"`
	MinFree      Threshold `yaml:"min_free"`
	MaxFileSize  Size      `yaml:"max_file_size"`  // 0: no limit
	MaxTotalSize Size      `yaml:"max_total_size"` // per rescue root, 0: no limit
	Retention    Duration  `yaml:"retention"`      // 0: keep until max_total_size forces pruning
	Follow       bool      `yaml:"follow"`
	PerUser      PerUser   `yaml:"per_user"`

	// Containers says where the files of a holder in a container go:
	// ContainersHost outside it, below ContainerDir; ContainersInside in
	// the container's own filesystem, fs_dir at the root of the file's
	// mount as the container sees it.
	Containers   string `yaml:"containers"`
	ContainerDir string `yaml:"container_dir"`
}

// Values of rescue.containers.
const (
	ContainersHost   = "host"
	ContainersInside = "inside"
)

// PerUser caps what the files of one owner (uid) may take within a window,
// so that one user creating and deleting files in a watched path cannot
// exhaust the space or the workers.
type PerUser struct {
	MaxFiles int      `yaml:"max_files"` // 0: no limit
	MaxBytes Size     `yaml:"max_bytes"` // 0: no limit
	Window   Duration `yaml:"window"`
	// MaxShare caps what one owner's rescued files may hold in a rescue
	// root, as a share of its filesystem, counted on disk (not only
	// within the window); 0%: no cap.
	MaxShare Threshold `yaml:"max_share"`
}

// LogConfig configures the daemon's log output.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// MetricsConfig configures the Prometheus endpoint.
type MetricsConfig struct {
	Listen string `yaml:"listen"` // "" disables it
}

// Rescue methods, cheapest first.
const (
	MethodLink    = "link"
	MethodReflink = "reflink"
	MethodCopy    = "copy"
)

// Defaults returns the configuration used for every key a file leaves out.
// It equals the embedded configs/relinkd.yaml (a test checks that).
// DefaultMaxWatches is scan.max_watches when the configuration omits it:
// enough for large log trees, small beside the kernel's default
// fs.inotify.max_user_watches.
const DefaultMaxWatches = 8192

func Defaults() *Config {
	return &Config{
		Scan: ScanConfig{Interval: Duration(30 * time.Second), Events: true, MaxWatches: DefaultMaxWatches,
			FSTimeout: Duration(3 * time.Second), StallTimeout: Duration(30 * time.Second), Backend: "auto"},
		Watch: []Rule{
			{
				Name:    "logs",
				Paths:   []string{"/var/log/**"},
				Exclude: []string{"/var/log/journal/**"},
				Action:  ActionRescue,
			},
			{
				Name:    "service-data",
				Paths:   []string{"/srv/**"},
				Exclude: []string{"**/*.tmp", "**/*.swp"},
				Action:  ActionRescue,
			},
			{
				Name:    "other-data",
				Paths:   []string{"/var/lib/**", "/home/**", "/opt/**", "/tmp/**", "/var/tmp/**"},
				Exclude: []string{"/var/lib/relinkd/**"},
				Action:  ActionReport,
			},
		},
		Rescue: RescueConfig{
			Dirs:         []string{"/var/lib/relinkd/rescued"},
			FSDir:        ".relinkd",
			CrossFS:      false,
			Methods:      []string{MethodLink, MethodReflink, MethodCopy},
			MinFree:      Threshold{Percent: 10, IsPercent: true},
			MaxFileSize:  1 << 30,
			MaxTotalSize: 10 << 30,
			Retention:    Duration(7 * 24 * time.Hour),
			Follow:       true,
			PerUser: PerUser{MaxFiles: 100, MaxBytes: 2 << 30, Window: Duration(time.Hour),
				MaxShare: Threshold{Percent: 25, IsPercent: true}},
			Containers:   ContainersHost,
			ContainerDir: "/var/lib/relinkd/containers",
		},
		Log:     LogConfig{Level: "info", Format: "json"},
		Metrics: MetricsConfig{Listen: ""},
	}
}

// MaxConfigBytes bounds the size of a configuration file. yaml.v3 holds
// the whole node tree, up to ~120 bytes per input byte for the densest
// YAML (a flow list of one-character items), so this keeps a reload under
// ~65 MiB of transient memory, well within the unit's MemoryMax=256M,
// while a thousand rules of a few globs each (~300 bytes a rule) fit. It
// also keeps a wrong --config (a log, a disk image) from being read whole.
const MaxConfigBytes = 512 << 10

// Errors of Load for a file that is not read at all.
var (
	// ErrNotRegular: a configuration is read only from a regular file; a
	// FIFO would block the reader, a device would never end.
	ErrNotRegular = errors.New("not a regular file")
	// ErrFileTooLarge: the file is larger than MaxConfigBytes.
	ErrFileTooLarge = errors.New("too large")
)

// Load reads and parses the configuration file at path. It reads only a
// regular file of at most MaxConfigBytes.
func Load(path string) (*Config, error) {
	data, err := readConfig(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// readConfig returns the contents of the regular file at path, without
// ever blocking on a FIFO or reading a device.
func readConfig(path string) ([]byte, error) {
	// Stat first, so that a device is not even opened: opening one can
	// act on the hardware (a tape rewinds when closed) or wait (a serial
	// line for its carrier).
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular(path, st.Mode())
	}
	return readRegular(path)
}

// readRegular opens path and reads it if what it opened is a regular
// file of at most MaxConfigBytes.
func readRegular(path string) ([]byte, error) {
	// The name may be swapped after a stat: with O_NONBLOCK, open(2)
	// returns at once on a FIFO without a writer (fifo(7)) and on a
	// device that would wait; O_NOCTTY keeps a terminal from becoming the
	// controlling one; the fstat of what was opened decides.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular(path, st.Mode())
	}
	// One byte more than the limit tells a file at the limit from a
	// larger one; a regular file may grow while it is read, or be a
	// /proc file whose stat size is 0, so the size is not trusted.
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxConfigBytes {
		return nil, fmt.Errorf("%s: %w: more than %s, the limit for a configuration file", path, ErrFileTooLarge, Size(MaxConfigBytes))
	}
	return data, nil
}

func notRegular(path string, m fs.FileMode) error {
	kind := "a special file"
	switch m.Type() {
	case fs.ModeDir:
		kind = "a directory"
	case fs.ModeNamedPipe:
		kind = "a FIFO"
	case fs.ModeSocket:
		kind = "a socket"
	case fs.ModeDevice | fs.ModeCharDevice:
		kind = "a character device"
	case fs.ModeDevice:
		kind = "a block device"
	}
	return fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, kind)
}

// CheckReload refuses a reload from a file without a watch key when the
// running rules are not the built-in ones: a truncated file, or one that
// lost its watch section, would otherwise switch to the built-in rules
// without a word. An explicit "watch: []" (watch nothing) is a choice and
// passes; a file without watch rules still works at start-up, where
// there are no running rules to lose.
func CheckReload(running, next *Config) error {
	if next.RulesFromFile || slices.EqualFunc(running.Watch, next.Watch, sameRule) {
		return nil
	}
	return Errors{{
		File:  filepath.Base(next.File),
		Line:  1,
		Field: "watch",
		Msg:   `missing: the running rules would be replaced by the built-in ones (list the rules, or write "watch: []" to watch nothing)`,
	}}
}

func sameRule(a, b Rule) bool {
	return a.Name == b.Name && slices.Equal(a.Paths, b.Paths) && slices.Equal(a.Exclude, b.Exclude) &&
		slices.Equal(a.Commands, b.Commands) && slices.Equal(a.Users, b.Users) &&
		a.MinSize == b.MinSize && a.MaxSize == b.MaxSize && a.Action == b.Action
}

// LoadDefault parses the configuration embedded in the binary.
func LoadDefault() (*Config, error) {
	return Parse("(embedded)relinkd.yaml", configs.Default())
}

// Resolve finds the configuration the way the daemon does: path if it is
// not empty; else DefaultPath if it exists; else the embedded default. It
// returns the configuration and the name of its source.
func Resolve(path string) (*Config, string, error) {
	return resolve(path, DefaultPath)
}

func resolve(path, system string) (*Config, string, error) {
	if path != "" {
		cfg, err := Load(path)
		return cfg, path, err
	}
	if _, err := os.Stat(system); err == nil {
		cfg, err := Load(system)
		return cfg, system, err
	} else if !os.IsNotExist(err) {
		return nil, system, fmt.Errorf("config %s: %w", system, err)
	}
	cfg, err := LoadDefault()
	return cfg, "(embedded)", err
}

// YAML returns the effective configuration, every default filled in, as
// YAML that Parse accepts and that parses back to the same configuration.
func (c *Config) YAML() []byte {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		// Every field has a plain type: encoding cannot fail.
		panic(fmt.Sprintf("policy: encode config: %v", err))
	}
	_ = enc.Close()
	return buf.Bytes()
}

// String is YAML as a string.
func (c *Config) String() string { return string(c.YAML()) }

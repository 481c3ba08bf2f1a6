package config

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/bmatcuk/doublestar/v4"
	"go.yaml.in/yaml/v3"
)

// ErrInvalid is wrapped by every configuration error.
var ErrInvalid = errors.New("invalid configuration")

// FieldError is one problem in a configuration file, at a line, in a field.
type FieldError struct {
	File  string
	Line  int    // 1-based, 0 when unknown
	Field string // dotted path: "watch[1].max_size"; "" for the whole file
	Msg   string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// Errors is every problem found in one configuration, in file order.
type Errors []*FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the individual errors for errors.Is and errors.As.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Limits on what one configuration may hold: generous for a real one,
// and small enough that parsing and matching stay cheap (README).
const (
	// MaxRules bounds the watch rules: every candidate file is matched
	// against them, in order.
	MaxRules = 1000
	// MaxListItems bounds each list: a rule's paths, exclude, commands
	// and users, and rescue.dirs.
	MaxListItems = 100
)

// Parse decodes and validates the YAML configuration data read from name
// (used in messages; only its base name is shown). Keys it leaves out take
// their defaults. Unknown keys, wrong types, bad values, a second YAML
// document and an empty file (no settings at all: write {} to take every
// default) are errors; all of them are returned at once as Errors, sorted
// by line. Every error has a line.
func Parse(name string, data []byte) (*Config, error) {
	p := &parser{file: filepath.Base(name)}
	cfg := Defaults()
	cfg.File = name
	data, ok := p.text(data)
	if !ok {
		return nil, p.errs
	}
	// A Decoder, not Unmarshal: Unmarshal reads the first document of a
	// stream and silently drops the rest, settings and all.
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc, next yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		p.syntax(err, data)
		return nil, p.errs
	}
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.syntax(err, data)
	default:
		p.errf(&next, "", "a second YAML document starts here (---): a configuration file holds one")
	}
	switch {
	case doc.Kind != yaml.DocumentNode || len(doc.Content) != 1:
		// Nothing but blanks and comments. An empty file is more often a
		// failed write than a wish for the defaults, and a reload must not
		// turn it into them.
		p.errs = append(p.errs, &FieldError{File: p.file, Line: 1, Msg: emptyMsg})
	case doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].Tag == "!!null":
		// "~", "null" or a bare "---" (whose empty node yaml.v3 puts on
		// the line after it: the document's line names it better).
		p.errf(&doc, "", "%s", emptyMsg)
	default:
		p.config(doc.Content[0], cfg)
	}
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b *FieldError) int { return a.Line - b.Line })
		return nil, p.errs
	}
	return cfg, nil
}

const emptyMsg = `empty: no settings (write "{}" to take every default)`

type parser struct {
	file string
	errs Errors
}

func (p *parser) errf(n *yaml.Node, field, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &FieldError{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// text checks that data is text the YAML reader accepts and returns it
// as UTF-8. yaml.v3's reader (readerc.go) refuses invalid UTF-8 and
// control characters without saying where; this finds the first one
// itself, with its line and column. Input with a UTF-16 byte order mark,
// which the reader also accepts, is converted first.
func (p *parser) text(data []byte) ([]byte, bool) {
	var order binary.ByteOrder
	switch {
	case bytes.HasPrefix(data, []byte{0xff, 0xfe}):
		order = binary.LittleEndian
	case bytes.HasPrefix(data, []byte{0xfe, 0xff}):
		order = binary.BigEndian
	}
	if order != nil {
		out, ok := fromUTF16(data[2:], order)
		if !ok {
			line, col := position(out, len(out))
			p.errs = append(p.errs, &FieldError{File: p.file, Line: line,
				Msg: fmt.Sprintf("syntax: invalid UTF-16 at column %d (a lone surrogate or an odd byte)", col)})
			return nil, false
		}
		data = out
	}
	for i := 0; i < len(data); {
		r, w := utf8.DecodeRune(data[i:])
		var msg string
		switch {
		case r == utf8.RuneError && w == 1:
			msg = fmt.Sprintf("invalid UTF-8 (byte 0x%02x)", data[i])
		case !yamlChar(r):
			msg = fmt.Sprintf("control character %U", r)
		}
		if msg != "" {
			line, col := position(data, i)
			p.errs = append(p.errs, &FieldError{File: p.file, Line: line,
				Msg: fmt.Sprintf("syntax: %s at column %d (a configuration is UTF-8 text without control characters)", msg, col)})
			return nil, false
		}
		i += w
	}
	return data, true
}

// yamlChar reports whether YAML allows r in a stream: c-printable of YAML
// 1.1, as yaml.v3's reader checks it.
func yamlChar(r rune) bool {
	switch {
	case r == '\t', r == '\n', r == '\r', r >= 0x20 && r <= 0x7e, r == 0x85:
		return true
	case r >= 0xa0 && r <= 0xd7ff, r >= 0xe000 && r <= 0xfffd, r >= 0x10000 && r <= 0x10ffff:
		return true
	}
	return false
}

// position returns the 1-based line and column (in characters) of byte
// offset off of UTF-8 text, counting line breaks as YAML 1.1 does: CR LF,
// CR, LF, NEL, LS and PS.
func position(data []byte, off int) (line, col int) {
	line, col = 1, 1
	i := 0
	if bytes.HasPrefix(data[:off], []byte("\ufeff")) {
		i = 3 // a byte order mark takes no column
	}
	for i < off {
		r, w := utf8.DecodeRune(data[i:off])
		i += w
		switch r {
		case '\r':
			if i < off && data[i] == '\n' {
				i++
			}
			fallthrough
		case '\n', 0x85, 0x2028, 0x2029:
			line, col = line+1, 1
		default:
			col++
		}
	}
	return line, col
}

// fromUTF16 converts UTF-16 text to UTF-8. On a lone surrogate or an odd
// final byte it returns what it converted before it and false.
func fromUTF16(b []byte, order binary.ByteOrder) ([]byte, bool) {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i += 2 {
		if i+1 == len(b) {
			return out, false
		}
		u := rune(order.Uint16(b[i:]))
		if utf16.IsSurrogate(u) {
			if i+3 >= len(b) {
				return out, false
			}
			r := utf16.DecodeRune(u, rune(order.Uint16(b[i+2:])))
			if r == utf8.RuneError {
				return out, false
			}
			u = r
			i += 2
		}
		out = utf8.AppendRune(out, u)
	}
	return out, true
}

var yamlLine = regexp.MustCompile(`^line (\d+): (.*)$`)

// parserProblems are the messages of yaml.v3's parser (parserc.go), as
// opposed to its scanner's. The parser's line in an error is 0-based:
// decode.go's fail adds one only for a scanner error. TestSyntaxErrorLines
// pins each case, so a yaml.v3 that fixes this shows up there.
var parserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"found undefined tag handle":             true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
}

var unknownAnchor = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)

// syntax turns a YAML syntax or structure error into a FieldError with
// its line. yaml.v3 leaves the line out when it is the first one (it
// takes line 0 for "unknown"), gives the parser's lines 0-based, and
// gives none for an unknown anchor; data (the input, as UTF-8) finds it.
func (p *parser) syntax(err error, data []byte) {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		for _, m := range te.Errors {
			p.syntaxLine(m, data)
		}
		return
	}
	p.syntaxLine(err.Error(), data)
}

func (p *parser) syntaxLine(msg string, data []byte) {
	msg = strings.TrimPrefix(msg, "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	switch m := unknownAnchor.FindStringSubmatch(msg); {
	case m != nil:
		line = aliasLine(data, m[1])
	case parserProblems[msg]:
		line++
	case line == 0:
		line = 1
	}
	if msg == "found incompatible YAML document" {
		msg += ` (the parser knows only "%YAML 1.1"; the directive can be left out)`
	}
	p.errs = append(p.errs, &FieldError{File: p.file, Line: line, Msg: "syntax: " + msg})
}

// aliasLine returns the line of the first alias *name in data, the one
// yaml.v3 reports as unknown without a line. The text "*name" may also sit
// in a comment or a quoted string, so each occurrence is turned into
// "@name" and the result parsed once: "@" cannot start a token, and the
// scanner stops at the first occurrence that is a real alias, with its
// line. Occurrences in comments, quotes and plain scalars parse as before.
func aliasLine(data []byte, name string) int {
	probe := bytes.Clone(data)
	needle := []byte("*" + name)
	for i := 0; ; {
		j := bytes.Index(probe[i:], needle)
		if j < 0 {
			break
		}
		at := i + j
		end := at + len(needle)
		// An anchor name ends at a blank, a line break or a flow indicator.
		if end == len(probe) || bytes.IndexByte([]byte(" \t\r\n,[]{}"), probe[end]) >= 0 {
			probe[at] = '@'
		}
		i = at + 1
	}
	dec := yaml.NewDecoder(bytes.NewReader(probe))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if err == nil {
			continue
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if msg == "found character that cannot start any token" {
			return 1 // a scanner error on the first line
		}
		if m := yamlLine.FindStringSubmatch(msg); m != nil && m[2] == "found character that cannot start any token" {
			n, _ := strconv.Atoi(m[1])
			return n
		}
		// Not found (an alias in a form this does not know): the file
		// is all that can be named, from its first line.
		return 1
	}
}

// kindName names what a node is, for "expected X, got Y" messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "null"
		case "!!bool":
			return "a boolean"
		case "!!int", "!!float":
			return "a number"
		}
		return "a string"
	}
	return "nothing"
}

// mapping walks a mapping node, calling fields[key] for each known key
// and reporting unknown and duplicate keys. It reports false when n is not
// a mapping.
func (p *parser) mapping(n *yaml.Node, field string, fields map[string]func(v *yaml.Node, field string)) bool {
	if n.Kind != yaml.MappingNode {
		p.errf(n, field, "expected a mapping, got %s", kindName(n))
		return false
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		sub := key
		if field != "" {
			sub = field + "." + key
		}
		if k.Kind != yaml.ScalarNode {
			p.errf(k, field, "expected a key, got %s", kindName(k))
			continue
		}
		fn, ok := fields[key]
		if !ok {
			p.errf(k, sub, "unknown key")
			continue
		}
		if seen[key] {
			p.errf(k, sub, "duplicate key")
			continue
		}
		seen[key] = true
		fn(v, sub)
	}
	return true
}

// scalar returns the value of a scalar node, or reports what it is.
func (p *parser) scalar(n *yaml.Node, field, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errf(n, field, "expected %s, got %s", want, kindName(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) str(n *yaml.Node, field string, dst *string) {
	if v, ok := p.scalar(n, field, "a string"); ok {
		*dst = v
	}
}

func (p *parser) boolean(n *yaml.Node, field string, dst *bool) {
	v, ok := p.scalar(n, field, "a boolean")
	if !ok {
		return
	}
	// YAML 1.2 booleans only: "yes"/"on" are strings, and an error here.
	switch {
	case n.Tag == "!!bool" && strings.EqualFold(v, "true"):
		*dst = true
	case n.Tag == "!!bool" && strings.EqualFold(v, "false"):
		*dst = false
	default:
		p.errf(n, field, "%q is not a boolean (true or false)", v)
	}
}

func (p *parser) size(n *yaml.Node, field string, dst *Size) {
	v, ok := p.scalar(n, field, "a size")
	if !ok {
		return
	}
	s, err := ParseSize(v)
	if err != nil {
		p.errf(n, field, "%q %s", v, sizeMsg(err, "is not a size (e.g. 500MB, 10GiB)"))
		return
	}
	*dst = s
}

// sizeMsg says why ParseSize refused a value, or notSize when it is not
// a size at all.
func sizeMsg(err error, notSize string) string {
	switch {
	case errors.Is(err, errTooLarge):
		return fmt.Sprintf("is too large (at most %d bytes, the largest file size)", uint64(maxSize))
	case errors.Is(err, errFraction):
		return "is a fraction of a byte (a fraction needs a unit, e.g. 1.5GiB)"
	case errors.Is(err, errRoundsToZero):
		return "rounds down to 0 bytes (write 0 if 0 is meant)"
	}
	return notSize
}

func (p *parser) duration(n *yaml.Node, field string, dst *Duration) {
	v, ok := p.scalar(n, field, "a duration")
	if !ok {
		return
	}
	d, err := ParseDuration(v)
	if err != nil {
		p.errf(n, field, "%q is not a duration (e.g. 30s, 1h, 7d)", v)
		return
	}
	*dst = d
}

func (p *parser) count(n *yaml.Node, field string, dst *int) {
	v, ok := p.scalar(n, field, "a number")
	if !ok {
		return
	}
	i, err := strconv.Atoi(v)
	if err != nil || i < 0 {
		p.errf(n, field, "%q is not a count (a whole number ≥ 0)", v)
		return
	}
	*dst = i
}

// list decodes a list of scalars (a single scalar is accepted as a list
// of one), calling check on each; check returns a message for a bad item.
func (p *parser) list(n *yaml.Node, field string, dst *[]string, check func(string) string) {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	} else if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errf(n, field, "expected a list, got %s", kindName(n))
		return
	}
	ok := true
	if len(items) > MaxListItems {
		p.errf(items[MaxListItems], fmt.Sprintf("%s[%d]", field, MaxListItems), "beyond the limit of %d items in a list", MaxListItems)
		items, ok = items[:MaxListItems], false
	}
	out := make([]string, 0, len(items))
	for i, it := range items {
		sub := field
		if n.Kind == yaml.SequenceNode {
			sub = fmt.Sprintf("%s[%d]", field, i)
		}
		v, good := p.scalar(it, sub, "a string")
		if !good {
			ok = false
			continue
		}
		if check != nil {
			if msg := check(v); msg != "" {
				p.errf(it, sub, "%q %s", v, msg)
				ok = false
				continue
			}
		}
		out = append(out, v)
	}
	if ok {
		*dst = out
	}
}

func (p *parser) config(n *yaml.Node, c *Config) {
	p.mapping(n, "", map[string]func(*yaml.Node, string){
		"scan": func(v *yaml.Node, f string) {
			p.mapping(v, f, map[string]func(*yaml.Node, string){
				"interval": func(v *yaml.Node, f string) {
					p.duration(v, f, &c.Scan.Interval)
					if c.Scan.Interval < Duration(1e9) {
						p.errf(v, f, "%q is too short (at least 1s)", v.Value)
					}
				},
				"events": func(v *yaml.Node, f string) { p.boolean(v, f, &c.Scan.Events) },
				"max_watches": func(v *yaml.Node, f string) {
					p.count(v, f, &c.Scan.MaxWatches)
					if c.Scan.MaxWatches == 0 {
						p.errf(v, f, "must be at least 1 (set events: false to watch nothing)")
					}
				},
				"fs_timeout": func(v *yaml.Node, f string) {
					p.duration(v, f, &c.Scan.FSTimeout)
					if c.Scan.FSTimeout < Duration(100e6) || c.Scan.FSTimeout > Duration(600e9) {
						p.errf(v, f, "%q is out of range (100ms to 10m)", v.Value)
					}
				},
				"backend": func(v *yaml.Node, f string) { p.enum(v, f, &c.Scan.Backend, "auto", "proc", "bpf") },
				"stall_timeout": func(v *yaml.Node, f string) {
					p.duration(v, f, &c.Scan.StallTimeout)
					if c.Scan.StallTimeout < Duration(1e9) || c.Scan.StallTimeout > Duration(3600e9) {
						p.errf(v, f, "%q is out of range (1s to 1h)", v.Value)
					}
				},
			})
		},
		"watch": func(v *yaml.Node, f string) {
			c.RulesFromFile = true
			p.watch(v, f, c)
		},
		"rescue": func(v *yaml.Node, f string) { p.rescue(v, f, &c.Rescue) },
		"log": func(v *yaml.Node, f string) {
			p.mapping(v, f, map[string]func(*yaml.Node, string){
				"level": func(v *yaml.Node, f string) {
					p.enum(v, f, &c.Log.Level, "debug", "info", "warn", "error")
				},
				"format": func(v *yaml.Node, f string) { p.enum(v, f, &c.Log.Format, "json", "console") },
			})
		},
		"metrics": func(v *yaml.Node, f string) {
			p.mapping(v, f, map[string]func(*yaml.Node, string){
				"listen": func(v *yaml.Node, f string) {
					var s string
					p.str(v, f, &s)
					if msg := checkListen(s); msg != "" {
						p.errf(v, f, "%q %s", s, msg)
						return
					}
					c.Metrics.Listen = s
				},
			})
		},
	})
}

func (p *parser) enum(n *yaml.Node, field string, dst *string, allowed ...string) {
	v, ok := p.scalar(n, field, "a string")
	if !ok {
		return
	}
	if !slices.Contains(allowed, v) {
		p.errf(n, field, "%q is not one of %s", v, strings.Join(allowed, ", "))
		return
	}
	*dst = v
}

// checkListen validates a listen address: empty, or host:port with a
// numeric port. net.Listen would also look up a service name ("http"),
// and fail only at start or reload.
func checkListen(s string) string {
	if s == "" {
		return ""
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil || port == "" {
		return "is not a listen address (host:port, e.g. 127.0.0.1:9847)"
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Sprintf("is not a listen address (port %q is not a number 0-65535)", port)
	}
	return ""
}

// checkGlob validates an absolute path glob.
func checkGlob(g string) string {
	if !strings.HasPrefix(g, "/") && !strings.HasPrefix(g, "**") {
		return "is not an absolute path glob (starts with / or **)"
	}
	if !doublestar.ValidatePattern(g) {
		return "is not a valid glob"
	}
	return ""
}

func checkCommand(g string) string {
	if g == "" || strings.Contains(g, "/") {
		return "is not a command glob (a name such as nginx or java*, without /)"
	}
	if !doublestar.ValidatePattern(g) {
		return "is not a valid glob"
	}
	return ""
}

func checkUser(u string) string {
	if u == "" || strings.ContainsAny(u, " \t:/\n") {
		return "is not a user name or uid"
	}
	if u[0] >= '0' && u[0] <= '9' {
		if _, err := strconv.ParseUint(u, 10, 32); err != nil {
			return "is not a user name or uid"
		}
	}
	return ""
}

func checkAbsDir(d string) string {
	if !filepath.IsAbs(d) || filepath.Clean(d) == "/" {
		return "is not an absolute directory (and not /)"
	}
	return ""
}

func (p *parser) watch(n *yaml.Node, field string, c *Config) {
	if n.Kind != yaml.SequenceNode {
		p.errf(n, field, "expected a list of rules, got %s", kindName(n))
		return
	}
	items := n.Content
	if len(items) > MaxRules {
		// The rules within the limit are still checked.
		p.errf(items[MaxRules], fmt.Sprintf("%s[%d]", field, MaxRules), "beyond the limit of %d rules", MaxRules)
		items = items[:MaxRules]
	}
	rules := make([]Rule, 0, len(items))
	names := map[string]int{}
	for i, rn := range items {
		f := fmt.Sprintf("%s[%d]", field, i)
		r := Rule{Action: ActionRescue}
		var minNode, maxNode, nameNode *yaml.Node
		hasPaths := false
		if !p.mapping(rn, f, map[string]func(*yaml.Node, string){
			"name": func(v *yaml.Node, f string) {
				nameNode = v
				s, ok := p.scalar(v, f, "a string")
				if ok && s == "" {
					p.errf(v, f, "must not be empty (it names the rule in logs)")
				}
				r.Name = s
			},
			"paths": func(v *yaml.Node, f string) {
				hasPaths = true
				if v.Kind == yaml.SequenceNode && len(v.Content) == 0 {
					p.errf(v, f, "empty (at least one path glob)")
					return
				}
				p.list(v, f, &r.Paths, checkGlob)
			},
			"exclude":  func(v *yaml.Node, f string) { p.list(v, f, &r.Exclude, checkGlob) },
			"commands": func(v *yaml.Node, f string) { p.list(v, f, &r.Commands, checkCommand) },
			"users":    func(v *yaml.Node, f string) { p.list(v, f, &r.Users, checkUser) },
			"min_size": func(v *yaml.Node, f string) { minNode = v; p.size(v, f, &r.MinSize) },
			"max_size": func(v *yaml.Node, f string) { maxNode = v; p.size(v, f, &r.MaxSize) },
			"action": func(v *yaml.Node, f string) {
				var s string
				p.enum(v, f, &s, string(ActionRescue), string(ActionReport))
				if s != "" {
					r.Action = Action(s)
				}
			},
		}) {
			continue
		}
		switch {
		case nameNode == nil:
			p.errf(rn, f+".name", "missing (every rule needs a name; it appears in logs)")
		case r.Name == "": // reported where it was read
		default:
			if j, dup := names[r.Name]; dup {
				p.errf(nameNode, f+".name", "%q is already the name of watch[%d]", r.Name, j)
			}
			names[r.Name] = i
		}
		if !hasPaths {
			p.errf(rn, f+".paths", "missing (at least one path glob)")
		}
		if minNode != nil && maxNode != nil && r.MaxSize != 0 && r.MinSize > r.MaxSize {
			p.errf(maxNode, f+".max_size", "%s is below min_size %s", r.MaxSize, r.MinSize)
		}
		rules = append(rules, r)
	}
	c.Watch = rules
}

func (p *parser) rescue(n *yaml.Node, field string, r *RescueConfig) {
	p.mapping(n, field, map[string]func(*yaml.Node, string){
		"dirs": func(v *yaml.Node, f string) { p.list(v, f, &r.Dirs, checkAbsDir) },
		"fs_dir": func(v *yaml.Node, f string) {
			var s string
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				r.FSDir = ""
				return
			}
			p.str(v, f, &s)
			if s != "" && (strings.Contains(s, "/") || s == "." || s == "..") {
				p.errf(v, f, "%q is not a directory name (one name, no /; empty disables it)", s)
				return
			}
			r.FSDir = s
		},
		"cross_fs": func(v *yaml.Node, f string) { p.boolean(v, f, &r.CrossFS) },
		"methods": func(v *yaml.Node, f string) {
			var ms []string
			seen := map[string]bool{}
			p.list(v, f, &ms, func(m string) string {
				if m != MethodLink && m != MethodReflink && m != MethodCopy {
					return "is not one of link, reflink, copy"
				}
				if seen[m] {
					return "is listed twice"
				}
				seen[m] = true
				return ""
			})
			if ms != nil {
				if len(ms) == 0 {
					p.errf(v, f, "empty (at least one of link, reflink, copy)")
					return
				}
				r.Methods = ms
			}
		},
		"min_free": func(v *yaml.Node, f string) {
			s, ok := p.scalar(v, f, "a percentage or a size")
			if !ok {
				return
			}
			t, err := ParseThreshold(s)
			if err != nil {
				p.errf(v, f, "%q %s", s, sizeMsg(err, "is not a percentage (0-99.9%) or a size"))
				return
			}
			r.MinFree = t
		},
		"max_file_size":  func(v *yaml.Node, f string) { p.size(v, f, &r.MaxFileSize) },
		"max_total_size": func(v *yaml.Node, f string) { p.size(v, f, &r.MaxTotalSize) },
		"retention":      func(v *yaml.Node, f string) { p.duration(v, f, &r.Retention) },
		"follow":         func(v *yaml.Node, f string) { p.boolean(v, f, &r.Follow) },
		"containers": func(v *yaml.Node, f string) {
			p.enum(v, f, &r.Containers, ContainersHost, ContainersInside)
		},
		"container_dir": func(v *yaml.Node, f string) {
			s, ok := p.scalar(v, f, "a directory")
			if !ok {
				return
			}
			if msg := checkAbsDir(s); msg != "" {
				p.errf(v, f, "%q %s", s, msg)
				return
			}
			r.ContainerDir = filepath.Clean(s)
		},
		"per_user": func(v *yaml.Node, f string) {
			p.mapping(v, f, map[string]func(*yaml.Node, string){
				"max_files": func(v *yaml.Node, f string) { p.count(v, f, &r.PerUser.MaxFiles) },
				"max_bytes": func(v *yaml.Node, f string) { p.size(v, f, &r.PerUser.MaxBytes) },
				"max_share": func(v *yaml.Node, f string) {
					s, ok := p.scalar(v, f, "a percentage")
					if !ok {
						return
					}
					t, err := ParseThreshold(s)
					if err != nil || !t.IsPercent {
						p.errf(v, f, "%q is not a percentage (0-99.9%%; 0%% for no cap)", s)
						return
					}
					r.PerUser.MaxShare = t
				},
				"window": func(v *yaml.Node, f string) {
					p.duration(v, f, &r.PerUser.Window)
					if r.PerUser.Window == 0 {
						p.errf(v, f, "%q is too short (at least 1s)", v.Value)
					}
				},
			})
		},
	})
}

package policy

import (
	"os/user"
	"path"
	"strconv"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
	"go.uber.org/zap"

	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// rule is a Rule with its user names resolved to uids.
type rule struct {
	config.Rule
	uids map[uint32]bool // nil: any user
}

// compileRules resolves user names through the host's user database. A
// name that does not exist here matches nobody (and is logged), so that one
// configuration can serve hosts with different users.
func compileRules(rs []config.Rule, log *zap.Logger) []rule {
	out := make([]rule, len(rs))
	for i, r := range rs {
		out[i].Rule = r
		if len(r.Users) == 0 {
			continue
		}
		out[i].uids = map[uint32]bool{}
		for _, u := range r.Users {
			if n, err := strconv.ParseUint(u, 10, 32); err == nil {
				out[i].uids[uint32(n)] = true
				continue
			}
			pw, err := user.Lookup(u)
			if err != nil {
				log.Warn("watch rule user not found", zap.String("rule", r.Name), zap.String("user", u), zap.Error(err))
				continue
			}
			n, err := strconv.ParseUint(pw.Uid, 10, 32)
			if err != nil {
				continue
			}
			out[i].uids[uint32(n)] = true
		}
	}
	return out
}

// matchAny reports whether name matches one of the globs. The globs were
// validated by Parse, so an error cannot happen here; a bad one never
// matches.
func matchAny(globs []string, name string) bool {
	for _, g := range globs {
		if ok, _ := doublestar.Match(g, name); ok {
			return true
		}
	}
	return false
}

// matches reports whether r applies to c.
func (r *rule) matches(c *scanner.Candidate) bool {
	p := string(c.Path)
	if !matchAny(r.Paths, p) || matchAny(r.Exclude, p) {
		return false
	}
	if len(r.Commands) > 0 {
		exe := ""
		if c.Exe != "" {
			exe = path.Base(strings.TrimSuffix(c.Exe, " (deleted)"))
		}
		if !matchAny(r.Commands, c.Comm) && (exe == "" || !matchAny(r.Commands, exe)) {
			return false
		}
	}
	if r.uids != nil && !r.uids[c.UID] {
		return false
	}
	// Compared as unsigned: a MinSize above math.MaxInt64 (Parse refuses
	// one, a Config built in code may not) must not turn negative.
	if c.Size < 0 || uint64(c.Size) < uint64(r.MinSize) {
		return false
	}
	if r.MaxSize != 0 && c.Size > 0 && uint64(c.Size) > uint64(r.MaxSize) {
		return false
	}
	return true
}

// isUnder reports whether p is dir or inside it (both clean, absolute).
func isUnder(p, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}

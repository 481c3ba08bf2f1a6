// Package policy decides, for each deleted-but-open file the scanner
// finds, whether to rescue it, where, and within which space and abuse
// limits: the watch rules, Decide, the per-user caps and max_total_size.
// It does no I/O of its own: where a file can go, how much room is there
// and what a rescue root holds on disk come through the small interfaces
// it declares (Locator, Space, Store), which *mounts.Host and retention
// satisfy.
package policy

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/relinkd/relinkd/pkg/config"
	"github.com/relinkd/relinkd/pkg/mounts"
	"github.com/relinkd/relinkd/pkg/retention"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// Verdict is what the policy decided for one file.
type Verdict int

// Verdicts.
const (
	Ignore Verdict = iota // no rule matches (or the file is a rescued file itself)
	Report                // a report rule matches: log it, touch nothing
	Rescue                // rescue it, as the Decision says
	Skip                  // a rescue rule matches but a limit or the location forbids it
)

func (v Verdict) String() string {
	switch v {
	case Ignore:
		return "ignore"
	case Report:
		return "report"
	case Rescue:
		return "rescue"
	case Skip:
		return "skip"
	}
	return "verdict(" + strconv.Itoa(int(v)) + ")"
}

// Skip and ignore reasons, the "reason" field of "rescue skipped" events.
const (
	ReasonPolicy   = "policy"   // no rule matched, or the file lies in a rescue directory
	ReasonSize     = "size"     // larger than rescue.max_file_size
	ReasonSpace    = "space"    // a copy would go below min_free, or the root is over max_total_size
	ReasonQuota    = "quota"    // the owner is over rescue.per_user
	ReasonLocation = "location" // no rescue directory allowed for this filesystem
	ReasonMethod   = "method"   // none of the configured methods can work here
)

// Decision says what to do with one candidate.
type Decision struct {
	Action Verdict
	Rule   string // name of the matching rule, "" when none
	Reason string // one of the Reason constants, for Ignore and Skip
	Detail string // human explanation for logs

	// For Rescue only.
	Root      string   // rescue root directory (to be created 0700 root if missing), a host path unless Beneath
	Via       string   // how relinkd reaches Root: relink.Destination.Via (mounts.Location.Via)
	Beneath   bool     // Root is in a container's own view: relink.Destination.Beneath (mounts.Location.Beneath)
	Rel       string   // path of the rescued file relative to Root, see mounts.Location.Rel
	Kind      string   // mounts.KindDir, KindFSDir, KindCrossFS or KindContainer
	SameMount bool     // Root is on the holder's mount: link may work
	SameFS    bool     // Root is on the file's filesystem: reflink may work
	Methods   []string // methods to try, in order (config order, filtered)
	// MinFreeBytes is the free space the copy must leave on Root's
	// filesystem; the engine stops a copy that would go below it.
	MinFreeBytes uint64
	Follow       bool // follow the file while its holder still writes to it
	// NoRoomToCopy, when set, says why copy was taken off Methods for
	// want of space: if the methods left do not work here either, the
	// file did not fit (a space skip, not a failure).
	NoRoomToCopy string
}

// Policy decides what to do with candidates. It is safe for concurrent use.
type Policy struct {
	cfg      *config.Config // what it decides by: given, or given with onlyRoot
	given    *config.Config
	onlyRoot string // WithOnlyRoot
	log      *zap.Logger
	rules    []rule
	now      func() time.Time

	host  *mounts.Host    // the host's mounts, for cfg (Host)
	hostO []mounts.Option // WithProcRoot, WithHostRoot
	loc   Locator         // host, but for tests
	space Space           // host, but for tests
	store Store           // the rescue roots on disk, through host's Via

	mu    sync.Mutex
	usage map[string]*rootUsage // by rescue root
	walks map[string]*walk      // roots being measured, outside mu
	users map[uint32][]grant    // by file owner, within the window
}

// Locator says where a file would be rescued (Decide) and which rescue
// roots may already hold rescued files (Roots). *mounts.Host is the one
// relinkd runs with: it reads the mount tables.
type Locator interface {
	Locate(c *scanner.Candidate) (mounts.Location, error)
	KnownRoots() ([]string, error)
}

// Space says how much room a rescue location has: the bytes available to
// an unprivileged writer and the filesystem's size. *mounts.Host is the
// one relinkd runs with (statfs(2)).
type Space interface {
	Room(l mounts.Location) (avail, total uint64, err error)
	FreeSpace(root string) (avail, total uint64, err error) // of a host path
}

// Store is what relinkd's files take in a rescue root on disk, and the
// prune that applies retention to it (see retention.Usage and
// retention.Prune); roots are host paths.
type Store interface {
	Usage(root string) (bytes uint64, owners map[uint32]uint64, err error)
	Prune(root string, maxAge time.Duration, maxTotal, share uint64, now time.Time) (retention.Result, error)
}

// disk is the Store of rescue roots reached through the prefix via.
type disk struct{ via string }

func (d disk) Usage(root string) (uint64, map[uint32]uint64, error) {
	return retention.Usage(d.via + root)
}

func (d disk) Prune(root string, maxAge time.Duration, maxTotal, share uint64, now time.Time) (retention.Result, error) {
	return retention.Prune(d.via+root, maxAge, maxTotal, share, now)
}

type rootUsage struct {
	bytes  uint64
	owners map[uint32]uint64 // bytes of rescued files by owner
	at     time.Time         // when bytes was last measured on disk
}

// walk is a measurement of a rescue root on disk in progress. It runs
// without p.mu, so that no worker waits for a disk walk; what Decide
// grants and Release gives back meanwhile is kept in delta and applied
// to the walk's result.
type walk struct {
	done  chan struct{} // closed when the result is stored
	delta rootUsage
}

// add counts size bytes of owner's (negative: given back).
func (u *rootUsage) add(owner uint32, size int64) {
	if size >= 0 {
		u.bytes += uint64(size)
		u.owners[owner] += uint64(size)
		return
	}
	n := uint64(-size)
	u.bytes -= min(u.bytes, n)
	u.owners[owner] -= min(u.owners[owner], n)
}

// grant is one rescue counted against an owner's per-user cap.
type grant struct {
	at    time.Time
	bytes uint64
	key   scanner.Key
}

// usageTTL is how long a measured root size is trusted before the root is
// walked again; in between the policy adds what it granted.
const usageTTL = time.Minute

// Option configures a Policy.
type Option func(*Policy)

// WithProcRoot makes the policy's host (Host) read procfs at root: see
// mounts.WithProcRoot.
func WithProcRoot(root string) Option {
	return func(p *Policy) { p.hostO = append(p.hostO, mounts.WithProcRoot(root)) }
}

// WithHostRoot puts the policy's host (Host) in container mode (relinkd
// --host-root): see mounts.WithHostRoot. Give WithProcRoot first when
// the proc root is not /proc.
func WithHostRoot(dir string) Option {
	return func(p *Policy) { p.hostO = append(p.hostO, mounts.WithHostRoot(dir)) }
}

// WithOnlyRoot makes dir the policy's only rescue location, on any
// filesystem (`relinkd rescue --to`): the rules, max_file_size, per_user
// and the methods that can work there still apply, and min_free and
// max_total_size are measured on dir. Config still returns cfg as given.
func WithOnlyRoot(dir string) Option {
	return func(p *Policy) { p.onlyRoot = dir }
}

// New returns a policy for cfg, on the host's mounts (Host). User names
// in rules are resolved now.
func New(cfg *config.Config, log *zap.Logger, opts ...Option) *Policy {
	p := &Policy{
		cfg:   cfg,
		log:   log,
		rules: compileRules(cfg.Watch, log),
		now:   time.Now,
		usage: map[string]*rootUsage{},
		walks: map[string]*walk{},
		users: map[uint32][]grant{},
	}
	for _, o := range opts {
		o(p)
	}
	p.given = cfg
	if p.onlyRoot != "" {
		c := *cfg
		c.Rescue.Dirs = []string{p.onlyRoot}
		c.Rescue.FSDir = ""
		c.Rescue.CrossFS = true
		p.cfg = &c
	}
	p.host = mounts.New(&p.cfg.Rescue, log, p.hostO...)
	p.loc, p.space, p.store = p.host, p.host, disk{via: p.host.Via()}
	return p
}

// Inherit carries the per-user grants and measured root usage of old (the
// policy before a configuration reload) over to p, so that a reload does
// not reset the per-user caps, and shares its host's looks at rescue
// roots (mounts.Host.Inherit). Call it before p is used.
func (p *Policy) Inherit(old *Policy) {
	if old == nil || old == p {
		return
	}
	p.host.Inherit(old.host)
	old.mu.Lock()
	defer old.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	for uid, gs := range old.users {
		p.users[uid] = slices.Clone(gs)
	}
	for root, u := range old.usage {
		c := *u
		p.usage[root] = &c
	}
}

// Host is the host's mounts the policy locates files on, with the rescue
// settings it decides by. The host paths that Decide and Roots return are
// reached through its Via.
func (p *Policy) Host() *mounts.Host { return p.host }

// Config returns the configuration the policy was built from.
func (p *Policy) Config() *config.Config { return p.given }

// Match returns the first rule matching c, without any side effect
// (for `relinkd scan`). Files inside rescue directories never match.
func (p *Policy) Match(c *scanner.Candidate) (config.Rule, bool) {
	if p.InRescueDir(c) {
		return config.Rule{}, false
	}
	for i := range p.rules {
		if p.rules[i].matches(c) {
			return p.rules[i].Rule, true
		}
	}
	return config.Rule{}, false
}

// InRescueDir reports whether c's path is in a configured rescue directory
// or in a per-filesystem directory, so relinkd never rescues its own files.
func (p *Policy) InRescueDir(c *scanner.Candidate) bool {
	s := string(c.Path)
	for _, d := range append(p.cfg.Rescue.Dirs, p.cfg.Rescue.ContainerDir) {
		if d != "" && isUnder(s, path.Clean(d)) {
			return true
		}
	}
	if p.cfg.Rescue.FSDir != "" && slices.Contains(strings.Split(s, "/"), p.cfg.Rescue.FSDir) {
		return true
	}
	return false
}

// Decide matches c against the rules and, for a rescue rule, chooses the
// location and applies the size, space and per-user limits. A Rescue
// decision reserves c's size against max_total_size and the owner's cap;
// call Release if the rescue then fails.
func (p *Policy) Decide(c *scanner.Candidate) Decision {
	r, ok := p.Match(c)
	if !ok {
		return Decision{Action: Ignore, Reason: ReasonPolicy, Detail: "no watch rule matches"}
	}
	return p.DecideRule(c, r)
}

// DecideRule is Decide for a file already matched to r (by Match, on
// this policy or the one it replaced): the rules are not matched again,
// so a reload between the match and the decision cannot drop a file
// already pinned.
func (p *Policy) DecideRule(c *scanner.Candidate, r config.Rule) Decision {
	if r.Action == config.ActionReport {
		return Decision{Action: Report, Rule: r.Name}
	}
	d := Decision{Rule: r.Name, Follow: p.cfg.Rescue.Follow}
	skip := func(reason, format string, args ...any) Decision {
		d.Action, d.Reason, d.Detail = Skip, reason, fmt.Sprintf(format, args...)
		return d
	}
	size := uint64(max(c.Size, 0))
	rc := &p.cfg.Rescue
	if rc.MaxFileSize != 0 && size > uint64(rc.MaxFileSize) {
		return skip(ReasonSize, "size %d above rescue.max_file_size %s", size, rc.MaxFileSize)
	}
	loc, err := p.loc.Locate(c)
	if err != nil {
		return skip(ReasonLocation, "%v", err)
	}
	d.Root, d.Kind, d.SameMount, d.SameFS = loc.Root, loc.Kind, loc.SameMount, loc.SameFS
	d.Via, d.Beneath = loc.Via, loc.Beneath
	d.Rel = loc.Rel(c, p.now())
	for _, m := range rc.Methods {
		switch {
		case m == config.MethodLink && (!loc.SameMount || !c.Linkable):
		case m == config.MethodReflink && !loc.SameFS:
		default:
			d.Methods = append(d.Methods, m)
		}
	}
	if len(d.Methods) == 0 {
		return skip(ReasonMethod, "methods %v cannot work from %s to %s (same mount %v, same filesystem %v, linkable %v)",
			rc.Methods, loc.FSType, loc.Root, loc.SameMount, loc.SameFS, c.Linkable)
	}
	// Space: a copy needs size bytes now; link and reflink need none.
	avail, total, err := p.space.Room(loc)
	if err != nil {
		return skip(ReasonSpace, "%v", err)
	}
	d.MinFreeBytes = rc.MinFree.Floor(total)
	if i := slices.Index(d.Methods, config.MethodCopy); i >= 0 && avail < d.MinFreeBytes+size {
		d.Methods = slices.Delete(d.Methods, i, i+1)
		d.NoRoomToCopy = fmt.Sprintf("copying %d bytes to %s would leave %d bytes free, below min_free %s (%d bytes)",
			size, loc.Root, int64(avail)-int64(size), rc.MinFree, d.MinFreeBytes)
		if len(d.Methods) == 0 {
			return skip(ReasonSpace, "%s", d.NoRoomToCopy)
		}
	}

	// A root inside a container (Beneath) is that container's business:
	// it is not measured, capped or pruned from here (it goes with the
	// container, and its path means something only in the container).
	counted := !loc.Beneath
	share := rc.PerUser.MaxShare
	shared := share.IsPercent && share.Percent > 0 && c.Owner != 0
	if counted && (rc.MaxTotalSize != 0 || shared) {
		p.measure(loc.Root)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if rc.MaxTotalSize != 0 && counted {
		used := p.usageLocked(loc.Root).bytes
		if used+size > uint64(rc.MaxTotalSize) {
			return skip(ReasonSpace, "%s holds %d bytes, %d more would pass rescue.max_total_size %s", loc.Root, used, size, rc.MaxTotalSize)
		}
	}
	if pu := rc.PerUser; pu.MaxFiles > 0 || pu.MaxBytes > 0 {
		gs := p.users[c.Owner]
		cut := now.Add(-time.Duration(pu.Window))
		gs = slices.DeleteFunc(gs, func(g grant) bool { return g.at.Before(cut) })
		var n int
		var b uint64
		for _, g := range gs {
			n++
			b += g.bytes
		}
		p.users[c.Owner] = gs
		if pu.MaxFiles > 0 && n+1 > pu.MaxFiles {
			return skip(ReasonQuota, "uid %d had %d files rescued within %s (per_user.max_files %d)", c.Owner, n, pu.Window, pu.MaxFiles)
		}
		if pu.MaxBytes > 0 && b+size > uint64(pu.MaxBytes) {
			return skip(ReasonQuota, "uid %d had %d bytes rescued within %s, %d more would pass per_user.max_bytes %s", c.Owner, b, pu.Window, size, pu.MaxBytes)
		}
		p.users[c.Owner] = append(gs, grant{at: now, bytes: size, key: c.Key()})
	}
	// The share bounds what an unprivileged user can make relinkd keep;
	// root's own files (the system's logs and data) are not capped by it.
	if shared && counted {
		held := p.usageLocked(loc.Root).owners[c.Owner]
		if limit := share.Floor(total); held+size > limit {
			p.releaseGrantLocked(c)
			return skip(ReasonQuota, "uid %d holds %d bytes in %s, %d more would pass per_user.max_share %s of the filesystem (%d bytes)",
				c.Owner, held, loc.Root, size, share, limit)
		}
	}
	switch u := p.usage[loc.Root]; {
	case !counted:
	case u != nil:
		p.countLocked(loc.Root, c.Owner, int64(size))
	default:
		// Remember the root for Roots; it is measured when next needed.
		p.usage[loc.Root] = &rootUsage{owners: map[uint32]uint64{}}
	}
	d.Action = Rescue
	return d
}

// Release gives back what a Rescue decision for c reserved, when the
// rescue did not happen.
func (p *Policy) Release(c *scanner.Candidate, d Decision) {
	if d.Action != Rescue {
		return
	}
	size := uint64(max(c.Size, 0))
	p.mu.Lock()
	defer p.mu.Unlock()
	if !d.Beneath {
		p.countLocked(d.Root, c.Owner, -int64(size))
	}
	p.releaseGrantLocked(c)
}

// releaseGrantLocked takes back c's per-user grant, if any.
func (p *Policy) releaseGrantLocked(c *scanner.Candidate) {
	gs := p.users[c.Owner]
	for i := len(gs) - 1; i >= 0; i-- {
		if gs[i].key == c.Key() {
			p.users[c.Owner] = slices.Delete(gs, i, i+1)
			break
		}
	}
}

// countLocked adds size bytes of owner's (negative: gives them back) to
// root's usage, and to the walk of root in progress, if any.
func (p *Policy) countLocked(root string, owner uint32, size int64) {
	if u := p.usage[root]; u != nil {
		u.add(owner, size)
	}
	if w := p.walks[root]; w != nil {
		w.delta.add(owner, size)
	}
}

// usageLocked returns root's usage as last measured (measure), with what
// was granted since; nothing when it was never measured.
func (p *Policy) usageLocked(root string) rootUsage {
	if u := p.usage[root]; u != nil {
		return *u
	}
	return rootUsage{}
}

// measure walks root on disk when its last measurement is older than
// usageTTL, without holding p.mu. One walk of a root runs at a time:
// others who need it wait for its result.
func (p *Policy) measure(root string) {
	for {
		p.mu.Lock()
		if u := p.usage[root]; u != nil && p.now().Sub(u.at) <= usageTTL {
			p.mu.Unlock()
			return
		}
		if w := p.walks[root]; w != nil {
			p.mu.Unlock()
			<-w.done
			continue
		}
		w := &walk{done: make(chan struct{}), delta: rootUsage{owners: map[uint32]uint64{}}}
		p.walks[root] = w
		p.mu.Unlock()

		n, owners, err := p.store.Usage(root)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			p.log.Warn("measure rescue root", zap.String("root", root), zap.Error(err))
		}
		if owners == nil {
			owners = map[uint32]uint64{}
		}
		u := &rootUsage{bytes: n, owners: owners}
		// Grants made while the walk ran; a rescue that finished
		// meanwhile may be counted twice until the next walk, which
		// errs on the side of keeping less.
		u.bytes += w.delta.bytes
		for uid, b := range w.delta.owners {
			u.owners[uid] += b
		}
		p.mu.Lock()
		u.at = p.now()
		p.usage[root] = u
		delete(p.walks, root)
		close(w.done)
		p.mu.Unlock()
		return
	}
}

// Roots returns the configured rescue directories, the fs_dir roots that
// exist on the host's mounts (Locator.KnownRoots) and every other root the policy
// has chosen so far: what retention must prune. After a restart that
// includes the fs_dir roots earlier daemons wrote to.
func (p *Policy) Roots() []string {
	out, err := p.loc.KnownRoots() // lstat per mount: not under p.mu
	if err != nil {
		p.log.Debug("rescue roots on the host's mounts not listed", zap.Error(err))
	}
	n := len(p.cfg.Rescue.Dirs)
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := p.cfg.Rescue.ContainerDir; p.cfg.Rescue.Containers == config.ContainersHost && d != "" && !slices.Contains(out, d) {
		out = append(out, d)
	}
	for r := range p.usage {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	slices.Sort(out[n:])
	return out
}

// Prune applies retention to root: rescued files older than
// rescue.retention go, then the oldest until root holds at most
// rescue.max_total_size. The root's measured usage is refreshed.
func (p *Policy) Prune(root string) (retention.Result, error) {
	var share uint64
	if ms := p.cfg.Rescue.PerUser.MaxShare; ms.IsPercent && ms.Percent > 0 {
		if _, total, err := p.space.FreeSpace(root); err == nil {
			share = ms.Floor(total)
		}
	}
	res, err := p.store.Prune(root, time.Duration(p.cfg.Rescue.Retention), uint64(p.cfg.Rescue.MaxTotalSize), share, p.now())
	p.mu.Lock()
	// Measured again when next needed (the owners are not in res).
	p.usage[root] = &rootUsage{bytes: res.Kept, owners: map[uint32]uint64{}}
	p.mu.Unlock()
	return res, err
}

package relink

import (
	"errors"
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/relinkd/relinkd/internal/eintr"
)

// copyMeta carries the source's owner, group, extended attributes, mode
// and timestamps over to dst. The order matters:
//   - fchown first, because chown(2) clears the set-id bits;
//   - then the extended attributes, including system.posix_acl_access,
//     whose mask the kernel mirrors into the group mode bits;
//   - then fchmod with the source's permission bits, so the result is
//     never more readable than the source whatever the ACL said;
//   - futimens last, since writing data and attributes moves mtime.
//
// Set-user-ID and set-group-ID bits and file capabilities
// (security.capability) are dropped: a rescued copy is data to inspect, not
// a program to run with someone else's privileges.
// What the destination or our privileges do not allow (EPERM, ENOTSUP …)
// is skipped and logged at debug level.
func (e *Engine) copyMeta(src, dst int, st unix.Stat_t) error {
	if err := eintr.Retry0(func() error { return unix.Fchown(dst, int(st.Uid), int(st.Gid)) }); err != nil {
		if !errors.Is(err, unix.EPERM) {
			// EDQUOT: the owner's quota cannot take the copy.
			return spaceErr(fmt.Errorf("fchown %d:%d: %w", st.Uid, st.Gid, err))
		}
		e.log.Debug("cannot keep owner", zap.Uint32("uid", st.Uid), zap.Uint32("gid", st.Gid), zap.Error(err))
	}
	if err := e.copyXattrs(src, dst); err != nil {
		return err
	}
	if err := eintr.Retry0(func() error { return unix.Fchmod(dst, st.Mode&0o1777) }); err != nil {
		return fmt.Errorf("fchmod %#o: %w", st.Mode&0o1777, err)
	}
	if err := futimens(dst, st.Atim, st.Mtim); err != nil {
		return fmt.Errorf("futimens: %w", err)
	}
	return nil
}

// capabilityXattr holds a file's capabilities (capabilities(7)).
const capabilityXattr = "security.capability"

// copyXattrs copies every extended attribute that can be read and set,
// except file capabilities.
func (e *Engine) copyXattrs(src, dst int) error {
	names, err := xattrNames(src)
	if err != nil {
		if skippableXattr(err) {
			return nil
		}
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, name := range names {
		if name == capabilityXattr {
			e.log.Debug("file capabilities not copied", zap.String("name", name))
			continue
		}
		val, err := xattrValue(src, name)
		if err == nil {
			err = eintr.Retry0(func() error { return unix.Fsetxattr(dst, name, val, 0) })
		}
		switch {
		case err == nil:
		case skippableXattr(err), errors.Is(err, unix.ENODATA):
			e.log.Debug("xattr not copied", zap.String("name", name), zap.Error(err))
		default:
			return spaceErr(fmt.Errorf("copy xattr %s: %w", name, err))
		}
	}
	return nil
}

// skippableXattr: the destination does not support the attribute or its
// namespace, or we may not set it (security.* without CAP_SYS_ADMIN,
// trusted.*, an LSM refusing a label).
func skippableXattr(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPERM) ||
		errors.Is(err, unix.EACCES) || errors.Is(err, unix.EINVAL)
}

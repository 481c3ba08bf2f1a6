// SPDX-License-Identifier: GPL-2.0
/*
 * relinkd's in-kernel sweep: a task_file iterator (Linux >= 5.8, BTF) that
 * walks every descriptor table and writes, for each descriptor of a
 * deleted regular file, one record to the iterator's seq_file, which the
 * daemon reads (pkg/scanner/bpf_linux.go decodes the same layout).
 *
 * The program only reads kernel memory: it takes no lock, changes no
 * state and calls bpf_d_path(), bpf_probe_read_kernel() and
 * bpf_seq_write() only.
 *
 * Regenerate with `go generate ./pkg/scanner` (clang and llvm-strip from
 * Debian's clang package; see the README's section on the BPF backend).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* Fields are read by direct loads through the iterator's BTF pointers
 * (the verifier turns them into faulting-safe loads, CO-RE relocates
 * their offsets); bpf_probe_read_kernel() is used only where the
 * verifier has no type to go by (the close-on-exec bitmap, struct mount
 * reached from its embedded vfsmount). */

char LICENSE[] SEC("license") = "GPL";

#define S_IFMT 00170000
#define S_IFREG 0100000
#define S_IFDIR 0040000
#define O_CLOEXEC 02000000
/* include/linux/fs.h: a superblock made by kern_mount(), which no
 * mountinfo lists: shmem's (memfd_create(2), SysV shm), secretmem, DRM,
 * pipefs, sockfs, anon_inodefs. */
#define SB_KERNMOUNT (1UL << 22)

#define PATH_MAX 4096

enum {
	REC_CANDIDATE = 1, /* a deleted regular file: struct rec and its path */
	REC_HELD = 2,      /* a descriptor's path only (Scanner.Track): struct held */
};

/* Every record starts with kind and the length of the path that follows
 * its fixed part (0 when bpf_d_path failed: the reader then reads the
 * link of that one descriptor). */
struct rec {
	__u16 kind;
	__u16 path_len;
	__s32 tgid;
	__s32 tid;
	__s32 fd;
	__u32 flags; /* f_flags, O_CLOEXEC from the table, as fdinfo shows them */
	__s32 mnt_id;
	__u32 mode;
	__u32 nlink;
	__u64 dev; /* s_dev, the kernel's encoding (MAJOR << 20 | MINOR) */
	__u64 ino;
	__s64 size;
	__s64 pos;
	/* The holder, as /proc/PID/stat and status show it: its leader's
	 * start time (ns since boot), real uid and comm, and the mount
	 * namespace of the task walked (0 when it is exiting). */
	__u64 start_boottime;
	__u32 uid;
	__u32 mntns;
	char comm[16];
};

struct held {
	__u16 kind;
	__u16 path_len;
	__s32 tgid;
	__s32 tid;
	__s32 fd;
};

/* The inode number of the pid namespace whose pids the reader uses (its
 * proc root's), set at load; 0 for the initial namespace, whose pids are
 * task->pid and task->tgid. */
volatile const __u32 pidns_inum = 0;

/* MAX_PID_NS_LEVEL (include/linux/pid_namespace.h). */
#define MAX_PID_NS_LEVEL 32

/* pid_nr_ns(): the number of pid in the namespace pidns_inum, 0 when the
 * process is not visible there (as /proc would not list it). */
static __always_inline int nr_in_ns(struct pid *pid)
{
	if (!pid)
		return 0;
	unsigned int level = BPF_CORE_READ(pid, level);
	unsigned long base = (unsigned long)pid + bpf_core_field_offset(struct pid, numbers);
	unsigned long size = bpf_core_type_size(struct upid);
	for (int i = 0; i < MAX_PID_NS_LEVEL; i++) {
		if (i > level)
			break;
		struct upid u = {};
		if (bpf_probe_read_kernel(&u, sizeof(u), (void *)(base + i * size)) != 0)
			return 0;
		if (BPF_CORE_READ(u.ns, ns.inum) == pidns_inum)
			return u.nr;
	}
	return 0;
}

/* ids sets the process and thread ids the reader knows the task by; it
 * returns false for a task its pid namespace does not show. */
static __always_inline bool ids(struct task_struct *task, __s32 *tgid, __s32 *tid)
{
	if (pidns_inum == 0) {
		*tgid = task->tgid;
		*tid = task->pid;
		return true;
	}
	*tgid = nr_in_ns(task->signal->pids[PIDTYPE_TGID]);
	*tid = nr_in_ns(task->thread_pid);
	return *tgid != 0 && *tid != 0;
}

/* One record with room for its path, per CPU: the stack (512 bytes) is
 * too small for a path. */
struct buf {
	struct rec rec;
	char path[PATH_MAX];
	/* The last holder pair written on this CPU (sweep_track): a thread's
	 * descriptors in one directory, one after the other, make one pair,
	 * so the next of them is not written (nor its d_path made). Keyed by
	 * the iterator session, since a session's reads may move between
	 * CPUs. Kernel addresses are compared here, never written out. */
	struct {
		__u64 session;
		__u64 mnt;
		__u64 parent;
		__s32 tid;
	} last;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct buf);
} scratch SEC(".maps");

/* d_unlinked() (include/linux/dcache.h): the name was removed; d_path(3)
 * appends " (deleted)" to such a dentry. A deleted name of an inode with
 * another link is only unhashed; its inode keeps nlink > 0. */
static __always_inline bool unlinked(struct dentry *d)
{
	return d->d_hash.pprev == 0 && d->d_parent != d;
}

/* path writes the descriptor's d_path(3) to dst and returns its length
 * without the NUL, 0 when the kernel refused (ENAMETOOLONG). */
static __always_inline __u32 path(struct file *file, char *dst)
{
	long n = bpf_d_path(&file->f_path, dst, PATH_MAX);
	if (n <= 1 || n > PATH_MAX)
		return 0;
	return (__u32)(n - 1);
}

/* emit writes len bytes of the scratch buffer, bounded for the verifier;
 * 0 when written. */
static __always_inline long emit(struct seq_file *seq, void *p, __u32 len)
{
	if (len > sizeof(struct rec) + PATH_MAX)
		return -1;
	return bpf_seq_write(seq, p, len);
}

static __always_inline int visit(struct bpf_iter__task_file *ctx, bool track)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	__u32 zero = 0;

	if (!task || !file)
		return 0;
	/* The iterator skips threads that share their leader's table. A
	 * thread seen here either has a table of its own (unshare(2)
	 * CLONE_FILES), which /proc/PID/fd does not show either, or its
	 * leader has exited (pthread_exit(3) from main) and left no table:
	 * then its descriptors are the process's, reported once per thread
	 * and told apart by the reader. */
	if (task->pid != task->tgid && task->group_leader->files != 0)
		return 0;
	struct inode *inode = file->f_inode;
	if (!inode)
		return 0;
	struct super_block *sb = inode->i_sb;
	if (!sb || (sb->s_flags & SB_KERNMOUNT))
		return 0;
	struct buf *b = bpf_map_lookup_elem(&scratch, &zero);
	if (!b)
		return 0;
	__u32 mode = inode->i_mode;
	__u32 nlink = inode->i_nlink;
	bool cand = (mode & S_IFMT) == S_IFREG && (nlink == 0 || unlinked(file->f_path.dentry));

	if (!cand) {
		if (!track)
			return 0;
		__u64 session = ctx->meta->session_id;
		__u64 mnt = (__u64)file->f_path.mnt;
		struct dentry *dentry = file->f_path.dentry;
		/* A mount's root is its own parent, and its name's directory is
		 * in the mount below: never taken for its children's pair. A
		 * directory is never skipped either: the daemon's Track keeps a
		 * path by its prefix, and a watched root is a directory whose
		 * own name, unlike its siblings', may be kept. */
		__u64 parent = dentry->d_parent == dentry || (mode & S_IFMT) == S_IFDIR ? 0 : (__u64)dentry->d_parent;
		__s32 tid = task->pid;
		if (parent && b->last.session == session && b->last.tid == tid && b->last.mnt == mnt &&
		    b->last.parent == parent)
			return 0; /* the same directory, same mount: the pair is written */
		struct held *h = (struct held *)&b->rec;
		__u32 n = path(file, (char *)h + sizeof(*h));
		if (n == 0)
			return 0;
		h->kind = REC_HELD;
		h->path_len = n;
		if (!ids(task, &h->tgid, &h->tid))
			return 0;
		h->fd = ctx->fd;
		/* A write that does not fit the seq_file buffer fails, and the
		 * kernel shows this descriptor again at the next read: only a
		 * written pair counts. */
		if (emit(seq, h, sizeof(*h) + n) == 0 && parent) {
			b->last.session = session;
			b->last.mnt = mnt;
			b->last.parent = parent;
			b->last.tid = tid;
		}
		return 0;
	}

	struct rec *r = &b->rec;
	r->kind = REC_CANDIDATE;
	if (!ids(task, &r->tgid, &r->tid))
		return 0;
	r->fd = ctx->fd;
	r->flags = file->f_flags;
	/* fdinfo (fs/proc/fd.c) adds O_CLOEXEC from the table's bitmap. */
	unsigned long *coe = task->files->fdt->close_on_exec;
	unsigned long word = 0;
	if (coe && bpf_probe_read_kernel(&word, sizeof(word), coe + ctx->fd / 64) == 0 &&
	    (word >> (ctx->fd % 64)) & 1)
		r->flags |= O_CLOEXEC;
	/* real_mount(): struct vfsmount is embedded in struct mount. */
	struct vfsmount *vm = file->f_path.mnt;
	struct mount *m = (struct mount *)((char *)vm - bpf_core_field_offset(struct mount, mnt));
	r->mnt_id = BPF_CORE_READ(m, mnt_id);
	r->mode = mode;
	r->nlink = nlink;
	r->dev = sb->s_dev;
	r->ino = inode->i_ino;
	r->size = inode->i_size;
	r->pos = file->f_pos;
	struct task_struct *leader = task->group_leader;
	r->start_boottime = leader->start_boottime;
	r->uid = leader->real_cred->uid.val;
	struct nsproxy *nsp = task->nsproxy;
	r->mntns = nsp ? nsp->mnt_ns->ns.inum : 0;
	if (bpf_probe_read_kernel(r->comm, sizeof(r->comm), &leader->comm) != 0)
		r->comm[0] = 0;
	__u32 n = path(file, b->path);
	r->path_len = n;
	emit(seq, r, sizeof(*r) + n);
	return 0;
}

/* sweep emits the deleted regular files only. */
SEC("iter/task_file")
int sweep(struct bpf_iter__task_file *ctx)
{
	return visit(ctx, false);
}

/* sweep_track also emits every other descriptor's path (not those on
 * internal mounts: pipes, sockets, anonymous inodes), for the daemon's
 * holder index. */
SEC("iter/task_file")
int sweep_track(struct bpf_iter__task_file *ctx)
{
	return visit(ctx, true);
}

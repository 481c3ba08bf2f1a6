/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few kernel types sweep.c reads, written by hand instead of a full
 * `bpftool btf dump` (150,000 lines). preserve_access_index makes clang
 * record every field access as a CO-RE relocation, which the loader
 * (cilium/ebpf) resolves against the running kernel's BTF
 * (/sys/kernel/btf/vmlinux): only the names and types below must match,
 * not the offsets or the other fields.
 */
#ifndef RELINKD_VMLINUX_H
#define RELINKD_VMLINUX_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u64 u64;
typedef __u32 u32;
typedef int pid_t;
typedef __u32 dev_t;
typedef __s64 loff_t;
typedef unsigned short umode_t;
typedef _Bool bool;

enum { false = 0, true = 1 };

enum bpf_map_type {
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
};

struct hlist_bl_node {
	struct hlist_bl_node *next, **pprev;
} __attribute__((preserve_access_index));

struct super_block {
	dev_t s_dev;
	unsigned long s_flags;
} __attribute__((preserve_access_index));

struct inode {
	umode_t i_mode;
	unsigned int i_nlink;
	unsigned long i_ino;
	loff_t i_size;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct dentry {
	struct hlist_bl_node d_hash;
	struct dentry *d_parent;
} __attribute__((preserve_access_index));

struct vfsmount {
	struct dentry *mnt_root;
} __attribute__((preserve_access_index));

struct mount {
	struct vfsmount mnt;
	int mnt_id;
} __attribute__((preserve_access_index));

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	unsigned int f_flags;
	struct path f_path;
	loff_t f_pos;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned long *close_on_exec;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct pid_namespace {
	struct ns_common ns;
} __attribute__((preserve_access_index));

struct upid {
	int nr;
	struct pid_namespace *ns;
} __attribute__((preserve_access_index));

struct pid {
	unsigned int level;
	struct upid numbers[1];
} __attribute__((preserve_access_index));

enum pid_type {
	PIDTYPE_PID = 0,
	PIDTYPE_TGID = 1,
};

struct signal_struct {
	struct pid *pids[4];
} __attribute__((preserve_access_index));

typedef struct {
	unsigned int val;
} kuid_t;

struct cred {
	kuid_t uid;
} __attribute__((preserve_access_index));

struct mnt_namespace {
	struct ns_common ns;
} __attribute__((preserve_access_index));

struct nsproxy {
	struct mnt_namespace *mnt_ns;
} __attribute__((preserve_access_index));

struct task_struct {
	pid_t pid;
	pid_t tgid;
	struct task_struct *group_leader;
	struct files_struct *files;
	struct pid *thread_pid;
	struct signal_struct *signal;
	u64 start_boottime;
	const struct cred *real_cred;
	char comm[16];
	struct nsproxy *nsproxy;
} __attribute__((preserve_access_index));

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__task_file {
	union {
		struct bpf_iter_meta *meta;
	};
	union {
		struct task_struct *task;
	};
	u32 fd;
	union {
		struct file *file;
	};
} __attribute__((preserve_access_index));

#endif

/* olactors native layer: process spawning into sandboxes, cgroup moves,
 * mounts and namespaces.
 *
 * ol_mount_proc() mounts a procfs of a sandbox's PID namespace on its root
 * with Docker's masked and read-only paths (see the comment above it).
 *
 * ol_spawn() uses clone(CLONE_VM|CLONE_VFORK) on a private stack, like
 * posix_spawn: the parent is suspended until the child has exec'd or failed,
 * and the child shares memory with the parent, so it reports a failure by
 * writing the failing step and errno into the caller's struct.  Between clone
 * and execve the child only makes raw, async-signal-safe system calls.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FSOPEN_CLOEXEC
#define FSOPEN_CLOEXEC 0x00000001
#endif
#ifndef FSMOUNT_CLOEXEC
#define FSMOUNT_CLOEXEC 0x00000001
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOUNT_ATTR_NOSUID
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
#define MOUNT_ATTR_NOEXEC 0x00000008
#endif
#define OL_FSCONFIG_SET_FD 5
#define OL_FSCONFIG_CMD_CREATE 6

#define OL_STACK_SIZE (256 * 1024)
#define OL_HELPER_STACK_SIZE (64 * 1024)
#define OL_MAX_KEEP 16
#define OL_HIGH_FD 900

/* A procfs to mount at target, with Docker's masks: every path in masked
 * (full paths below target) is covered (a directory by an empty read-only
 * tmpfs, a file by /dev/null) and every path in readonly is bound read-only
 * onto itself.  Paths this kernel's procfs lacks are skipped. */
struct ol_proc_spec {
    const char *target;
    const char *const *masked;
    int n_masked;
    const char *const *readonly;
    int n_readonly;
};

struct ol_spawn_args {
    const char *path;
    char *const *argv;
    char *const *envp;
    const int *cgroup_fds;
    int n_cgroup_fds;
    int clone_flags;
    int netns_fd;
    int root_fd;
    const char *hostname;
    int uid;
    int gid;
    int stdio_fds[3];
    const int *keep_fds;
    int n_keep_fds;
    const unsigned char *bpf;
    int bpf_len;
    int die_with_parent;
    const struct ol_proc_spec *proc; /* mounted by the child, PID 1 of its namespace */
    /* Capabilities the child keeps (bit n = capability n); every other one
     * leaves its bounding, permitted, effective and inheritable sets, and
     * the ambient set is cleared.  A child dropping to uid/gid keeps none. */
    unsigned long long cap_keep;
    int parent_pidfd; /* set by ol_spawn: the caller's process, for die_with_parent */
    /* out */
    int err_step;
    int err_errno;
};

/* Steps reported in err_step (keep in sync with SPAWN_STEPS in __init__.py). */
enum {
    OL_STEP_NONE = 0,
    OL_STEP_CGROUP,
    OL_STEP_SETNS,
    OL_STEP_HOSTNAME,
    OL_STEP_CHROOT,
    OL_STEP_FDS,
    OL_STEP_IDS,
    OL_STEP_PRCTL,
    OL_STEP_SECCOMP,
    OL_STEP_EXEC,
    OL_STEP_CLONE,
    OL_STEP_PARENT_GONE,
    OL_STEP_PROC,
    OL_STEP_CAPS,
    OL_STEP_SESSION,
};

#define OL_CAP_MAX 64

/* Drop every capability not in keep from the bounding set (stops at the
 * first number the kernel does not know).  Needs CAP_SETPCAP, so it runs
 * before the uid change. */
static int drop_bounding(unsigned long long keep)
{
    int cap;
    for (cap = 0; cap < OL_CAP_MAX; cap++) {
        if (keep & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL)
                return 0; /* beyond the kernel's last capability */
            return -1;
        }
    }
    return 0;
}

/* Set permitted and effective to keep (within what is held), inheritable
 * and ambient to nothing.  Raw capset: libcap is not linked. */
static int set_capabilities(unsigned long long keep)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &hdr, data) != 0)
        return -1;
    data[0].permitted &= (unsigned)(keep & 0xffffffffULL);
    data[1].permitted &= (unsigned)(keep >> 32);
    data[0].effective = data[0].permitted;
    data[1].effective = data[1].permitted;
    data[0].inheritable = data[1].inheritable = 0;
    if (syscall(SYS_capset, &hdr, data) != 0)
        return -1;
    /* EINVAL: a kernel without ambient capabilities (< 4.3) has none to clear */
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        return -1;
    return 0;
}

static int fail(struct ol_spawn_args *a, int step)
{
    a->err_step = step;
    a->err_errno = errno;
    _exit(127);
    return -1;
}

/* ------------------------------------------------------------- /proc
 * A procfs shows the PID namespace its fs_context was created in: the
 * namespace of the process that called fsopen(), unless the kernel takes the
 * "pidns" option (Linux 6.18), which names another one by a namespace fd.
 * Everything here is raw system calls (it also runs in ol_spawn's child). */

static int proc_masks(const struct ol_proc_spec *spec)
{
    struct stat st;
    int i;
    for (i = 0; i < spec->n_masked; i++) {
        const char *p = spec->masked[i];
        if (stat(p, &st) != 0) {
            if (errno == ENOENT)
                continue;
            return -1;
        }
        if (S_ISDIR(st.st_mode)) {
            if (mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      "size=4k,nr_inodes=1,mode=0555") != 0)
                return -1;
        } else if (mount("/dev/null", p, NULL, MS_BIND, NULL) != 0) {
            return -1;
        }
    }
    for (i = 0; i < spec->n_readonly; i++) {
        const char *p = spec->readonly[i];
        if (stat(p, &st) != 0) {
            if (errno == ENOENT)
                continue;
            return -1;
        }
        if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) != 0 ||
            mount(NULL, p, NULL,
                  MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  NULL) != 0)
            return -1;
    }
    return 0;
}

/* Create the superblock of the configured fs_context fsfd, attach it at
 * spec->target (nosuid, nodev, noexec) and apply the masks. */
static int proc_attach(int fsfd, const struct ol_proc_spec *spec)
{
    int mfd, rc, saved;
    if (syscall(SYS_fsconfig, fsfd, OL_FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0)
        return -1;
    mfd = (int)syscall(SYS_fsmount, fsfd, FSMOUNT_CLOEXEC,
                       MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    if (mfd < 0)
        return -1;
    rc = (int)syscall(SYS_move_mount, mfd, "", AT_FDCWD, spec->target, MOVE_MOUNT_F_EMPTY_PATH);
    saved = errno;
    close(mfd);
    errno = saved;
    if (rc != 0)
        return -1;
    return proc_masks(spec);
}

/* The procfs of the caller's own PID namespace (ol_spawn's child). */
static int proc_mount_own(const struct ol_proc_spec *spec)
{
    int rc, saved, fsfd = (int)syscall(SYS_fsopen, "proc", FSOPEN_CLOEXEC);
    if (fsfd < 0)
        return -1;
    rc = proc_attach(fsfd, spec);
    saved = errno;
    close(fsfd);
    errno = saved;
    return rc;
}

/* Kernels without the pidns option: a short-lived helper creates the
 * fs_context from inside the namespace.  The outer child (sharing memory and
 * fds with the caller, which vfork-waits) joins the PID namespace for its
 * children and clones the inner one, which is created in it, calls fsopen
 * (the fd lands in the shared fd table) and exits.  Signals stay blocked in
 * both, so none of the caller's handlers runs there. */
struct proc_helper {
    int pidns_fd;
    int fsfd;
    int err;
    char *inner_stack;
};

static int proc_helper_inner(void *arg)
{
    struct proc_helper *h = arg;
    h->fsfd = (int)syscall(SYS_fsopen, "proc", FSOPEN_CLOEXEC);
    if (h->fsfd < 0)
        h->err = errno;
    _exit(0);
    return 0;
}

static int proc_helper_outer(void *arg)
{
    struct proc_helper *h = arg;
    int pid;
    if (setns(h->pidns_fd, CLONE_NEWPID) != 0) {
        h->err = errno;
        _exit(1);
    }
    pid = clone(proc_helper_inner, h->inner_stack + OL_HELPER_STACK_SIZE,
                CLONE_VM | CLONE_VFORK | CLONE_FILES | SIGCHLD, h);
    if (pid < 0) {
        h->err = errno;
        _exit(1);
    }
    while (waitpid(pid, NULL, __WALL) < 0 && errno == EINTR)
        ;
    _exit(0);
    return 0;
}

static int proc_context_via_helper(int pidns_fd)
{
    struct proc_helper h = {.pidns_fd = pidns_fd, .fsfd = -1, .err = 0};
    char *stacks = malloc(2 * OL_HELPER_STACK_SIZE);
    sigset_t all, old;
    int pid;
    if (!stacks) {
        errno = ENOMEM;
        return -1;
    }
    h.inner_stack = stacks + OL_HELPER_STACK_SIZE;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = clone(proc_helper_outer, stacks + OL_HELPER_STACK_SIZE,
                CLONE_VM | CLONE_VFORK | CLONE_FILES | SIGCHLD, &h);
    if (pid < 0)
        h.err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid > 0)
        while (waitpid(pid, NULL, __WALL) < 0 && errno == EINTR)
            ;
    free(stacks);
    if (h.fsfd < 0) {
        errno = h.err ? h.err : EIO;
        return -1;
    }
    return h.fsfd;
}

/* Mount the procfs of the PID namespace pidns_fd refers to at spec->target,
 * with the masks: through the pidns option, or (via_helper) through a helper
 * process created in the namespace. */
int ol_mount_proc(const struct ol_proc_spec *spec, int pidns_fd, int via_helper)
{
    int fsfd, rc, saved;
    if (via_helper) {
        fsfd = proc_context_via_helper(pidns_fd);
        if (fsfd < 0)
            return -1;
    } else {
        fsfd = (int)syscall(SYS_fsopen, "proc", FSOPEN_CLOEXEC);
        if (fsfd < 0)
            return -1;
        if (syscall(SYS_fsconfig, fsfd, OL_FSCONFIG_SET_FD, "pidns", NULL, pidns_fd) != 0) {
            saved = errno;
            close(fsfd);
            errno = saved;
            return -1;
        }
    }
    rc = proc_attach(fsfd, spec);
    saved = errno;
    close(fsfd);
    errno = saved;
    return rc;
}

/* 1 if procfs takes the pidns option (a PID namespace named by fd), else 0. */
int ol_proc_pidns_option(void)
{
    int rc, ns, fsfd = (int)syscall(SYS_fsopen, "proc", FSOPEN_CLOEXEC);
    if (fsfd < 0)
        return 0;
    ns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
    rc = ns >= 0 && syscall(SYS_fsconfig, fsfd, OL_FSCONFIG_SET_FD, "pidns", NULL, ns) == 0;
    if (ns >= 0)
        close(ns);
    close(fsfd);
    return rc;
}

static int spawn_child(void *arg)
{
    struct ol_spawn_args *a = arg;
    sigset_t none;
    int i, fd, parent_fd = -1;
    int tmp[3 + OL_MAX_KEEP];
    int n_total = 3 + a->n_keep_fds;

    /* 1. join the sandbox's cgroups before anything else runs */
    for (i = 0; i < a->n_cgroup_fds; i++)
        if (write(a->cgroup_fds[i], "0", 1) != 1)
            return fail(a, OL_STEP_CGROUP);
    /* A session (and process group) of its own: kill(0) and
     * setpriority(PRIO_PGRP, 0) reach the caller's process group whatever
     * the PID namespace, and every leaf has the same uid, so a sandbox left
     * in the worker's group could signal every other sandbox's leaves. */
    if (syscall(SYS_setsid) < 0)
        return fail(a, OL_STEP_SESSION);
    /* 2. network namespace (PID/UTS/IPC came from clone flags) */
    if (a->netns_fd >= 0 && setns(a->netns_fd, CLONE_NEWNET) != 0)
        return fail(a, OL_STEP_SETNS);
    if (a->hostname && sethostname(a->hostname, strlen(a->hostname)) != 0)
        return fail(a, OL_STEP_HOSTNAME);
    /* the sandbox's /proc: this child is PID 1 of the namespace it shows */
    if (a->proc && proc_mount_own(a->proc) != 0)
        return fail(a, OL_STEP_PROC);
    /* 3. root directory */
    if (a->root_fd >= 0) {
        if (fchdir(a->root_fd) != 0 || chroot(".") != 0 || chdir("/") != 0)
            return fail(a, OL_STEP_CHROOT);
    }
    /* 4. file descriptors: stdio, then keep_fds at 3.., close the rest
     * (after step 6).  The parent's pidfd moves out of the way first. */
    if (a->parent_pidfd >= 0) {
        parent_fd = fcntl(a->parent_pidfd, F_DUPFD_CLOEXEC, OL_HIGH_FD);
        if (parent_fd < 0)
            return fail(a, OL_STEP_FDS);
    }
    for (i = 0; i < n_total; i++) {
        int src = i < 3 ? a->stdio_fds[i] : a->keep_fds[i - 3];
        tmp[i] = -1;
        if (src < 0)
            continue;
        tmp[i] = fcntl(src, F_DUPFD_CLOEXEC, OL_HIGH_FD);
        if (tmp[i] < 0)
            return fail(a, OL_STEP_FDS);
    }
    for (i = 0; i < n_total; i++) {
        if (tmp[i] < 0) {
            if (i < 3) {
                fd = open("/dev/null", O_RDWR);
                if (fd < 0 || (fd != i && dup2(fd, i) < 0))
                    return fail(a, OL_STEP_FDS);
            }
            continue;
        }
        if (dup2(tmp[i], i) < 0)
            return fail(a, OL_STEP_FDS);
    }
    /* 5. capabilities out of the bounding set first (that needs
     * CAP_SETPCAP, which the uid change below takes away); a child that
     * changes its uid keeps none at all. */
    if (drop_bounding(a->uid >= 0 ? 0 : a->cap_keep) != 0)
        return fail(a, OL_STEP_CAPS);
    /* identity: drop to an unprivileged uid/gid when asked.  Raw system
     * calls, as in glibc's posix_spawn: the libc wrappers run the multi-thread
     * "setxid" protocol over the parent's thread list (shared through
     * CLONE_VM) and take its lock, which another worker thread may hold while
     * the parent is suspended in vfork: a deadlock. */
    if (a->gid >= 0) {
        if (syscall(SYS_setgroups, 0, NULL) != 0 ||
            syscall(SYS_setresgid, a->gid, a->gid, a->gid) != 0)
            return fail(a, OL_STEP_IDS);
    }
    if (a->uid >= 0 && syscall(SYS_setresuid, a->uid, a->uid, a->uid) != 0)
        return fail(a, OL_STEP_IDS);
    /* the uid change emptied permitted and effective; inheritable and
     * ambient are cleared here, and a root child keeps only cap_keep */
    if (set_capabilities(a->uid >= 0 ? 0 : a->cap_keep) != 0)
        return fail(a, OL_STEP_CAPS);
    /* 6. process attributes */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail(a, OL_STEP_PRCTL);
    /* The parent-death signal is set after the uid/gid change (which would
     * clear it).  It fires when the *thread* that cloned us exits.  The
     * parent may have died before it was set (vfork waits are killable): its
     * pidfd is readable then, and the child gives up instead of outliving it.
     * In a new PID namespace getppid() is 0, so it cannot tell. */
    if (a->die_with_parent) {
        struct pollfd pfd = {.fd = parent_fd, .events = POLLIN};
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
            return fail(a, OL_STEP_PRCTL);
        if (poll(&pfd, 1, 0) != 0) {
            errno = ESRCH;
            return fail(a, OL_STEP_PARENT_GONE);
        }
    }
    /* Every fd beyond stdio and keep_fds (the parent's pidfd too) is closed. */
    if (syscall(SYS_close_range, (unsigned)n_total, ~0U, 0) != 0)
        return fail(a, OL_STEP_FDS);
    /* Signals arrive blocked (see ol_spawn).  Reset every handler, so no
     * parent handler can run in this child, and every ignored signal
     * (Python ignores SIGPIPE and SIGXFSZ; SIG_IGN survives exec). */
    for (i = 1; i < NSIG; i++) {
        struct sigaction sa;
        if (i == SIGKILL || i == SIGSTOP)
            continue;
        if (sigaction(i, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigemptyset(&sa.sa_mask);
            sigaction(i, &sa, NULL);
        }
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* 7. seccomp, last before exec: the filter must allow execve */
    if (a->bpf && a->bpf_len > 0) {
        struct sock_fprog prog;
        prog.len = (unsigned short)(a->bpf_len / sizeof(struct sock_filter));
        prog.filter = (struct sock_filter *)a->bpf;
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
            return fail(a, OL_STEP_SECCOMP);
    }
    execve(a->path, a->argv, a->envp);
    return fail(a, OL_STEP_EXEC);
}

int ol_spawn(struct ol_spawn_args *a)
{
    char *stack;
    int pid, status, saved_errno;
    sigset_t all, old;

    a->err_step = OL_STEP_NONE;
    a->err_errno = 0;
    if (a->n_keep_fds > OL_MAX_KEEP || a->n_keep_fds < 0) {
        a->err_step = OL_STEP_FDS;
        a->err_errno = E2BIG;
        return -1;
    }
    a->parent_pidfd = -1;
    if (a->die_with_parent) {
        a->parent_pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
        if (a->parent_pidfd < 0) {
            a->err_step = OL_STEP_PRCTL;
            a->err_errno = errno;
            return -1;
        }
    }
    stack = malloc(OL_STACK_SIZE);
    if (!stack) {
        if (a->parent_pidfd >= 0)
            close(a->parent_pidfd);
        a->err_step = OL_STEP_CLONE;
        a->err_errno = ENOMEM;
        return -1;
    }
    /* Block every signal across clone so no handler of the parent runs in
     * the child before it has reset them (as posix_spawn does). */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = clone(spawn_child, stack + OL_STACK_SIZE,
                CLONE_VM | CLONE_VFORK | SIGCHLD | a->clone_flags, a);
    saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    free(stack);
    if (a->parent_pidfd >= 0)
        close(a->parent_pidfd);
    if (pid < 0) {
        a->err_step = OL_STEP_CLONE;
        a->err_errno = saved_errno;
        return -1;
    }
    if (a->err_step != OL_STEP_NONE) {
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        return -1;
    }
    return pid;
}

int ol_cgroup_move(int procs_fd, int pid)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d", pid);
    return write(procs_fd, buf, n) == n ? 0 : -1;
}

int ol_bind(const char *src, const char *dst, int recursive, int readonly)
{
    unsigned long flags = MS_BIND | (recursive ? MS_REC : 0);
    if (mount(src, dst, NULL, flags, NULL) != 0)
        return -1;
    /* A bind inherits the source's flags; always add nosuid/nodev. */
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (readonly ? MS_RDONLY : 0);
    if (mount(NULL, dst, NULL, flags, NULL) != 0) {
        int saved = errno;
        umount2(dst, MNT_DETACH);
        errno = saved;
        return -1;
    }
    return 0;
}

/* A bind that keeps the flags of the mount src is on (one system call). */
int ol_bind_as_source(const char *src, const char *dst)
{
    return mount(src, dst, NULL, MS_BIND, NULL);
}

int ol_mount_tmpfs(const char *dst, const char *options, int allow_dev)
{
    unsigned long flags = MS_NOSUID | (allow_dev ? 0 : MS_NODEV);
    return mount("tmpfs", dst, "tmpfs", flags, options);
}

/* A bind remount sets this mount's flags to exactly those given: nodev (and
 * nosuid) must be named again or the remount drops them. */
int ol_remount_readonly(const char *path, int allow_dev)
{
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID;
    return mount(NULL, path, NULL, flags | (allow_dev ? 0 : MS_NODEV), NULL);
}

int ol_umount(const char *path, int detach)
{
    return umount2(path, detach ? MNT_DETACH : 0);
}

/* Move the calling process into a new mount namespace whose mounts do not
 * propagate to the host.  Fails with EINVAL if the process has threads. */
int ol_private_mount_namespace(void)
{
    if (unshare(CLONE_NEWNS) != 0)
        return -1;
    return mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
}

/* Create an empty network namespace and return an fd referring to it.  The
 * calling thread enters it briefly and returns to its original namespace. */
/* Bring the calling thread's loopback up (SIOCSIFFLAGS on "lo"). */
static int loopback_up(void)
{
    struct ifreq ifr;
    int sock, rc = -1, saved;
    sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -1;
    memset(&ifr, 0, sizeof(ifr));
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        rc = ioctl(sock, SIOCSIFFLAGS, &ifr);
    }
    saved = errno;
    close(sock);
    errno = saved;
    return rc;
}

static int new_netns(int with_loopback)
{
    int orig, created, failed = 0, saved = 0;
    orig = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (orig < 0)
        return -1;
    if (unshare(CLONE_NEWNET) != 0) {
        saved = errno;
        close(orig);
        errno = saved;
        return -1;
    }
    created = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (created < 0 || (with_loopback && loopback_up() != 0)) {
        failed = 1;
        saved = errno;
    }
    if (setns(orig, CLONE_NEWNET) != 0) {
        /* Cannot return to the host namespace: this thread is unusable. */
        abort();
    }
    close(orig);
    if (failed) {
        if (created >= 0)
            close(created);
        errno = saved;
        return -1;
    }
    return created;
}

int ol_new_netns(void)
{
    return new_netns(0);
}

int ol_new_netns_loopback(void)
{
    return new_netns(1);
}

int ol_mknod_char(const char *path, int mode, int major_nr, int minor_nr)
{
    return mknod(path, S_IFCHR | (mode & 07777), makedev(major_nr, minor_nr));
}

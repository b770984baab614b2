/* olactors native layer: process spawning into sandboxes, cgroup moves,
 * mounts and namespaces.
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
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define OL_STACK_SIZE (256 * 1024)
#define OL_MAX_KEEP 16
#define OL_HIGH_FD 900

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
};

static int fail(struct ol_spawn_args *a, int step)
{
    a->err_step = step;
    a->err_errno = errno;
    _exit(127);
    return -1;
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
    /* 2. network namespace (PID/UTS/IPC came from clone flags) */
    if (a->netns_fd >= 0 && setns(a->netns_fd, CLONE_NEWNET) != 0)
        return fail(a, OL_STEP_SETNS);
    if (a->hostname && sethostname(a->hostname, strlen(a->hostname)) != 0)
        return fail(a, OL_STEP_HOSTNAME);
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
    /* 5. identity: drop to an unprivileged uid/gid when asked.  Raw system
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

int ol_mount_tmpfs(const char *dst, const char *options, int allow_dev)
{
    unsigned long flags = MS_NOSUID | (allow_dev ? 0 : MS_NODEV);
    return mount("tmpfs", dst, "tmpfs", flags, options);
}

int ol_remount_readonly(const char *path)
{
    return mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID, NULL);
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
int ol_new_netns(void)
{
    int orig, created;
    orig = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (orig < 0)
        return -1;
    if (unshare(CLONE_NEWNET) != 0) {
        int saved = errno;
        close(orig);
        errno = saved;
        return -1;
    }
    created = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (setns(orig, CLONE_NEWNET) != 0) {
        /* Cannot return to the host namespace: this thread is unusable. */
        abort();
    }
    close(orig);
    return created;
}

int ol_mknod_char(const char *path, int mode, int major_nr, int minor_nr)
{
    return mknod(path, S_IFCHR | (mode & 07777), makedev(major_nr, minor_nr));
}

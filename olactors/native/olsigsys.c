/*
 * libolsigsys.so: names the syscalls a sandbox's seccomp filter blocks.
 *
 * A leaf's filter answers a denied syscall with SECCOMP_RET_TRAP: the kernel
 * skips the call and sends the calling thread SIGSYS, whose siginfo carries
 * the syscall number (si_syscall).  The handler here sets that number's bit
 * in a small bitmap shared with the worker and makes the call return -EPERM,
 * so the program sees exactly what it saw when the filter answered EPERM
 * itself (glibc sets errno = EPERM; Python raises PermissionError).
 *
 * The bitmap is OL_MAP_BYTES bytes (one bit per syscall number) in the file
 * OL_MAP_PATH, the sandbox's scratch dir as the sandbox sees it; the worker
 * creates it before the sandbox starts, clears it before each call and
 * reads it after.  It is mapped MAP_SHARED, so forked children share it and
 * programs exec'd inside the sandbox map it again (see below).
 *
 * A plain shared library, not a Python extension: it loads into any
 * dynamically linked program.  Fresh sandboxes get it through LD_PRELOAD
 * (the constructor below installs the handler and maps the bitmap before the
 * program's main); so does every dynamically linked program they exec that
 * keeps the environment.  A zygote loads it the same way and its forked
 * children call olsigsys_attach() once they are in their own root.
 *
 * Limits (documented in docs/architecture.md): a statically linked program,
 * or one exec'd with LD_PRELOAD removed, has no handler, so a blocked call
 * kills it with SIGSYS (the kernel's default action); so does a blocked call
 * from a thread that blocks SIGSYS, or after the program replaced the
 * handler with SIG_DFL.
 *
 * Async-signal-safety: the handler only does an atomic OR into the map and
 * writes a register of the interrupted context; it never touches errno.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <ucontext.h>
#include <unistd.h>

#define OL_MAP_BYTES 128 /* keep in sync with olactors/sock/_blocked.py */
#define OL_MAP_PATH "/host/blocked-syscalls"

#ifndef SYS_SECCOMP
#define SYS_SECCOMP 1 /* si_code of a SIGSYS sent by seccomp */
#endif

#if defined(__x86_64__)
#define OL_SET_RETURN(uc, value) ((uc)->uc_mcontext.gregs[REG_RAX] = (greg_t)(value))
#elif defined(__aarch64__)
#define OL_SET_RETURN(uc, value) ((uc)->uc_mcontext.regs[0] = (unsigned long long)(value))
#else
#error "olsigsys: unsupported architecture (the syscall return register is unknown)"
#endif

static unsigned char *volatile ol_map;

__attribute__((visibility("default"))) const int olsigsys_map_bytes = OL_MAP_BYTES;

static void ol_on_sigsys(int sig, siginfo_t *info, void *context)
{
    if (info->si_code != SYS_SECCOMP) {
        /* Not seccomp's (e.g. kill -SYS): the default action, as without us. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigaction(sig, &dfl, NULL);
        raise(sig); /* delivered when the handler returns (SIGSYS is blocked here) */
        return;
    }
    unsigned char *map = ol_map;
    int nr = info->si_syscall;
    if (map != NULL && nr >= 0 && nr < OL_MAP_BYTES * 8)
        __atomic_fetch_or(&map[nr >> 3], (unsigned char)(1u << (nr & 7)), __ATOMIC_RELAXED);
    OL_SET_RETURN((ucontext_t *)context, -EPERM);
}

/* Map the bitmap at ``path``, replacing any earlier map (a forked child's
 * inherited one).  0 on success, else -1 with errno set (nothing mapped then). */
__attribute__((visibility("default"))) int olsigsys_attach(const char *path)
{
    unsigned char *old = ol_map;
    ol_map = NULL;
    if (old != NULL)
        munmap(old, OL_MAP_BYTES);
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    int err = 0;
    if (fstat(fd, &st) != 0)
        err = errno;
    else if (!S_ISREG(st.st_mode) || st.st_size < OL_MAP_BYTES)
        err = EINVAL;
    if (err != 0) {
        close(fd);
        errno = err;
        return -1;
    }
    void *map = mmap(NULL, OL_MAP_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    err = errno;
    close(fd);
    if (map == MAP_FAILED) {
        errno = err;
        return -1;
    }
    ol_map = map;
    return 0;
}

/* Install the SIGSYS handler (idempotent).  0, or -1 with errno set. */
__attribute__((visibility("default"))) int olsigsys_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = ol_on_sigsys;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSYS, &sa, NULL);
}

__attribute__((constructor)) static void ol_init(void)
{
    int saved = errno;
    olsigsys_install();
    olsigsys_attach(OL_MAP_PATH); /* absent (a zygote, the host): nothing recorded */
    errno = saved;
}

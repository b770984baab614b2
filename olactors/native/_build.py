"""cffi builder for the native layer (API mode, compiled at install time)."""

from pathlib import Path

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
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
        const struct ol_proc_spec *proc;
        unsigned long long cap_keep;
        int parent_pidfd;
        int err_step;
        int err_errno;
    };
    int ol_spawn(struct ol_spawn_args *a);
    int ol_cgroup_move(int procs_fd, int pid);
    int ol_bind(const char *src, const char *dst, int recursive, int readonly);
    int ol_bind_as_source(const char *src, const char *dst);
    int ol_mount_tmpfs(const char *dst, const char *options, int allow_dev);
    int ol_remount_readonly(const char *path, int allow_dev);
    int ol_umount(const char *path, int detach);
    int ol_private_mount_namespace(void);
    int ol_new_netns(void);
    int ol_new_netns_loopback(void);
    int ol_mount_proc(const struct ol_proc_spec *spec, int pidns_fd, int via_helper);
    int ol_proc_pidns_option(void);
    int ol_mknod_char(const char *path, int mode, int major_nr, int minor_nr);
    """
)
_SOURCE = (Path(__file__).with_name("olnative.c")).read_text()
ffibuilder.set_source(
    "olactors.native._olnative",
    _SOURCE,
    extra_compile_args=["-O2", "-Wall", "-Werror", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

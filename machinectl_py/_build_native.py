"""cffi builders for the two compiled modules.

Out-of-line API mode: the C declarations are compiled at install time, so importing
a module at run time parses nothing.
  * machinectl_py._sys (`sysbuilder`), used only through machinectl_py.syscalls: raw system
    calls (mount, pivot_root, unshare, setns, ...) and libnftables' command API (pm_nft_run),
    opened with dlopen at its first use: no build dependency, and a missing library is an
    answer (-2) rather than an import failure. It links nothing but libc, so a command that
    makes no bus call (`exec`) does not pay the dynamic loader for libsystemd and the six
    libraries it brings (libgcrypt, liblzma, libzstd, liblz4, libcap, libgpg-error: ~1 ms).
  * machinectl_py._native (`ffibuilder`): libsystemd's sd-bus client, used only through
    machinectl_py.bus. sd-bus is the D-Bus library systemd itself uses; reaching it through
    cffi costs a few milliseconds where importing dbus_next or pystemd costs 80-170 ms (see README).
"""

from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef(
    r"""
    /* ---- sd-bus ---- */
    typedef struct sd_bus sd_bus;
    typedef struct sd_bus_message sd_bus_message;
    typedef struct sd_bus_error { const char *name; const char *message; ...; } sd_bus_error;

    int sd_bus_open_system(sd_bus **ret);
    int sd_bus_new(sd_bus **ret);
    int sd_bus_set_address(sd_bus *bus, const char *address);
    int sd_bus_start(sd_bus *bus);
    sd_bus *sd_bus_flush_close_unref(sd_bus *bus);
    int sd_bus_message_new_method_call(sd_bus *bus, sd_bus_message **m, const char *destination,
                                       const char *path, const char *interface, const char *member);
    int sd_bus_message_append_basic(sd_bus_message *m, char type, const void *p);
    int sd_bus_message_append_array(sd_bus_message *m, char type, const void *ptr, size_t size);
    int sd_bus_message_open_container(sd_bus_message *m, char type, const char *contents);
    int sd_bus_message_close_container(sd_bus_message *m);
    int sd_bus_call(sd_bus *bus, sd_bus_message *m, uint64_t usec, sd_bus_error *ret_error,
                    sd_bus_message **reply);
    sd_bus_message *sd_bus_message_unref(sd_bus_message *m);
    int sd_bus_message_set_expect_reply(sd_bus_message *m, int b);
    int sd_bus_send(sd_bus *bus, sd_bus_message *m, uint64_t *cookie);
    int sd_bus_message_peek_type(sd_bus_message *m, char *type, const char **contents);
    int sd_bus_message_read_basic(sd_bus_message *m, char type, void *p);
    int sd_bus_message_read(sd_bus_message *m, const char *types, ...);
    int sd_bus_message_read_array(sd_bus_message *m, char type, const void **ptr, size_t *size);
    int sd_bus_message_enter_container(sd_bus_message *m, char type, const char *contents);
    int sd_bus_message_exit_container(sd_bus_message *m);
    int sd_bus_message_get_type(sd_bus_message *m, uint8_t *type);
    int sd_bus_message_get_reply_cookie(sd_bus_message *m, uint64_t *cookie);
    const sd_bus_error *sd_bus_message_get_error(sd_bus_message *m);
    const char *sd_bus_message_get_interface(sd_bus_message *m);
    const char *sd_bus_message_get_member(sd_bus_message *m);
    const char *sd_bus_message_get_path(sd_bus_message *m);
    int sd_bus_process(sd_bus *bus, sd_bus_message **r);
    int sd_bus_wait(sd_bus *bus, uint64_t timeout_usec);
    int sd_bus_get_fd(sd_bus *bus);
    void sd_bus_error_free(sd_bus_error *e);
    """
)

ffibuilder.set_source(
    "machinectl_py._native",
    r"""
    #include <systemd/sd-bus.h>
    """,
    libraries=["systemd"],
)

sysbuilder = FFI()
sysbuilder.cdef(
    r"""
    /* ---- system calls ---- */
    int mount(const char *source, const char *target, const char *fstype,
              unsigned long flags, const void *data);
    int umount2(const char *target, int flags);
    int pm_pivot_root(const char *new_root, const char *put_old);
    int unshare(int flags);
    int setns(int fd, int nstype);
    int sethostname(const char *name, size_t len);
    int syncfs(int fd);
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
    int pm_capset_keep(uint64_t keep);
    int pm_close_range(unsigned int first, unsigned int last, unsigned int flags);
    int pm_pidfd_open(int pid, unsigned int flags);
    int pm_fork_into_cgroup(int cgroup_fd);
    int pm_open_tree(int dirfd, const char *path, unsigned int flags);
    int pm_mount_setattr_idmap(int fd, int userns_fd);
    int pm_set_fs_ids(unsigned int uid, unsigned int gid);
    int pm_move_mount(int from_fd, const char *to_path);
    int pm_seccomp_install(const unsigned char *filter, unsigned int instructions);
    int pm_nft_run(const char *script, char *err, size_t errlen);

    #define CLONE_NEWNS ...
    #define CLONE_NEWUTS ...
    #define CLONE_NEWIPC ...
    #define CLONE_NEWPID ...
    #define CLONE_NEWNET ...
    #define CLONE_NEWCGROUP ...
    #define CLONE_NEWUSER ...
    #define MS_RDONLY ...
    #define MS_NOSUID ...
    #define MS_NODEV ...
    #define MS_NOEXEC ...
    #define MS_REMOUNT ...
    #define MS_BIND ...
    #define MS_REC ...
    #define MS_PRIVATE ...
    #define MS_STRICTATIME ...
    #define MNT_DETACH ...
    #define PR_SET_PDEATHSIG ...
    #define PR_CAPBSET_DROP ...

    """
)
sysbuilder.set_source(
    "machinectl_py._sys",
    r"""
    #ifndef _GNU_SOURCE
    #define _GNU_SOURCE
    #endif
    #include <sched.h>
    #include <errno.h>
    #include <stdint.h>
    #include <string.h>
    #include <unistd.h>
    #include <signal.h>
    #include <sys/mount.h>
    #include <sys/prctl.h>
    #include <sys/syscall.h>
    #include <linux/audit.h>
    #include <linux/capability.h>
    #include <linux/filter.h>
    #include <linux/seccomp.h>

    #ifndef SYS_close_range
    #define SYS_close_range 436
    #endif
    #ifndef SYS_pidfd_open
    #define SYS_pidfd_open 434
    #endif

    static int pm_pivot_root(const char *new_root, const char *put_old) {
        return (int)syscall(SYS_pivot_root, new_root, put_old);
    }

    /* Set effective, permitted and inheritable sets to `keep` (a bit mask of CAP_*). */
    static int pm_capset_keep(uint64_t keep) {
        struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
        struct __user_cap_data_struct data[2];
        memset(data, 0, sizeof(data));
        data[0].effective = data[0].permitted = data[0].inheritable = (uint32_t)keep;
        data[1].effective = data[1].permitted = data[1].inheritable = (uint32_t)(keep >> 32);
        return (int)syscall(SYS_capset, &hdr, data);
    }

    static int pm_close_range(unsigned int first, unsigned int last, unsigned int flags) {
        return (int)syscall(SYS_close_range, first, last, flags);
    }

    static int pm_pidfd_open(int pid, unsigned int flags) {
        return (int)syscall(SYS_pidfd_open, pid, flags);
    }

    /* os.fork(), with the child born in the cgroup `cgroup_fd` (clone3's CLONE_INTO_CGROUP,
       Linux 5.7, cgroup v2): no later write to cgroup.procs, which takes the kernel's cgroup
       threadgroup lock for writing and so waits for an RCU grace period. The interpreter's
       fork hooks run as os.fork() runs them, with the GIL (cffi released it for this call). */
    #ifndef SYS_clone3
    #define SYS_clone3 435
    #endif
    struct pm_clone_args {
        uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
                 set_tid, set_tid_size, cgroup;
    };
    static int pm_fork_into_cgroup(int cgroup_fd) {
        struct pm_clone_args args;
        PyGILState_STATE gil;
        long pid;
        int saved;
        memset(&args, 0, sizeof args);
        args.flags = 0x200000000ULL; /* CLONE_INTO_CGROUP */
        args.exit_signal = SIGCHLD;
        args.cgroup = (uint64_t)cgroup_fd;
        gil = PyGILState_Ensure();
        PyOS_BeforeFork();
        pid = syscall(SYS_clone3, &args, sizeof args);
        saved = errno;
        if (pid == 0)
            PyOS_AfterFork_Child();
        else
            PyOS_AfterFork_Parent();
        PyGILState_Release(gil);
        errno = saved;
        return (int)pid;
    }

    /* open_tree(2) and mount_setattr(2) (Linux 5.12), by number: Debian 12's glibc has no
       wrappers. OPEN_TREE_CLONE makes a detached copy of the mount at `path`; setting
       MOUNT_ATTR_IDMAP on it shows its files' owners through the user namespace's mapping. */
    #ifndef SYS_open_tree
    #define SYS_open_tree 428
    #endif
    #ifndef SYS_mount_setattr
    #define SYS_mount_setattr 442
    #endif
    struct pm_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };
    #ifndef SYS_move_mount
    #define SYS_move_mount 429
    #endif
    /* Attach the detached mount `from_fd` at `to_path` (MOVE_MOUNT_F_EMPTY_PATH). */
    static int pm_move_mount(int from_fd, const char *to_path) {
        /* MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS: to_path may be a /proc/self/fd/N link */
        return (int)syscall(SYS_move_mount, from_fd, "", -100 /* AT_FDCWD */, to_path, 0x4 | 0x10);
    }
    static int pm_open_tree(int dirfd, const char *path, unsigned int flags) {
        return (int)syscall(SYS_open_tree, dirfd, path, flags);
    }
    static int pm_mount_setattr_idmap(int fd, int userns_fd) {
        struct pm_mount_attr attr = { 0x00100000 /* MOUNT_ATTR_IDMAP */, 0, 0, (uint64_t)userns_fd };
        return (int)syscall(SYS_mount_setattr, fd, "", 0x1000 /* AT_EMPTY_PATH */, &attr, sizeof attr);
    }

    /* Act on files as uid/gid while keeping every capability: setfsuid() away from 0 clears
       the file capabilities from the effective set, so they are raised again from the
       permitted set. overlayfs does its upper-layer work with its mounter's credentials. */
    #include <sys/fsuid.h>
    static int pm_set_fs_ids(unsigned int uid, unsigned int gid) {
        struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
        struct __user_cap_data_struct data[2];
        setfsgid(gid);
        setfsuid(uid);
        if ((unsigned int)setfsuid((uid_t)-1) != uid || (unsigned int)setfsgid((gid_t)-1) != gid) {
            errno = EPERM;
            return -1;
        }
        if (syscall(SYS_capget, &hdr, data) != 0)
            return -1;
        data[0].effective = data[0].permitted;
        data[1].effective = data[1].permitted;
        return (int)syscall(SYS_capset, &hdr, data);
    }

    /* Install a classic-BPF seccomp filter (`instructions` struct sock_filter, 8 bytes each). */
    static int pm_seccomp_install(const unsigned char *filter, unsigned int instructions) {
        struct sock_fprog prog = { (unsigned short)instructions, (struct sock_filter *)filter };
        return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
    }

    /* Run an nft script (`nft -f -`'s input) through libnftables in this process. The library
       is opened at the first call (Debian's libnftables1, which the nftables package brings):
       -2 where it is missing, so the caller can run `nft` instead. Else the library's answer
       (0: applied, in one transaction), its error text copied into err. */
    #include <dlfcn.h>
    #include <stdio.h>
    struct nft_ctx;
    static struct nft_ctx *(*pm_nft_ctx_new)(uint32_t flags);
    static void (*pm_nft_ctx_free)(struct nft_ctx *ctx);
    static int (*pm_nft_ctx_buffer_output)(struct nft_ctx *ctx);
    static int (*pm_nft_ctx_buffer_error)(struct nft_ctx *ctx);
    static const char *(*pm_nft_ctx_get_error_buffer)(struct nft_ctx *ctx);
    static int (*pm_nft_run_cmd_from_buffer)(struct nft_ctx *ctx, const char *buf);
    static int pm_nft_open(void) {
        void *lib;
        if (pm_nft_run_cmd_from_buffer)
            return 0;
        lib = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!lib)
            return -1;
        pm_nft_ctx_new = (struct nft_ctx *(*)(uint32_t))dlsym(lib, "nft_ctx_new");
        pm_nft_ctx_free = (void (*)(struct nft_ctx *))dlsym(lib, "nft_ctx_free");
        pm_nft_ctx_buffer_output = (int (*)(struct nft_ctx *))dlsym(lib, "nft_ctx_buffer_output");
        pm_nft_ctx_buffer_error = (int (*)(struct nft_ctx *))dlsym(lib, "nft_ctx_buffer_error");
        pm_nft_ctx_get_error_buffer = (const char *(*)(struct nft_ctx *))dlsym(lib, "nft_ctx_get_error_buffer");
        if (!pm_nft_ctx_new || !pm_nft_ctx_free || !pm_nft_ctx_buffer_output || !pm_nft_ctx_buffer_error ||
            !pm_nft_ctx_get_error_buffer)
            return -1;
        pm_nft_run_cmd_from_buffer = (int (*)(struct nft_ctx *, const char *))dlsym(lib, "nft_run_cmd_from_buffer");
        return pm_nft_run_cmd_from_buffer ? 0 : -1;
    }
    static int pm_nft_run(const char *script, char *err, size_t errlen) {
        struct nft_ctx *ctx;
        const char *text;
        int rc;
        if (errlen)
            err[0] = 0;
        if (pm_nft_open() != 0 || !(ctx = pm_nft_ctx_new(0 /* NFT_CTX_DEFAULT */)))
            return -2;
        pm_nft_ctx_buffer_output(ctx);
        pm_nft_ctx_buffer_error(ctx);
        rc = pm_nft_run_cmd_from_buffer(ctx, script);
        text = pm_nft_ctx_get_error_buffer(ctx);
        if (text && errlen)
            snprintf(err, errlen, "%s", text);
        pm_nft_ctx_free(ctx);
        return rc == 0 ? 0 : -1;
    }
    """,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    sysbuilder.compile(verbose=True)

"""The container's seccomp filter: a deny-list on top of the dropped capabilities.

docker and nspawn both filter syscalls; their filters are allow-lists compiled by
libseccomp (that compilation is about 70 ms of every nspawn start here). pymachine's
policy names the syscalls a container must not make, the ones whose kernel state is not
namespaced or that reach the kernel itself (keyrings, bpf, modules, kexec, the clock,
mounts), plus new user namespaces: an unprivileged process may create one, and inside it
gets every capability over a much larger kernel surface. The filter is a few dozen
classic-BPF instructions built here, in Python, with no library, and installed by the
container's init (and by `exec`) just before it drops its capabilities.

Pure: building the program only; syscalls.seccomp_filter feeds it this architecture's numbers
(tested by installing it in a forked child).
"""

from __future__ import annotations

# Every name the policy may use (a C table in _native maps them to this architecture's
# numbers; a name this architecture lacks is skipped).
KNOWN_SYSCALLS = frozenset({
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "clone", "clone3", "create_module",
    "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms",
    "init_module", "ioperm", "iopl", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount",
    "mount_setattr", "move_mount", "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open",
    "pivot_root", "query_module", "quotactl", "reboot", "request_key", "setns", "settimeofday", "swapoff",
    "swapon", "syslog", "umount2", "unshare", "uselib", "userfaultfd", "vm86", "vm86old", "_sysctl",
})

CLONE_NEWUSER = 0x10000000
X32_SYSCALL_BIT = 0x40000000
AUDIT_ARCH_X86_64 = 0xC000003E

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0 = 16

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

# Return values (linux/seccomp.h)
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
ENOSYS = 38


def _insn(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    """struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; } in native byte order."""
    import sys

    order = sys.byteorder
    return code.to_bytes(2, order) + bytes((jt, jf)) + (k & 0xFFFFFFFF).to_bytes(4, order)


def _arg0_low_offset() -> int:
    import sys

    return _OFFSET_ARG0 if sys.byteorder == "little" else _OFFSET_ARG0 + 4


def build_filter(arch: int, deny: dict[str, int], *, deny_user_namespaces: bool) -> bytes:
    """The program: syscalls of another ABI (i386 or x32 on x86_64) fail with ENOSYS, so no
    second numbering can get around the list; each denied syscall fails with EPERM; with
    `deny_user_namespaces`, clone/unshare with CLONE_NEWUSER fail with EPERM and clone3 (whose
    flags a filter cannot read) with ENOSYS, so that libc falls back to clone. `deny` maps
    names to this architecture's numbers."""
    errno_eperm = SECCOMP_RET_ERRNO | EPERM
    errno_enosys = SECCOMP_RET_ERRNO | ENOSYS
    flag_checked = {"clone", "unshare", "clone3"} if deny_user_namespaces else set()
    prog = [
        _insn(_LD_W_ABS, _OFFSET_ARCH),
        _insn(_JEQ_K, arch, jt=1, jf=0),
        _insn(_RET_K, errno_enosys),
        _insn(_LD_W_ABS, _OFFSET_NR),
    ]
    if arch == AUDIT_ARCH_X86_64:
        prog += [_insn(_JGE_K, X32_SYSCALL_BIT, jt=0, jf=1), _insn(_RET_K, errno_enosys)]
    for name, nr in sorted(deny.items(), key=lambda item: item[1]):
        if name not in flag_checked:
            prog += [_insn(_JEQ_K, nr, jt=0, jf=1), _insn(_RET_K, errno_eperm)]
    for name in ("clone", "unshare"):
        if name in flag_checked and name in deny:
            # Reloads the number after each block: the flags check leaves the first argument in A.
            prog += [
                _insn(_LD_W_ABS, _OFFSET_NR),
                _insn(_JEQ_K, deny[name], jt=0, jf=3),
                _insn(_LD_W_ABS, _arg0_low_offset()),
                _insn(_JSET_K, CLONE_NEWUSER, jt=0, jf=1),
                _insn(_RET_K, errno_eperm),
            ]
    if "clone3" in flag_checked and "clone3" in deny:
        prog += [_insn(_LD_W_ABS, _OFFSET_NR), _insn(_JEQ_K, deny["clone3"], jt=0, jf=1),
                 _insn(_RET_K, errno_enosys)]
    prog.append(_insn(_RET_K, SECCOMP_RET_ALLOW))
    return b"".join(prog)


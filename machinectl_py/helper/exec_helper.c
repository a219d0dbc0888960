/* pymachine's exec helper: the last program the container's init and `pymachine exec` run
 * before the container's command, loaded from a sealed memfd (see machinectl_py/payload.py).
 *
 * Why: a process that execs a file of the container resolves its "#!" interpreter with its
 * own /proc/self/exe. Were that the host's Python (the process that set the container up),
 * a script starting "#!/proc/self/exe" would start the host's Python inside the container,
 * whose /proc/PID/exe a container process could then reopen for writing (CVE-2019-5736's
 * class). This helper's /proc/self/exe is an anonymous, write-sealed memfd: the interpreter
 * line finds this helper again, never a host file, and nothing can write through it.
 *
 * argv: PATH ARGV0 ARGS...; it marks fd 3 (the status pipe, left open for it) close-on-exec
 * and execs PATH with ARGV0 ARGS... and its environment. If that fails it writes "errno N"
 * to fd 3 and exits 127 (not found) or 126. No libc: static, a page or two, x86_64 and
 * aarch64 (elsewhere pymachine execs the command directly and says so).
 */

#if defined(__x86_64__)
#define NR_write 1
#define NR_execve 59
#define NR_exit 60
#define NR_fcntl 72
static long sys3(long n, long a, long b, long c) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}
__asm__(".text\n.global _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call start_c\n hlt\n");
#elif defined(__aarch64__)
#define NR_write 64
#define NR_execve 221
#define NR_exit 93
#define NR_fcntl 25
static long sys3(long n, long a, long b, long c) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
}
__asm__(".text\n.global _start\n_start:\n mov x0, sp\n bl start_c\n");
#else
#error "the exec helper knows x86_64 and aarch64"
#endif

#define STATUS_FD 3
#define F_SETFD 2
#define FD_CLOEXEC 1
#define ENOENT 2
#define ENOTDIR 20

__attribute__((noreturn, used)) void start_c(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    long err = 22; /* EINVAL: called without PATH and ARGV0 */
    if (argc >= 2) {
        sys3(NR_fcntl, STATUS_FD, F_SETFD, FD_CLOEXEC);
        err = -sys3(NR_execve, (long)argv[0], (long)(argv + 1), (long)envp);
    }
    long code = (err == ENOENT || err == ENOTDIR) ? 127 : 126;
    char msg[16] = "errno ";
    int n = 6;
    char digits[8];
    int d = 0;
    do {
        digits[d++] = (char)('0' + err % 10);
        err /= 10;
    } while (err && d < 8);
    while (d)
        msg[n++] = digits[--d];
    sys3(NR_write, STATUS_FD, (long)msg, n);
    sys3(NR_exit, code, 0, 0);
    for (;;) {
    }
}

"""The log forwarder: copies a container's stdout/stderr to the terminal and the journal.

A small forked process that lives in the container's scope (so journald attributes its
entries to machine-NAME.scope) but outside the container's namespaces. stdout lines go
to the journal at priority info, stderr lines at err. It exits when the container's
side of both pipes is closed, after asking journald to process what it sent.

With `run -t` the container writes to a pty that pymachine relays to the terminal itself;
the relay copies the same bytes into the stdout pipe here (one stream, priority info, as
docker logs a tty), and this process only feeds the journal (terminal=False), with each
line's trailing carriage return (the pty's \r\n) dropped.
"""

from __future__ import annotations

# _signal is the C module under `signal`, without the enum wrappers that make
# `import signal` cost ~3 ms (enum) on the start-up path.
import _signal as signal
import os
import select

from machinectl_py.journal import PRIORITY_ERR, PRIORITY_INFO, JournalWriter, LineSplitter, synchronize


def forward(out_fd: int, err_fd: int, common_fields: bytes, *, terminal: bool = True) -> int:
    # Ctrl-C and `machinectl terminate` are for the container; this process ends with it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    journal = JournalWriter(common_fields)
    streams = {out_fd: (1, LineSplitter(), PRIORITY_INFO), err_fd: (2, LineSplitter(), PRIORITY_ERR)}
    terminal_ok = {1: terminal, 2: terminal}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    open_fds = set(streams)
    while open_fds:
        for fd, _ in poller.poll():
            data = os.read(fd, 65536)
            target, splitter, priority = streams[fd]
            if not data:
                poller.unregister(fd)
                open_fds.discard(fd)
                lines = splitter.flush()
            else:
                if terminal_ok[target]:
                    terminal_ok[target] = _write_all(target, data)
                lines = splitter.feed(data)
            for line in lines:
                journal.send(line if terminal else line.removesuffix(b"\r"), priority)
    if journal.sent:
        synchronize()
    journal.close()
    return 0


def _write_all(fd: int, data: bytes) -> bool:
    try:
        while data:
            data = data[os.write(fd, data):]
        return True
    except OSError:
        return False  # the terminal went away; keep feeding the journal

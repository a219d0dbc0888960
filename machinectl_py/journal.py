"""journald's side: send container output as journal entries with docker's fields.

The native protocol (one AF_UNIX datagram per entry, KEY=value lines, binary-safe form
for values with newlines) carries fields the stdout stream protocol cannot:
CONTAINER_NAME, CONTAINER_ID, CONTAINER_ID_FULL, CONTAINER_TAG, IMAGE_NAME. journald
attributes each entry to the unit of the sending process (from SCM_CREDENTIALS), so the
sender runs inside the container's unit: `journalctl -u machine-NAME.scope` finds it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
VARLINK_SOCKET = "/run/systemd/journal/io.systemd.journal"
PRIORITY_ERR = 3
PRIORITY_INFO = 6
MAX_LINE = 48 * 1024  # longer lines are split; journald's own stream limit is 48 KiB


def encode_field(key: str, value: bytes) -> bytes:
    if b"\n" in value:
        import struct

        return key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return key.encode() + b"=" + value + b"\n"


def container_fields(name: str, container_id: str, image: str) -> bytes:
    """The fields every entry of a container carries (docker's journald log driver's set)."""
    return b"".join(encode_field(k, v.encode()) for k, v in (
        ("CONTAINER_NAME", name),
        ("CONTAINER_ID", container_id[:12]),
        ("CONTAINER_ID_FULL", container_id),
        ("CONTAINER_TAG", name),
        ("SYSLOG_IDENTIFIER", name),
        ("IMAGE_NAME", image),
    ))


def entry(common: bytes, message: bytes, priority: int) -> bytes:
    return common + encode_field("PRIORITY", str(priority).encode()) + encode_field("MESSAGE", message)


class JournalWriter:
    """Sends entries to journald. Its socket is made on the first entry: a container that
    prints nothing costs none. `_socket` is the C module under `socket`, whose import (enum,
    selectors, collections) costs ~4 ms of CPU, taken from systemd's making of the scope
    while the forwarder starts beside it on a two-core machine."""

    def __init__(self, common_fields: bytes) -> None:
        self.common = common_fields
        self.sock: Any = None
        self.sent = 0

    def send(self, message: bytes, priority: int) -> None:
        try:
            if self.sock is None:
                import _socket

                self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
            self.sock.sendto(entry(self.common, message, priority), JOURNAL_SOCKET)
            self.sent += 1
        except OSError:
            pass  # journald down or full: the terminal copy still reaches the user

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def synchronize(timeout: float = 5.0) -> bool:
    """Ask journald to process everything queued so far (io.systemd.Journal.Synchronize).

    Called before the sender exits, so journald reads the sender's cgroup while it still
    lives and the entries are attributed to the container's unit.
    """
    import _socket

    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    except OSError:
        return False
    try:
        s.settimeout(timeout)
        s.connect(VARLINK_SOCKET)
        s.sendall(b'{"method":"io.systemd.Journal.Synchronize","parameters":{}}\0')
        reply = b""
        while not reply.endswith(b"\0"):
            chunk = s.recv(4096)
            if not chunk:
                return False
            reply += chunk
        return b"error" not in reply
    except OSError:
        return False
    finally:
        s.close()


class LineSplitter:
    """Turns a byte stream into lines (without the newline), splitting over-long ones."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        out: list[bytes] = []
        for line in lines:
            out += _chunks(line)
        while len(self.buffer) > MAX_LINE:
            out.append(self.buffer[:MAX_LINE])
            self.buffer = self.buffer[MAX_LINE:]
        return out

    def flush(self) -> list[bytes]:
        rest, self.buffer = self.buffer, b""
        return _chunks(rest) if rest else []


def _chunks(line: bytes) -> list[bytes]:
    if len(line) <= MAX_LINE:
        return [line]
    return [line[i:i + MAX_LINE] for i in range(0, len(line), MAX_LINE)]


# -- pymachine's events (`pymachine events`): journal entries of their own ---------------------------

# The MESSAGE_ID of every event entry (journalctl MESSAGE_ID=...): a random 128-bit id, made once.
EVENT_MESSAGE_ID = "5f0c2a8e1d7b4c39a6e2b91f04d3c7a8"


def send_event(kind: str, action: str, actor: str, attributes: dict[str, str]) -> None:
    """Record one event (docker's Type, Action, Actor.ID, Actor.Attributes) in the journal, where
    `pymachine events` finds it, live or with --since. Best effort: no journald, no event."""
    import _socket

    fields = [("MESSAGE_ID", EVENT_MESSAGE_ID), ("MESSAGE", f"{kind} {action} {attributes.get('name', actor)}"),
              ("PRIORITY", str(PRIORITY_INFO)), ("SYSLOG_IDENTIFIER", "pymachine"),
              ("PYMACHINE_EVENT_TYPE", kind), ("PYMACHINE_EVENT_ACTION", action), ("PYMACHINE_EVENT_ACTOR", actor)]
    # No CONTAINER_NAME: `pymachine logs` (journalctl CONTAINER_NAME=...) shows the container's output only.
    fields += [(f"PYMACHINE_EVENT_ATTR_{key.upper()}", value) for key, value in attributes.items()]
    data = b"".join(encode_field(k, v.encode()) for k, v in fields)
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        try:
            sock.sendto(data, JOURNAL_SOCKET)
        finally:
            sock.close()
    except OSError:
        pass


def container_event(action: str, record: Any, **extra: str) -> None:
    """A container's event, with docker's attributes (name, image, exitCode...)."""
    send_event("container", action, record.id, {"name": record.name, "image": record.image_name, **extra})

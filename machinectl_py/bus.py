"""The D-Bus layer: a small synchronous client over libsystemd's sd-bus.

Every D-Bus call pymachine makes goes through `Bus.call()`. Arguments are Python values
marshalled by their D-Bus signature: basic types as int/str/bool/float, arrays as lists
(or bytes for `ay`), structs as tuples, dicts as dict, variants as (signature, value)
pairs. Replies come back the same way, variants unwrapped to their value.

sd-bus connections must not cross fork(): only the process that opened a Bus uses it,
and children close its descriptor with all others before they exec.

On the start-up path (`run`, `start` and `exec` import it; tests/unit/test_startup_imports.py
guards it): it imports nothing heavy at the top, and its annotations' names come in under
`TYPE_CHECKING = False`, because `typing` alone costs 8-10 ms to import here.
"""

from __future__ import annotations

import os
import time

from machinectl_py._native import ffi, lib
from machinectl_py.errors import BusError

__all__ = ["Bus", "BusError", "Message", "split_signature"]  # BusError: re-exported for callers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Sequence
    from typing import Any

# The bus daemon's own name, and what every peer implements: this layer and the systemd and
# machined modules above it are the only places that spell out a bus name.
DBUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
PROPERTIES = "org.freedesktop.DBus.Properties"
ERROR_FILE_NOT_FOUND = "org.freedesktop.DBus.Error.FileNotFound"
ERRORS_NO_SERVICE = ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NoServer")
DEFAULT_TIMEOUT_USEC = 30_000_000  # runc waits 30 s for a systemd job, and so do we
_MESSAGE_SIGNAL = 4


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise BusError(f"errno.{-rc}", f"{what}: {os.strerror(-rc)}")
    return rc


def split_signature(signature: str) -> list[str]:
    """'sa(sv)u' -> ['s', 'a(sv)', 'u']: the complete types of a signature."""
    types: list[str] = []
    i = 0
    while i < len(signature):
        end = _complete_type_end(signature, i)
        types.append(signature[i:end])
        i = end
    return types


def _complete_type_end(sig: str, i: int) -> int:
    c = sig[i]
    if c == "a":
        return _complete_type_end(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        depth = 0
        for j in range(i, len(sig)):
            if sig[j] == c:
                depth += 1
            elif sig[j] == close:
                depth -= 1
                if depth == 0:
                    return j + 1
        raise ValueError(f"unbalanced D-Bus signature {sig!r}")
    return i + 1


_BASIC_C_TYPES = {
    "y": "uint8_t *", "b": "int *", "n": "int16_t *", "q": "uint16_t *", "i": "int32_t *",
    "u": "uint32_t *", "x": "int64_t *", "t": "uint64_t *", "d": "double *", "h": "int *",
}
_STRING_TYPES = "sog"


class Message:
    """Builds (append) or reads (read) one sd-bus message."""

    def __init__(self, ptr: Any) -> None:
        self.ptr = ptr

    def close(self) -> None:
        if self.ptr != ffi.NULL:
            lib.sd_bus_message_unref(self.ptr)
            self.ptr = ffi.NULL

    # -- writing --
    def append(self, signature: str, values: Sequence[Any]) -> None:
        types = split_signature(signature)
        if len(types) != len(values):
            raise ValueError(f"signature {signature!r} wants {len(types)} values, got {len(values)}")
        for t, v in zip(types, values, strict=True):
            self._append_one(t, v)

    def _append_one(self, t: str, value: Any) -> None:
        c = t[0]
        m = self.ptr
        if c in _STRING_TYPES:
            _check(lib.sd_bus_message_append_basic(m, c.encode(), str(value).encode()), "append")
        elif c in _BASIC_C_TYPES:
            box = ffi.new(_BASIC_C_TYPES[c], int(value) if c != "d" else float(value))
            _check(lib.sd_bus_message_append_basic(m, c.encode(), box), "append")
        elif c == "v":
            inner_sig, inner = value
            _check(lib.sd_bus_message_open_container(m, b"v", inner_sig.encode()), "open variant")
            self._append_one(inner_sig, inner)
            _check(lib.sd_bus_message_close_container(m), "close variant")
        elif c == "a":
            self._append_array(t[1:], value)
        elif c == "(":
            inner = t[1:-1]
            _check(lib.sd_bus_message_open_container(m, b"r", inner.encode()), "open struct")
            self.append(inner, tuple(value))
            _check(lib.sd_bus_message_close_container(m), "close struct")
        else:
            raise ValueError(f"unsupported D-Bus type {t!r}")

    def _append_array(self, elem: str, value: Any) -> None:
        m = self.ptr
        if elem == "y":
            raw = bytes(value)
            _check(lib.sd_bus_message_append_array(m, b"y", raw, len(raw)), "append bytes")
            return
        _check(lib.sd_bus_message_open_container(m, b"a", elem.encode()), "open array")
        if elem.startswith("{"):
            key_t, val_t = split_signature(elem[1:-1])
            for k, v in dict(value).items():
                _check(lib.sd_bus_message_open_container(m, b"e", elem[1:-1].encode()), "open dict entry")
                self._append_one(key_t, k)
                self._append_one(val_t, v)
                _check(lib.sd_bus_message_close_container(m), "close dict entry")
        else:
            for item in value:
                self._append_one(elem, item)
        _check(lib.sd_bus_message_close_container(m), "close array")

    # -- reading --
    def read_all(self) -> list[Any]:
        values: list[Any] = []
        while True:
            item = self._read_next()
            if item is _END:
                return values
            values.append(item)

    def read_rows(self, row: str, keep: Sequence[int]) -> list[tuple[Any, ...]]:
        """Read an array of structs of basic fields, one sd_bus_message_read() per struct (as
        systemctl reads ListUnits), decoding only the fields in `keep`. read_all() makes about
        three reader calls per field from Python; with 500 units, ListUnits's 5,000 fields cost
        it tens of milliseconds, this a few."""
        m = self.ptr
        boxes = [ffi.new("const char **" if c in _STRING_TYPES else _BASIC_C_TYPES[c]) for c in row]
        struct = f"({row})".encode()
        _check(lib.sd_bus_message_enter_container(m, b"a", struct), "enter array")
        rows: list[tuple[Any, ...]] = []
        while _check(lib.sd_bus_message_read(m, struct, *boxes), "read row") > 0:
            rows.append(tuple(_unbox(row[i], boxes[i]) for i in keep))
        _check(lib.sd_bus_message_exit_container(m), "exit array")
        return rows

    def _read_next(self) -> Any:
        m = self.ptr
        ctype = ffi.new("char *")
        contents = ffi.new("const char **")
        if _check(lib.sd_bus_message_peek_type(m, ctype, contents), "peek") == 0:
            return _END
        c = ctype[0].decode()
        inner = ffi.string(contents[0]).decode() if contents[0] != ffi.NULL else ""
        if c in _STRING_TYPES:
            out = ffi.new("const char **")
            _check(lib.sd_bus_message_read_basic(m, c.encode(), out), "read")
            return ffi.string(out[0]).decode("utf-8", "replace")
        if c in _BASIC_C_TYPES:
            box = ffi.new(_BASIC_C_TYPES[c])
            _check(lib.sd_bus_message_read_basic(m, c.encode(), box), "read")
            return bool(box[0]) if c == "b" else box[0]
        if c == "a" and inner == "y":
            ptr = ffi.new("const void **")
            size = ffi.new("size_t *")
            _check(lib.sd_bus_message_read_array(m, b"y", ptr, size), "read bytes")
            return bytes(ffi.buffer(ptr[0], size[0])) if size[0] else b""
        ckey = {"a": b"a", "v": b"v", "r": b"r", "e": b"e"}[c]
        _check(lib.sd_bus_message_enter_container(m, ckey, inner.encode()), "enter")
        items = self.read_all()
        _check(lib.sd_bus_message_exit_container(m), "exit")
        if c == "v":
            return items[0]
        if c in "re":
            return tuple(items)
        if inner.startswith("{"):
            return dict(items)
        return items


_END = object()


def _unbox(c: str, box: Any) -> Any:
    if c in _STRING_TYPES:
        return ffi.string(box[0]).decode("utf-8", "replace")
    return bool(box[0]) if c == "b" else box[0]


class Bus:
    """One connection to the system bus (or to systemd's private socket)."""

    def __init__(self, ptr: Any, *, direct: bool = False) -> None:
        self._ptr = ptr
        # A direct connection has no bus daemon: no matches to ask for, and the peer (systemd)
        # sends it every signal.
        self.direct = direct

    @classmethod
    def system(cls) -> Bus:
        box = ffi.new("sd_bus **")
        _check(lib.sd_bus_open_system(box), "connect to the system bus")
        return cls(box[0])

    @classmethod
    def systemd(cls) -> Bus:
        """A direct connection to systemd on its private socket, as systemctl makes as root;
        the system bus where that socket is not ours to use. No bus daemon relays the calls
        and the signals, and systemd needs no round trips to it: it reads our credentials
        from the socket (its polkit check) and keeps no track of us for our jobs' signals.
        StartTransientUnit took 3-11 ms through dbus-daemon here. Only systemd answers on
        it: machined's calls stay on the system bus."""
        box = ffi.new("sd_bus **")
        _check(lib.sd_bus_new(box), "new bus")
        bus = cls(box[0], direct=True)
        if (lib.sd_bus_set_address(bus._ptr, b"unix:path=/run/systemd/private") < 0
                or lib.sd_bus_start(bus._ptr) < 0):
            bus.close()
            return cls.system()
        return bus

    def close(self) -> None:
        if self._ptr is not None:
            lib.sd_bus_flush_close_unref(self._ptr)
            self._ptr = None

    def fileno(self) -> int:
        """The connection's socket, for select() beside other files (then `signals(0)` reads)."""
        return _check(lib.sd_bus_get_fd(self._ptr), "bus fd")

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_call(self, destination: str, path: str, interface: str, member: str, signature: str,
                  args: tuple[Any, ...]) -> Message:
        box = ffi.new("sd_bus_message **")
        _check(lib.sd_bus_message_new_method_call(
            self._ptr, box, destination.encode(), path.encode(), interface.encode(), member.encode()),
            f"{member}: new message")
        request = Message(box[0])
        try:
            if signature:
                request.append(signature, args)
        except BaseException:
            request.close()
            raise
        return request

    def _reply(self, destination: str, path: str, interface: str, member: str, signature: str,
               args: tuple[Any, ...], timeout_usec: int) -> Message:
        """Make the call and wait for its reply; the caller closes the reply."""
        request = self._new_call(destination, path, interface, member, signature, args)
        try:
            error = ffi.new("sd_bus_error *")
            reply_box = ffi.new("sd_bus_message **")
            rc = lib.sd_bus_call(self._ptr, request.ptr, timeout_usec, error, reply_box)
            if rc < 0:
                name = ffi.string(error.name).decode() if error.name != ffi.NULL else f"errno.{-rc}"
                text = ffi.string(error.message).decode() if error.message != ffi.NULL else os.strerror(-rc)
                lib.sd_bus_error_free(error)
                raise BusError(name, text)
            return Message(reply_box[0])
        finally:
            request.close()

    def call(self, destination: str, path: str, interface: str, member: str,
             signature: str = "", *args: Any, timeout_usec: int = DEFAULT_TIMEOUT_USEC) -> list[Any]:
        reply = self._reply(destination, path, interface, member, signature, args, timeout_usec)
        try:
            return reply.read_all()
        finally:
            reply.close()

    def call_rows(self, destination: str, path: str, interface: str, member: str, signature: str,
                  *args: Any, row: str, keep: Sequence[int]) -> list[tuple[Any, ...]]:
        """A call whose reply is one array of structs of basic fields (`row`, as "ssssssouso"
        for ListUnits), returning only the fields at the indices in `keep`: see Message.read_rows."""
        reply = self._reply(destination, path, interface, member, signature, args, DEFAULT_TIMEOUT_USEC)
        try:
            return reply.read_rows(row, keep)
        finally:
            reply.close()

    def send(self, destination: str, path: str, interface: str, member: str, signature: str = "",
             *args: Any) -> None:
        """A call that expects no reply: queued, not waited for (it is written out with the
        next call, and the bus keeps one connection's messages in order)."""
        request = self._new_call(destination, path, interface, member, signature, args)
        try:
            _check(lib.sd_bus_message_set_expect_reply(request.ptr, 0), f"{member}: no reply")
            _check(lib.sd_bus_send(self._ptr, request.ptr, ffi.NULL), f"{member}: send")
        finally:
            request.close()

    def get_property(self, destination: str, path: str, interface: str, prop: str) -> Any:
        return self.call(destination, path, PROPERTIES, "Get", "ss", interface, prop)[0]

    def get_all(self, destination: str, path: str, interface: str) -> dict[str, Any]:
        props: dict[str, Any] = self.call(destination, path, PROPERTIES, "GetAll", "s", interface)[0]
        return props

    def get_properties(self, destination: str, path: str, wanted: Sequence[tuple[str, str]]) -> list[Any]:
        """Properties.Get of each (interface, property) of one object, in one round trip: every
        request is sent before the first reply is read, as the peer answers in turn. Each round
        trip waits for the peer to be scheduled (~0.1 ms idle, ~1 ms on a loaded machine), and
        a GetAll would make it send, and us decode, hundreds of properties."""
        cookies = [self._send_call(destination, path, PROPERTIES, "Get", "ss", (iface, prop))
                   for iface, prop in wanted]
        replies = self._collect_replies(cookies, DEFAULT_TIMEOUT_USEC)
        try:
            return [_checked_reply(replies[c]).read_all()[0] for c in cookies]
        finally:
            for reply in replies.values():
                reply.close()

    def get_each(self, destination: str, wanted: Sequence[tuple[str, str, str]]) -> list[Any]:
        """Properties.Get of each (object path, interface, property), of many objects, in one round
        trip (as get_properties); a property the peer refused comes back as its BusError, in its
        place, so one unit gone meanwhile spoils none of the others."""
        calls = [(path, PROPERTIES, "Get", "ss", (iface, prop)) for path, iface, prop in wanted]
        return self.call_batch(destination, calls, [_first_value] * len(calls))

    def call_batch(self, destination: str, calls: Sequence[tuple[str, str, str, str, tuple[Any, ...]]],
                   readers: Sequence[Callable[[Message], Any]]) -> list[Any]:
        """Many calls (path, interface, member, signature, args) in one round trip: every request
        is sent before the first reply is read, as the peer answers in turn. Each reply goes
        through its reader; a call the peer refused comes back as its BusError, in its place."""
        cookies = [self._send_call(destination, *call) for call in calls]
        replies = self._collect_replies(cookies, DEFAULT_TIMEOUT_USEC)
        values: list[Any] = []
        try:
            for cookie, reader in zip(cookies, readers, strict=True):
                try:
                    values.append(reader(_checked_reply(replies[cookie])))
                except BusError as e:
                    values.append(e)
            return values
        finally:
            for reply in replies.values():
                reply.close()

    def _send_call(self, destination: str, path: str, interface: str, member: str, signature: str,
                   args: tuple[Any, ...]) -> int:
        request = self._new_call(destination, path, interface, member, signature, args)
        try:
            cookie = ffi.new("uint64_t *")
            _check(lib.sd_bus_send(self._ptr, request.ptr, cookie), f"{member}: send")
            return int(cookie[0])
        finally:
            request.close()

    def _collect_replies(self, cookies: Collection[int], timeout_usec: int) -> dict[int, Message]:
        """The replies to calls sent with _send_call: sd_bus_process() hands us every message no
        callback claimed, and a reply to a call sent without one is such a message."""
        deadline = time.monotonic() + timeout_usec / 1e6
        replies: dict[int, Message] = {}
        box = ffi.new("sd_bus_message **")
        cookie = ffi.new("uint64_t *")
        try:
            while len(replies) < len(cookies):
                rc = _check(lib.sd_bus_process(self._ptr, box), "process")
                if box[0] != ffi.NULL:
                    msg = Message(box[0])
                    box[0] = ffi.NULL
                    if (lib.sd_bus_message_get_reply_cookie(msg.ptr, cookie) >= 0 and cookie[0] in cookies
                            and cookie[0] not in replies):
                        replies[int(cookie[0])] = msg
                    else:
                        msg.close()  # a signal or a stray reply: not ours to handle here
                    continue
                if rc > 0:
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BusError("org.freedesktop.DBus.Error.Timeout", "no reply in time")
                _check(lib.sd_bus_wait(self._ptr, int(left * 1e6)), "wait")
        except BaseException:
            for reply in replies.values():
                reply.close()
            raise
        return replies

    def add_match(self, rule: str) -> None:
        """Ask the bus to route matching signals to us; `signals()` then yields them.

        Not waited for: the bus daemon handles our messages in order, so the match is in
        place before any call we make after this one is even delivered."""
        if not self.direct:
            self.send(*DBUS, "AddMatch", "s", rule)

    def signals(self, timeout_usec: int, members: Collection[str] = (),
                path_ok: Callable[[str], bool] | None = None) -> Iterator[tuple[str, str, str, list[Any]]]:
        """Yield (path, interface, member, args) of incoming signals until `timeout_usec` passes;
        only those named in `members`, if given, and from a path `path_ok` accepts (the others'
        arguments are not even read: a direct connection to systemd gets every
        PropertiesChanged of every unit)."""
        deadline = time.monotonic() + timeout_usec / 1e6
        box = ffi.new("sd_bus_message **")
        while True:
            rc = _check(lib.sd_bus_process(self._ptr, box), "process")
            if box[0] != ffi.NULL:
                msg = Message(box[0])
                box[0] = ffi.NULL
                try:
                    kind = ffi.new("uint8_t *")
                    lib.sd_bus_message_get_type(msg.ptr, kind)
                    if kind[0] == _MESSAGE_SIGNAL:
                        member = _opt_str(lib.sd_bus_message_get_member(msg.ptr))
                        path = _opt_str(lib.sd_bus_message_get_path(msg.ptr))
                        if (not members or member in members) and (path_ok is None or path_ok(path)):
                            yield (path, _opt_str(lib.sd_bus_message_get_interface(msg.ptr)), member, msg.read_all())
                finally:
                    msg.close()
                continue
            if rc > 0:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return
            _check(lib.sd_bus_wait(self._ptr, int(left * 1e6)), "wait")

    def wait_for_signal(self, accept: Callable[[str, str, str, list[Any]], bool], timeout_usec: int) -> bool:
        return any(accept(*signal) for signal in self.signals(timeout_usec))


def _first_value(reply: Message) -> Any:
    return reply.read_all()[0]


def _checked_reply(reply: Message) -> Message:
    """The reply, or its error as a BusError."""
    error = lib.sd_bus_message_get_error(reply.ptr)
    if error != ffi.NULL:
        raise BusError(_opt_str(error.name) or "org.freedesktop.DBus.Error.Failed", _opt_str(error.message))
    return reply


def _opt_str(ptr: Any) -> str:
    return "" if ptr == ffi.NULL else ffi.string(ptr).decode()

"""A small rtnetlink client: the links, addresses and routes of the `bridge` and `veth` modes.

netsetup.py used `ip -b -` and `nsenter ... ip -b -` (four to six executions per start and stop,
~20 ms each on a loaded machine); pyroute2 costs ~260 ms in imports (README, Networking). The
messages pymachine needs are few and fixed: create a bridge or a veth pair (its peer sent
straight into the container's namespace by fd, its host end into a bridge, both up), add an
address, add a default route, delete a link, look up an index. Each is one request on a
NETLINK_ROUTE socket, acknowledged by the kernel (errors come back as errno).

The container's side is configured through a socket opened inside its network namespace: the
calling thread enters the namespace (setns), opens the socket and returns at once; a netlink
socket stays bound to the namespace it was opened in.
"""

from __future__ import annotations

import _socket
import os
import struct

from machinectl_py import syscalls

AF_NETLINK = 16
NETLINK_ROUTE = 0
AF_INET, AF_INET6 = 2, 10

NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_NEWROUTE = 20, 24

IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_GROUP, IFLA_NET_NS_FD = 3, 10, 18, 27, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

_HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst/src len, tos, table, protocol, scope, type, flags


class NetlinkError(OSError):
    pass


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr (length, type, payload), padded to 4 bytes."""
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _name(name: str) -> bytes:
    return attr(IFLA_IFNAME, name.encode() + b"\0")


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    return _IFINFO.pack(0, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)


def _ip(text: str) -> tuple[int, bytes]:
    """(family, packed address) of an IPv4 or IPv6 address in text."""
    family = AF_INET6 if ":" in text else AF_INET
    return family, _socket.inet_pton(family, text)


def new_bridge(name: str) -> tuple[int, bytes]:
    """`ip link add NAME type bridge; ip link set NAME up`."""
    return RTM_NEWLINK, _ifinfo(up=True) + _name(name) + attr(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"bridge"))


def new_veth(name: str, peer: str, peer_netns_fd: int, master: int = 0) -> tuple[int, bytes]:
    """`ip link add NAME type veth peer name PEER netns FD` with NAME up and in the bridge of
    index `master` (0: none). The peer stays down (set_up in its namespace): veth refuses to
    open an end before the pair is linked, which happens after the peer's flags are applied."""
    peer_msg = _ifinfo() + _name(peer) + attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    info = attr(IFLA_INFO_KIND, b"veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_msg))
    master_attr = attr(IFLA_MASTER, struct.pack("=I", master)) if master else b""
    return RTM_NEWLINK, _ifinfo(up=True) + _name(name) + master_attr + attr(IFLA_LINKINFO, info)


def bridge_port_hairpin(index: int) -> tuple[int, bytes]:
    """`ip link set dev INDEX type bridge_slave hairpin on`."""
    info = attr(IFLA_INFO_SLAVE_KIND, b"bridge") + attr(IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, b"\1"))
    return RTM_NEWLINK, _ifinfo(index) + attr(IFLA_LINKINFO, info)


def set_group(name: str, group: int) -> tuple[int, bytes]:
    """`ip link set NAME group GROUP`."""
    return RTM_NEWLINK, _ifinfo() + _name(name) + attr(IFLA_GROUP, struct.pack("=I", group))


def del_group(group: int) -> tuple[int, bytes]:
    """`ip link del group GROUP`: every link of the group, in one batch of the kernel's."""
    return RTM_DELLINK, _ifinfo() + attr(IFLA_GROUP, struct.pack("=I", group))


def set_up(index: int) -> tuple[int, bytes]:
    """`ip link set INDEX up`."""
    return RTM_NEWLINK, _ifinfo(index, up=True)


def del_link(name: str) -> tuple[int, bytes]:
    return RTM_DELLINK, _ifinfo() + _name(name)


def new_addr(index: int, address: str, prefixlen: int, nodad: bool = False) -> tuple[int, bytes]:
    """`ip addr add ADDRESS/PREFIXLEN dev INDEX [nodad]`."""
    family, raw = _ip(address)
    msg = _IFADDR.pack(family, prefixlen, IFA_F_NODAD if nodad else 0, RT_SCOPE_UNIVERSE, index)
    return RTM_NEWADDR, msg + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)


def new_default_route(index: int, gateway: str) -> tuple[int, bytes]:
    """`ip route add default via GATEWAY dev INDEX` (IPv4 or IPv6 by the gateway's family)."""
    family, raw = _ip(gateway)
    msg = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    return RTM_NEWROUTE, msg + attr(RTA_GATEWAY, raw) + attr(RTA_OIF, struct.pack("=I", index))


class Socket:
    """A NETLINK_ROUTE socket of the network namespace it was opened in."""

    def __init__(self) -> None:
        self._sock = _socket.socket(AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def request(self, message: tuple[int, bytes], what: str, create: bool = False) -> None:
        """Send one request and wait for its acknowledgement; a refusal raises NetlinkError."""
        kind, body = message
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if create else 0)
        for reply_kind, payload in self._exchange(kind, flags, body):
            if reply_kind == NLMSG_ERROR:
                self._check(payload, what)
                return

    def ifindex(self, name: str) -> int:
        """A link's index by name (`ip link show NAME`)."""
        for reply_kind, payload in self._exchange(RTM_GETLINK, NLM_F_REQUEST, _ifinfo() + _name(name)):
            if reply_kind == NLMSG_ERROR:
                self._check(payload, f"link {name}")
            elif reply_kind == RTM_NEWLINK:
                return int(_IFINFO.unpack_from(payload)[2])
        raise NetlinkError(0, f"link {name}: no answer")

    def _exchange(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        self._seq += 1
        self._sock.send(_HDR.pack(_HDR.size + len(body), kind, flags, self._seq, 0) + body)
        while True:
            data = self._sock.recv(65536)
            replies, offset = [], 0
            while offset + _HDR.size <= len(data):
                length, reply_kind, _, seq, _ = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    break
                if seq == self._seq:
                    replies.append((reply_kind, data[offset + _HDR.size:offset + length]))
                offset += (length + 3) & ~3
            if replies:
                return replies

    @staticmethod
    def _check(payload: bytes, what: str) -> None:
        err = -struct.unpack_from("=i", payload)[0]
        if err:
            raise NetlinkError(err, f"{what}: {os.strerror(err)}")


def socket_in(netns_fd: int) -> Socket:
    """A netlink socket of the network namespace `netns_fd` (the calling thread enters it only to
    open the socket)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(netns_fd, syscalls.CLONE_NEWNET)
        try:
            return Socket()
        finally:
            syscalls.setns(own, syscalls.CLONE_NEWNET)
    finally:
        os.close(own)

"""The rtnetlink messages of netlink.py, decoded again field by field (the kernel's answers to
them are tested in tests/integration/test_network.py, checked with `ip -j`)."""

from __future__ import annotations

import socket
import struct

from machinectl_py import netlink


def attrs(data: bytes) -> dict[int, bytes]:
    """rtattrs -> {type: payload}, checking lengths and 4-byte padding."""
    out, offset = {}, 0
    while offset < len(data):
        size, kind = struct.unpack_from("=HH", data, offset)
        assert size >= 4 and offset + size <= len(data)
        out[kind] = data[offset + 4:offset + size]
        offset += (size + 3) & ~3
    assert offset == len(data)
    return out


def test_attr_pads_to_four_bytes() -> None:
    assert netlink.attr(3, b"ab") == struct.pack("=HH", 6, 3) + b"ab\0\0"
    assert len(netlink.attr(3, b"abcd")) == 8


def test_bridge_is_created_up_with_its_kind() -> None:
    kind, body = netlink.new_bridge("pm-app")
    assert kind == netlink.RTM_NEWLINK
    family, _, index, flags, change = struct.unpack_from("=BxHiII", body)
    assert (family, index, flags & netlink.IFF_UP, change & netlink.IFF_UP) == (0, 0, 1, 1)
    top = attrs(body[16:])
    assert top[netlink.IFLA_IFNAME] == b"pm-app\0"
    assert attrs(top[netlink.IFLA_LINKINFO])[netlink.IFLA_INFO_KIND] == b"bridge"


def test_veth_peer_goes_to_the_namespace_fd_and_the_host_end_to_the_bridge() -> None:
    _, body = netlink.new_veth("pmv1234", "eth1", 7, master=5)
    top = attrs(body[16:])
    assert top[netlink.IFLA_IFNAME] == b"pmv1234\0"
    assert struct.unpack("=I", top[netlink.IFLA_MASTER]) == (5,)
    info = attrs(top[netlink.IFLA_LINKINFO])
    assert info[netlink.IFLA_INFO_KIND] == b"veth"
    peer = attrs(info[netlink.IFLA_INFO_DATA])[netlink.VETH_INFO_PEER]
    assert struct.unpack_from("=BxHiII", peer)[3] == 0  # the peer is brought up inside (set_up)
    peer_attrs = attrs(peer[16:])
    assert peer_attrs[netlink.IFLA_IFNAME] == b"eth1\0"
    assert struct.unpack("=I", peer_attrs[netlink.IFLA_NET_NS_FD]) == (7,)
    assert netlink.IFLA_MASTER not in attrs(netlink.new_veth("a", "b", 3)[1][16:])


def test_addresses_of_both_families() -> None:
    _, body = netlink.new_addr(4, "10.89.0.2", 16)
    assert struct.unpack_from("=BBBBi", body) == (socket.AF_INET, 16, 0, 0, 4)
    assert attrs(body[8:])[netlink.IFA_LOCAL] == socket.inet_aton("10.89.0.2")
    _, body = netlink.new_addr(4, "fd89::2", 64, nodad=True)
    assert struct.unpack_from("=BBBBi", body) == (socket.AF_INET6, 64, netlink.IFA_F_NODAD, 0, 4)
    assert attrs(body[8:])[netlink.IFA_ADDRESS] == socket.inet_pton(socket.AF_INET6, "fd89::2")


def test_default_route_through_the_gateway() -> None:
    _, body = netlink.new_default_route(9, "10.89.0.1")
    family, dst_len, _, _, table, _, _, kind, _ = struct.unpack_from("=BBBBBBBBI", body)
    assert (family, dst_len, table, kind) == (socket.AF_INET, 0, 254, 1)
    found = attrs(body[12:])
    assert found[netlink.RTA_GATEWAY] == socket.inet_aton("10.89.0.1")
    assert struct.unpack("=I", found[netlink.RTA_OIF]) == (9,)


def test_hairpin_is_bridge_slave_data() -> None:
    kind, body = netlink.bridge_port_hairpin(12)
    assert kind == netlink.RTM_NEWLINK and struct.unpack_from("=BxHiII", body)[2] == 12
    info = attrs(attrs(body[16:])[netlink.IFLA_LINKINFO])
    assert info[netlink.IFLA_INFO_SLAVE_KIND] == b"bridge"
    assert attrs(info[netlink.IFLA_INFO_SLAVE_DATA])[netlink.IFLA_BRPORT_MODE] == b"\1"


def test_delete_and_up_by_name_or_index() -> None:
    kind, body = netlink.del_link("pm-app")
    assert kind == netlink.RTM_DELLINK and attrs(body[16:])[netlink.IFLA_IFNAME] == b"pm-app\0"
    kind, body = netlink.set_up(3)
    assert struct.unpack_from("=BxHiII", body)[2:] == (3, netlink.IFF_UP, netlink.IFF_UP)


def test_a_link_group_is_set_by_name_and_deleted_whole() -> None:
    kind, body = netlink.set_group("pm-app", 0x80000001)
    found = attrs(body[16:])
    assert kind == netlink.RTM_NEWLINK and found[netlink.IFLA_IFNAME] == b"pm-app\0"
    assert struct.unpack("=I", found[netlink.IFLA_GROUP]) == (0x80000001,)
    kind, body = netlink.del_group(0x80000001)
    assert kind == netlink.RTM_DELLINK and struct.unpack_from("=BxHiII", body)[2] == 0
    assert set(attrs(body[16:])) == {netlink.IFLA_GROUP}, "no name: the group's links, not one"

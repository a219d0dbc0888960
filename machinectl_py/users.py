"""Who the payload runs as: USER[:GROUP] resolved in the container's own /etc/passwd and
/etc/group, and the switch to it (capabilities outside the policy dropped, then the ids).

Runs in the container's init or exec child, already inside the container's root, so every
path here is the container's. Never through the host's NSS (CVE-2019-14271). The files are
the image's, so untrusted: only a regular file is read (a FIFO would hang the start), and
only its first MiB.
"""

from __future__ import annotations

import errno
import os
import stat

from machinectl_py import syscalls as sc
from machinectl_py.errors import UsageError

# spec.MAX_ID, the largest uid or gid ((uid_t)-1 means "no change" to setresuid), kept here too:
# importing spec.py would put it on `exec`'s path, which needs none of it (a unit test ties them).
MAX_ID = 2**32 - 2

MAX_FILE = 1 << 20


def _entries(path: str) -> list[list[str]]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        data = os.read(fd, MAX_FILE)
    finally:
        os.close(fd)
    return [line.split(":") for line in data.decode(errors="replace").splitlines()
            if line.strip() and not line.startswith("#")]


def resolve_user(spec: str) -> tuple[int, int, list[int]]:
    """USER[:GROUP] (names or numbers) -> (uid, gid, supplementary gids), as docker resolves it:
    a number that no entry names is used as it is (its gid the same number)."""
    user, _, group = spec.partition(":")
    passwd = _entries("/etc/passwd")
    entry = next((e for e in passwd if len(e) >= 4 and (e[0] == user or (user.isdigit() and e[2] == user))), None)
    if entry is not None and entry[2].isdigit() and entry[3].isdigit():
        uid, gid = int(entry[2]), int(entry[3])
        name = entry[0]
    elif user.isdigit():
        uid, gid, name = int(user), int(user), ""
    else:
        raise UsageError(f"no user {user!r} in the container's /etc/passwd")
    groups_file = _entries("/etc/group")
    if group:
        gid = _group_id(groups_file, group, "no group")
    supplementary = sorted({int(g[2]) for g in groups_file
                            if len(g) >= 4 and name and name in g[3].split(",") and g[2].isdigit()})
    if max(uid, gid, *supplementary) > MAX_ID:  # the image's files are untrusted
        raise UsageError(f"user {spec!r}: an id above {MAX_ID} in the container's /etc/passwd or /etc/group")
    return uid, gid, [g for g in supplementary if g != gid]


def resolve_groups(groups: tuple[str, ...]) -> list[int]:
    """--group-add: names or gids of the container's /etc/group (a gid no entry names is used
    as it is, as docker does)."""
    entries = _entries("/etc/group")
    out = []
    for group in groups:
        gid = _group_id(entries, group, "--group-add: no group")
        if gid > MAX_ID:
            raise UsageError(f"--group-add {group!r}: gid above {MAX_ID}")
        out.append(gid)
    return out


def _group_id(entries: list[list[str]], group: str, missing: str) -> int:
    """A group name or gid of the container's /etc/group; a gid no entry names is used as it is."""
    match = next((g for g in entries if len(g) >= 3 and g[2].isdigit() and (g[0] == group or g[2] == group)), None)
    if match is not None:
        return int(match[2])
    if group.isdigit():
        return int(group)
    raise UsageError(f"{missing} {group!r} in the container's /etc/group")


def home_of(uid: int) -> str | None:
    for e in _entries("/etc/passwd"):
        if len(e) >= 6 and e[2] == str(uid):
            return e[5]
    return None


def drop_privileges(keep_mask: int, uid: int = 0, gid: int = 0, groups: list[int] | None = None) -> None:
    """Capabilities outside the policy leave the bounding set; root keeps the policy's
    capabilities (and no supplementary groups), any other uid ends with none, as with docker."""
    cap = 0
    while cap < 64:
        if not keep_mask & (1 << cap):
            try:
                sc.drop_bounding_capability(cap)
            except OSError as e:
                if e.errno == errno.EINVAL:  # past the kernel's last capability
                    break
                raise
        cap += 1
    groups = groups or []
    if uid == 0 and gid == 0 and not groups:
        os.setgroups([])
        sc.capset_keep(keep_mask)
        return
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)  # leaves no capability behind for a non-root uid
    if uid == 0:
        # root with a group (-u 0:GID, --group-add) keeps its uid, so setuid() clears
        # nothing: without this it would keep every capability it was started with.
        sc.capset_keep(keep_mask)

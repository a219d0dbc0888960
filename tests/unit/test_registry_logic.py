"""Pure logic of pull/push/login: references, the search list, challenges, platforms, auth.json."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from machinectl_py.errors import UsageError
from machinectl_py.images import authfile, reference
from machinectl_py.images.reference import Reference, Registries, RegistryEntry
from machinectl_py.images.registry import parse_challenges

HEX = "a" * 64


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", Reference("docker.io", "library/busybox", "latest")),
    ("library/busybox:1.36", Reference("docker.io", "library/busybox", "1.36")),
    ("docker.io/library/busybox", Reference("docker.io", "library/busybox", "latest")),
    ("docker.io/busybox", Reference("docker.io", "library/busybox", "latest")),
    ("index.docker.io/team/app:v1", Reference("docker.io", "team/app", "v1")),
    ("registry:5000/team/app@sha256:" + HEX, Reference("registry:5000", "team/app", None, "sha256:" + HEX)),
    ("127.0.0.1:5000/test/app:1", Reference("127.0.0.1:5000", "test/app", "1")),
    ("localhost/app", Reference("localhost", "app", "latest")),
    ("quay.io/a/b/c:x@sha256:" + HEX, Reference("quay.io", "a/b/c", "x", "sha256:" + HEX)),
    ("[::1]:5000/app:2", Reference("[::1]:5000", "app", "2")),
])
def test_references_as_docker_and_podman_write_them(text: str, expected: Reference) -> None:
    assert reference.candidates(text, Registries(("docker.io",))) == [expected]


@pytest.mark.parametrize("text", [
    "", "Busybox", "a b", "busybox:", "busybox:-x", "busybox@sha256:abc", "busybox@md5:" + HEX,
    "host:port:5000/x", "app//x", "-app", "app:" + "x" * 129, "registry:99999999/x",
])
def test_bad_references_are_one_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as e:
        reference.parse(text)
    assert "\n" not in e.value.message and "invalid image reference" in e.value.message


def test_store_tag_is_dockers_short_form() -> None:
    assert Reference("docker.io", "library/busybox", "1").store_tag() == "busybox:1"
    assert Reference("docker.io", "team/app", "1").store_tag() == "team/app:1"
    assert Reference("h:5000", "team/app", "1").store_tag() == "h:5000/team/app:1"
    assert Reference("h:5000", "team/app", None, "sha256:" + HEX).store_tag() is None


def test_search_list_and_flags_from_registries_conf(tmp_path: Path) -> None:
    own = tmp_path / "own.conf"
    own.write_text('unqualified-search-registries = ["127.0.0.1:5000", "docker.io"]\n'
                   '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n'
                   '[[registry]]\nprefix = "bad.example.com/team"\nlocation = "x"\nblocked = true\n')
    containers = tmp_path / "containers.conf"
    containers.write_text('unqualified-search-registries = ["quay.io", "docker.io"]\n'
                          '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = false\n'
                          '[registries.insecure]\nregistries = ["old.example.com"]\n')
    conf = reference.load_registries([str(own), str(containers), str(tmp_path / "missing.conf")])
    assert conf.search == ("127.0.0.1:5000", "docker.io", "quay.io")
    names = [str(r) for r in reference.candidates("team/app:2", conf)]
    assert names == ["127.0.0.1:5000/team/app:2", "docker.io/team/app:2", "quay.io/team/app:2"]
    assert conf.insecure(Reference("127.0.0.1:5000", "team/app"))  # pymachine's file wins
    assert conf.insecure(Reference("old.example.com", "x"))
    assert not conf.insecure(Reference("127.0.0.1:50001", "team/app"))
    assert conf.blocked(Reference("bad.example.com", "team/app"))
    assert not conf.blocked(Reference("bad.example.com", "teamx/app"))


def test_without_any_file_short_names_mean_docker_hub(tmp_path: Path) -> None:
    conf = reference.load_registries([str(tmp_path / "none.conf")])
    assert conf.search == ("docker.io",)


def test_a_malformed_registries_conf_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("unqualified-search-registries = 5\n")
    with pytest.raises(UsageError, match="must be a list of strings"):
        reference.load_registries([str(bad)])
    bad.write_text("[[registry\n")
    with pytest.raises(UsageError, match="cannot read"):
        reference.load_registries([str(bad)])


def test_wildcard_prefix() -> None:
    conf = Registries(("docker.io",), (RegistryEntry("*.internal", insecure=True),))
    assert conf.insecure(Reference("reg.internal:5000", "a"))
    assert not conf.insecure(Reference("reg.external", "a"))


@pytest.mark.parametrize(("header", "expected"), [
    ('Basic realm="basic-realm"', [("basic", {"realm": "basic-realm"})]),
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/busybox:pull,push"',
     [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                  "scope": "repository:library/busybox:pull,push"})]),
    ('Bearer realm="x\\"y", error=insufficient_scope, Basic realm=r',
     [("bearer", {"realm": 'x"y', "error": "insufficient_scope"}), ("basic", {"realm": "r"})]),
    ("", []),
])
def test_www_authenticate_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert parse_challenges(header) == expected


def _d(arch: str, variant: str | None = None, os_name: str = "linux") -> dict[str, object]:
    platform = {"os": os_name, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {"digest": f"{os_name}/{arch}/{variant}", "platform": platform}


def test_platform_pick() -> None:
    index = [_d("amd64", os_name="windows"), _d("arm", "v6"), _d("arm", "v7"), _d("arm64", "v8"), _d("amd64")]
    assert reference.pick_platform(index, ("linux", "amd64", None)) == index[4]
    assert reference.pick_platform(index, ("linux", "arm", "v7")) == index[2]
    assert reference.pick_platform(index, ("linux", "arm64", None)) == index[3]
    assert reference.pick_platform([_d("arm64")], ("linux", "arm64", "v8")) == _d("arm64")
    assert reference.pick_platform(index, ("linux", "s390x", None)) is None
    assert reference.pick_platform(index, ("linux", "arm", "v5")) is None
    assert reference.parse_platform("linux/arm64/v8") == ("linux", "arm64", "v8")
    with pytest.raises(UsageError):
        reference.parse_platform("arm64")


def test_auth_file_round_trip_in_podmans_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert authfile.lookup("h:5000") is None
    authfile.store("h:5000", "alice", "s3:cret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert base64.b64decode(data["auths"]["h:5000"]["auth"]) == b"alice:s3:cret"
    assert authfile.lookup("h:5000", "team/app") == ("alice", "s3:cret")
    assert authfile.remove("h:5000") and not authfile.remove("h:5000")
    assert authfile.lookup("h:5000") is None


def test_docker_config_json_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / ".docker").mkdir()
    token = base64.b64encode(b"bob:pw").decode()
    (tmp_path / ".docker" / "config.json").write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": token}}}))
    assert authfile.lookup("docker.io", "library/busybox") == ("bob", "pw")


def test_layer_compression_from_its_media_type() -> None:
    from machinectl_py.images.pull import LayerBlob

    def kind(media: str) -> str | None:
        return LayerBlob("sha256:" + HEX, 1, media, "sha256:" + HEX).compression

    assert kind("application/vnd.oci.image.layer.v1.tar+gzip") == "gzip"
    assert kind("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert kind("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert kind("application/vnd.oci.image.layer.v1.tar") is None


def test_options_may_follow_the_image_as_with_docker() -> None:
    from machinectl_py.images.registry_cli import LOGIN, PULL

    values = PULL.parse(["127.0.0.1:5000/a:1", "--tls-verify=false", "-q", "--platform", "linux/arm64"])
    assert (values["image"], values["tls_verify"], values["quiet"], values["platform"]) == (
        "127.0.0.1:5000/a:1", "false", True, "linux/arm64")
    values = LOGIN.parse(["reg:5000", "-u", "alice", "--password-stdin"])
    assert (values["registry"], values["username"], values["password_stdin"]) == ("reg:5000", "alice", True)
    with pytest.raises(UsageError, match="unexpected argument"):
        PULL.parse(["a", "b"])
    from machinectl_py.images.registry_cli import PUSH

    values = PUSH.parse(["img:1", "reg:5000/a:1", "--tls-verify=false", "-f", "v2s2"])
    assert (values["image"], values["destination"], values["tls_verify"], values["format"]) == (
        "img:1", "reg:5000/a:1", "false", "v2s2")
    values = PUSH.parse(["reg:5000/a:1", "--tls-verify=false"])
    assert (values["image"], values["destination"], values["tls_verify"]) == ("reg:5000/a:1", None, "false")
    with pytest.raises(UsageError, match="unexpected argument"):
        PUSH.parse(["a", "b", "c"])


@pytest.mark.parametrize(("text", "key"), [
    ("docker.io/library/busybox@sha256:" + HEX, "busybox@sha256:" + HEX),
    ("busybox:1.36@sha256:" + HEX, "busybox@sha256:" + HEX),  # the digest names the manifest, not the tag
    ("127.0.0.1:5000/test/app@sha256:" + HEX, "127.0.0.1:5000/test/app@sha256:" + HEX),
    ("docker.io/team/app:x@sha256:" + HEX, "team/app@sha256:" + HEX),
])
def test_digest_references_in_the_store(text: str, key: str) -> None:
    from machinectl_py.images.store import digest_reference

    assert digest_reference(text) == key


def test_a_bad_digest_reference_is_a_usage_error() -> None:
    from machinectl_py.images.store import digest_reference

    for text in ("busybox@sha256:1234", "Bad@sha256:" + HEX, "busybox@md5:" + HEX):
        with pytest.raises(UsageError):
            digest_reference(text)


def test_push_formats() -> None:
    from machinectl_py.images import push

    push.check_format("v2s2", "gzip")
    push.check_format("oci", "zstd")
    with pytest.raises(UsageError, match="no zstd"):
        push.check_format("v2s2", "zstd")
    assert push.compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert push.LAYER_TYPE[("v2s2", "gzip")] == "application/vnd.docker.image.rootfs.diff.tar.gzip"


def test_pull_records_the_reference_run_resolves() -> None:
    from machinectl_py.images.pull import _store_reference

    digest = "sha256:" + HEX
    assert _store_reference(Reference("docker.io", "library/busybox", "1.36"), digest) == "busybox:1.36"
    assert _store_reference(Reference("r:5000", "a", None, digest)) == f"r:5000/a@{digest}"
    assert _store_reference(Reference("r:5000", "a", "1", digest)) == f"r:5000/a@{digest}"

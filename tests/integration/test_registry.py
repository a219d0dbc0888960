"""pull, push, login against a real registry: Debian's docker-registry (distribution 2.8).

The registry runs outside the test host, as a child of pytest listening on 127.0.0.1 (the test
host shares the network namespace, so it reaches it there); its storage is in pytest's temp dir.
Images are put into it with skopeo, from layouts umoci makes; pymachine runs inside the host.
Tests that count layers or look at the store's files use a private store (PYMACHINE_STATE_DIR
in pytest's temp dir, shared with the host); the others use the host's, and run what they pulled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from images import build
from testhost import LocalHost, TestHost

pytestmark = [pytest.mark.integration]

AnyHost = TestHost | LocalHost
USER, PASSWORD = "alice", "s3cret-" + secrets.token_hex(4)


class Registry:
    """One docker-registry process on 127.0.0.1:<free port>."""

    def __init__(self, work: Path, htpasswd: bool = False, tls: bool = False, token_realm: str = "",
                 token_cert: Path | None = None) -> None:
        self.work = work
        self.storage = work / "storage"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        auth = ""
        if htpasswd:
            line = build.run("htpasswd", "-Bbn", USER, PASSWORD)
            (work / "htpasswd").write_text(line)
            auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {work / 'htpasswd'}\n"
        if token_realm:
            auth = (f"auth:\n  token:\n    realm: {token_realm}\n    service: test-registry\n"
                    f"    issuer: test-issuer\n    rootcertbundle: {token_cert}\n")
        tls_config = ""
        self.ca: Path | None = None
        if tls:
            self.ca = make_certificates(work / "tls")
            tls_config = f"  tls:\n    certificate: {work / 'tls/server.crt'}\n    key: {work / 'tls/server.key'}\n"
        (work / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n  secret: {secrets.token_hex(16)}\n{tls_config}{auth}")
        self.log = (work / "registry.log").open("w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(work / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.ca is not None:
                    import ssl

                    context = ssl.create_default_context(cafile=str(self.ca))
                    urllib.request.urlopen(f"https://{self.address}/v2/", timeout=2, context=context).close()
                else:
                    urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for credentials
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (work / "registry.log").read_text()
                    raise RuntimeError(f"docker-registry did not start: {log}") from None
                time.sleep(0.05)
        self.creds = ["--dest-creds", f"{USER}:{PASSWORD}"] if htpasswd or token_realm else []

    def put(self, layout: Path, repo: str, *extra: str, tag: str = "latest") -> str:
        build.run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", *self.creds, *extra,
                  f"oci:{layout}:{tag}", f"docker://{self.address}/{repo}")
        return f"{self.address}/{repo}"

    def inspect(self, ref: str, *extra: str) -> Any:
        creds = ["--creds", f"{USER}:{PASSWORD}"] if self.creds else []
        result: Any = json.loads(build.run("skopeo", "inspect", "--tls-verify=false", *creds, *extra,
                                                         f"docker://{ref}"))
        return result

    def blob_path(self, digest: str) -> Path:
        hexpart = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    r = Registry(tmp_path_factory.mktemp("registry"))
    try:
        yield r
    finally:
        r.stop()


def make_certificates(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl); returns the CA's file."""
    directory.mkdir()
    subject_ca = ["-subj", "/CN=pymachine test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign"]
    build.run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
              directory / "ca.key", "-out", directory / "ca.crt", *subject_ca)
    build.run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", directory / "server.key",
              "-out", directory / "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                   "extendedKeyUsage=serverAuth\n")
    build.run("openssl", "x509", "-req", "-in", directory / "server.csr", "-CA", directory / "ca.crt",
              "-CAkey", directory / "ca.key", "-CAcreateserial", "-days", "2", "-out", directory / "server.crt",
              "-extfile", directory / "ext")
    return directory / "ca.crt"


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    r = Registry(tmp_path_factory.mktemp("tlsregistry"), tls=True)
    try:
        yield r
    finally:
        r.stop()


class TokenServer:
    """The token service of distribution's token auth (docs/spec/auth/token.md), as a registry
    deployment puts beside it: checks USER/PASSWORD (HTTP Basic) and answers a JWT granting
    the scopes asked for, signed RS256 by a key whose self-signed certificate the registry
    trusts (`rootcertbundle`) and which the token carries in `x5c`. Signing is openssl's."""

    def __init__(self, work: Path) -> None:
        import http.server
        import threading

        work.mkdir()
        self.key, self.cert = work / "sign.key", work / "sign.crt"
        build.run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", self.key,
                  "-out", self.cert, "-subj", "/CN=pymachine test token signer")
        self.der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"],
                                  capture_output=True, check=True).stdout
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.answer(self.path, self.headers.get("Authorization", ""))
                self.send_response(200 if body else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, authorization: str) -> bytes:
        import base64
        import urllib.parse

        if authorization != "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode():
            return b""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.der).decode()]}
        claims = {"iss": "test-issuer", "sub": USER, "aud": query["service"][0], "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key], input=signing.encode(),
                                   capture_output=True, check=True).stdout
        return json.dumps({"token": f"{signing}.{b64(signature)}"}).encode()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenServer]]:
    work = tmp_path_factory.mktemp("tokenregistry")
    tokens = TokenServer(work / "token")
    r = Registry(work, token_realm=tokens.realm, token_cert=tokens.cert)
    try:
        yield r, tokens
    finally:
        r.stop()
        tokens.stop()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    r = Registry(tmp_path_factory.mktemp("authregistry"), htpasswd=True)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.umoci_two_layers(tmp_path_factory.mktemp("umoci"))


def unique_layout(work: Path, payload: bytes = b"", tag: str = "latest") -> Path:
    """A one-layer busybox image with a file of its own (so its layer is shared with no other test)."""
    layout = work / "layout"
    image = f"{layout}:{tag}"
    build.run("umoci", "init", "--layout", layout)
    build.run("umoci", "new", "--image", image)
    bundle = work / "bundle"
    build.run("umoci", "unpack", "--image", image, bundle)
    root = build.busybox_rootfs(bundle / "rootfs")
    (root / "unique").write_bytes(payload or secrets.token_bytes(64))
    build.run("umoci", "repack", "--image", image, bundle)
    build.run("umoci", "config", "--image", image, "--config.cmd=/bin/sh")
    shutil.rmtree(bundle)
    return layout


def pm(host: AnyHost, *args: str, env: dict[str, str] | None = None, check: bool = True,
       timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = host.run(["pymachine", *args], env=env, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"pymachine {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def private_store(tmp_path: Path) -> dict[str, str]:
    """Its own store and config dir (shared with the host, so the test can look at the files)."""
    (tmp_path / "conf").mkdir(exist_ok=True)
    return {"PYMACHINE_STATE_DIR": str(tmp_path / "state"), "PYMACHINE_CONFIG_DIR": str(tmp_path / "conf")}


def diff_ids(registry: Registry, ref: str) -> list[str]:
    config = registry.inspect(ref, "--config")
    return list(config["rootfs"]["diff_ids"])


def layers_of(host: AnyHost, ref: str, env: dict[str, str] | None = None) -> list[str]:
    out = pm(host, "image", "inspect", ref, "--format", "{{json .RootFS.Layers}}", env=env).stdout
    layers: list[str] = json.loads(out)
    return layers


def store_is_clean(state: Path) -> None:
    """After a finished pull: no partial download, no staging dir."""
    assert list((state / "downloads").iterdir()) == []
    assert [p.name for p in (state / "tmp").iterdir()] == []


# ---------------------------------------------------------------------------------------------


CHECK_UMOCI = "test -e /etc/doomed && echo doomed-visible || echo doomed-gone; cat /etc/added /keep; ls /data/old"


def test_pull_gives_skopeos_diff_ids_and_runs(host: AnyHost, registry: Registry, umoci_layout: Path,
                                              tmp_path: Path) -> None:
    ref = registry.put(umoci_layout, "test/app:1")
    expected = diff_ids(registry, ref)
    env = private_store(tmp_path)
    result = pm(host, "pull", ref, "--tls-verify=false", env=env)
    # not a terminal: one line per layer
    lines = [line for line in result.stderr.splitlines() if ": pulled " in line]
    assert len(lines) == 2, result.stderr
    assert "2 new layers, 0 already in the store" in result.stdout
    assert layers_of(host, ref, env) == expected
    store_is_clean(tmp_path / "state")
    again = pm(host, "pull", ref, "--tls-verify=false", env=env)
    assert "0 new layers, 2 already in the store" in again.stdout
    assert again.stderr.count("already in the store") == 2
    # and it runs, from the host's own store
    pm(host, "pull", "-q", ref, "--tls-verify=false")
    out = pm(host, "run", "--rm", ref, "sh", "-c", CHECK_UMOCI).stdout.splitlines()
    assert out == ["doomed-gone", "added", "kept", "c"]
    pm(host, "image", "rm", ref)


def test_without_tls_verify_false_a_plain_http_registry_is_refused(host: AnyHost, registry: Registry,
                                                                   umoci_layout: Path, tmp_path: Path) -> None:
    ref = registry.put(umoci_layout, "test/plain:1")
    result = pm(host, "pull", ref, env=private_store(tmp_path), check=False)
    assert result.returncode == 125
    assert result.stderr.startswith(f"pymachine: TLS with {registry.address} failed: it answered without TLS")


def test_tls_with_a_ca_trusted_through_certs_d(host: AnyHost, tls_registry: Registry, umoci_layout: Path,
                                               tmp_path: Path) -> None:
    ref = tls_registry.put(umoci_layout, "test/tls:1")
    env = private_store(tmp_path)
    untrusted = pm(host, "pull", ref, env=env, check=False)
    assert untrusted.returncode == 125
    assert untrusted.stderr.startswith(f"pymachine: TLS with {tls_registry.address} failed: "
                                       "CERTIFICATE_VERIFY_FAILED")
    certs = tmp_path / "conf" / "certs.d" / tls_registry.address  # $PYMACHINE_CONFIG_DIR/certs.d, as podman's
    assert f"hint: trust its CA with {certs}/ca.crt" in untrusted.stderr
    assert tls_registry.ca is not None
    certs.mkdir(parents=True)
    shutil.copy(tls_registry.ca, certs / "ca.crt")
    pm(host, "pull", ref, env=env)
    assert layers_of(host, ref, env) == diff_ids(tls_registry, ref)


def test_short_name_through_the_search_list(host: AnyHost, registry: Registry, umoci_layout: Path,
                                            tmp_path: Path) -> None:
    registry.put(umoci_layout, "team/short:2")
    env = private_store(tmp_path)
    (tmp_path / "conf" / "registries.conf").write_text(
        f'unqualified-search-registries = ["{registry.address}"]\n'
        f'[[registry]]\nlocation = "{registry.address}"\ninsecure = true\n')
    out = pm(host, "pull", "team/short:2", env=env).stdout
    assert f"Pulled {registry.address}/team/short:2" in out
    missing = pm(host, "pull", "team/absent:2", env=env, check=False)
    assert missing.returncode == 125 and "manifest unknown" in missing.stderr


def test_zstd_layers_and_a_multi_platform_index(host: AnyHost, registry: Registry, umoci_layout: Path,
                                                tmp_path: Path) -> None:
    zref = registry.put(zstd_layout(umoci_layout, tmp_path / "zstd"), "test/zstd:1")
    manifest = registry.inspect(zref, "--raw")
    assert all(layer["mediaType"].endswith("+zstd") for layer in manifest["layers"])
    env = private_store(tmp_path)
    pm(host, "pull", zref, "--tls-verify=false", env=env)
    assert layers_of(host, zref, env) == diff_ids(registry, zref)

    layout = multi_platform_layout(umoci_layout, tmp_path / "multi")
    mref = registry.put(layout, "test/multi:1", "--all", tag="multi")
    amd = json.loads(pm(host, "image", "inspect", pm(host, "pull", "-q", mref, "--tls-verify=false",
                                                     "--platform", "linux/amd64", env=env).stdout.strip(),
                        env=env).stdout)[0]
    arm = json.loads(pm(host, "image", "inspect", pm(host, "pull", "-q", mref, "--tls-verify=false",
                                                     "--platform", "linux/arm64", env=env).stdout.strip(),
                        env=env).stdout)[0]
    assert (amd["Architecture"], arm["Architecture"]) == ("amd64", "arm64")
    none = pm(host, "pull", mref, "--tls-verify=false", "--platform", "linux/s390x", env=env, check=False)
    assert none.returncode == 125
    assert "has no image for linux/s390x" in none.stderr and "linux/amd64, linux/arm64" in none.stderr


def _blob_writer(layout: Path) -> tuple[Path, Callable[[bytes], str]]:
    blobs = layout / "blobs" / "sha256"

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest

    return blobs, put


def zstd_layout(source: Path, layout: Path) -> Path:
    """`source` with its layers recompressed by zstd (skopeo would reuse the gzip blobs it knows)."""
    shutil.copytree(source, layout)
    blobs, put = _blob_writer(layout)
    index = json.loads((layout / "index.json").read_text())
    manifest_d = index["manifests"][0]
    manifest = json.loads((blobs / manifest_d["digest"].removeprefix("sha256:")).read_bytes())
    for layer in manifest["layers"]:
        tar = subprocess.run(["gzip", "-dc", blobs / layer["digest"].removeprefix("sha256:")],
                             capture_output=True, check=True).stdout
        packed = subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True).stdout
        layer.update(mediaType="application/vnd.oci.image.layer.v1.tar+zstd", digest=put(packed), size=len(packed))
    raw = json.dumps(manifest).encode()
    manifest_d.update(digest=put(raw), size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def multi_platform_layout(source: Path, layout: Path) -> Path:
    """`source`'s image twice in one OCI index: as linux/amd64 and (config edited) linux/arm64."""
    shutil.copytree(source, layout)
    blobs, put = _blob_writer(layout)
    manifest_d = json.loads((layout / "index.json").read_text())["manifests"][0]
    manifest = json.loads((blobs / manifest_d["digest"].removeprefix("sha256:")).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes())
    entries = []
    for arch in ("amd64", "arm64"):
        raw_config = json.dumps({**config, "architecture": arch}).encode()
        m = {**manifest, "config": {**manifest["config"], "digest": put(raw_config), "size": len(raw_config)}}
        raw = json.dumps(m).encode()
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(raw),
                        "size": len(raw), "platform": {"os": "linux", "architecture": arch}})
    raw_index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": entries}).encode()
    top = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": put(raw_index), "size": len(raw_index),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}
    (layout / "index.json").write_text(json.dumps(top))
    return layout


def test_a_corrupt_blob_is_refused_and_nothing_is_stored(host: AnyHost, registry: Registry,
                                                         tmp_path: Path) -> None:
    layout = unique_layout(tmp_path / "img")
    ref = registry.put(layout, "test/corrupt:1")
    manifest = registry.inspect(ref, "--raw")
    layer = manifest["layers"][0]
    blob = registry.blob_path(layer["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the digest tells
    blob.write_bytes(bytes(data))
    env = private_store(tmp_path)
    result = pm(host, "pull", ref, "--tls-verify=false", env=env, check=False)
    assert result.returncode == 125
    errors = [line for line in result.stderr.splitlines() if line.startswith("pymachine:")]
    assert len(errors) == 1, result.stderr
    assert "refused" in errors[0] and ("digest" in errors[0] or "corrupt" in errors[0])
    state = tmp_path / "state"
    assert json.loads(pm(host, "images", "--json", env=env).stdout) == []
    assert list((state / "layers" / "sha256").iterdir()) == []
    store_is_clean(state)


def test_a_pull_killed_midway_leaves_nothing_visible_and_resumes(host: AnyHost, registry: Registry,
                                                                 tmp_path: Path) -> None:
    layout = unique_layout(tmp_path / "img", os.urandom(200 << 20))  # incompressible: 200 MB on the wire
    ref = registry.put(layout, "test/big:1")
    layer = registry.inspect(ref, "--raw")["layers"][0]
    env = private_store(tmp_path)
    state = tmp_path / "state"
    partial = state / "downloads" / layer["digest"].removeprefix("sha256:")
    proc = host.popen(["pymachine", "pull", ref, "--tls-verify=false"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > (64 << 20)):
            assert proc.poll() is None, f"the pull ended before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    kept = partial.stat().st_size
    assert 0 < kept < layer["size"]
    assert json.loads(pm(host, "images", "--json", env=env).stdout) == []
    assert list((state / "layers" / "sha256").iterdir()) == []
    result = pm(host, "pull", ref, "--tls-verify=false", env=env)
    assert "(resumed at" in result.stderr, result.stderr
    # every digest as skopeo has them: the layers' diff_ids, the config's (the image id), the manifest's
    assert layers_of(host, ref, env) == diff_ids(registry, ref)
    inspected = json.loads(pm(host, "image", "inspect", ref, env=env).stdout)[0]
    assert inspected["Id"] == registry.inspect(ref, "--raw")["config"]["digest"]
    assert inspected["RepoDigests"] == [f"{ref.rpartition(':')[0]}@{registry.inspect(ref)['Digest']}"]
    store_is_clean(state)
    assert [p for p in state.rglob("*") if ".tmp" in p.name or p.name.startswith(".")] == []
    # the registry served the rest only: a Range request from where the first pull stopped
    log = (registry.work / "registry.log").read_text()
    assert re.search(rf'"GET /v2/test/big/blobs/{layer["digest"]} HTTP/1.1" 206 ', log), log[-2000:]
    # what a pull that is never repeated would keep: `image prune` forgets it
    (state / "downloads" / ("0" * 64)).write_bytes(b"x" * 4096)
    assert "reclaimed 4.1kB" in pm(host, "image", "prune", env=env).stdout
    store_is_clean(state)


def test_pull_by_digest_records_repo_digests_and_runs(host: AnyHost, registry: Registry, tmp_path: Path) -> None:
    name = registry.put(unique_layout(tmp_path / "img"), "test/bydigest")
    by_digest = f"{name}@{registry.inspect(name)['Digest']}"
    other = f"bydigest-{secrets.token_hex(3)}:1"
    out = pm(host, "pull", by_digest, "--tls-verify=false").stdout
    assert f"Pulled {by_digest}" in out
    try:
        image = json.loads(pm(host, "image", "inspect", by_digest).stdout)[0]
        assert (image["RepoTags"], image["RepoDigests"]) == ([], [by_digest])
        assert pm(host, "run", "--rm", by_digest, "echo", "by-digest").stdout.split() == ["by-digest"]
        # the same manifest by tag: the tag joins, the digest stays (docker's RepoTags and RepoDigests)
        pm(host, "pull", "-q", f"{name}:latest", "--tls-verify=false")
        image = json.loads(pm(host, "image", "inspect", by_digest).stdout)[0]
        assert (image["RepoTags"], image["RepoDigests"]) == ([f"{name}:latest"], [by_digest])
        # rm by digest while a tag is left forgets only the digest, as docker rmi does
        assert pm(host, "image", "rm", by_digest).stdout.split() == ["Untagged:", by_digest]
        assert json.loads(pm(host, "image", "inspect", f"{name}:latest").stdout)[0]["RepoDigests"] == []
        missing = pm(host, "run", "--rm", "--pull=never", by_digest, "true", check=False)
        assert missing.returncode == 125 and missing.stderr.startswith(f"pymachine: no such image: {by_digest}")
        # the last tag of a repository takes the image's digests in it along (docker rmi)
        pm(host, "pull", "-q", by_digest, "--tls-verify=false")
        pm(host, "image", "tag", f"{name}:latest", other)
        assert pm(host, "image", "rm", f"{name}:latest").stdout.split() == [
            "Untagged:", f"{name}:latest", "Untagged:", by_digest]
        assert json.loads(pm(host, "image", "inspect", other).stdout)[0]["RepoDigests"] == []
    finally:
        pm(host, "image", "rm", f"{name}:latest", other, check=False)


def test_run_and_create_pull_a_missing_image(host: AnyHost, registry: Registry, tmp_path: Path) -> None:
    name = registry.put(unique_layout(tmp_path / "img"), "team/runpull", tag="latest")
    conf = tmp_path / "conf"
    conf.mkdir()
    # no --tls-verify on run: the registry is listed insecure, and searched for short names
    (conf / "registries.conf").write_text(
        f'unqualified-search-registries = ["{registry.address}"]\n'
        f'[[registry]]\nlocation = "{registry.address}"\ninsecure = true\n')
    env = {"PYMACHINE_CONFIG_DIR": str(conf)}
    try:
        never = pm(host, "run", "--rm", "--pull=never", name, "true", env=env, check=False)
        assert never.returncode == 125, never.stderr
        assert never.stderr.splitlines()[0] == f"pymachine: no such image: {name}", never.stderr
        first = pm(host, "run", "--rm", name, "echo", "ran", env=env)
        assert first.stderr.startswith(f"Unable to find image '{name}' locally"), first.stderr
        assert ": pulled" in first.stderr and first.stdout.split() == ["ran"]
        again = pm(host, "run", "--rm", name, "echo", "ran", env=env)
        assert "Unable to find" not in again.stderr and ": pulled" not in again.stderr
        # always: the registry is asked again; its layer is in the store already
        always = pm(host, "run", "--rm", "--pull=always", name, "echo", "ran", env=env)
        assert "already in the store" in always.stderr and always.stdout.split() == ["ran"]
        # a registry not listed insecure: --tls-verify=false, as podman run has it
        refused = pm(host, "run", "--rm", "--pull=always", name, "true", check=False)
        assert refused.returncode == 125 and "answered without TLS" in refused.stderr, refused.stderr
        pm(host, "run", "--rm", "--pull=always", "--tls-verify=false", name, "true")
        # create with a short name: found through the search list, recorded fully qualified
        cname = "pullcreate-" + secrets.token_hex(3)
        pm(host, "image", "rm", name)
        pm(host, "create", "--name", cname, "team/runpull", env=env)
        try:
            image = pm(host, "inspect", cname, "--format", "{{.Config.Image}}", env=env).stdout.strip()
            assert image == f"{name}:latest"
        finally:
            pm(host, "rm", cname, env=env)
        bad = pm(host, "run", "--rm", "--pull=sometimes", name, "true", check=False)
        assert bad.returncode == 125 and "invalid value 'sometimes' for --pull" in bad.stderr
    finally:
        pm(host, "image", "rm", name, check=False)


def test_auth_login_logout(host: AnyHost, auth_registry: Registry, umoci_layout: Path, tmp_path: Path) -> None:
    ref = auth_registry.put(umoci_layout, "secret/app:1")
    env = {**private_store(tmp_path), "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    anonymous = pm(host, "pull", ref, "--tls-verify=false", env=env, check=False)
    assert anonymous.returncode == 125
    assert anonymous.stderr.splitlines()[0] == f"pymachine: {auth_registry.address} requires authentication"
    wrong = pm(host, "login", "-u", USER, "--password-stdin", "--tls-verify=false", auth_registry.address,
               env=env, input="wrong\n", check=False)
    assert wrong.returncode == 125
    assert wrong.stderr.splitlines()[0] == (
        f"pymachine: authentication to {auth_registry.address} failed: wrong user name or password")
    assert not (tmp_path / "auth.json").exists()
    pm(host, "login", "-u", USER, "--password-stdin", "--tls-verify=false", auth_registry.address,
       env=env, input=PASSWORD + "\n")
    assert (tmp_path / "auth.json").stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in (tmp_path / "auth.json").read_text()  # base64, as podman writes it
    # skopeo reads the file pymachine wrote
    build.run("skopeo", "inspect", "--tls-verify=false", "--authfile", tmp_path / "auth.json", f"docker://{ref}")
    pm(host, "pull", ref, "--tls-verify=false", env=env)
    pm(host, "logout", auth_registry.address, env=env)
    assert pm(host, "pull", ref, "--tls-verify=false", env=env, check=False).returncode == 125


def test_bearer_tokens_from_the_registrys_token_service(host: AnyHost, token_registry: tuple[Registry, TokenServer],
                                                         umoci_layout: Path, tmp_path: Path) -> None:
    registry, tokens = token_registry
    ref = registry.put(umoci_layout, "team/app:1")
    env = {**private_store(tmp_path), "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    anonymous = pm(host, "pull", ref, "--tls-verify=false", env=env, check=False)
    assert anonymous.returncode == 125
    assert anonymous.stderr.splitlines()[0] == f"pymachine: {registry.address} requires authentication"
    wrong = pm(host, "login", "-u", USER, "--password-stdin", "--tls-verify=false", registry.address,
               env=env, input="wrong\n", check=False)
    assert wrong.returncode == 125 and "wrong user name or password" in wrong.stderr
    pm(host, "login", "-u", USER, "--password-stdin", "--tls-verify=false", registry.address,
       env=env, input=PASSWORD + "\n")
    tokens.requests.clear()
    pm(host, "pull", ref, "--tls-verify=false", env=env)
    assert layers_of(host, ref, env) == diff_ids(registry, ref)
    assert [r for r in tokens.requests if "scope=repository%3Ateam%2Fapp%3Apull" in r], tokens.requests
    # a push to another repository asks for push there and pull on the source of the mount
    out = pm(host, "push", "--tls-verify=false", ref, f"{registry.address}/other/app:1", env=env).stdout
    assert "0 layers uploaded, 2 mounted" in out
    assert any("repository%3Aother%2Fapp%3Apull%2Cpush" in r and "repository%3Ateam%2Fapp%3Apull" in r
               for r in tokens.requests), tokens.requests


def test_push_of_a_committed_image_round_trips(host: AnyHost, registry: Registry, umoci_layout: Path,
                                               tmp_path: Path) -> None:
    base = registry.put(umoci_layout, "test/base:1")
    pm(host, "pull", "-q", base, "--tls-verify=false")
    name = f"push-{secrets.token_hex(3)}"
    target = f"{registry.address}/test/committed:{name}"
    pm(host, "run", "--name", name, base, "sh", "-c", "echo changed > /changed")
    try:
        pm(host, "commit", name, target)
    finally:
        pm(host, "rm", "-f", name, check=False)
    try:
        first = pm(host, "push", "--tls-verify=false", target).stdout
        # the base layers came from test/base on the same registry: mounted, not uploaded
        assert "1 layers uploaded, 2 mounted, 0 already there" in first, first
        pushed = registry.inspect(target)
        local = layers_of(host, target)
        assert diff_ids(registry, target) == local
        second = pm(host, "push", "--tls-verify=false", target).stdout
        assert "0 layers uploaded, 0 mounted, 3 already there" in second
        assert f"digest {pushed['Digest']}" in second
        repo_digest = f"{target.rpartition(':')[0]}@{pushed['Digest']}"
        assert json.loads(pm(host, "image", "inspect", target).stdout)[0]["RepoDigests"] == [repo_digest]
        env = private_store(tmp_path)
        pm(host, "pull", target, "--tls-verify=false", env=env)
        assert layers_of(host, target, env) == local
    finally:
        pm(host, "image", "rm", "-f", target, base, check=False)


DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def test_push_keeps_dockers_format_and_pushes_zstd(host: AnyHost, registry: Registry, tmp_path: Path) -> None:
    base = registry.put(unique_layout(tmp_path / "img"), "test/dockerbase", "--format", "v2s2")
    assert registry.inspect(base, "--raw")["mediaType"] == DOCKER_MANIFEST
    pm(host, "pull", "-q", base, "--tls-verify=false")
    name = f"v2s2-{secrets.token_hex(3)}"
    target = f"{registry.address}/test/dockerpush:{name}"
    pm(host, "run", "--name", name, base, "sh", "-c", "echo changed > /changed")
    try:
        pm(host, "commit", name, target)
    finally:
        pm(host, "rm", "-f", name, check=False)
    ztarget = f"{target}-zstd"
    try:
        # the base came as docker v2s2: so does the push, its base blob mounted as it is
        out = pm(host, "push", "--tls-verify=false", target).stdout
        assert "1 layers uploaded, 1 mounted, 0 already there" in out, out
        raw = registry.inspect(target, "--raw")
        assert raw["mediaType"] == DOCKER_MANIFEST
        assert raw["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
        assert {layer["mediaType"] for layer in raw["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
        local = layers_of(host, target)
        assert diff_ids(registry, target) == local
        # zstd: an OCI manifest, every layer compressed anew; a clean store pulls the same diff_ids
        out = pm(host, "push", "--tls-verify=false", "--compression-format", "zstd", target, ztarget).stdout
        assert "2 layers uploaded, 0 mounted, 0 already there" in out, out
        raw = registry.inspect(ztarget, "--raw")
        assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert {layer["mediaType"] for layer in raw["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
        assert diff_ids(registry, ztarget) == local
        env = private_store(tmp_path)
        pm(host, "pull", ztarget, "--tls-verify=false", env=env)
        assert layers_of(host, ztarget, env) == local
        # the same image as OCI + gzip: the blobs are the docker ones, only their mediaType changes
        out = pm(host, "push", "--tls-verify=false", "--format", "oci", target, f"{target}-oci").stdout
        assert "0 layers uploaded, 0 mounted, 2 already there" in out, out
        assert registry.inspect(f"{target}-oci", "--raw")["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        bad = pm(host, "push", "--tls-verify=false", "--format", "v2s2", "--compression-format", "zstd", target,
                 check=False)
        assert bad.returncode == 125
        assert bad.stderr.startswith("pymachine: docker's v2s2 format has no zstd layers"), bad.stderr
    finally:
        pm(host, "image", "rm", "-f", target, base, check=False)


@pytest.mark.parametrize(("args", "message"), [
    (["pull", "Not/Valid"], "pymachine: invalid image reference 'Not/Valid'"),
    (["pull", "x@sha256:1234"], "pymachine: invalid image reference 'x@sha256:1234'"),
    (["pull", "--platform", "arm64", "busybox"], "pymachine: invalid platform 'arm64'"),
    (["push", "localimage:1"], "pymachine: 'localimage:1' names no registry"),
    (["push", "localimage:1", "127.0.0.1:1/x:1"], "pymachine: no such image: localimage:1"),
])
def test_bad_input_is_one_line_and_125(host: AnyHost, args: list[str], message: str) -> None:
    result = pm(host, *args, check=False)
    assert result.returncode == 125
    assert result.stderr.splitlines()[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


class FlakyProxy:
    """A TCP proxy in front of the registry that fails the way networks do: for one blob it
    answers 503 once, then cuts the next response after `cut` bytes with a TCP reset."""

    def __init__(self, upstream: Registry, digest: str, cut: int) -> None:
        import threading

        self.upstream = upstream
        self.digest = digest
        self.cut = cut
        self.events: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        import select
        import struct

        with client:
            head = b""
            while b"\r\n\r\n" not in head and not head.startswith(b"\x16"):  # 0x16: a TLS hello, relayed
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            target = line.startswith("GET ") and self.digest in line
            if target and "503" not in self.events:
                self.events.append("503")
                client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            cut = target and "reset" not in self.events
            with socket.create_connection(("127.0.0.1", self.upstream.port)) as up:
                up.sendall(head)
                sent = 0
                while True:
                    ready, _, _ = select.select([client, up], [], [], 30)
                    if not ready:
                        return
                    if client in ready:
                        data = client.recv(65536)
                        if not data:
                            return
                        up.sendall(data)
                    if up in ready:
                        data = up.recv(65536)
                        if not data:
                            return
                        if cut and sent + len(data) > self.cut:
                            self.events.append("reset")
                            # A reset drops what the client has not read yet: give it time to read
                            # what was sent, so the retry must resume from the middle.
                            time.sleep(1)
                            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            return  # closing with linger 0 sends RST
                        client.sendall(data)
                        sent += len(data)

    def close(self) -> None:
        self.server.close()


def test_503_and_a_connection_reset_midway_are_retried_and_resumed(host: AnyHost, registry: Registry,
                                                                   tmp_path: Path) -> None:
    layout = unique_layout(tmp_path / "img", os.urandom(8 << 20))
    ref = registry.put(layout, "test/flaky:1")
    layer = registry.inspect(ref, "--raw")["layers"][0]
    proxy = FlakyProxy(registry, layer["digest"], cut=3 << 20)
    try:
        env = {**private_store(tmp_path), "PYMACHINE_PULL_BACKOFF": "0.05"}
        flaky_ref = f"{proxy.address}/test/flaky:1"
        result = pm(host, "pull", flaky_ref, "--tls-verify=false", env=env)
    finally:
        proxy.close()
    assert proxy.events == ["503", "reset"], result.stderr
    assert layers_of(host, flaky_ref, env) == diff_ids(registry, ref)
    log = (registry.work / "registry.log").read_text()
    assert re.search(rf'"GET /v2/test/flaky/blobs/{layer["digest"]} HTTP/1.1" 206 ', log), log[-2000:]
    store_is_clean(tmp_path / "state")


def test_per_layer_progress_on_a_terminal(host: AnyHost, registry: Registry, umoci_layout: Path,
                                          tmp_path: Path) -> None:
    from ptydrive import on_pty

    ref = registry.put(umoci_layout, "test/tty:1")
    env = private_store(tmp_path)
    session = on_pty(host, ["env", *(f"{k}={v}" for k, v in env.items()), "pymachine", "pull", ref,
                            "--tls-verify=false"])
    assert session.exit_code == 0, session.output
    short = [layer["digest"].removeprefix("sha256:")[:12] for layer in registry.inspect(ref, "--raw")["layers"]]
    final = session.output.rsplit("\x1b[J", 1)[-1]  # the last redraw: one line per layer
    assert [line.split(":")[0] for line in final.splitlines() if ": pulled " in line] == short, session.output
    assert "\x1b[2F" in session.output  # redrawn in place: the cursor went back up two lines
    assert f"Pulled {ref}" in session.output

"""A client for the OCI distribution API (registry v2): what `pull` and `push` say to a registry.

HTTP and TLS are the standard library's (`http.client`, `ssl`): one connection per request,
which on a registry means one per blob or manifest, so pooling would buy little; the import
costs ~25 ms and only `pull`, `push` and `login` pay it. See README "Registries" for the
comparison that chose it.

Authentication follows the registry's `WWW-Authenticate` challenge (RFC 7235; the registry
token protocol of distribution's docs/spec/auth/token.md): `Basic` sends the user's
credentials on every request; `Bearer` fetches a token from the realm for the scopes the
operation needs (with the credentials, if any) and sends that. A registry is reached over
HTTPS with verified certificates, trusting also the CAs of `certs.d/HOST[:PORT]/*.crt`
(podman's and docker's layout, see CERTS_DIRS); an insecure one (`--tls-verify=false` or listed
in registries.conf) is tried over HTTPS without verification, then over plain HTTP.

Transient failures (connection refused or reset, timeouts, 429 and 5xx) are retried with
exponential backoff; a request with a streamed body is not (its caller restarts it).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from machinectl_py.images.errors import ImageError

CERTS_DIRS = ("/etc/pymachine/certs.d", "/etc/containers/certs.d", "/etc/docker/certs.d")
TIMEOUT = 60.0
RETRIES = int(os.environ.get("PYMACHINE_PULL_RETRIES", "4"))
BACKOFF = float(os.environ.get("PYMACHINE_PULL_BACKOFF", "0.5"))
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 64 << 10
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
USER_AGENT = "pymachine"


class RegistryError(ImageError):
    """A registry refused or failed a request, or could not be reached."""


class AuthError(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we sent."""


class NotFound(RegistryError):
    """The registry has no such repository, manifest or blob (404)."""


# ---------------------------------------------------------------------------------------------
# Challenges


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}))\s*(?:,|$)")
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """`WWW-Authenticate` -> [(scheme in lower case, {param: value})]. Quoted values may hold
    commas (a scope `repository:a:pull,push`) and backslash escapes."""
    found: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME_RE.match(header, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            p = _PARAM_RE.match(header, pos)
            if not p:
                break
            quoted = p.group(2)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else p.group(3)
            pos = p.end()
        found.append((scheme, params))
        while pos < len(header) and header[pos] in " ,":
            pos += 1
    return found


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------------------------------------
# TLS


def tls_context(host: str, verify: bool) -> ssl.SSLContext:
    """The default trust store plus certs.d/HOST/*.crt; client certificates from *.cert + *.key."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    from machinectl_py import paths

    for base in dict.fromkeys((paths.config_path("certs.d"), *CERTS_DIRS)):
        directory = os.path.join(base, host)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                if name.endswith(".crt"):
                    context.load_verify_locations(cafile=path)
                elif name.endswith(".cert") and os.path.exists(path[:-5] + ".key"):
                    context.load_cert_chain(path, path[:-5] + ".key")
            except (OSError, ssl.SSLError) as e:
                raise RegistryError(f"cannot load {path}: {e}") from None
    return context


# ---------------------------------------------------------------------------------------------
# Replies


class Reply:
    """A response whose body is still to be read; closing it closes its connection."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, url: str) -> None:
        self._conn = conn
        self.response = response
        self.status = response.status
        self.url = url

    def header(self, name: str, default: str = "") -> str:
        return self.response.getheader(name, default) or default

    def readinto(self, buffer: memoryview, /) -> int:
        return self.response.readinto(buffer)

    def read_limited(self, limit: int, what: str) -> bytes:
        data = self.response.read(limit + 1)
        if len(data) > limit:
            raise RegistryError(f"{what} is larger than {limit} bytes")
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            self.response.close()
        self._conn.close()

    def abort(self) -> None:
        """From another thread: wake a read waiting on the network (it then fails)."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_text(reply: Reply) -> str:
    """The registry's own words for a failure (its JSON `errors`), or the HTTP reason."""
    try:
        body = json.loads(reply.response.read(MAX_ERROR_BODY))
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            text = str(first.get("message") or first.get("code") or "")
            if text:
                return f"{text} ({first.get('code', reply.status)})"
    except (ValueError, OSError, http.client.HTTPException):
        pass
    return f"HTTP {reply.status} {reply.response.reason}"


# ---------------------------------------------------------------------------------------------
# The session with one registry


class Session:
    """Talks to one registry for one operation: scheme found once, credentials and token kept."""

    def __init__(self, registry: str, *, insecure: bool = False, credentials: tuple[str, str] | None = None,
                 scopes: Iterable[str] = ()) -> None:
        from machinectl_py.images.reference import DOCKER_HUB, DOCKER_HUB_API

        self.registry = registry
        self.netloc = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.insecure = insecure
        self.credentials = credentials
        self.scopes = set(scopes)
        self.scheme = "https"
        self._context = tls_context(registry, verify=not insecure)
        self._auth: str | None = None  # the Authorization header to send
        self._lock = threading.Lock()
        self._pinged = False

    # Connections ---------------------------------------------------------------------------
    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            context = self._context if netloc == self.netloc else ssl.create_default_context()
            return http.client.HTTPSConnection(netloc, timeout=TIMEOUT, context=context)
        return http.client.HTTPConnection(netloc, timeout=TIMEOUT)

    def _url(self, path: str) -> str:
        return path if "://" in path else f"{self.scheme}://{self.netloc}{path}"

    def _once(self, method: str, url: str, headers: Mapping[str, str], body: Any) -> Reply:
        parts = urllib.parse.urlsplit(url)
        conn = self._connect(parts.scheme, parts.netloc)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target or "/", body=body, headers=dict(headers),
                         encode_chunked=body is not None and not isinstance(body, (bytes, bytearray)))
            return Reply(conn, conn.getresponse(), url)
        except BaseException:
            conn.close()
            raise

    def _with_retries(self, method: str, url: str, headers: Mapping[str, str], body: Any, retry: bool) -> Reply:
        attempt = 0
        while True:
            try:
                reply = self._once(method, url, headers, body)
            except ssl.SSLError as e:
                why = "it answered without TLS (a plain HTTP registry?)" if e.reason == "WRONG_VERSION_NUMBER" \
                    else (e.reason or str(e))
                raise RegistryError(f"TLS with {self.registry} failed: {why}", hint=_tls_hint(self.registry)) from None
            except (OSError, http.client.HTTPException) as e:
                # A name that does not resolve is not retried: the resolver has tried (and waited) already.
                if not retry or attempt >= RETRIES or isinstance(e, socket.gaierror):
                    raise RegistryError(f"cannot reach {self.registry}: {_reason(e)}") from None
            else:
                if reply.status not in TRANSIENT_STATUS or not retry or attempt >= RETRIES:
                    return reply
                reply.close()
            time.sleep(min(BACKOFF * 2 ** attempt, 8.0))
            attempt += 1

    # Requests ------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                body: Any = None, retry: bool = True, ok: tuple[int, ...] = (200,)) -> Reply:
        """Send with the current authorisation; answer a 401 challenge once; follow redirects.
        Returns a reply with an `ok` status (or 404 raised as NotFound, anything else RegistryError)."""
        self.ping()
        url = self._url(path)
        for _ in range(MAX_REDIRECTS + 1):
            reply = self._authorised(method, url, headers or {}, body, retry)
            if reply.status in (301, 302, 303, 307, 308) and reply.header("Location"):
                location = urllib.parse.urljoin(url, reply.header("Location"))
                reply.close()
                if urllib.parse.urlsplit(location).netloc != self.netloc:
                    return self._redirected(method, location, headers or {}, ok)
                url = location
                continue
            return self._check(reply, ok, method, path)
        raise RegistryError(f"{self.registry}: too many redirects for {path}")

    def _redirected(self, method: str, url: str, headers: Mapping[str, str], ok: tuple[int, ...]) -> Reply:
        """A blob served from elsewhere (a CDN): no credentials of ours go there."""
        for _ in range(MAX_REDIRECTS):
            reply = self._with_retries(method, url, {k: v for k, v in headers.items()
                                                    if k.lower() != "authorization"}, None, True)
            if reply.status in (301, 302, 303, 307, 308) and reply.header("Location"):
                url = urllib.parse.urljoin(url, reply.header("Location"))
                reply.close()
                continue
            return self._check(reply, ok, method, url)
        raise RegistryError(f"{self.registry}: too many redirects for {url}")

    def _authorised(self, method: str, url: str, headers: Mapping[str, str], body: Any, retry: bool) -> Reply:
        sent = self._auth
        reply = self._with_retries(method, url, self._headers(headers), body, retry)
        if reply.status != 401:
            return reply
        challenge = reply.header("WWW-Authenticate")
        reply.close()
        with self._lock:
            if self._auth == sent:  # another thread may have authenticated meanwhile
                self._authenticate(challenge)
        if body is not None and not isinstance(body, (bytes, bytearray)):
            raise RegistryError(f"{self.registry} asked for authentication in the middle of an upload")
        reply = self._with_retries(method, url, self._headers(headers), body, retry)
        if reply.status == 401:
            reply.close()
            raise self._auth_failed()
        return reply

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, **extra}
        if self._auth:
            headers["Authorization"] = self._auth
        return headers

    def _check(self, reply: Reply, ok: tuple[int, ...], method: str, what: str) -> Reply:
        if reply.status in ok:
            return reply
        try:
            text = error_text(reply)
        finally:
            reply.close()
        if reply.status == 404:
            raise NotFound(f"{self.registry}: {text}")
        if reply.status == 403:
            raise AuthError(f"{self.registry} denied access: {text}")
        raise RegistryError(f"{self.registry}: {method} {what} failed: {text}")

    def ping(self) -> None:
        """GET /v2/ once: finds the scheme (an insecure registry may be plain HTTP) and the
        authentication the registry wants, before the first real request."""
        if self._pinged:
            return
        with self._lock:
            if self._pinged:
                return
            reply = self._ping_scheme()
            try:
                if reply.status == 401:
                    self._authenticate(reply.header("WWW-Authenticate"))
                elif reply.status not in (200, 404):
                    raise RegistryError(f"{self.registry} is not a registry (GET /v2/: {error_text(reply)})")
            finally:
                reply.close()
            self._pinged = True

    def _ping_scheme(self) -> Reply:
        try:
            return self._with_retries("GET", f"https://{self.netloc}/v2/", self._headers({}), None, True)
        except RegistryError:
            if not self.insecure:
                raise
        self.scheme = "http"
        return self._with_retries("GET", f"http://{self.netloc}/v2/", self._headers({}), None, True)

    # Authentication ------------------------------------------------------------------------
    def _auth_failed(self) -> AuthError:
        if self.credentials is None:
            return AuthError(f"{self.registry} requires authentication",
                             hint=f"log in first: pymachine login {self.registry}")
        return AuthError(f"authentication to {self.registry} failed: wrong user name or password",
                         hint=f"log in again: pymachine login {self.registry}")

    def _authenticate(self, header: str) -> None:
        challenges = dict(parse_challenges(header))
        if "bearer" in challenges:
            self._auth = "Bearer " + self._token(challenges["bearer"])
        elif "basic" in challenges:
            if self.credentials is None:
                raise self._auth_failed()
            self._auth = basic_header(*self.credentials)
        else:
            raise RegistryError(f"{self.registry} asks for an unsupported authentication: {header or 'none'}")

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm or urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"{self.registry} sent a bearer challenge without a valid realm")
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        scopes = set(self.scopes)
        if params.get("scope"):
            scopes.update(params["scope"].split(" "))
        query += [("scope", s) for s in sorted(scopes)]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": USER_AGENT}
        if self.credentials is not None:
            headers["Authorization"] = basic_header(*self.credentials)
        reply = self._with_retries("GET", url, headers, None, True)
        with reply:
            if reply.status == 401:
                raise self._auth_failed()
            if reply.status != 200:
                raise AuthError(f"{self.registry}: the token service refused: {error_text(reply)}")
            try:
                answer = json.loads(reply.read_limited(1 << 20, "the token"))
            except ValueError:
                raise RegistryError(f"{self.registry}: the token service sent invalid JSON") from None
        token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.registry}: the token service sent no token")
        return token

    def check_login(self) -> None:
        """For `login`: the credentials are accepted (GET /v2/ with them answers 200)."""
        self.ping()
        reply = self._authorised("GET", self._url("/v2/"), {}, None, True)
        with reply:
            if reply.status != 200:
                raise RegistryError(f"{self.registry}: GET /v2/ failed: {error_text(reply)}")
        if self._auth is None and self.credentials is not None:
            return  # an open registry: the credentials are stored for when it asks


def _reason(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _tls_hint(registry: str) -> str:
    from machinectl_py import paths

    return (f"trust its CA with {paths.config_path('certs.d', registry, 'ca.crt')}, or, for a registry you "
            "trust over an unverified connection, use --tls-verify=false")

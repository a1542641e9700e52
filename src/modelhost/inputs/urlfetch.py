"""Download an image a client names by URL without letting the URL reach our own network (SSRF).

The guard sits where sockets are opened, not on the URL text. A custom httpcore network backend
resolves each host once, vets every answer and connects to a vetted address itself, so the
address checked is the address connected to: DNS rebinding, odd literal forms (``2130706433``,
``0x7f.1``, ``[::ffff:127.0.0.1]``) and every redirect hop pass the same gate. The URL keeps its
host name, so the Host header, TLS SNI and the certificate check all use the name, and the
connection pool keys connections by name (a TLS session verified for one name is never reused
for another name that happens to share an IP, as it would be with IP-rewritten URLs).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import httpcore
import httpx

from ..errors import InvalidInput, Timeout, TooLarge

IPAddress = IPv4Address | IPv6Address
AddressPolicy = Callable[[str, IPAddress], bool]
"""Decides whether ``host`` (as written in the URL) may be reached at the resolved ``ip``."""

MAX_URL_LENGTH = 2048
_SCHEMES = ("http", "https")
_IMAGE_HEADERS = {
    "Accept": "image/*, application/octet-stream;q=0.5",
    # We count raw bytes against max_bytes; a compressed body could inflate far past it.
    "Accept-Encoding": "identity",
    "User-Agent": "modelhost-urlfetch",
}

_NAT64 = ip_network("64:ff9b::/96")
# Ranges the ipaddress flags miss (or classify differently across Python versions).
_NON_PUBLIC = tuple(
    ip_network(net)
    for net in (
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "::/96",  # deprecated IPv4-compatible IPv6
        "64:ff9b:1::/48",  # local-use NAT64
        "fc00::/7",  # unique local
        "fec0::/10",  # deprecated site-local
    )
)


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address routes to (mapped, NAT64, 6to4), if it embeds one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip.sixtofour


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses; embedded IPv4 is judged as IPv4."""
    if isinstance(ip, IPv6Address) and (inner := embedded_ipv4(ip)) is not None:
        return is_public_address(inner)
    if any(ip in net for net in _NON_PUBLIC):
        return False
    flagged = (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )
    return ip.is_global and not flagged


def _public_only(host: str, ip: IPAddress) -> bool:
    return is_public_address(ip)


def _any_address(host: str, ip: IPAddress) -> bool:
    return True


class UrlFetcher:
    """Fetches image bytes by URL under the SSRF, size, type, redirect and time guards.

    ``address_policy`` replaces the allow_private choice; it exists so tests can let exactly one
    local host through (to check that a redirect from it to another local host is refused).
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        max_bytes: int = 20 * 2**20,
        timeout: float = 10.0,
        max_redirects: int = 3,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        policy = address_policy or (_any_address if allow_private else _public_only)
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._client = httpx.AsyncClient(
            transport=_guarded_transport(_VettingBackend(policy)),
            headers=_IMAGE_HEADERS,
            timeout=None,  # one total deadline in fetch() instead of per-operation timeouts
            follow_redirects=False,  # each hop is re-checked in _follow()
            trust_env=False,  # an environment proxy would connect on our behalf, unvetted
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # no state across fetches
        )

    async def fetch(self, url: str) -> bytes:
        """The body at ``url``; one deadline covers resolving, every redirect and the body.

        Raises InvalidInput (url_not_allowed, url_fetch_failed), TooLarge (download_too_large)
        or Timeout (fetch_timeout).
        """
        target = _checked_url(url)
        try:
            async with asyncio.timeout(self._timeout):
                return await self._follow(target)
        except TimeoutError:
            raise Timeout(
                f"fetching the image from {target.host} took longer than {self._timeout:g}s",
                "fetch_timeout",
            ) from None

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def __aenter__(self) -> UrlFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _follow(self, url: httpx.URL) -> bytes:
        """Follow redirects by hand so every Location gets the URL checks and its own vetting."""
        for _ in range(self._max_redirects + 1):
            result = await self._get(url)
            if isinstance(result, bytes):
                return result
            url = result
        raise _not_allowed(f"too many redirects (more than {self._max_redirects})")

    async def _get(self, url: httpx.URL) -> bytes | httpx.URL:
        """One request: the body, or the checked URL it redirects to."""
        try:
            async with self._client.stream("GET", url) as response:
                if response.has_redirect_location:
                    return _checked_url(response.headers["location"], base=url)
                return await self._read_body(response, url.host)
        except httpx.ConnectError:
            raise _fetch_failed(url.host, "could not connect (network or TLS error)") from None
        except httpx.InvalidURL:  # httpx parses a redirect's Location before we see it
            raise _not_allowed("the redirect points to an invalid URL") from None
        except httpx.HTTPError:
            raise _fetch_failed(url.host, "the connection failed") from None

    async def _read_body(self, response: httpx.Response, host: str) -> bytes:
        """Check status and headers, then stream the body, stopping as soon as it is too big."""
        if not response.is_success:
            raise _fetch_failed(host, f"HTTP status {response.status_code}")
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (media_type.startswith("image/") or media_type == "application/octet-stream"):
            raise _fetch_failed(host, "the response is not an image")
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise _fetch_failed(host, "the response is compressed")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_large(host)
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self._max_bytes:
                raise self._too_large(host)
        return bytes(body)

    def _too_large(self, host: str) -> TooLarge:
        return TooLarge(
            f"the image at {host} is larger than {self._max_bytes} bytes", "download_too_large"
        )


def _checked_url(url: str, base: httpx.URL | None = None) -> httpx.URL:
    """Parse ``url`` (relative to ``base`` for a redirect) and refuse what is never fetched."""
    if len(url) > MAX_URL_LENGTH:
        raise _not_allowed(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = base.join(url) if base is not None else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise _not_allowed("the URL is not valid") from None
    if len(str(parsed)) > MAX_URL_LENGTH:
        raise _not_allowed(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if parsed.scheme not in _SCHEMES:
        raise _not_allowed("only http and https URLs can be fetched")
    if parsed.userinfo:
        raise _not_allowed("URLs with a user name or password are not fetched")
    if not parsed.host:
        raise _not_allowed("the URL has no host")
    return parsed


def _not_allowed(why: str) -> InvalidInput:
    return InvalidInput(why, "url_not_allowed")


def _fetch_failed(host: str, why: str) -> InvalidInput:
    return InvalidInput(f"could not fetch the image from {host}: {why}", "url_fetch_failed")


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the OS would connect to for ``host``.

    getaddrinfo also turns the legacy IPv4 spellings (2130706433, 0177.0.0.1, 127.1, 0x7f.1)
    into the address they mean; whatever it answers is exactly what gets vetted and dialled.
    """
    loop = asyncio.get_running_loop()
    try:
        answers = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise _fetch_failed(host, "the host name does not resolve") from None
    return list(dict.fromkeys(ip_address(answer[4][0]) for answer in answers))


class _VettingBackend(httpcore.AsyncNetworkBackend):
    """Opens every connection the client makes, and only to addresses the policy approves.

    If any answer is refused the whole host is refused (a mixed answer is the usual rebinding
    trick); the vetted IPs are then dialled directly, never the name, which could resolve
    differently a second time.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve(host, port)
        if not all(self._policy(host, ip) for ip in addresses):
            raise _not_allowed(f"{host} is not a public address")
        error = httpcore.ConnectError(f"could not connect to {host}")
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise _not_allowed("unix sockets are never fetched from")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _guarded_transport(backend: httpcore.AsyncNetworkBackend) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose pool opens sockets only through ``backend``.

    httpx has no public parameter for an httpcore network backend, so the pool it built is
    swapped for an equivalent one (same TLS context and limits) using ours. The check fails
    loudly, rather than silently unguarded, if an httpx upgrade renames the attribute.
    """
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("unsupported httpx version: cannot install the URL fetch guard")
    limits = httpx.Limits()
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),  # honours SSL_CERT_FILE / SSL_CERT_DIR
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return transport

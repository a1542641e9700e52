"""The guarded URL fetcher, against real HTTP(S) servers on 127.0.0.1 running in threads.

SSRF tests point every trick at a *canary* server and assert both the error code and that the
canary never accepted a single connection: a refusal must happen before any packet is sent.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from modelhost.errors import ModelhostError
from modelhost.inputs.urlfetch import UrlFetcher, is_public_address

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # 2056 bytes; only the bytes matter here
SECRET = "/srv/modelhost/secret-body-text"


# --------------------------------------------------------------------------- local servers


class CountingServer(ThreadingHTTPServer):
    """Counts TCP connections and requests, records Host headers; ``stop`` wakes handlers."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.hosts: list[str | None] = []
        self.stop = threading.Event()

    def verify_request(self, request: object, client_address: object) -> bool:
        with self.lock:
            self.connections += 1
        return True

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet about clients that hang up (TLS refusals, size limits, timeouts)."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    @property
    def port(self) -> int:
        return self.server_address[1]


class Handler(BaseHTTPRequestHandler):
    """Routes by path; see do_GET."""

    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies
    server: CountingServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests += 1
            self.server.hosts.append(self.headers["Host"])
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        name, _, arg = url.path.strip("/").partition("/")
        try:
            self._route(name, arg, query)
        except OSError:  # the client hung up on purpose (size limit, timeout)
            self.close_connection = True

    def _route(self, name: str, arg: str, query: dict[str, str]) -> None:
        if name == "png":
            self._send(200, PNG, "image/png")
        elif name == "octet":
            self._send(200, b"\x00\x01raw", "application/octet-stream; charset=binary")
        elif name == "redirect":  # /redirect/N -> /redirect/N-1 ... -> /png (relative Locations)
            hops = int(arg)
            self._redirect(f"/redirect/{hops - 1}" if hops else "/png")
        elif name == "redirect-to":
            self._redirect(query["url"])
        elif name == "slow-redirect":  # every hop is fast enough alone, not all together
            time.sleep(0.25)
            hops = int(arg)
            self._redirect(f"/slow-redirect/{hops - 1}" if hops else "/png")
        elif name == "slow":
            self.server.stop.wait(5)
            self._send(200, PNG, "image/png")
        elif name == "html":
            self._send(200, b"<html>" + SECRET.encode() + b"</html>", "text/html")
        elif name == "gzip":
            self._send(200, PNG, "image/png", {"Content-Encoding": "gzip"})
        elif name == "sized":
            self._send(200, b"x" * int(arg), "image/png")
        elif name == "endless":
            self._endless_chunked()
        else:
            self._send(404, SECRET.encode(), "text/plain")

    def _send(self, status: int, body: bytes, media: str, extra: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _endless_chunked(self) -> None:
        """An image/png body with no Content-Length that goes on (up to 64 MiB)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"x" * 4096
        for _ in range(16384):
            self.wfile.write(b"1000\r\n" + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


def serve(ssl_context: ssl.SSLContext | None = None) -> Iterator[CountingServer]:
    server = CountingServer(("127.0.0.1", 0), Handler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def server() -> Iterator[CountingServer]:
    yield from serve()


@pytest.fixture
def canary() -> Iterator[CountingServer]:
    """A server nothing may ever reach while the guard is on."""
    yield from serve()


# --------------------------------------------------------------------------- helpers


def fetch(url: str, **options: object) -> bytes:
    async def main() -> bytes:
        async with UrlFetcher(**options) as fetcher:  # type: ignore[arg-type]
            return await fetcher.fetch(url)

    return asyncio.run(main())


def fetch_error(url: str, **options: object) -> ModelhostError:
    with pytest.raises(ModelhostError) as caught:
        fetch(url, **options)
    return caught.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LOCAL = {"allow_private": True, "timeout": 5.0}


# --------------------------------------------------------------------------- happy paths


def test_fetches_png_bytes(server: CountingServer) -> None:
    assert fetch(f"http://127.0.0.1:{server.port}/png", **LOCAL) == PNG


def test_accepts_octet_stream(server: CountingServer) -> None:
    assert fetch(f"http://127.0.0.1:{server.port}/octet", **LOCAL) == b"\x00\x01raw"


def test_follows_relative_redirects(server: CountingServer) -> None:
    """Three redirects is the default limit: 2 -> 1 -> 0 -> png."""
    assert fetch(f"http://127.0.0.1:{server.port}/redirect/2", **LOCAL) == PNG
    assert server.requests == 4


def test_follows_absolute_redirect(server: CountingServer) -> None:
    target = f"http://localhost:{server.port}/png"
    assert fetch(f"http://127.0.0.1:{server.port}/redirect-to?url={target}", **LOCAL) == PNG


@pytest.mark.parametrize(
    "host", ["localhost", "2130706433", "0177.1", "127.1", "0x7f.1", "0x7f000001"]
)
def test_odd_ipv4_spellings_mean_loopback(server: CountingServer, host: str) -> None:
    """With the guard off they reach 127.0.0.1 — the address the guard vets them as.

    (httpx itself rejects four-part octal like 0177.0.0.1 as an invalid IPv4 address.)
    """
    assert fetch(f"http://{host}:{server.port}/png", **LOCAL) == PNG


def test_one_pooled_connection_serves_several_fetches(server: CountingServer) -> None:
    async def main() -> None:
        async with UrlFetcher(**LOCAL) as fetcher:  # type: ignore[arg-type]
            for _ in range(3):
                assert await fetcher.fetch(f"http://127.0.0.1:{server.port}/png") == PNG

    asyncio.run(main())
    assert (server.connections, server.requests) == (1, 3)


def test_body_exactly_at_limit_is_fine(server: CountingServer) -> None:
    assert fetch(f"http://127.0.0.1:{server.port}/sized/1000", **LOCAL, max_bytes=1000)


# --------------------------------------------------------------------------- failures


def test_too_many_redirects(server: CountingServer) -> None:
    """/redirect/3 needs four redirects: 3 -> 2 -> 1 -> 0 -> png."""
    error = fetch_error(f"http://127.0.0.1:{server.port}/redirect/3", **LOCAL, max_redirects=3)
    assert (error.code, error.status) == ("url_not_allowed", 422)
    assert server.requests == 4  # the original request and three redirects, no fifth


def test_zero_redirects_allowed(server: CountingServer) -> None:
    error = fetch_error(f"http://127.0.0.1:{server.port}/redirect/0", **LOCAL, max_redirects=0)
    assert error.code == "url_not_allowed"


def test_404_fails_without_leaking_body(server: CountingServer) -> None:
    error = fetch_error(f"http://127.0.0.1:{server.port}/missing", **LOCAL)
    assert (error.code, error.status) == ("url_fetch_failed", 422)
    assert "404" in error.message
    assert SECRET not in error.message and "/missing" not in error.message


def test_html_is_not_an_image(server: CountingServer) -> None:
    error = fetch_error(f"http://127.0.0.1:{server.port}/html", **LOCAL)
    assert error.code == "url_fetch_failed"
    assert SECRET not in error.message


def test_compressed_body_is_refused(server: CountingServer) -> None:
    assert fetch_error(f"http://127.0.0.1:{server.port}/gzip", **LOCAL).code == "url_fetch_failed"


def test_content_length_over_limit(server: CountingServer) -> None:
    error = fetch_error(f"http://127.0.0.1:{server.port}/sized/1001", **LOCAL, max_bytes=1000)
    assert (error.code, error.status) == ("download_too_large", 413)


def test_chunked_body_over_limit_stops_reading(server: CountingServer) -> None:
    started = time.monotonic()
    error = fetch_error(f"http://127.0.0.1:{server.port}/endless", **LOCAL, max_bytes=100_000)
    assert (error.code, error.status) == ("download_too_large", 413)
    assert time.monotonic() - started < 5  # did not drain the 64 MiB body


def test_slow_server_times_out(server: CountingServer) -> None:
    started = time.monotonic()
    error = fetch_error(f"http://127.0.0.1:{server.port}/slow", allow_private=True, timeout=0.3)
    assert (error.code, error.status) == ("fetch_timeout", 504)
    assert time.monotonic() - started < 3


def test_deadline_covers_all_redirects(server: CountingServer) -> None:
    url = f"http://127.0.0.1:{server.port}/slow-redirect/3"
    error = fetch_error(url, allow_private=True, timeout=0.6)  # 4 hops x 0.25 s
    assert error.code == "fetch_timeout"


def test_connection_refused() -> None:
    error = fetch_error(f"http://127.0.0.1:{closed_port()}/png", **LOCAL)
    assert (error.code, error.status) == ("url_fetch_failed", 422)


def test_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {})
    error = fetch_error("http://images.example/cat.png", **LOCAL)
    assert error.code == "url_fetch_failed"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/x.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "data:image/png;base64,AAAA",
        "http://",
        "not a url",
        "http://127.0.0.1/" + "a" * 2048,
    ],
)
def test_unfetchable_urls(url: str) -> None:
    error = fetch_error(url, **LOCAL)
    assert (error.code, error.status) == ("url_not_allowed", 422)
    assert "/etc/passwd" not in error.message


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://u:p@x/"])
def test_redirect_to_unfetchable_url(server: CountingServer, target: str) -> None:
    url = f"http://127.0.0.1:{server.port}/redirect-to?url={target}"
    assert fetch_error(url, **LOCAL).code == "url_not_allowed"


# --------------------------------------------------------------------------- SSRF guard

SSRF_URLS = [
    "http://127.0.0.1:{port}/",
    "https://127.0.0.1:{port}/",
    "http://localhost:{port}/",
    "http://2130706433:{port}/",
    "http://0177.0.0.1:{port}/",
    "http://0177.1:{port}/",
    "http://127.1:{port}/",
    "http://0x7f.1:{port}/",
    "http://0x7f000001:{port}/",
    "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://[64:ff9b::7f00:1]:{port}/",
    "http://[2002:7f00:1::]:{port}/",
    "http://[::127.0.0.1]:{port}/",
    "http://0.0.0.0:{port}/",
    "http://0:{port}/",
    "http://169.254.169.254:{port}/latest/meta-data/",
    "http://10.0.0.1:{port}/",
    "http://172.16.0.1:{port}/",
    "http://192.168.1.1:{port}/",
    "http://100.64.0.1:{port}/",
    "http://224.0.0.1:{port}/",
    "http://[fd00::1]:{port}/",
    "http://[fec0::1]:{port}/",
    "http://[fe80::1]:{port}/",
    "http://evil.com\\@127.0.0.1:{port}/",
    "http://evil.com@127.0.0.1:{port}/",
    "http://user:pw@127.0.0.1:{port}/",
    "http://127.0.0.1:{port}@evil.com/",
]


@pytest.mark.parametrize("template", SSRF_URLS)
def test_ssrf_forms_never_reach_the_canary(canary: CountingServer, template: str) -> None:
    error = fetch_error(template.format(port=canary.port), timeout=5.0)
    assert (error.code, error.status) == ("url_not_allowed", 422)
    assert canary.connections == 0


def fake_dns(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> list[str]:
    """Make ``names`` resolve to the given addresses; other names fail, IP literals still work.

    Returns the list of names looked up, in order.
    """
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list:
        if host in names:
            lookups.append(host)
            return [
                (
                    socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (ip, port),
                )
                for ip in names[host]
            ]
        try:
            ip_address(host)
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_name_is_resolved_once_and_dialled_by_ip_with_its_host_header(
    server: CountingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = fake_dns(monkeypatch, {"images.example": ["127.0.0.1"]})
    assert fetch(f"http://images.example:{server.port}/png", **LOCAL) == PNG
    assert lookups == ["images.example"]
    assert server.hosts == [f"images.example:{server.port}"]


@pytest.mark.parametrize(
    "answers", [["127.0.0.1"], ["93.184.216.34", "127.0.0.1"], ["::ffff:127.0.0.1"]]
)
def test_public_name_resolving_to_loopback_is_refused(
    canary: CountingServer, monkeypatch: pytest.MonkeyPatch, answers: list[str]
) -> None:
    """DNS rebinding: any private answer refuses the whole host, before connecting."""
    fake_dns(monkeypatch, {"images.example": answers})
    error = fetch_error(f"http://images.example:{canary.port}/cat.png", timeout=5.0)
    assert error.code == "url_not_allowed"
    assert "images.example" in error.message
    assert canary.connections == 0


def only_host(allowed: str) -> Callable[[str, object], bool]:
    """A policy that lets exactly one host name through: stands in for a public first hop."""
    return lambda host, ip: host == allowed


@pytest.mark.parametrize(
    "target",
    [
        "http://localhost:{port}/",
        "http://2130706433:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "//localhost:{port}/",
    ],
)
def test_redirect_to_private_address_is_refused(
    server: CountingServer, canary: CountingServer, target: str
) -> None:
    first_hop = f"http://127.0.0.1:{server.port}/redirect-to?url=" + target.format(port=canary.port)
    error = fetch_error(first_hop, address_policy=only_host("127.0.0.1"), timeout=5.0)
    assert error.code == "url_not_allowed"
    assert server.requests == 1
    assert canary.connections == 0


def test_policy_hook_lets_the_first_hop_through(server: CountingServer) -> None:
    """Control for the test above: the hook alone does allow a local fetch."""
    url = f"http://127.0.0.1:{server.port}/png"
    assert fetch(url, address_policy=only_host("127.0.0.1"), timeout=5.0) == PNG


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses(address: str) -> None:
    assert is_public_address(ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.1.2.3",
        "172.31.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "::",
        "::1",
        "fe80::1",
        "fec0::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b:1::1",
        "2002:7f00:1::",
        "2002:a00:1::",
        "::127.0.0.1",
        "2001::1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ip_address(address))


# --------------------------------------------------------------------------- HTTPS


def make_cert(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for DNS name ``name`` (PEM files: cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


TLS_NAME = "images.example"


@pytest.fixture
def tls_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[CountingServer, list[str | None], Path]]:
    """An HTTPS server with a cert for images.example, which (fake) DNS points at 127.0.0.1.

    Yields the server, the SNI names it was sent and the cert file to trust.
    """
    cert_file, key_file = make_cert(tmp_path, TLS_NAME)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    seen: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: seen.append(name)
    fake_dns(monkeypatch, {TLS_NAME: ["127.0.0.1"]})
    for server in serve(context):
        yield server, seen, cert_file


def test_https_dials_the_vetted_ip_but_verifies_the_name(
    tls_server: tuple[CountingServer, list[str | None], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, seen, cert_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    assert fetch(f"https://{TLS_NAME}:{server.port}/png", **LOCAL) == PNG
    assert seen == [TLS_NAME]  # SNI carries the name although the socket went to 127.0.0.1
    assert server.hosts == [f"{TLS_NAME}:{server.port}"]


def test_https_certificate_must_match_the_url_host(
    tls_server: tuple[CountingServer, list[str | None], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _, cert_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    error = fetch_error(f"https://127.0.0.1:{server.port}/png", **LOCAL)  # cert is for the name
    assert error.code == "url_fetch_failed"
    assert server.requests == 0


def test_https_untrusted_certificate_fails(
    tls_server: tuple[CountingServer, list[str | None], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _, _ = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    error = fetch_error(f"https://{TLS_NAME}:{server.port}/png", **LOCAL)
    assert error.code == "url_fetch_failed"
    assert server.requests == 0


# --------------------------------------------------------------------------- lifecycle


def test_aclose_closes_the_client() -> None:
    async def main() -> None:
        fetcher = UrlFetcher()
        await fetcher.aclose()
        assert fetcher._client.is_closed

    asyncio.run(main())


@pytest.mark.parametrize("target", ["data:image/png;base64,iVBORw0KGgo=", "file:///etc/passwd",
                                    "gopher://127.0.0.1:70/_GET", "ftp://127.0.0.1/x.png",
                                    "javascript:alert(1)", "mailto:a@b.c", "//"])
def test_a_redirect_to_another_scheme_is_refused(server: CountingServer, target: str) -> None:
    """A Location with another scheme (or none usable) is the URL's fault: 422, never 500."""
    from urllib.parse import quote

    error = fetch_error(f"http://127.0.0.1:{server.port}/redirect-to?url={quote(target)}",
                        **LOCAL)
    assert (error.status, error.code) == (422, "url_not_allowed"), (target, error)

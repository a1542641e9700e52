"""Several modelhost instances behind nginx on 127.0.0.1, as deploy/nginx/modelhost.conf has
it: the shipped configuration with only its addresses, certificate and log paths replaced, run
by Debian's nginx in the foreground as ``nobody`` (as DEPLOY-NOTES.md does)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..postgres import _as_user, free_port

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "modelhost.conf"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the TLS side of the proxy)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def site_config(upstreams: list[int], plain: int, tls: int, cert: Path, key: Path,
                access_log: Path) -> str:
    """deploy/nginx/modelhost.conf for these ports; every other line as shipped."""
    text = SHIPPED.read_text()
    servers = re.findall(r"^    server 127\.0\.0\.1:\d+ (.*);$", text, re.M)
    assert len(set(servers)) == 1, servers  # one set of options for every instance
    lines = "".join(f"    server 127.0.0.1:{port} {servers[0]};\n" for port in upstreams)
    text = re.sub(r"(    server 127\.0\.0\.1:\d+ .*;\n)+", lines, text, count=1)
    replaced = {
        "    listen 443 ssl http2;": f"    listen 127.0.0.1:{tls} ssl http2;\n"
                                    f"    listen 127.0.0.1:{plain};",
        "/etc/modelhost/tls/fullchain.pem": str(cert),
        "/etc/modelhost/tls/privkey.pem": str(key),
        "/var/log/nginx/modelhost.access.log": str(access_log),
    }
    for old, new in replaced.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@dataclass
class Nginx:
    """nginx in the foreground as nobody, its files in ``folder`` (which nobody owns)."""

    folder: Path
    upstreams: list[int]
    plain_port: int = 0
    tls_port: int = 0
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.plain_port = self.plain_port or free_port()
        self.tls_port = self.tls_port or free_port()
        self.cert, key = self_signed(self.folder)
        (self.folder / "temp").mkdir(exist_ok=True)
        site = site_config(self.upstreams, self.plain_port, self.tls_port, self.cert, key,
                           self.folder / "access.log")
        (self.folder / "nginx.conf").write_text(f"""daemon off;
worker_processes 1;
pid {self.folder}/nginx.pid;
error_log {self.folder}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {self.folder}/temp/body;
    proxy_temp_path {self.folder}/temp/proxy;
    fastcgi_temp_path {self.folder}/temp/fastcgi;
    uwsgi_temp_path {self.folder}/temp/uwsgi;
    scgi_temp_path {self.folder}/temp/scgi;
{site}
}}
""")
        if os.geteuid() == 0:
            for path in [self.folder, *self.folder.rglob("*")]:
                shutil.chown(path, "nobody", "nogroup")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.plain_port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*_as_user(), shutil.which("nginx") or "/usr/sbin/nginx", "-e",
             str(self.folder / "error.log"), "-c", str(self.folder / "nginx.conf"),
             "-p", str(self.folder)], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{self.url}/healthz", timeout=1)
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"nginx did not start: {self.error_log()}")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGQUIT)  # graceful: finish open requests
        return self.process.wait(20)

    def error_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.folder / "error.log").read_text()
        return ""

    def access_log(self) -> list[str]:
        return (self.folder / "access.log").read_text().splitlines()


def retried(access_log: list[str]) -> int:
    """Requests nginx sent to more than one instance (``ustatus=502, 200``)."""
    return sum(1 for line in access_log if re.search(r"ustatus=[^ ]+, ", line))


def nobody_folder(prefix: str) -> Path:
    """A folder under /tmp that nobody can use (pytest's tmp_path is root's alone)."""
    return Path(tempfile.mkdtemp(prefix=prefix))

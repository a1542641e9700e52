"""Named API keys: the keys file, new secrets, and constant-time verification.

The file holds one key per line, ``NAME sha256:HEX``; ``#`` starts a comment. Only the SHA-256
of each secret is stored. That is enough because every secret is generated here with 256 bits
from :mod:`secrets`: nothing about it can be guessed, so a slow password hash (scrypt) would only
add milliseconds to every request without making a stolen file any less useless.

Verification hashes the presented secret once and compares it with *every* stored hash using
:func:`hmac.compare_digest`, so neither the match nor its position leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..settings import ConfigError

PREFIX = "mh_"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LINE = re.compile(r"(?P<name>\S+)\s+sha256:(?P<digest>[0-9a-f]{64})")
MAX_SECRET_LENGTH = 256


class KeysFileError(ConfigError):
    """The keys file is missing or malformed (start-up stops with this one line)."""


@dataclass(frozen=True)
class KeyRing:
    """The named keys a server accepts: ``(name, sha256 digest)`` pairs."""

    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def load(cls, path: Path, allow_empty: bool = False) -> KeyRing:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeysFileError(f"cannot read the API keys file {path}: {exc}") from None
        entries: list[tuple[str, bytes]] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = _LINE.fullmatch(line)
            if not match or not _NAME.fullmatch(match["name"]):
                raise KeysFileError(f"{path}:{number}: expected 'NAME sha256:<64 hex digits>'")
            if any(name == match["name"] for name, _ in entries):
                raise KeysFileError(f"{path}:{number}: key name {match['name']!r} repeated")
            entries.append((match["name"], bytes.fromhex(match["digest"])))
        if not entries and not allow_empty:
            raise KeysFileError(f"the API keys file {path} holds no keys")
        return cls(tuple(entries))

    def verify(self, secret: str) -> str | None:
        """The name of the key ``secret`` belongs to, or None; constant time over all keys."""
        if not secret or len(secret) > MAX_SECRET_LENGTH:
            return None
        digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        found = None
        for name, stored in self.entries:
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        return found


def presented_secret(headers: Iterable[tuple[str, str]]) -> str | None:
    """The secret a client sent: ``authorization: Bearer <key>`` (preferred) or
    ``x-api-key: <key>``. ``headers`` are (lower-case name, value) pairs: HTTP headers or gRPC
    call metadata, so both ports read a key the same way."""
    api_key = None
    for name, value in headers:
        if name == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == "x-api-key":
            api_key = value.strip() or None
    return api_key


def new_secret() -> str:
    """A fresh secret: 256 random bits, URL-safe, recognisable by its prefix."""
    return PREFIX + secrets.token_urlsafe(32)


def add_key(path: Path, name: str) -> str:
    """Append a new key called ``name`` to ``path`` (created 0600) and return its secret,
    which is shown once and stored nowhere."""
    if not _NAME.fullmatch(name):
        raise KeysFileError("a key name is 1–64 letters, digits, '_', '.' or '-'")
    if path.exists() and any(n == name for n, _ in KeyRing.load(path, allow_empty=True).entries):
        raise KeysFileError(f"a key named {name!r} already exists in {path}")
    secret = new_secret()
    digest = hashlib.sha256(secret.encode()).hexdigest()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(f"{name} sha256:{digest}\n")
    return secret

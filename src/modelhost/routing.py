"""Which served version of a model answers a request.

A model folder with numbered versions serves the ones its ``[versions]`` section names
(``serve = "latest" | "all" | ["1", "3"] | "latest:2"``). A request may name a version
(``/versions/2``) or a label (``/labels/canary``; ``latest`` is always the highest served);
one that names neither goes to the ``default`` version, or, with ``split = {"1" = 90, "2" = 10}``,
to a version drawn by weight — the same version for the same client when ``sticky = true``, so
that one user's feedback stays about one version. :func:`policy_of` reads and checks the
section once (start-up errors name the key); :func:`choose` is called by the registry for every
request, whatever its protocol, so the choice is made in one place.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from .types import VersionPolicy

LATEST = "latest"
KEYS = ("serve", "default", "split", "sticky", "shadow", "replicas")
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


class PolicyError(ValueError):
    """A ``[versions]`` value that cannot be served; the message names the key."""


def policy_of(table: dict[str, Any], available: list[str]) -> tuple[VersionPolicy,
                                                                       dict[str, int]]:
    """The policy of a ``[versions]`` table for a folder holding ``available`` versions
    (numerically sorted), and the per-version ``replicas`` it sets."""
    served = _served(table.get("serve", LATEST), available)
    default = _version(table.get("default", served[-1]), served, "default")
    labels = tuple((key, _version(value, served, key)) for key, value in table.items()
                   if key not in KEYS and _label_name(key))
    policy = VersionPolicy(
        served=served, default=default, labels=labels,
        split=split_of(table.get("split", {}), served),
        sticky=_flag(table.get("sticky", False), "sticky"),
        shadow=_shadow(table.get("shadow"), served, default),
    )
    return policy, _replicas(table.get("replicas", {}), served)


def choose(policy: VersionPolicy, client: str | None) -> str:
    """The version for a request that named none: drawn from the split (a client's own fixed
    point when sticky), else the default version."""
    if not policy.split:
        return policy.default
    point = _point(client) if policy.sticky and client else random.random()
    total = 0
    for version, weight in policy.split:
        total += weight
        if point * 100 < total:
            return version
    return policy.split[-1][0]


def labelled(policy: VersionPolicy, label: str) -> str | None:
    """The version a label names (``latest``: the highest served); None for an unknown label."""
    if label == LATEST:
        return policy.served[-1]
    return dict(policy.labels).get(label)


def split_of(value: Any, served: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``{"1": 90, "2": 10}`` checked: served versions, whole weights summing to 100."""
    if not isinstance(value, dict):
        raise PolicyError(f'split = {value!r}: expected a table such as {{"1" = 90, "2" = 10}}')
    for version, weight in value.items():
        _version(version, served, "split")
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise PolicyError(f"split.{version} = {weight!r}: expected a whole weight ≥ 0")
    if value and sum(value.values()) != 100:
        raise PolicyError(f"split = {value!r}: the weights add up to {sum(value.values())}, "
                          "not 100")
    return tuple(sorted(((str(v), w) for v, w in value.items() if w), key=lambda p: int(p[0])))


def _served(value: Any, available: list[str]) -> tuple[str, ...]:
    if value == "all":
        return tuple(available)
    if isinstance(value, str) and (value == LATEST or value.startswith(LATEST + ":")):
        count = value.partition(":")[2] or "1"
        if not count.isdigit() or int(count) < 1:
            raise PolicyError(f'serve = {value!r}: expected "latest:N" with N ≥ 1')
        return tuple(available[-int(count):])
    if isinstance(value, list) and value:
        versions = {_version(v, tuple(available), "serve") for v in value}
        return tuple(sorted(versions, key=int))
    raise PolicyError(f'serve = {value!r}: expected "latest", "all", "latest:N" or a list of '
                      'versions such as ["1", "3"]')


def _version(value: Any, served: tuple[str, ...], key: str) -> str:
    """``value`` as a version string that is one of ``served``."""
    version = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if version not in served:
        what = "version folders" if key == "serve" else "served versions"
        raise PolicyError(f"{key} = {value!r}: not one of the {what} {list(served)}")
    return version


def _label_name(key: str) -> bool:
    if key == LATEST or not _LABEL.fullmatch(key):
        raise PolicyError(f"{key!r}: not a label name (letters, digits, _ and -, starting "
                          f"with a letter; {LATEST!r} is built in) nor one of {list(KEYS)}")
    return True


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{key} = {value!r}: expected true or false")
    return value


def _shadow(value: Any, served: tuple[str, ...], default: str) -> str | None:
    if value is None:
        return None
    version = _version(value, served, "shadow")
    if version == default:
        raise PolicyError(f"shadow = {value!r}: the default version cannot shadow itself")
    return version


def _replicas(value: Any, served: tuple[str, ...]) -> dict[str, int]:
    if not isinstance(value, dict):
        raise PolicyError(f'replicas = {value!r}: expected a table such as {{"2" = 1}}')
    for version, count in value.items():
        _version(version, served, "replicas")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise PolicyError(f"replicas.{version} = {count!r}: expected at least 1")
    return {str(v): c for v, c in value.items()}


def _point(client: str) -> float:
    """A client's fixed point in [0, 1): the same in every process and after restarts."""
    digest = hashlib.blake2b(client.encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


# -- changes at run time (PUT /api/models/{m}/routing, `modelhost route`) ------------------------

CHANGE_KEYS = ("default", "split", "sticky", "shadow")


def changed(policy: VersionPolicy, change: dict[str, Any]) -> VersionPolicy:
    """``policy`` with the keys of ``change`` (any of :data:`CHANGE_KEYS`; ``split`` ``{}`` or
    ``shadow`` ``null`` turn them off), checked as start-up checks ``[versions]``."""
    unknown = set(change) - set(CHANGE_KEYS)
    if unknown or not change:
        raise PolicyError(f"change one or more of {list(CHANGE_KEYS)}, or send "
                          '{"promote": VERSION} or {"rollback": true}'
                          + (f"; unknown: {sorted(unknown)}" if unknown else ""))
    served = policy.served
    default = (_version(change["default"], served, "default") if "default" in change
               else policy.default)
    split = (split_of(change["split"] or {}, served) if "split" in change else policy.split)
    shadow = (_shadow(change["shadow"], served, default) if "shadow" in change
              else _shadow(policy.shadow, served, default))
    sticky = _flag(change["sticky"], "sticky") if "sticky" in change else policy.sticky
    return VersionPolicy(served=served, default=default, labels=policy.labels, split=split,
                         sticky=sticky, shadow=shadow)


def promoted(policy: VersionPolicy, version: Any) -> VersionPolicy:
    """Every request that names no version to ``version`` from now on: the default, no split,
    no shadow of itself."""
    target = _version(version, policy.served, "promote")
    return VersionPolicy(served=policy.served, default=target, labels=policy.labels,
                         sticky=policy.sticky,
                         shadow=None if policy.shadow == target else policy.shadow)


def as_json(policy: VersionPolicy) -> dict[str, Any]:
    """A routing policy as JSON: the default version, labels, split, stickiness, shadow."""
    return {"default": policy.default, "labels": dict(policy.labels),
            "split": dict(policy.split), "sticky": policy.sticky, "shadow": policy.shadow}

"""SRV discovery: ``postgresql+srv://`` and ``aws+srv://`` URLs become libpq multi-host URLs.

``postgresql+srv://user:pw@svc.example.com/db`` looks up ``_svc._postgresql.example.com``;
``aws+srv://user@name.example.com/db`` looks up ``name.example.com`` itself. Records are
ordered by priority (ascending) then weight (descending), the order libpq tries hosts in.
Needs the ``srv`` extra (aiodns); the lookup never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, SettingsError

__all__ = ["SRV_SCHEMES", "SrvRecord", "SrvResolver", "is_srv_url", "srv_query_name", "srv_to_url"]

#: ``+srv`` schemes pgpool understands.
SRV_SCHEMES = ("postgresql+srv", "postgres+srv", "aws+srv")


@dataclass(frozen=True)
class SrvRecord:
    """One SRV record: ``target:port``, tried by ``priority`` (lowest first), then by
    ``weight`` (highest first).

    .. versionadded:: 0.1
    """

    priority: int
    weight: int
    port: int
    target: str


def is_srv_url(url: str) -> bool:
    return url.split("://", 1)[0].lower().endswith("+srv") if "://" in url else False


def _split(url: str) -> tuple[str, urllib.parse.SplitResult]:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SRV_SCHEMES:
        raise SettingsError(
            f"url: unsupported SRV scheme {scheme!r}; expected one of {', '.join(SRV_SCHEMES)}"
        )
    try:
        parts = urllib.parse.urlsplit("postgresql://" + url.split("://", 1)[1])
        port = parts.port
    except ValueError:
        raise SettingsError(f"url: {scheme}:// URL is malformed") from None
    if "," in parts.netloc.rpartition("@")[2] or port is not None:
        raise SettingsError(f"url: a {scheme}:// URL names one host and no port")
    if not parts.hostname:
        raise SettingsError(f"url: a {scheme}:// URL needs a host name to look up")
    return scheme, parts


def srv_query_name(url: str) -> str:
    """The DNS name to query for an SRV URL.

    :raises SettingsError: not a supported ``+srv`` URL.
    """
    scheme, parts = _split(url)
    host = (parts.hostname or "").rstrip(".")
    if scheme == "aws+srv":
        return host
    service, dot, domain = host.partition(".")
    if not dot or not domain:
        raise SettingsError(f"url: {scheme}:// needs <service>.<domain> as its host, got {host!r}")
    return f"_{service}._postgresql.{domain}"


def srv_to_url(url: str, records: Sequence[SrvRecord]) -> str:
    """The libpq multi-host ``postgresql://`` URL for ``url`` and its SRV records.

    :raises ConfigurationError: no records.
    """
    _, parts = _split(url)
    if not records:
        raise ConfigurationError(f"SRV lookup of {srv_query_name(url)} returned no records")
    ordered = sorted(records, key=lambda r: (r.priority, -r.weight))
    hosts = ",".join(f"{_host(r.target)}:{r.port}" for r in ordered)
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}{at}{hosts}"
    return urllib.parse.urlunsplit(("postgresql", netloc, parts.path, parts.query, ""))


def _host(target: str) -> str:
    target = target.rstrip(".")
    return f"[{target}]" if ":" in target else target


class SrvResolver:
    """Looks up SRV records with aiodns.

    :param nameservers: ``"ip"`` or ``"ip:port"`` entries; default: the system's.
    :param timeout: seconds per lookup.

    .. versionadded:: 0.1
    """

    def __init__(self, nameservers: Sequence[str] | None = None, timeout: float = 5.0) -> None:
        self.nameservers = list(nameservers or [])
        self.timeout = timeout

    async def resolve(self, name: str) -> list[SrvRecord]:
        """SRV records of ``name``.

        :raises ConfigurationError: the name has no SRV records, or aiodns is missing.
        :raises OSError: the lookup failed for another reason (DNS unreachable...).
        """
        try:
            import aiodns
            import pycares
        except ImportError:  # pragma: no cover - the srv extra is part of the test install
            raise ConfigurationError(
                "SRV URLs need the 'srv' extra (pip install 'pgpool[srv]')"
            ) from None
        kwargs: dict[str, Any] = {"timeout": self.timeout, "tries": 1}
        if self.nameservers:
            kwargs["nameservers"] = self.nameservers
        resolver = aiodns.DNSResolver(**kwargs)
        try:
            result = await asyncio.wait_for(resolver.query_dns(name, "SRV"), self.timeout + 1)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            if code in (aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENODATA):
                raise ConfigurationError(f"SRV lookup of {name} returned no records") from None
            reason = exc.args[-1] if exc.args else exc
            raise OSError(f"SRV lookup of {name} failed: {reason}") from None
        finally:
            await resolver.close()
        return [
            SrvRecord(r.data.priority, r.data.weight, r.data.port, r.data.target)
            for r in result.answer
            if isinstance(r.data, pycares.SRVRecordData)
        ]

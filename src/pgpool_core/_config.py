"""Typed pool settings: defaults, parsing from mappings and the environment, validation.

Precedence, highest first: explicit keyword arguments, a mapping with ``postgres_*`` keys
(e.g. Tornado application settings), ``POSTGRES_*`` environment variables, defaults.
The URL is read, checked and redacted by :mod:`pgpool_core._redact` (libpq's reading).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ._logs import fields, logger
from ._redact import redact_dsn, validate_url
from .errors import SettingsError

__all__ = ["PoolOptions", "PoolSettings", "redact_dsn"]

# field -> (mapping keys, environment variables), first match wins within a source.
# The sprockets-postgres names come first; new fields follow the postgres_<field> rule.
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "url": (("postgres_url",), ("POSTGRES_URL",)),
    "min_size": (("postgres_min_pool_size",), ("POSTGRES_MIN_POOL_SIZE",)),
    "max_size": (("postgres_max_pool_size",), ("POSTGRES_MAX_POOL_SIZE",)),
    "connect_timeout": (
        ("postgres_connection_timeout", "postgres_connect_timeout"),
        ("POSTGRES_CONNECTION_TIMEOUT", "POSTGRES_CONNECT_TIMEOUT"),
    ),
    "acquire_timeout": (("postgres_acquire_timeout",), ("POSTGRES_ACQUIRE_TIMEOUT",)),
    "query_timeout": (("postgres_query_timeout",), ("POSTGRES_QUERY_TIMEOUT",)),
    "max_lifetime": (
        ("postgres_connection_ttl", "postgres_max_lifetime"),
        ("POSTGRES_CONNECTION_TTL", "POSTGRES_MAX_LIFETIME"),
    ),
    "max_idle": (("postgres_max_idle",), ("POSTGRES_MAX_IDLE",)),
    "max_waiting": (("postgres_max_waiting",), ("POSTGRES_MAX_WAITING",)),
    "cancel_timeout": (("postgres_cancel_timeout",), ("POSTGRES_CANCEL_TIMEOUT",)),
    "validate_idle_after": (
        ("postgres_validate_idle_after",),
        ("POSTGRES_VALIDATE_IDLE_AFTER",),
    ),
    "leak_detection_threshold": (
        ("postgres_leak_detection_threshold",),
        ("POSTGRES_LEAK_DETECTION_THRESHOLD",),
    ),
    "pgbouncer": (("postgres_pgbouncer",), ("POSTGRES_PGBOUNCER",)),
    "resolve_commits": (("postgres_resolve_commits",), ("POSTGRES_RESOLVE_COMMITS",)),
    "enable_hstore": (("postgres_hstore",), ("POSTGRES_HSTORE",)),
    "enable_json": (("postgres_json",), ("POSTGRES_JSON",)),
    "enable_uuid": (("postgres_uuid",), ("POSTGRES_UUID",)),
    "application_name": (("postgres_application_name",), ("POSTGRES_APPLICATION_NAME",)),
    "read_url": (("postgres_read_url",), ("POSTGRES_READ_URL",)),
    "max_replica_lag": (("postgres_max_replica_lag",), ("POSTGRES_MAX_REPLICA_LAG",)),
    "read_fallback": (("postgres_read_fallback",), ("POSTGRES_READ_FALLBACK",)),
    "reset": (("postgres_reset",), ("POSTGRES_RESET",)),
}

#: ``reset`` policies by name (else a callable).
RESET_POLICIES = ("none", "rollback", "discard")

#: What a returned connection runs with ``reset="discard"``: ``DISCARD ALL``; behind
#: PgBouncer, everything ``DISCARD ALL`` does but ``DEALLOCATE ALL`` (PgBouncer tracks
#: the prepared statements of its server connections itself).
DISCARD_ALL = "DISCARD ALL"
DISCARD_PGBOUNCER = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *;"
    " SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
)

#: A ``reset`` callable: ``await reset(connector)`` on a returned connection, before reuse.
ResetHook = Callable[[Any], Awaitable[object]]

_MAPPING_KEYS = frozenset(key for keys, _ in _KEYS.values() for key in keys)
_ENV_NAMES = frozenset(name for _, names in _KEYS.values() for name in names)
#: Unknown keys already warned about (once per process each).
_WARNED: set[str] = set()

LOGGER = logger("settings")

_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


def _parse_bool(key: str, source: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return True
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise SettingsError(
        f"{key} from {source}: expected a boolean (true/false/1/0/yes/no/on/off), got {value!r}"
    )


def _parse_float(key: str, source: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SettingsError(f"{key} from {source}: expected seconds as a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise SettingsError(
            f"{key} from {source}: expected seconds as a number, got {value!r}"
        ) from None
    if not math.isfinite(number):
        raise SettingsError(
            f"{key} from {source}: expected a finite number of seconds, got {value!r}"
        )
    return number


def _parse_int(key: str, source: str, value: Any) -> int:
    if isinstance(value, bool):
        raise SettingsError(f"{key} from {source}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise SettingsError(f"{key} from {source}: expected an integer, got {value!r}")


#: Where one string of URLs is cut: whitespace or a comma before the next URL's scheme
#: (a multi-host URL's commas are followed by a host, never by ``scheme://``).
_URL_SEPARATOR = re.compile(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.\-]*://)")


def _parse_urls(key: str, source: str, value: Any) -> tuple[str, ...]:
    """One URL or several: a sequence of strings, or one string holding several URLs,
    separated by whitespace or commas (a key=value DSN is always one, and last)."""
    if isinstance(value, str):
        return tuple(part for part in _URL_SEPARATOR.split(value.strip()) if part)
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return tuple(item for item in value if item.strip())
    raise SettingsError(
        f"{key} from {source}: expected a URL or a list of URLs, got {type(value).__name__}"
    )


def _parse_reset(source: str, value: Any) -> str | ResetHook:
    if callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str) and value.strip().lower() in RESET_POLICIES:
        return value.strip().lower()
    raise SettingsError(
        f"reset from {source}: expected one of {', '.join(RESET_POLICIES)} or an async"
        f" callable, got {value!r}"
    )


def _parse_str(key: str, source: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"{key} from {source}: expected a string, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class PoolSettings:
    """Everything a :class:`~pgpool_core.PoolManager` is configured with. Seconds are floats.

    :param url: libpq URL (``postgresql://user:pw@host:port/db?application_name=x``) or
        key=value DSN. Query parameters reach libpq. Required to start a pool.
    :param min_size: connections kept open, even when idle (default 1).
    :param max_size: most connections open at once (default 10).
    :param connect_timeout: bound on opening one connection (default 10 s).
    :param acquire_timeout: bound on waiting for a free connection (default 10 s).
    :param query_timeout: the bound of a call that passes no ``timeout``: one statement
        (``execute``, ``callproc``), or a whole ``transaction()`` / ``connector()`` block
        from checkout; what runs at expiry is cancelled server-side (default 120 s).
    :param max_lifetime: a connection's true age limit, jittered a few percent (default 300 s).
    :param max_idle: idle connections above ``min_size`` are closed after this (default 600 s).
    :param max_waiting: most requests waiting for a connection; 0 = unlimited (default 0).
    :param cancel_timeout: bound on a server-side cancel request (default 5 s).
    :param validate_idle_after: a connection idle at least this long is checked with a
        bounded ``SELECT 1`` before it is handed out; 0 checks every time (default 1 s).
    :param leak_detection_threshold: a connection held longer than this logs one warning
        naming its holder (metric name or call site) and counts ``leaks_detected``;
        0 turns detection off (default 0, as in HikariCP).
    :param pgbouncer: the URL points at PgBouncer in transaction pooling mode: statements
        that rely on session state (session ``SET``, ``LISTEN``, session advisory locks,
        ``PREPARE``, ``WITH HOLD`` cursors) log a warning, once per kind (default False).
    :param resolve_commits: transactions read their id with ``BEGIN`` (one message), so
        that a COMMIT whose answer is lost (connection dropped during COMMIT) is resolved
        as committed or rolled back by ``txid_status`` on another connection instead of
        raising :class:`~pgpool_core.CommitUnknownError`. Costs each transaction an id
        (even one that only reads; not one opened with ``read_only=True``, which commits
        nothing) and a round trip: that ``BEGIN`` goes on its own instead of with the
        block's first statement (default False; per transaction:
        ``transaction(resolve_commit=...)``). *New in 0.2.*
    :param enable_hstore: register the hstore adapter (needs the extension; default False).
    :param enable_json: register aiopg's json adapter (default False).
    :param enable_uuid: register the uuid adapter (default True).
    :param application_name: sets ``application_name`` unless the URL has one.
    :param read_url: replica URLs (one, or several: a list, or ``postgresql://`` URLs
        separated by whitespace or commas in one string, e.g. ``POSTGRES_READ_URL``); each
        is one reader, itself a pool of this size (multi-host and SRV URLs allowed). Reads
        asked for with ``read_only=True`` go to the least busy reader fit to serve them;
        without readers, everything goes to ``url``. *New in 0.3.*
    :param max_replica_lag: a reader whose replay lag exceeds this many seconds gets no
        reads until it catches up; 0 = no bound (default 0). *New in 0.3.*
    :param reset: what a returned connection goes through before its next borrower gets
        it, in the background: ``"rollback"`` (default: an open transaction is rolled back),
        ``"none"`` (nothing is sent; a connection returned in a transaction is closed),
        ``"discard"`` (``DISCARD ALL``: session settings, temp tables, advisory locks,
        LISTENs, prepared plans; PgBouncer-safe without ``DEALLOCATE ALL`` when
        ``pgbouncer``), or ``async def reset(connector)`` run on it. A connection whose
        reset fails is closed, never handed out. *New in 0.3.*
    :param read_fallback: when no reader is fit (down, lagging, promoted, none configured),
        reads go to ``url``; False raises :class:`~pgpool_core.PoolUnavailableError`
        naming why instead (default True). *New in 0.3.*

    .. versionadded:: 0.1
    """

    url: str = field(default="", repr=False)
    min_size: int = 1
    max_size: int = 10
    connect_timeout: float = 10.0
    acquire_timeout: float = 10.0
    query_timeout: float = 120.0
    max_lifetime: float = 300.0
    max_idle: float = 600.0
    max_waiting: int = 0
    cancel_timeout: float = 5.0
    validate_idle_after: float = 1.0
    leak_detection_threshold: float = 0.0
    pgbouncer: bool = False
    resolve_commits: bool = False
    enable_hstore: bool = False
    enable_json: bool = False
    enable_uuid: bool = True
    application_name: str | None = None
    read_url: tuple[str, ...] = field(default=(), repr=False)
    max_replica_lag: float = 0.0
    read_fallback: bool = True
    reset: str | ResetHook = "rollback"

    def __post_init__(self) -> None:
        # Coerce and validate explicit values with the same rules as the other sources.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(f.name, "arguments", value)
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self._validate()

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name not in ("url", "read_url")
        )
        if self.read_url:
            shown += f", read_url={tuple(redact_dsn(url) for url in self.read_url)!r}"
        return f"PoolSettings(url={redact_dsn(self.url)!r}, {shown})"

    def _validate(self) -> None:
        if self.min_size < 0:
            raise SettingsError(f"min_size: must be >= 0, got {self.min_size}")
        if self.max_size < 1:
            raise SettingsError(f"max_size: must be >= 1, got {self.max_size}")
        if self.min_size > self.max_size:
            raise SettingsError(
                f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})"
            )
        if self.max_waiting < 0:
            raise SettingsError(
                f"max_waiting: must be >= 0 (0 = unlimited), got {self.max_waiting}"
            )
        for name in (
            "connect_timeout",
            "acquire_timeout",
            "query_timeout",
            "max_lifetime",
            "max_idle",
            "cancel_timeout",
        ):
            value = getattr(self, name)
            if value <= 0:
                raise SettingsError(f"{name}: must be > 0 seconds, got {value}")
        for name in ("validate_idle_after", "leak_detection_threshold", "max_replica_lag"):
            value = getattr(self, name)
            if value < 0:
                raise SettingsError(f"{name}: must be >= 0 seconds, got {value}")
        if self.url:
            _validate_url(self.url)
        for index, url in enumerate(self.read_url):
            try:
                _validate_url(url)
            except SettingsError as exc:  # name the setting; the reason quotes no URL text
                reason = str(exc).removeprefix("url: ")
                raise SettingsError(f"read_url[{index}]: {reason}") from None

    @property
    def maintenance_interval(self) -> float:
        """Seconds between maintenance passes: a tenth of the shorter of ``max_lifetime``
        and ``max_idle``, kept within 0.05 to 30 s."""
        return min(max(min(self.max_lifetime, self.max_idle) / 10, 0.05), 30.0)

    @property
    def redacted_url(self) -> str:
        """The URL with every password masked, safe for logs and status."""
        return redact_dsn(self.url)

    def as_dict(self) -> dict[str, Any]:
        """All settings, the URL redacted."""
        data = dataclasses.asdict(self)
        data["url"] = self.redacted_url
        data["read_url"] = [redact_dsn(url) for url in self.read_url]
        if not isinstance(self.reset, str):
            data["reset"] = getattr(self.reset, "__qualname__", type(self.reset).__name__)
        return data

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **explicit: Any) -> PoolSettings:
        """Settings from ``POSTGRES_*`` variables; explicit keyword arguments win."""
        return cls.from_mapping({}, env=env, **explicit)

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
        *,
        also_known: Iterable[str] = (),
        **explicit: Any,
    ) -> PoolSettings:
        """Settings from ``postgres_*`` keys (e.g. Tornado settings), then ``POSTGRES_*`` env.

        A ``postgres_*`` key that is no setting (nor in ``also_known``: an adapter's own
        keys) logs one warning naming the closest valid key, as does a ``POSTGRES_*``
        variable close to a setting's name (others, such as the ``POSTGRES_PASSWORD`` of
        the postgres image, are not ours to judge).

        :raises SettingsError: naming the key, its source and the bad value.
        """
        env = os.environ if env is None else env
        _warn_unknown(mapping, env, frozenset(also_known))
        unknown = set(explicit) - set(_KEYS)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, (keys, env_names) in _KEYS.items():
            if name in explicit and explicit[name] is not None:
                values[name] = _coerce(name, "arguments", explicit[name])
                continue
            found = _first(mapping, keys, "settings")
            if found is None:
                found = _first(env, env_names, "environment")
            if found is not None:
                key, source, raw = found
                values[name] = _coerce(name, f"{source} {key}", raw)
        return cls(**values)


class PoolOptions(TypedDict, total=False):
    """The keyword options of ``PoolManager(url, **options)``: every :class:`PoolSettings`
    field but ``url``, so that editors complete them and type checkers reject a misspelt
    one (``PoolManager(url, max_sise=5)`` is a type error, and a ``TypeError`` at run
    time).

    .. versionadded:: 0.2
    """

    min_size: int
    max_size: int
    connect_timeout: float
    acquire_timeout: float
    query_timeout: float
    max_lifetime: float
    max_idle: float
    max_waiting: int
    cancel_timeout: float
    validate_idle_after: float
    leak_detection_threshold: float
    pgbouncer: bool
    resolve_commits: bool
    enable_hstore: bool
    enable_json: bool
    enable_uuid: bool
    application_name: str | None
    read_url: str | tuple[str, ...] | list[str]
    max_replica_lag: float
    read_fallback: bool
    reset: str | ResetHook


def _warn_unknown(
    mapping: Mapping[str, Any], env: Mapping[str, str], extra: frozenset[str]
) -> None:
    known = _MAPPING_KEYS | extra
    for key in mapping:
        if isinstance(key, str) and key.startswith("postgres_") and key not in known:
            _warn_once(key, "setting", _closest(key, known, 0.6))
    for name in env:
        if name.startswith("POSTGRES_") and name not in _ENV_NAMES:
            close = _closest(name, _ENV_NAMES, 0.85)
            if close:
                _warn_once(name, "environment variable", close)


def _closest(key: str, known: Iterable[str], cutoff: float) -> list[str]:
    """The known key most like ``key``, judged on what follows the shared ``postgres_``."""
    by_rest = {name[len("postgres_") :]: name for name in known}
    rest = difflib.get_close_matches(key[len("postgres_") :], by_rest, n=1, cutoff=cutoff)
    return [by_rest[r] for r in rest]


def _warn_once(key: str, kind: str, close: list[str]) -> None:
    if key in _WARNED:
        return
    _WARNED.add(key)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    LOGGER.warning(
        "unknown %s %r is ignored%s", kind, key, hint, extra=fields("", "unknown_setting")
    )


def _first(
    source: Mapping[str, Any], keys: tuple[str, ...], label: str
) -> tuple[str, str, Any] | None:
    for key in keys:
        if key in source and source[key] is not None and source[key] != "":
            return key, label, source[key]
    return None


def _coerce(name: str, source: str, value: Any) -> Any:
    kind = PoolSettings.__dataclass_fields__[name].type
    if kind == "bool":
        return _parse_bool(name, source, value)
    if kind == "float":
        return _parse_float(name, source, value)
    if kind == "int":
        return _parse_int(name, source, value)
    if value is None and name == "application_name":
        return None
    if name == "read_url":
        return _parse_urls(name, source, value)
    if name == "reset":
        return _parse_reset(source, value)
    return _parse_str(name, source, value)


def _validate_url(url: str) -> None:
    """Check ``url`` as libpq reads it (see :func:`pgpool_core._redact.validate_url`)."""
    validate_url(url)

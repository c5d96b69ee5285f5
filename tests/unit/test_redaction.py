"""No fragment of a password ever leaves the pool, whatever the URL looks like.

Passwords are drawn from URL/conninfo metacharacters (``@ / : ? # & = % ' \\`` space,
control characters) and a few upper-case letters that never occur in pgpool's own output,
written percent-encoded, escaped or raw into every URL form. No substring of length >= 4
holding one of those letters may show up in any surface: settings repr and dump,
``redact_dsn``, the pool's repr, name, status and stats, every error message and its
whole exception chain, and every log record (DEBUG and up) of the ``pgpool`` loggers.
Connecting needs no network: hosts are a missing unix socket directory, or a name whose
lookup is answered with "not known" by a stubbed ``loop.getaddrinfo``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import traceback
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sprockets.http import app as sprockets_app

import pgpool_sprockets
from pgpool_core import (
    ConfigurationError,
    PoolManager,
    PoolSettings,
    PoolUnavailableError,
    SettingsError,
    redact_dsn,
)
from pgpool_core._connector import AiopgConnector
from pgpool_core._redact import passwords_in, pool_name, scrub

#: Letters pgpool never prints on its own: a fragment holding one came from the password.
MARKS = "QXZJKVW"
#: Every URL / conninfo metacharacter, and control characters (NUL too).
META = "@/:?#&=%' \\\",;+[]\t\n\r\x0b\x0c\x01\x7f\x00"
SOCKET_DIR = "/nonexistent-pgpool"  # a unix socket directory that does not exist
KV_SPACE = " \t\n\x0b\x0c\r"  # what libpq's key=value parser splits on

FORMS = (
    "userinfo",
    "userinfo-multi-host",
    "query",
    "query-first",
    "kv-quoted",
    "kv-unquoted",
    "srv",
)


@dataclasses.dataclass(frozen=True)
class Case:
    form: str
    url: str
    password: str  #: what the user meant
    written: str  #: as it appears in the URL text


def _url(form: str, written: str, *, unix: bool = False) -> str:
    host = urllib.parse.quote(SOCKET_DIR, safe="") if unix else "db.example"
    kv_host = SOCKET_DIR if unix else "db.example"
    return {
        "userinfo": f"postgresql://app:{written}@{host}:5432/main",
        "userinfo-multi-host": (
            f"postgresql://app:{written}@{host}:5432,db2.example:5433/main?target_session_attrs=any"
        ),
        "query": f"postgresql://app@{host}:5432/main?sslmode=disable&password={written}",
        "query-first": f"postgresql://app@{host}:5432/main?password={written}&sslmode=disable",
        "kv-quoted": f"host={kv_host} port=5432 user=app password='{written}' dbname=main",
        "kv-unquoted": f"host={kv_host} port=5432 user=app password={written} dbname=main",
        "srv": f"postgresql+srv://app:{written}@svc.example.com/main",
    }[form]


def _written(form: str, password: str, encode: list[bool]) -> str:
    """The password as a user may write it: each character percent-encoded (URLs) or
    escaped (key=value) or not, as ``encode`` says."""
    flags = encode + [False] * len(password)
    if form.startswith("kv-quoted"):
        special = "'\\"
    elif form.startswith("kv-"):
        special = "'\\" + KV_SPACE
    else:
        return "".join(
            urllib.parse.quote(c, safe="") if flag else c
            for c, flag in zip(password, flags, strict=False)
        )
    return "".join(
        "\\" + c if flag and c in special else c for c, flag in zip(password, flags, strict=False)
    )


passwords = st.lists(
    st.one_of(st.sampled_from(META), st.text(alphabet=MARKS, min_size=1, max_size=4)),
    min_size=1,
    max_size=12,
).map("".join)


@st.composite
def cases(draw: st.DrawFn, forms: tuple[str, ...] = FORMS, unix: bool | None = None) -> Case:
    form = draw(st.sampled_from(forms))
    password = draw(passwords)
    encode = draw(st.lists(st.booleans(), max_size=len(password)))
    written = _written(form, password, encode)
    on_unix = draw(st.booleans()) if unix is None else unix
    return Case(form, _url(form, written, unix=on_unix), password, written)


def explicit(form: str, password: str, written: str | None = None, *, unix: bool = False) -> Case:
    written = password if written is None else written
    return Case(form, _url(form, written, unix=unix), password, written)


# Every shape the hostile review (and these fuzz tests) found leaking, pinned.
LEAKS = [
    # '@' in the userinfo: libpq reads 'KVWJ@db.example' as the host (pool name, labels).
    explicit("userinfo", "QXZJ@KVWJ"),
    explicit("userinfo-multi-host", "QXZJ@KVWJ"),
    # '/' in the userinfo: libpq reads host 'app', port 'QXZJ' (quoted by the port error).
    explicit("userinfo", "QXZJ/KVWJ"),
    # ... and with a numeric head the rest becomes the database name: 'app:5432/KVWJ@...'.
    explicit("userinfo", "5432/KVWJQ"),
    # '?' in the userinfo: a query string to other readers, the password to libpq.
    explicit("userinfo", "QXZJ?password=KVWJ"),
    # '#' in ?password=: the old mask stopped at '#', leaving '#KVWJ' in repr/as_dict.
    explicit("query", "QXZJ#KVWJ"),
    explicit("query-first", "QXZJ#KVWJ"),
    # '&' in ?password=: libpq's parse error quoted 'KVWJ'.
    explicit("query", "QXZJ&KVWJ"),
    # An escaped space in key=value: the old mask stopped at the backslash.
    explicit("kv-unquoted", "QXZJ KVWJ", "QXZJ\\ KVWJ"),
    # An unquoted space: libpq's 'missing "=" after "KVWJ"' was quoted verbatim.
    explicit("kv-unquoted", "QXZJ KVWJ"),
    explicit("kv-unquoted", "QXZJ\tKVWJ"),
    explicit("kv-quoted", "QXZJ'KVWJ"),
    explicit("kv-quoted", "QXZJ\\KVWJ"),
    # A bad percent-escape: libpq's error quoted the token.
    explicit("userinfo", "QXZJ%KVWJ"),
    # repr() escapes control characters, so the escaped form slipped past replace().
    explicit("userinfo", "QX\rZJ/KV"),
    # NUL: libpq stops reading at it.
    explicit("userinfo", "QXZJ\x00KVWJ"),
    # '://' inside a key=value password made it look like a URL with an odd scheme.
    explicit("kv-unquoted", "QXZJ://KVWJ"),
    explicit("kv-unquoted", "QXZJ+srv://KVWJ"),
    explicit("srv", "QXZJ@KVWJ.example.com"),
    explicit("srv", "QXZJ#KVWJ"),
    # Brackets in a +srv userinfo: the SRV code's URL parser took them for an IPv6 host and
    # its error, quoting them, rode along as __context__ (found with --hypothesis-seed=1).
    explicit("srv", "[\x0bJQXZ]"),
]


def fragments(case: Case) -> set[str]:
    """Substrings (>= 4 characters, holding a marker letter) of the password as meant, as
    written, as libpq decodes it, and as repr() escapes each."""
    forms = {case.password, case.written, urllib.parse.unquote(case.written)}
    forms |= {repr(form)[1:-1] for form in forms}
    found = set()
    for form in forms:
        for i in range(len(form)):
            for j in range(i + 4, len(form) + 1):
                piece = form[i:j]
                if any(c in MARKS for c in piece):
                    found.add(piece)
    return found


def chain(exc: BaseException) -> list[str]:
    """str() and repr() of an exception, its args, and everything it chains to."""
    texts, seen, todo = [], set(), [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *(repr(arg) for arg in current.args)]
        todo += [current.__cause__, current.__context__]
    texts.append("".join(traceback.format_exception(exc)))
    return texts


def records(caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = []
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    return texts


def leaked(case: Case, texts: Iterable[str]) -> list[tuple[str, str]]:
    pieces = fragments(case)
    return [(piece, text) for text in texts for piece in pieces if piece in text]


def settings_surfaces(url: str) -> list[str]:
    shown = [redact_dsn(url), pool_name(url)]
    error: SettingsError | None = None
    try:
        parsed = PoolSettings(url=url)
    except SettingsError as exc:
        error = exc
    else:
        shown += [repr(parsed), str(parsed.as_dict()), parsed.redacted_url]
    if error is not None:
        assert str(error).startswith("url"), error
        shown += chain(error)
    try:
        pool = PoolManager(url)
    except SettingsError as exc:
        shown += chain(exc)
    else:
        shown += [repr(pool), pool.name]
    return shown


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
@example(case=LEAKS[0])
@example(case=LEAKS[1])
@example(case=LEAKS[2])
@example(case=LEAKS[3])
@example(case=LEAKS[4])
@example(case=LEAKS[5])
@example(case=LEAKS[6])
@example(case=LEAKS[7])
@example(case=LEAKS[8])
@example(case=LEAKS[9])
@example(case=LEAKS[10])
@example(case=LEAKS[11])
@example(case=LEAKS[12])
@example(case=LEAKS[13])
@example(case=LEAKS[14])
@example(case=LEAKS[15])
@example(case=LEAKS[16])
@example(case=LEAKS[17])
@example(case=LEAKS[18])
@example(case=LEAKS[19])
@example(case=LEAKS[20])
def test_settings_redaction_and_names_never_show_a_password_fragment(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """Settings repr/dump, redact_dsn, pool repr and name, SettingsError and its chain."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="pgpool"):
        shown = settings_surfaces(case.url)
    assert not leaked(case, shown + records(caplog))


def test_every_pinned_leak_is_a_settings_error_or_masked() -> None:
    """The pinned shapes either parse (and are masked) or fail naming the setting."""
    assert len(LEAKS) == 21  # each one is an @example above
    for case in LEAKS:
        error: SettingsError | None = None
        try:
            PoolSettings(url=case.url)
        except SettingsError as exc:
            error = exc
        assert error is None or str(error).startswith("url: "), error


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("postgresql://app:QXZJ@KVWJ@db.example/main", "%40"),
        ("postgresql://app@corp:QXZJ@db.example/main", "%40"),
        ("postgresql://app:QXZJ/KVWJ@db.example/main", "%2F"),
        ("postgresql://app:5432/KVWJ@db.example/main", "%2F"),
        ("postgresql://db.example?password=QXZJ@KVWJ", "%3F"),
        ("postgresql://app:QXZJ?KVWJ@db.example/main", "%3F"),
        ("postgresql://app:QXZJ/KVWJ", "%2F"),  # no '@' at all: port 'QXZJ'
        ("postgresql+srv://app:QXZJ#KVWJ@svc.example.com/main", "%23"),
        ("postgresql+srv://app:[QXZJ]@svc.example.com/main", "%5B"),
    ],
)
def test_ambiguous_userinfo_is_rejected_with_advice(url: str, advice: str) -> None:
    """Where libpq would read password characters as host, port or database name, the URL
    is refused at construction: the error names ``url`` and says what to encode, and quotes
    nothing of the userinfo."""
    with pytest.raises(SettingsError) as info:
        PoolSettings(url=url)
    message = str(info.value)
    assert message.startswith("url: ")
    assert advice in message
    assert "QX" not in message
    assert "KV" not in message
    assert info.value.__context__ is None
    assert info.value.__cause__ is None


def test_libpq_reads_the_rejected_shapes_as_documented() -> None:
    """The checks rest on what libpq does with these shapes (pinned, so a libpq that
    changes its reading shows up here)."""
    parse = psycopg2.extensions.parse_dsn
    assert parse("postgresql://u:p@ss@host/db")["host"] == "ss@host"
    assert parse("postgresql://u:p/ss@host/db") == {
        "dbname": "ss@host/db",
        "host": "u",
        "port": "p",
    }
    assert parse("postgresql://host?password=a@b") == {"user": "host?password=a", "host": "b"}
    assert parse("postgresql://u:p?ss@host/db")["password"] == "p?ss"
    assert parse("postgresql://u:p#ss@host/db")["password"] == "p#ss"
    assert parse("postgresql://h/db?password=a#b&sslmode=require")["password"] == "a#b"
    assert parse("host=h password=a\\ b")["password"] == "a b"
    assert parse("host=h password= dbname=x")["password"] == "dbname=x"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://db/main?password=QXZJ&KVWJ", 'no "="'),
        ("postgresql://db/main?password=QXZJ=KVWJ", 'two "="'),
        ("postgresql://app:QXZJ%KV@db/main", "%25"),
        ("postgresql://app:QXZJ%00@db/main", "%00"),
        ("postgresql://app:QXZJ@[::1/main", "IPv6"),
        ("postgresql://app:QXZJ@[::1]KVWJ/main", "IPv6"),
        ("host=db password=QXZJ KVWJ", "no '='"),
        ("host=db password='QXZJ KVWJ", "not closed"),
        ("host=db password=QXZJ KVWJ=x", "unknown connection option"),
        ("postgresql://db/main?KVWJ=x", "unknown query parameter"),
    ],
)
def test_parse_errors_are_fixed_reasons_quoting_nothing(url: str, reason: str) -> None:
    """libpq's own parse errors quote the input; pgpool maps them to fixed reasons."""
    with pytest.raises(SettingsError) as info:
        PoolSettings(url=url)
    message = str(info.value)
    assert message.startswith("url: not a valid libpq URL or key=value DSN (")
    assert reason in message
    assert "QX" not in message
    assert "KV" not in message
    assert info.value.__context__ is None


def test_redact_dsn_is_conservative_on_what_it_cannot_read() -> None:
    """An unparseable or ambiguous DSN is masked whole; a readable one keeps its shape."""
    assert redact_dsn("postgresql://app:QXZJ@KVWJ@db/main") == "postgresql://***"
    assert redact_dsn("host=db password=QXZJ KVWJ") == "***"
    assert redact_dsn("host=db password=QXZJ\\ KVWJ dbname=main") == (
        "host=db password=*** dbname=main"
    )
    assert redact_dsn("postgresql://db/main?password=QXZJ#KVWJ&sslmode=require") == (
        "postgresql://db/main?password=***&sslmode=require"
    )
    assert redact_dsn("postgresql://db/main?pass%77ord=QXZJ") == (
        "postgresql://db/main?pass%77ord=***"
    )
    assert redact_dsn("host=db password=QXZJ://KVWJ") == "host=db password=***"
    assert redact_dsn("postgresql+srv://app:QXZJ@svc.example.com/main") == (
        "postgresql+srv://app:***@svc.example.com/main"
    )


def test_pool_names_come_from_parsed_fields_only() -> None:
    """host:port/dbname as libpq read them; SRV has no port; nothing for a bad URL."""
    assert pool_name("postgresql://app:QXZJ@db:5433/main") == "db:5433/main"
    assert pool_name("host=/tmp user=app password=QXZJ") == "/tmp:5432/app"
    assert pool_name("postgresql+srv://app:QXZJ@svc.example.com/main") == "svc.example.com/main"
    assert pool_name("postgresql://app:QXZJ@KVWJ@db/main") == "pgpool"
    assert pool_name("") == "pgpool"


def test_scrub_masks_escaped_and_encoded_forms() -> None:
    """repr() and percent-encoding of a password are masked too."""
    secret = "QX\r@ZJ"
    text = f"a {secret} b {secret!r} c {urllib.parse.quote(secret, safe='')}"
    assert scrub(text, [secret]) == "a *** b '***' c ***"
    assert scrub("unchanged", [""]) == "unchanged"
    assert passwords_in("postgresql://app:QX%40ZJ@db/main?password=KV") >= {
        "QX%40ZJ",
        "QX@ZJ",
        "KV",
    }


# -- connecting (no network) ----------------------------------------------------------------


async def _not_known(*_args: Any, **_kwargs: Any) -> Any:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def _connect_surfaces(source: Any, password: Any = None) -> list[str]:
    """Start a pool with ``wait=True`` (it fails: nothing to connect to) and collect every
    surface it shows."""
    loop = asyncio.get_running_loop()
    loop.getaddrinfo = _not_known  # type: ignore[method-assign]
    shown: list[str] = []
    try:
        pool = PoolManager(source, password=password, connect_timeout=2, min_size=1)
    except SettingsError as exc:
        return chain(exc)
    shown += [repr(pool), pool.name]
    try:
        await pool.start(wait=True)
    except (SettingsError, ConfigurationError, PoolUnavailableError) as exc:
        shown += chain(exc)
    else:  # pragma: no cover - there is no server
        await pool.stop(0)
        raise AssertionError("connected to nothing")
    status = await pool.status()
    shown += [repr(pool), pool.name, str(status.as_dict()), str(pool.stats())]
    assert status.last_error or status.name
    return shown


def _sync(value: str) -> Callable[[], str]:
    return lambda: value


def _async(value: str) -> Callable[[], Any]:
    async def source() -> str:
        return value

    return source


def _run_connect(case: Case, how: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="pgpool"):
        if how == "url":
            shown = asyncio.run(_connect_surfaces(case.url))
        elif how == "url-callable":
            shown = asyncio.run(_connect_surfaces(_sync(case.url)))
        elif how == "url-async-callable":
            shown = asyncio.run(_connect_surfaces(_async(case.url)))
        else:  # the password from a callable, the URL without one
            host = "%2Fnonexistent-pgpool" if "nonexistent" in case.url else "db.example"
            url = f"postgresql://app@{host}:5432/main"
            shown = asyncio.run(_connect_surfaces(url, password=_sync(case.password)))
    return shown + records(caplog)


CONNECT_FORMS = tuple(form for form in FORMS if form != "srv")  # SRV would query DNS


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    case=cases(forms=CONNECT_FORMS),
    how=st.sampled_from(["url", "url-callable", "url-async-callable", "password-callable"]),
)
@example(case=explicit("userinfo", "QXZJ@KVWJ"), how="url-callable")
@example(case=explicit("userinfo", "QXZJ/KVWJ"), how="url-async-callable")
@example(case=explicit("userinfo", "QXZJ?KVWJ"), how="url-callable")
@example(case=explicit("kv-unquoted", "QXZJ+srv://KVWJ"), how="url-callable")
@example(case=explicit("userinfo", "QXZJ", unix=True), how="url")
@example(case=explicit("userinfo", "QXZJ"), how="url")
@example(case=explicit("query", "QXZJ#KV WJ", unix=True), how="url")
@example(case=explicit("kv-quoted", "QX'ZJ\\KV", "QX\\'ZJ\\\\KV", unix=True), how="url")
@example(case=explicit("userinfo", "QX\x00ZJKV", unix=True), how="password-callable")
@example(case=explicit("userinfo", "QX'ZJ\\ KV\r"), how="password-callable")
def test_connect_failures_never_show_a_password_fragment(
    case: Case, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Connect-time errors (unknown host, missing socket, bad URL from a callable): the
    error and its chain, repr, name, status, stats and every log line stay clean."""
    assert not leaked(case, _run_connect(case, how, caplog))


def test_connect_error_chain_carries_no_driver_error() -> None:
    """The connector raises its redacted error with no __context__ (the driver's own
    error quotes what libpq was given)."""

    async def attempt() -> BaseException:
        connector = AiopgConnector(f"host={SOCKET_DIR} user=app password=QXZJKVWJ dbname=main")
        with pytest.raises(psycopg2.OperationalError) as info:
            await connector.connect(2)
        return info.value

    error = asyncio.run(attempt())
    assert error.__context__ is None
    assert error.__cause__ is None
    assert "QXZJ" not in str(error)


# -- sprockets: the CRITICAL log line ----------------------------------------------------------


class _App(pgpool_sprockets.ApplicationMixin, sprockets_app.Application):
    pass


def _sprockets_logs(url: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    async def run() -> None:
        asyncio.get_running_loop().getaddrinfo = _not_known  # type: ignore[method-assign]
        app = _App([], postgres_url=url, postgres_connection_timeout=2)
        stops: list[object] = []
        app.stop = lambda *args, **kwargs: stops.append(args)  # type: ignore[method-assign]
        await app._postgres_on_start(app, asyncio.get_running_loop())
        await app.postgres_stop(0)
        assert len(stops) == 1

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="pgpool"):
        asyncio.run(run())
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert "misconfigured" in critical[0].getMessage()
    return records(caplog)


@pytest.mark.parametrize("case", [*LEAKS, explicit("userinfo", "QXZJKVWJ")])
def test_sprockets_misconfiguration_log_has_no_password_fragment(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL that fails at construction, or a host that does not resolve: one CRITICAL
    line, and no fragment of the password in any log record."""
    if case.form == "srv":
        pytest.skip("SRV would look the name up in DNS")
    assert not leaked(case, _sprockets_logs(case.url, caplog))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases(forms=("userinfo", "query", "kv-unquoted"), unix=False))
def test_fuzzed_sprockets_misconfiguration_logs(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """Fuzzed: every URL that reaches on_start fails as misconfigured (bad URL or unknown
    host) and no log record holds a password fragment."""
    assert not leaked(case, _sprockets_logs(case.url, caplog))


def test_libpq_lines_stay_apart_on_one_line() -> None:
    """libpq's error and its hint are two lines: kept readable, not glued into one
    sentence (``Connection refused Is the server running``), and still redacted."""
    from pgpool_core._redact import first_line

    error = psycopg2.OperationalError(
        'connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?\n"
    )
    assert first_line(error) == (
        'connection to server at "127.0.0.1", port 1 failed: Connection refused;'
        " Is the server running on that host and accepting TCP/IP connections?"
    )
    assert first_line(psycopg2.OperationalError("")) == "OperationalError"

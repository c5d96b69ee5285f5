"""Redaction, error descriptions, pool names — built from parsed fields only.

One parser decides what a URL means: libpq's (``psycopg2.extensions.parse_dsn``), the one
that will actually connect. Everything shown to people — pool names, metric labels,
reprs, log lines and error messages — is built from the fields libpq read (host, port,
dbname, user), never from raw URL text, and never from a URL that failed to parse:
libpq's own parse errors quote the input, so they are mapped to fixed reasons.

Where libpq's reading of a malformed URL would itself put password characters into a
displayed field (an unencoded ``@``, ``/`` or ``?`` in the userinfo: libpq then reads part
of the password as the host, port or database name), the URL is rejected with advice
and without quoting it. What libpq does with each shape (libpq 17)::

    postgresql://u:p@ss@host/db     user u, password p, host 'ss@host'
    postgresql://u:p/ss@host/db     no userinfo: host u, port p, dbname 'ss@host/db'
    postgresql://host?password=a@b  user 'host?password=a', host b
    postgresql://u@h:p@ss@host/db   user u, host h, port 'p@ss@host'
    postgresql://u:p#ss@host/db     password 'p#ss' (no fragments in libpq URLs)
    postgresql://u:p\\0ss@...        the string ends at the NUL (host u, port p)

The text masking of :func:`redact_dsn` follows libpq's grammar and is then checked
against libpq itself: the masked text must read back as the original with only the
password replaced; otherwise the DSN is rebuilt from the parsed fields.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import urllib.parse
from collections.abc import Iterable

import psycopg2
import psycopg2.extensions

from ._srv import SRV_SCHEMES, srv_query_name
from .errors import SettingsError

__all__ = [
    "MASK",
    "describe_error",
    "first_line",
    "is_srv",
    "passwords_in",
    "pool_name",
    "redact_dsn",
    "scrub",
    "validate_url",
]

MASK = "***"

_INVALID = "url: not a valid libpq URL or key=value DSN"
#: A URL or a key=value password inside a field's value (``dbname=db,postgresql://u:pw@h``,
#: ``db,host=h password=pw``): two URLs run together, whose second password libpq would
#: not read as one.
_EMBEDDED_URL = re.compile(
    r"(postgres(ql)?(\+srv)?|aws\+srv)://|://[^/\s]*@|\bpassword\s*=", re.IGNORECASE
)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_URI_SCHEMES = ("postgresql", "postgres")
_URI_PREFIXES = ("postgresql://", "postgres://")  # libpq's own test: case-sensitive
_SPACE = " \t\n\v\f\r"  # C isspace(), which libpq's key=value parser uses

# libpq's parse errors quote the input; each maps to a fixed reason (first match wins).
_REASONS = (
    ('missing "=" after', "a key=value item has no '=' (quote values with spaces: '...')"),
    ("unterminated quoted string", "a quoted value is not closed"),
    ("invalid connection option", "an unknown connection option"),
    (
        "missing key/value separator",
        'a query parameter has no "=" (percent-encode "&" in values as %26)',
    ),
    (
        "extra key/value separator",
        'a query parameter has two "=" (percent-encode "=" in values as %3D)',
    ),
    ("invalid URI query parameter", "an unknown query parameter"),
    ("invalid percent-encoded token", 'a "%" without two hex digits (write "%" as %25)'),
    ("forbidden value %00", "a percent-encoded NUL (%00)"),
    ('matching "]"', 'an IPv6 host without its closing "]"'),
    ("IPv6 host address may not be empty", "an empty IPv6 host []"),
    ("unexpected character", 'an IPv6 host "[...]" followed by neither ":" nor "/"'),
)


def redact_dsn(dsn: str) -> str:
    """Mask every password in a libpq URL or key=value DSN (userinfo, query, multi-host).

    Conservative on malformed input: a DSN libpq cannot parse, or one whose reading would
    show part of a password as a host, port or database name, is masked whole.

    >>> redact_dsn("postgresql://app:s3cret@db:5432/main?sslmode=require")
    'postgresql://app:***@db:5432/main?sslmode=require'

    .. versionadded:: 0.1
    """
    scheme = _scheme(dsn)
    try:
        info = _read(dsn)
    except SettingsError:
        return f"{scheme}://{MASK}" if scheme else MASK
    text = _libpq_form(dsn)
    expected = dict(info)
    if "password" in expected:
        expected["password"] = MASK
    masked = _mask_uri(text) if text.startswith(_URI_PREFIXES) else _mask_conninfo(text)
    if masked is None or not _parses_as(masked, expected):
        return _conninfo(expected)
    if is_srv(dsn):  # the mask was made on the postgresql:// form: give back the scheme
        return dsn.split("://", 1)[0] + "://" + masked.split("://", 1)[1]
    return masked


def validate_url(url: str) -> dict[str, str]:
    """libpq's reading of ``url``, checked: scheme, shape, ports, SRV support.

    :raises SettingsError: naming the setting (``url``) and what to do, quoting nothing
        of the URL but its scheme (and, for a +srv URL, the host name it would look up).
    """
    info = _read(url)
    scheme = _scheme(url)
    if scheme is not None and scheme.endswith("+srv"):
        failure = None
        try:
            srv_query_name(url)  # unsupported +srv schemes and shapes
        except SettingsError as exc:
            failure = scrub(str(exc), passwords_in(url))
        if failure is not None:
            # Outside the except block: the SRV code's URL parser error (which may quote
            # the userinfo) must not ride along as __context__.
            raise SettingsError(failure)
        if importlib.util.find_spec("aiodns") is None:
            raise SettingsError(
                f"url: {scheme}:// needs the 'srv' extra (pip install 'pgpool[srv]')"
            )
    return info


def is_srv(url: str) -> bool:
    """Whether ``url`` is a ``+srv`` URL (a key=value DSN never is, whatever it holds)."""
    scheme = _scheme(url)
    return scheme is not None and scheme.endswith("+srv")


def pool_name(url: str) -> str:
    """``host:port/dbname`` from libpq's reading of a valid URL (``host/dbname`` for SRV);
    ``pgpool`` for no URL or an invalid one. Never credentials, never raw URL text."""
    if not url:
        return "pgpool"
    try:
        info = _read(url)
    except SettingsError:
        return "pgpool"
    host = info.get("host") or "localhost"
    database = info.get("dbname") or info.get("user") or ""
    if is_srv(url):
        return f"{host}/{database}"
    return f"{host}:{info.get('port') or '5432'}/{database}"


def url_option(url: str, key: str) -> str | None:
    """One connection option (``target_session_attrs``, ...) as libpq reads ``url``; None
    when unset or the URL is invalid."""
    try:
        return _read(url).get(key) or None
    except SettingsError:
        return None


def server_address(url: str) -> str:
    """``host:port`` of each host libpq would try, comma-separated (``host`` alone for SRV);
    ``""`` for an invalid URL. Never credentials."""
    try:
        info = _read(url)
    except SettingsError:
        return ""
    hosts = (info.get("host") or info.get("hostaddr") or "localhost").split(",")
    if is_srv(url):
        return ",".join(hosts)
    ports = (info.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return ",".join(f"{host}:{port or '5432'}" for host, port in zip(hosts, ports, strict=False))


def passwords_in(dsn: str) -> set[str]:
    """Every password libpq may read from ``dsn`` (userinfo, query, key=value), raw and
    decoded, for scrubbing messages. Works on malformed input too (wider, not narrower)."""
    found: set[str] = set()
    text = _libpq_form(dsn)
    try:
        password = psycopg2.extensions.parse_dsn(text).get("password")
    except (psycopg2.Error, UnicodeError, ValueError, TypeError):
        password = None
    if password:
        found.add(password)
    if text.startswith(_URI_PREFIXES):
        userinfo, _, query = _split_uri(text)
        if userinfo is not None and ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
        for param in (query or "").split("&"):
            key, _, value = param.partition("=")
            if urllib.parse.unquote(key) == "password":
                found.add(value)
    else:
        for key, value, _, _ in _conninfo_items(text, lenient=True) or []:
            if key == "password":
                found.add(value)
    found |= {urllib.parse.unquote(secret) for secret in found}
    return {secret for secret in found if secret}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of ``secrets``, as written or as repr() or a URL escapes them."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= {
                secret,
                repr(secret)[1:-1],
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote(secret),
            }
    for form in sorted(filter(None, forms), key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def first_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (``timed out`` for a bare timeout). libpq's
    lines (the error, then a hint such as "Is the server running ...") are kept apart by
    ``"; "``, not glued into one sentence."""
    text = str(exc).strip()
    if isinstance(exc, asyncio.TimeoutError) and not text:
        return "timed out"
    lines = (line.strip() for line in text.splitlines())
    return "; ".join(line for line in lines if line) or type(exc).__name__


def describe_error(exc: BaseException, secrets: Iterable[str]) -> str:
    """``Type: first line of the message``, without any of ``secrets``."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError) and not text:
        line = "timed out"
    return f"{type(exc).__name__}: {scrub(line, secrets)}"


# -- libpq's reading ----------------------------------------------------------------------


def _scheme(url: str) -> str | None:
    """The lower-cased scheme of a URL-shaped string; None for a key=value DSN (even one
    whose password holds ``://``)."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def _libpq_form(url: str) -> str:
    """What libpq is given: a ``+srv`` URL reads as the ``postgresql://`` URL it becomes."""
    scheme = _scheme(url)
    if scheme is not None and scheme.endswith("+srv"):
        return "postgresql://" + url.split("://", 1)[1]
    return url


def _read(url: str) -> dict[str, str]:
    """libpq's reading of ``url`` after the shape checks; the one place a URL is parsed.

    :raises SettingsError: with a fixed reason, never quoting the URL.
    """
    if "\x00" in url:
        raise SettingsError("url: contains a NUL character (libpq would cut the URL there)")
    scheme = _scheme(url)
    if scheme is not None and scheme.endswith("+srv") and scheme not in SRV_SCHEMES:
        raise SettingsError(
            f"url: unsupported SRV scheme {scheme!r}; expected one of {', '.join(SRV_SCHEMES)}"
        )
    if scheme is not None and not scheme.endswith("+srv") and scheme not in _URI_SCHEMES:
        raise SettingsError(
            f"url: unsupported scheme {scheme!r}; "
            "expected postgresql://, postgres:// or a +srv variant"
        )
    text = _libpq_form(url)
    if text.startswith(_URI_PREFIXES):
        _check_uri_shape(text, srv=is_srv(url))
    reason = None
    try:
        info = psycopg2.extensions.parse_dsn(text)
    except psycopg2.Error as exc:
        message = str(exc)
        reason = next((why for needle, why in _REASONS if needle in message), None)
        reason = reason or "libpq cannot parse it"
    except (UnicodeError, ValueError, TypeError):
        reason = "it cannot be encoded for libpq"
    if reason is not None:
        # Raised outside the except block: the driver error (which quotes the input)
        # must not ride along as __context__.
        raise SettingsError(f"{_INVALID} ({reason})")
    for key, value in info.items():
        if key != "password" and _EMBEDDED_URL.search(value):
            raise SettingsError(
                f"url: its {key} holds another URL or a password (several URLs are not one"
                " string: give read_url a list, or separate its URLs with spaces)"
            )
    for port in info.get("port", "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise SettingsError(
                "url: invalid port (each must be a number from 1 to 65535); a '/' in the "
                "password makes libpq read it as host:port: percent-encode '/' as %2F"
            )
    return info


def _split_uri(text: str) -> tuple[str | None, str, str | None]:
    """A ``postgresql://`` URL split as libpq splits it: userinfo (up to the first '@' that
    comes before any '/'), hosts and path, query (after the next '?')."""
    rest = text.split("://", 1)[1]
    cut = next((i for i, c in enumerate(rest) if c in "@/"), len(rest))
    userinfo: str | None = None
    if cut < len(rest) and rest[cut] == "@":
        userinfo, rest = rest[:cut], rest[cut + 1 :]
    body, mark, query = rest.partition("?")
    return userinfo, body, query if mark else None


def _check_uri_shape(text: str, *, srv: bool) -> None:
    """Reject the URLs libpq would read with password characters in displayed fields."""
    userinfo, body, _ = _split_uri(text)
    if "@" in body:
        raise SettingsError(
            "url: an unencoded '@' after the user info (or a '/' before it): libpq would "
            "read part of the user name or password as the host, port or database name; "
            "percent-encode '@' as %40 and '/' as %2F in the user name and password"
        )
    if userinfo is not None and "?" in userinfo:
        raise SettingsError(
            "url: an unencoded '?' before the '@' of the user info: libpq cannot tell a "
            "password from a query string; percent-encode '?' as %3F in the password "
            "(and write a '/' before a query string: postgresql://host/?...)"
        )
    if srv and userinfo is not None and any(c in userinfo for c in "#[]"):
        # SRV URLs also go through a URL parser, for which '#' starts a fragment and
        # brackets mean an IPv6 address.
        raise SettingsError(
            "url: an unencoded '#', '[' or ']' in the user info of a +srv URL; "
            "percent-encode them as %23, %5B and %5D"
        )


def _parses_as(text: str, expected: dict[str, str]) -> bool:
    try:
        return psycopg2.extensions.parse_dsn(text) == expected
    except (psycopg2.Error, UnicodeError, ValueError, TypeError):
        return False


# -- masking, following libpq's grammar (checked against libpq by redact_dsn) ---------------


def _mask_uri(text: str) -> str:
    prefix = text.split("://", 1)[0] + "://"
    userinfo, body, query = _split_uri(text)
    out = prefix
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        out += f"{user}:{MASK}@" if colon and password else f"{userinfo}@"
    out += body
    if query is not None:
        params = []
        for param in query.split("&"):
            key, _, _ = param.partition("=")
            params.append(f"{key}={MASK}" if urllib.parse.unquote(key) == "password" else param)
        out += "?" + "&".join(params)
    return out


def _mask_conninfo(text: str) -> str | None:
    out, done = [], 0
    items = _conninfo_items(text, lenient=False)
    if items is None:
        return None
    for key, _, start, end in items:
        if key == "password":
            out.append(text[done:start] + MASK)
            done = end
    out.append(text[done:])
    return "".join(out)


def _conninfo_items(text: str, *, lenient: bool) -> list[tuple[str, str, int, int]] | None:
    """``(key, value, value start, value end)`` per item, as libpq's conninfo_parse reads
    a key=value string: blanks around '=', values quoted with '...' or not, backslash
    escapes in both. None on a syntax error (what was read so far if ``lenient``)."""
    items: list[tuple[str, str, int, int]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in _SPACE:
            i += 1
            continue
        start = i
        while i < n and text[i] != "=" and text[i] not in _SPACE:
            i += 1
        key = text[start:i]
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n or text[i] != "=":
            return items if lenient else None
        i += 1
        while i < n and text[i] in _SPACE:
            i += 1
        value_start, value = i, list[str]()
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    if lenient:
                        items.append((key, "".join(value), value_start, n))
                        return items
                    return None
                if text[i] == "\\":
                    i += 1
                    if i < n:
                        value.append(text[i])
                        i += 1
                    continue
                if text[i] == "'":
                    i += 1
                    break
                value.append(text[i])
                i += 1
        else:
            while i < n and text[i] not in _SPACE:
                if text[i] == "\\":
                    i += 1
                    if i < n:
                        value.append(text[i])
                        i += 1
                else:
                    value.append(text[i])
                    i += 1
        items.append((key, "".join(value), value_start, i))
    return items


def _conninfo(fields: dict[str, str]) -> str:
    """A key=value DSN built from parsed fields (the fallback display)."""

    def quoted(value: str) -> str:
        if value and not any(c in value for c in _SPACE + "'\\"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quoted(value)}" for key, value in fields.items())

"""URL handling: SRV URLs, multi-host targets, and fuzzing the settings parser."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pgpool_core import (
    ConfigurationError,
    PoolManager,
    PoolSettings,
    SettingsError,
    SrvRecord,
    redact_dsn,
)
from pgpool_core._config import _KEYS
from pgpool_core._connector import _targets, _typed
from pgpool_core._srv import srv_query_name, srv_to_url

SECRET = "Zq9-secret-Zq9"


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("postgresql+srv://app:pw@svc.example.com/db", "_svc._postgresql.example.com"),
        ("postgres+srv://app@db.internal.example/db", "_db._postgresql.internal.example"),
        ("aws+srv://app@cluster.example.com/db", "cluster.example.com"),
    ],
)
def test_srv_query_names(url: str, name: str) -> None:
    """postgresql+srv queries _<svc>._postgresql.<domain>; aws+srv queries the host."""
    assert srv_query_name(url) == name


def test_srv_records_become_a_multi_host_url_in_priority_then_weight_order() -> None:
    """Priority ascending, then weight descending; userinfo, path and query are kept."""
    records = [
        SrvRecord(priority=20, weight=5, port=5434, target="c.example.com."),
        SrvRecord(priority=10, weight=1, port=5433, target="b.example.com."),
        SrvRecord(priority=10, weight=9, port=5432, target="a.example.com."),
    ]
    url = srv_to_url(
        "postgresql+srv://app:pw@svc.example.com/db?target_session_attrs=read-write", records
    )
    assert url == (
        "postgresql://app:pw@a.example.com:5432,b.example.com:5433,c.example.com:5434"
        "/db?target_session_attrs=read-write"
    )


def test_no_srv_records_is_a_configuration_error() -> None:
    """An empty answer is a typed configuration error naming the queried name."""
    with pytest.raises(ConfigurationError, match=r"_svc\._postgresql\.example\.com"):
        srv_to_url("postgresql+srv://app@svc.example.com/db", [])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+srv://app@svc.example.com/db", "unsupported SRV scheme 'mysql+srv'"),
        ("postgresql+srv://app@svc.example.com:5432/db", "one host and no port"),
        ("postgresql+srv://app@a.example.com,b.example.com/db", "one host and no port"),
        ("postgresql+srv://app@localhost/db", "<service>.<domain>"),
        ("ftp://app@db/x", "unsupported scheme 'ftp'"),
    ],
)
def test_bad_srv_and_scheme_urls_are_settings_errors(url: str, message: str) -> None:
    """Unsupported +srv schemes and shapes fail when the settings are built."""
    with pytest.raises(SettingsError, match=re.escape(message)):
        PoolSettings(url=url)


def test_multi_host_targets_pair_hosts_with_ports() -> None:
    """Each host gets its own port; a single port applies to all (libpq's rule)."""
    assert [str(t) for t in _targets({"host": "a,b", "port": "5432,5433"})] == [
        "a:5432",
        "b:5433",
    ]
    assert [str(t) for t in _targets({"host": "a,b", "port": "6432"})] == ["a:6432", "b:6432"]
    assert [str(t) for t in _targets({})] == ["local socket"]


@pytest.mark.parametrize(
    "message",
    [
        'FATAL:  password authentication failed for user "app"',
        'FATAL:  database "nope" does not exist',
        'could not translate host name "nope.invalid" to address',
    ],
)
def test_connect_failures_from_configuration_are_typed(message: str) -> None:
    """Authentication, unknown database and unknown host become ConfigurationError."""
    assert isinstance(_typed(OSError(), message), ConfigurationError)


def test_refused_connection_is_not_a_configuration_error() -> None:
    """A server that is merely down stays a plain (retryable) driver error."""
    assert not isinstance(_typed(OSError(), "Connection refused"), ConfigurationError)


_text = st.text(alphabet=string.printable + "éß\u2028\x00", max_size=60)


@settings(max_examples=300, deadline=None)
@example(scheme="postgresql", user=":@", host="\r@", rest="")  # a port quoting the password
@example(scheme="postgresql", user="app", host="x@db", rest="main")  # '@': host 'x@db'
@example(scheme="postgresql", user="app", host="db", rest="m?password=x@h")  # '?' in userinfo
@example(scheme="postgresql+srv", user="app", host="[::1]", rest="")  # urllib quoted '[...]'
@example(scheme="", user="host=db", host="", rest="x")  # 'missing "=" after' quoted input
@example(scheme="", user="host=db", host="", rest="passwordx=1")  # unknown option quoted
@example(scheme="", user="x+srv://", host="", rest="")  # '://' in a key=value DSN
@given(
    scheme=st.sampled_from(
        ["postgresql", "postgres", "postgresql+srv", "aws+srv", "mysql", "http", "", "x+srv"]
    ),
    user=_text,
    host=_text,
    rest=_text,
)
def test_fuzzed_urls_only_ever_raise_settings_error_without_the_password(
    scheme: str, user: str, host: str, rest: str
) -> None:
    """Whatever the URL, parsing either succeeds or raises SettingsError, and neither the
    error (nor anything it chains to), the repr, the pool's name nor its repr ever contains
    the password or a fragment of it (4+ characters not found elsewhere in the URL)."""
    url = (
        f"{scheme}://{user}:{SECRET}@{host}/{rest}"
        if scheme
        else f"{user} password={SECRET} {rest}"
    )
    try:
        parsed = PoolSettings(url=url)
    except SettingsError as exc:
        shown = [str(exc)]
        shown += _chain(exc)
    else:
        shown = [repr(parsed), str(parsed.as_dict())]
        pool = PoolManager(url)
        shown += [repr(pool), pool.name]
    shown.append(redact_dsn(url))
    assert not [text for text in shown if SECRET in text]
    elsewhere = url.replace(SECRET, "\x00")
    pieces = [
        SECRET[i:j]
        for i in range(len(SECRET))
        for j in range(i + 4, len(SECRET) + 1)
        if SECRET[i:j] not in elsewhere
    ]
    assert not [(p, text) for text in shown for p in pieces if p in text]


def _chain(exc: BaseException) -> list[str]:
    """str() and repr() of ``exc`` and of every exception it chains to."""
    texts: list[str] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is not None:
            texts += [str(current), repr(current)]
            todo += [current.__cause__, current.__context__]
    return texts


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(
        [
            "postgres_min_pool_size",
            "postgres_max_pool_size",
            "postgres_connection_timeout",
            "postgres_query_timeout",
            "postgres_hstore",
            "postgres_max_waiting",
            "postgres_leak_detection_threshold",
        ]
    ),
    value=st.one_of(
        _text,
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
)
def test_fuzzed_settings_values_only_ever_raise_settings_error(key: str, value: object) -> None:
    """Any value for any key either parses or raises SettingsError naming the setting."""
    field = next(name for name, (keys, _) in _KEYS.items() if key in keys)
    try:
        PoolSettings.from_mapping({key: value}, env={})
    except SettingsError as exc:
        message = str(exc)
    else:
        return
    assert field in message or key in message

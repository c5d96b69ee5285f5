"""PoolSettings: defaults, sources and precedence, strict parsing, redaction."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from pgpool_core import PoolSettings, SettingsError, redact_dsn

URL = "postgresql://app@db:5432/main"


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("url", ""),
        ("min_size", 1),
        ("max_size", 10),
        ("connect_timeout", 10.0),
        ("acquire_timeout", 10.0),
        ("query_timeout", 120.0),
        ("max_lifetime", 300.0),
        ("max_idle", 600.0),
        ("max_waiting", 0),
        ("cancel_timeout", 5.0),
        ("validate_idle_after", 1.0),
        ("leak_detection_threshold", 0.0),
        ("pgbouncer", False),
        ("resolve_commits", False),
        ("enable_hstore", False),
        ("enable_json", False),
        ("enable_uuid", True),
        ("application_name", None),
        ("read_url", ()),
        ("max_replica_lag", 0.0),
        ("read_fallback", True),
        ("reset", "rollback"),
    ],
)
def test_every_default(name: str, default: object) -> None:
    """Each field's default is the documented one, with floats for seconds."""
    value = getattr(PoolSettings(), name)
    assert value == default
    assert type(value) is type(default)


def test_no_field_is_left_without_a_default_test() -> None:
    """The parametrized default test above covers every field."""
    assert len(dataclasses.fields(PoolSettings)) == 22


def test_sprockets_postgres_keys_map_to_fields() -> None:
    """The sprockets-postgres settings keys fill the matching fields."""
    settings = PoolSettings.from_mapping(
        {
            "postgres_url": URL,
            "postgres_min_pool_size": 2,
            "postgres_max_pool_size": "20",
            "postgres_connection_timeout": 3,
            "postgres_connection_ttl": "60",
            "postgres_query_timeout": 7.5,
            "postgres_hstore": "true",
            "postgres_json": "yes",
            "postgres_uuid": "off",
        },
        env={},
    )
    assert (settings.url, settings.min_size, settings.max_size) == (URL, 2, 20)
    assert (settings.connect_timeout, settings.max_lifetime, settings.query_timeout) == (
        3.0,
        60.0,
        7.5,
    )
    assert isinstance(settings.connect_timeout, float)
    assert (settings.enable_hstore, settings.enable_json, settings.enable_uuid) == (
        True,
        True,
        False,
    )


def test_env_names_including_the_legacy_connect_timeout() -> None:
    """POSTGRES_* variables apply; POSTGRES_CONNECT_TIMEOUT is the legacy spelling."""
    settings = PoolSettings.from_env(
        {"POSTGRES_URL": URL, "POSTGRES_CONNECT_TIMEOUT": "4", "POSTGRES_MAX_WAITING": "50"}
    )
    assert settings.connect_timeout == 4.0
    assert settings.max_waiting == 50
    newer = PoolSettings.from_env(
        {"POSTGRES_CONNECTION_TIMEOUT": "2", "POSTGRES_CONNECT_TIMEOUT": "9"}
    )
    assert newer.connect_timeout == 2.0


def test_precedence_explicit_then_mapping_then_env_then_default() -> None:
    """Explicit beats the mapping, the mapping beats env, env beats the default."""
    env = {
        "POSTGRES_MAX_POOL_SIZE": "30",
        "POSTGRES_MIN_POOL_SIZE": "3",
        "POSTGRES_QUERY_TIMEOUT": "9",
    }
    mapping = {"postgres_max_pool_size": 20, "postgres_min_pool_size": 2}
    settings = PoolSettings.from_mapping(mapping, env=env, max_size=40)
    assert settings.max_size == 40
    assert settings.min_size == 2
    assert settings.query_timeout == 9.0
    assert settings.connect_timeout == 10.0


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False),
])  # fmt: skip
def test_strict_booleans_from_env_and_mappings(raw: str, expected: bool) -> None:
    """The same strict words are booleans in env and in mappings; "false" is false."""
    assert PoolSettings.from_env({"POSTGRES_HSTORE": raw}).enable_hstore is expected
    assert PoolSettings.from_mapping({"postgres_hstore": raw}, env={}).enable_hstore is expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"postgres_hstore": "maybe"}, r"enable_hstore from settings postgres_hstore.*'maybe'"),
        (
            {"postgres_max_pool_size": "ten"},
            r"max_size from settings postgres_max_pool_size.*'ten'",
        ),
        (
            {"postgres_query_timeout": "soon"},
            r"query_timeout from settings postgres_query_timeout.*'soon'",
        ),
        ({"postgres_query_timeout": "nan"}, r"query_timeout.*finite.*'nan'"),
        ({"postgres_max_pool_size": 0}, r"max_size: must be >= 1, got 0"),
        ({"postgres_query_timeout": -1}, r"query_timeout: must be > 0 seconds, got -1.0"),
        (
            {"postgres_min_pool_size": 5, "postgres_max_pool_size": 2},
            r"min_size \(5\) must not exceed",
        ),
        ({"postgres_url": "mysql://u:pw@h/db"}, r"unsupported scheme 'mysql'"),
        ({"postgres_max_waiting": -3}, r"max_waiting: must be >= 0"),
    ],
)
def test_invalid_values_name_key_source_and_value(source: dict[str, object], message: str) -> None:
    """A bad value raises SettingsError (also a ValueError) that says what, where and which."""
    with pytest.raises(SettingsError, match=message) as info:
        PoolSettings.from_mapping(source, env={})
    assert isinstance(info.value, ValueError)


def test_invalid_env_value_names_the_variable() -> None:
    """Errors from the environment name the variable."""
    with pytest.raises(SettingsError, match=r"environment POSTGRES_MIN_POOL_SIZE.*'-'"):
        PoolSettings.from_env({"POSTGRES_MIN_POOL_SIZE": "-"})


def test_unknown_explicit_setting_is_rejected() -> None:
    """A typo in a keyword is an error, not silently ignored."""
    with pytest.raises(SettingsError, match="max_sise"):
        PoolSettings.from_env({}, max_sise=3)


def test_explicit_values_are_validated_too() -> None:
    """Direct construction follows the same rules."""
    with pytest.raises(SettingsError, match="enable_json from arguments"):
        PoolSettings(enable_json="sometimes")  # type: ignore[arg-type]
    assert PoolSettings(connect_timeout=3).connect_timeout == 3.0


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/main", "postgresql://app:***@db:5432/main"),
        ("postgresql://app:s3cret@h1:5432,h2:5433/main?target_session_attrs=read-write",
         "postgresql://app:***@h1:5432,h2:5433/main?target_session_attrs=read-write"),
        ("postgresql://db/main?user=app&password=s3cret",
         "postgresql://db/main?user=app&password=***"),
        ("host=db user=app password=s3cret dbname=main",
         "host=db user=app password=*** dbname=main"),
        ("host=db password='s3 cret' dbname=main", "host=db password=*** dbname=main"),
        ("postgresql://app@db/main", "postgresql://app@db/main"),
    ],
)  # fmt: skip
def test_redaction_masks_every_password_form(dsn: str, shown: str) -> None:
    """Userinfo, query-string, key=value and multi-host passwords are masked."""
    assert redact_dsn(dsn) == shown
    assert "s3" not in redact_dsn(dsn)


def test_repr_and_dump_never_show_the_password() -> None:
    """repr() and as_dict() of settings carry the redacted URL."""
    settings = PoolSettings(url="postgresql://app:s3cret@db/main?password=s3cret")
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.as_dict())
    assert settings.as_dict()["url"].startswith("postgresql://app:***@db/main")


def test_invalid_url_error_does_not_leak_the_password() -> None:
    """A malformed URL is a SettingsError whose message masks the password."""
    with pytest.raises(SettingsError) as info:
        PoolSettings(url="postgresql://app:s3cret@db:notaport/main")
    assert "s3cret" not in str(info.value)


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgpool_core._config._WARNED", set())


def test_misspelt_setting_warns_once_naming_the_closest(
    fresh_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in a postgres_* key is not silently ignored: one warning, naming the key
    meant; the valid settings still apply."""
    mapping = {"postgres_url": "postgresql://db/x", "postgres_max_pool_sise": 5}
    with caplog.at_level(logging.WARNING, logger="pgpool"):
        settings = PoolSettings.from_mapping(mapping, env={})
        PoolSettings.from_mapping(mapping, env={})
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "unknown setting 'postgres_max_pool_sise' is ignored;"
        " did you mean 'postgres_max_pool_size'?"
    ]
    assert settings.max_size == 10


def test_misspelt_environment_variable_warns_but_foreign_ones_do_not(
    fresh_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"POSTGRES_MAX_POOL_SIZ": "5", "POSTGRES_PASSWORD": "x", "POSTGRES_DB": "app"}
    with caplog.at_level(logging.WARNING, logger="pgpool"):
        PoolSettings.from_mapping({}, env=env)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "unknown environment variable 'POSTGRES_MAX_POOL_SIZ' is ignored;"
        " did you mean 'POSTGRES_MAX_POOL_SIZE'?"
    ]


def test_adapter_keys_are_known_to_the_adapter(
    fresh_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    mapping = {"postgres_error_format": "problem+json", "postgres_prometheus": True}
    with caplog.at_level(logging.WARNING, logger="pgpool"):
        PoolSettings.from_mapping(mapping, env={}, also_known=mapping)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="pgpool"):
        PoolSettings.from_mapping({"postgres_frobnicate": 1}, env={})
    assert [r.getMessage() for r in caplog.records] == [
        "unknown setting 'postgres_frobnicate' is ignored"
    ]


def test_pool_options_type_every_setting_but_the_url() -> None:
    """PoolManager's typed keyword options stay in step with PoolSettings' fields."""
    import typing

    from pgpool_core import PoolOptions

    fields = {f.name: f.type for f in dataclasses.fields(PoolSettings) if f.name != "url"}
    hints = typing.get_type_hints(PoolOptions)
    assert list(hints) == list(fields)
    assert not PoolOptions.__required_keys__
    settings_hints = typing.get_type_hints(PoolSettings)
    # read_url also takes one URL as a string (or a list), as PoolSettings does at run time.
    assert hints["read_url"] == str | tuple[str, ...] | list[str]
    assert settings_hints["read_url"] == tuple[str, ...]
    assert all(hints[name] == settings_hints[name] for name in fields if name != "read_url")


def test_misspelt_option_is_a_type_error() -> None:
    from pgpool_core import PoolManager

    with pytest.raises(TypeError, match="max_sise"):
        PoolManager("postgresql://db/x", max_sise=5)  # type: ignore[call-arg]


def test_reset_policy_by_name_or_callable_and_refused_otherwise() -> None:
    async def mine(connector: object) -> None:
        pass

    assert PoolSettings(reset=" Discard ").reset == "discard"
    assert PoolSettings.from_env({"POSTGRES_RESET": "none"}).reset == "none"
    assert PoolSettings(reset=mine).reset is mine
    assert PoolSettings(reset=mine).as_dict()["reset"].endswith("mine")
    with pytest.raises(
        SettingsError,
        match=r"reset from environment POSTGRES_RESET: expected one of none, rollback, discard",
    ):
        PoolSettings.from_env({"POSTGRES_RESET": "truncate"})


def test_transaction_settings_are_checked_before_anything_is_sent() -> None:
    from pgpool_core import QueryParameterError
    from pgpool_core._session import local_settings

    assert local_settings({"app.x": 1, "b": True, "c": "v", "d": 1.5}) == (
        ("app.x", "1"),
        ("b", "on"),
        ("c", "v"),
        ("d", "1.5"),
    )
    for bad, message in (
        ({"": "x"}, "bad setting name"),
        ({"a": None}, "settings['a']: expected a string, number or boolean, got NoneType"),
        ({"a": "x\x00"}, "NUL"),
        (["a"], "expected a mapping"),
    ):
        with pytest.raises(QueryParameterError, match=re.escape(message)):
            local_settings(bad)  # type: ignore[arg-type]

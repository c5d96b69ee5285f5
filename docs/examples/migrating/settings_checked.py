"""Settings are typed and checked: fractions of a second, a bad value named with its key,
a misspelt key named with the closest real one."""

import logging
import os

from pgpool_core import PoolSettings, SettingsError

url = os.environ["POSTGRES_URL"]
no_env: dict[str, str] = {}  # only the mapping below, not this process's POSTGRES_*

# Tornado application settings, as sprockets-postgres read them; seconds may be fractions.
settings = PoolSettings.from_mapping(
    {"postgres_url": url, "postgres_query_timeout": "2.5", "postgres_json": "yes"}, no_env
)
assert (settings.query_timeout, settings.enable_json) == (2.5, True)
assert settings.max_lifetime == 300.0  # postgres_connection_ttl's default (1.8.1: 10 s)

try:
    PoolSettings.from_mapping({"postgres_url": url, "postgres_max_pool_size": "lots"}, no_env)
    refused = ""
except SettingsError as exc:  # also a ValueError
    refused = str(exc)
print(refused)
assert refused == "max_size from settings postgres_max_pool_size: expected an integer, got 'lots'"


class Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        seen.append(record.getMessage())


# A misspelt postgres_* key is ignored, with one warning on the pgpool.settings logger.
seen: list[str] = []
logging.getLogger("pgpool.settings").addHandler(Collect())
PoolSettings.from_mapping({"postgres_url": url, "postgres_max_pool_sise": 5}, no_env)
print(seen[0])
assert seen == [
    "unknown setting 'postgres_max_pool_sise' is ignored; did you mean 'postgres_max_pool_size'?"
]

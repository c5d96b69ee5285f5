"""A COMMIT whose answer is lost: CommitUnknownError, or resolved with resolve_commits."""

import asyncio

import pytest

from pgpool_core import CommitUnknownError, PoolManager

SCHEMA = """
CREATE TABLE orders (id text PRIMARY KEY);
-- A deferred trigger runs at COMMIT: it makes COMMIT take 2 s, long enough to cut
-- the connection while the server is committing.
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON orders
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


async def cut_during_commit(postgres_server, postgres_proxy, database: str) -> None:
    """Wait until the server runs COMMIT, then cut the client's connection (TCP RST)."""
    for _ in range(500):
        rows = await asyncio.to_thread(postgres_server.activity, database)
        if any(row["query"] == "COMMIT" and row["state"] == "active" for row in rows):
            break
        await asyncio.sleep(0.01)  # pg_stat_activity has no notification to wait on
    else:
        raise AssertionError("COMMIT never started")
    postgres_proxy.reset()  # the answer to COMMIT can no longer arrive
    for _ in range(500):
        if not postgres_proxy.open_links:
            break
        await asyncio.sleep(0.01)
    postgres_proxy.heal()


@pytest.mark.asyncio
async def test_lost_commit_answer_is_unknown_until_txid_status_tells(
    postgres_db_url: str, postgres_server, postgres_proxy
) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    async with PoolManager(postgres_proxy.rewrite(postgres_db_url), min_size=0) as pool:
        await pool.execute(SCHEMA)
        xid = None

        async def place_order() -> None:
            nonlocal xid
            async with pool.transaction() as tx:
                xid = (await tx.execute("SELECT txid_current() AS xid")).row["xid"]
                await tx.execute("INSERT INTO orders VALUES ('order-1')")

        task = asyncio.create_task(place_order())
        await cut_during_commit(postgres_server, postgres_proxy, database)
        with pytest.raises(CommitUnknownError, match="may or may not have committed"):
            await task

        # Never retry blindly: ask the server how that transaction ended.
        status = "in progress"
        while status == "in progress":  # the server may still be finishing the COMMIT
            await asyncio.sleep(0.05)
            row = (await pool.execute("SELECT txid_status(%s) AS status", [xid])).row
            status = row["status"]
        assert status == "committed"  # here it did: a blind retry would place it twice
        assert (await pool.execute("SELECT count(*) AS n FROM orders")).row == {"n": 1}


@pytest.mark.asyncio
async def test_resolve_commits_asks_the_server_itself(
    postgres_db_url: str, postgres_server, postgres_proxy
) -> None:
    database = postgres_db_url.rsplit("/", 1)[1]
    url = postgres_proxy.rewrite(postgres_db_url)
    async with PoolManager(url, min_size=0, resolve_commits=True) as pool:
        await pool.execute(SCHEMA)

        async def place_order() -> None:
            async with pool.transaction() as tx:
                await tx.execute("INSERT INTO orders VALUES ('order-1')")

        task = asyncio.create_task(place_order())
        await cut_during_commit(postgres_server, postgres_proxy, database)
        await task  # returns: txid_status, asked on a new connection, said committed

        assert (await pool.execute("SELECT count(*) AS n FROM orders")).row == {"n": 1}

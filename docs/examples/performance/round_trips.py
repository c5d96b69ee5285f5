"""What a transaction costs under each option: the messages it sends (counted on the
driver fakes, one message = one round trip) and whether it takes a transaction id (asked
of the real server)."""

import asyncio
import os

from pgpool_core import PoolManager
from pgpool_core.testing import FakeConnector

UPDATE = "UPDATE items SET n = n + 1"


async def messages(**options: object) -> list[str]:
    fake = FakeConnector()
    fake.on("txid_current", rows=[{"xid": 1, "started": "-"}])
    pool = PoolManager("postgresql://app@db.invalid/shop", connector=fake)
    async with pool, pool.transaction(**options) as tx:
        await tx.execute(UPDATE)
    return fake.connections[0].messages


async def takes_an_xid(url: str, **options: object) -> bool:
    async with PoolManager(url) as pool, pool.transaction(**options) as tx:
        row = (await tx.execute("SELECT txid_current_if_assigned() AS xid")).row
    return row["xid"] is not None


async def main() -> None:
    # The default: BEGIN travels with the first statement.
    assert await messages() == [f"BEGIN; {UPDATE}", "COMMIT"]
    # resolve_commit: BEGIN reads the transaction id first, in a message of its own.
    sent = await messages(resolve_commit=True)
    assert sent[0].startswith("BEGIN; SELECT txid_current()")
    assert sent[1:] == [UPDATE, "COMMIT"]
    # settings: set_config() is the first statement, sent with BEGIN.
    sent = await messages(settings={"app.tenant_id": "42"})
    assert sent == ["BEGIN; SELECT set_config(%s, %s, true)", UPDATE, "COMMIT"]

    url = os.environ["POSTGRES_URL"]
    assert not await takes_an_xid(url)  # a transaction that only reads takes none
    assert await takes_an_xid(url, resolve_commit=True)  # unless it resolves commits
    assert not await takes_an_xid(url, resolve_commit=True, read_only=True)
    print("default: 2 round trips; resolve_commit: 3 and an xid; settings: 3")


asyncio.run(main())

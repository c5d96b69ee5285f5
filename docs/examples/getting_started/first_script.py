"""A first script: a pool from POSTGRES_URL, statements, a transaction, the pool's status.

Run it with ``POSTGRES_URL=postgresql://user@host/db python first_script.py``.
"""

import asyncio
import os

from pgpool_core import PoolManager


async def main() -> None:
    url = os.environ["POSTGRES_URL"]
    async with PoolManager(url, min_size=1, max_size=5) as pool:  # start ... stop
        await pool.execute("DROP TABLE IF EXISTS basket")  # start afresh on every run
        await pool.execute("CREATE TABLE basket (name text PRIMARY KEY, stock int NOT NULL)")
        # Outside a transaction each statement commits on its own.
        await pool.execute("INSERT INTO basket VALUES (%s, %s)", ["apple", 3])

        # BEGIN ... COMMIT on one connection; the whole block within 5 seconds.
        async with pool.transaction(timeout=5.0) as tx:
            await tx.execute("UPDATE basket SET stock = stock - 1 WHERE name = %s", ["apple"])
            await tx.execute(
                "INSERT INTO basket VALUES (%(name)s, %(stock)s)", {"name": "pear", "stock": 1}
            )

        # An exception leaving the block rolls it back: nothing of it is committed.
        try:
            async with pool.transaction() as tx:
                await tx.execute("DELETE FROM basket")
                raise RuntimeError("changed my mind")
        except RuntimeError:
            pass

        result = await pool.execute("SELECT name, stock FROM basket ORDER BY name")
        assert result.rows == [{"name": "apple", "stock": 2}, {"name": "pear", "stock": 1}]
        print(result.row_count, "rows:", result.rows)

        one = await pool.execute("SELECT stock FROM basket WHERE name = %s", ["pear"])
        print("pear:", one.row)  # the only row as a dict, or None

        status = await pool.status()  # a real round trip (or a success in the last second)
        assert status.available
        print(f"pool {status.name}: {status.pool_size} open, {status.pool_free} idle")


if __name__ == "__main__":
    asyncio.run(main())

"""A first plain Tornado application on pgpool: no sprockets.http, so the application
starts and stops the pool itself.

Run it with ``POSTGRES_URL=postgresql://user@host/db python tornado_app.py``; it serves on
port 8000. Ctrl-C stops it and closes the pool.
"""

import asyncio
import contextlib
from typing import Any

from tornado import web

import pgpool_tornado


class Application(pgpool_tornado.ApplicationMixin, web.Application):
    pass


class ClockHandler(pgpool_tornado.RequestHandlerMixin, web.RequestHandler):
    async def get(self) -> None:
        result = await self.postgres_execute(
            "SELECT now() AS now, current_database() AS database", metric_name="clock"
        )
        row = result.row
        self.write({"database": row["database"], "now": row["now"].isoformat()})


def make_app(**settings: Any) -> Application:
    return Application(
        [(r"/clock", ClockHandler), (r"/status", pgpool_tornado.StatusRequestHandler)],
        **settings,  # postgres_url here, else the POSTGRES_URL environment variable
    )


async def main() -> None:
    application = make_app()
    await application.postgres_start()  # opens the pool (even with the database down)
    application.listen(8000)
    try:
        await asyncio.Event().wait()  # serve until Ctrl-C
    finally:
        await application.postgres_stop()  # lets work in flight finish, closes the pool


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: main() stops the pool first
        asyncio.run(main())

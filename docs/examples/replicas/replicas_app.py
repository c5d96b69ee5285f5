"""A Tornado service whose reads go to the standby and whose own writes stay visible."""

from tornado import web

import pgpool_tornado

WHERE = "pg_is_in_recovery() AS on_standby"


class Application(pgpool_tornado.ApplicationMixin, web.Application):
    pass


class NotesHandler(pgpool_tornado.RequestHandlerMixin, web.RequestHandler):
    postgres_read_only = True  # this handler's calls are reads unless they say otherwise

    async def get(self) -> None:
        result = await self.postgres_execute(f"SELECT count(*) AS notes, {WHERE} FROM notes")
        self.write(result.row)

    async def post(self) -> None:
        await self.postgres_execute(
            "INSERT INTO notes VALUES (%s)", [self.request.body.decode()], read_only=False
        )
        # This request wrote: its reads now run on the primary and see the new note.
        result = await self.postgres_execute(f"SELECT count(*) AS notes, {WHERE} FROM notes")
        self.set_status(201)
        self.write(result.row)


def make_app(primary_url: str, standby_url: str) -> Application:
    return Application(
        [("/notes", NotesHandler), ("/status", pgpool_tornado.StatusRequestHandler)],
        postgres_url=primary_url,
        postgres_read_url=standby_url,
        postgres_max_replica_lag=5,
    )

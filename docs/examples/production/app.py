"""A Tornado service with the three health probes and a slow report."""

from tornado import web

import pgpool_tornado


class Application(pgpool_tornado.ApplicationMixin, web.Application):
    pass


class ReportHandler(pgpool_tornado.RequestHandlerMixin, web.RequestHandler):
    async def get(self) -> None:
        # A slow statement: cancelled on the server if the client hangs up meanwhile.
        seconds = float(self.get_argument("seconds", "5"))
        result = await self.postgres_execute("SELECT count(*) AS n FROM pg_sleep(%s)", [seconds])
        self.write(result.row)


def make_app(url: str) -> Application:
    return Application(
        [
            ("/livez", pgpool_tornado.LivenessRequestHandler),
            ("/readyz", pgpool_tornado.ReadinessRequestHandler),
            ("/startupz", pgpool_tornado.StartupRequestHandler),
            ("/report", ReportHandler),
        ],
        postgres_url=url,
        postgres_min_pool_size=2,
        postgres_shutdown_grace=1.0,  # seconds of draining before the pool stops
    )

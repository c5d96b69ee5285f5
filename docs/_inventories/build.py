"""Write the intersphinx inventories the offline build reads (``python build.py``).

The build runs without network, so it cannot download the ``objects.inv`` of the projects
we link to. These files hold only the names pgpool's pages and docstrings refer to, each
with its real address in that project's documentation (``$`` stands for the name, as in
Sphinx's own inventories). Add a line when a page refers to a new outside name; the build
(``-n``) fails until it resolves.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: project -> (version, [(name, role, page#anchor)])
ENTRIES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "python": (
        "3",
        [
            ("asyncio.CancelledError", "py:exception", "library/asyncio-exceptions.html#$"),
            ("asyncio.TimeoutError", "py:exception", "library/asyncio-exceptions.html#$"),
            ("asyncio.Event", "py:class", "library/asyncio-sync.html#$"),
            ("asyncio.Future", "py:class", "library/asyncio-future.html#$"),
            ("asyncio.Task", "py:class", "library/asyncio-task.html#$"),
            ("asyncio.Queue", "py:class", "library/asyncio-queue.html#$"),
            ("asyncio.run", "py:function", "library/asyncio-runner.html#$"),
            ("asyncio.wait_for", "py:function", "library/asyncio-task.html#$"),
            ("asyncio.timeout", "py:function", "library/asyncio-task.html#$"),
            ("asyncio.gather", "py:function", "library/asyncio-task.html#$"),
            ("collections.abc.AsyncIterator", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Awaitable", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Callable", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Iterable", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Iterator", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Mapping", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Sequence", "py:class", "library/collections.abc.html#$"),
            ("contextlib.AbstractAsyncContextManager", "py:class", "library/contextlib.html#$"),
            ("enum.Enum", "py:class", "library/enum.html#$"),
            ("enum.IntEnum", "py:class", "library/enum.html#$"),
            ("logging.Logger", "py:class", "library/logging.html#$"),
            ("pathlib.Path", "py:class", "library/pathlib.html#$"),
            ("typing.Any", "py:data", "library/typing.html#$"),
            ("typing.Protocol", "py:class", "library/typing.html#$"),
            ("Exception", "py:exception", "library/exceptions.html#$"),
            ("TimeoutError", "py:exception", "library/exceptions.html#$"),
            ("ValueError", "py:exception", "library/exceptions.html#$"),
            ("RuntimeError", "py:exception", "library/exceptions.html#$"),
            ("object", "py:class", "library/functions.html#$"),
            ("str", "py:class", "library/stdtypes.html#$"),
            ("int", "py:class", "library/functions.html#$"),
            ("float", "py:class", "library/functions.html#$"),
            ("bool", "py:class", "library/functions.html#$"),
            ("bytes", "py:class", "library/stdtypes.html#$"),
            ("dict", "py:class", "library/stdtypes.html#$"),
            ("list", "py:class", "library/stdtypes.html#$"),
            ("tuple", "py:class", "library/stdtypes.html#$"),
            ("None", "py:data", "library/constants.html#$"),
        ],
    ),
    "tornado": (
        "6",
        [
            ("tornado.web.Application", "py:class", "web.html#$"),
            ("tornado.web.RequestHandler", "py:class", "web.html#$"),
            ("tornado.web.HTTPError", "py:exception", "web.html#$"),
            ("tornado.web.RequestHandler.on_connection_close", "py:method", "web.html#$"),
            ("tornado.testing.AsyncHTTPTestCase", "py:class", "testing.html#$"),
            ("tornado.ioloop.IOLoop", "py:class", "ioloop.html#$"),
        ],
    ),
    "psycopg2": (
        "2.9",
        [
            ("psycopg2.Error", "py:exception", "module.html#$"),
            ("psycopg2.OperationalError", "py:exception", "module.html#$"),
            ("psycopg2.extensions.connection", "py:class", "connection.html#connection"),
            ("psycopg2.extensions.cursor", "py:class", "cursor.html#cursor"),
        ],
    ),
    "aiopg": (
        "1.4",
        [
            ("aiopg.Connection", "py:class", "core.html#$"),
            ("aiopg.Cursor", "py:class", "core.html#$"),
            ("aiopg.Pool", "py:class", "core.html#$"),
        ],
    ),
}


def inventory(project: str, version: str, entries: list[tuple[str, str, str]]) -> bytes:
    """The bytes of a Sphinx inventory, version 2 (zlib-compressed lines)."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(entries))
    return header + zlib.compress(body.encode())


def main() -> None:
    for project, (version, entries) in ENTRIES.items():
        (HERE / f"{project}.inv").write_bytes(inventory(project, version, entries))


if __name__ == "__main__":
    main()

"""The ``sheepdog`` command: serve an earlier request's results, or show its progress.

``sheepdog serve --dbfile F --port P`` restarts the callback server for
requests already in ``F`` (after the process that submitted them ended or
crashed), so that tasks still running can deliver their results.
``sheepdog status RID --dbfile F`` prints how far a request has come.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from .progress import describe
from .server import Server
from .storage import Storage


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sheepdog", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve results for requests in a database")
    serve.add_argument("--dbfile", default="./sheepdog.sqlite")
    serve.add_argument("--port", type=int, required=True,
                       help="the port the workers of the request call back on")
    serve.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    status = commands.add_parser("status", help="show the progress of a request")
    status.add_argument("request_id", type=int)
    status.add_argument("--dbfile", default="./sheepdog.sqlite")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="sheepdog: %(message)s")
    if arguments.command == "serve":
        server = Server(arguments.dbfile, port=arguments.port, bind=arguments.bind)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    storage = Storage(arguments.dbfile)
    try:
        progress = storage.progress(arguments.request_id)
    except KeyError as error:
        print(f"sheepdog: {error.args[0]}", file=sys.stderr)
        return 1
    print(describe(progress, elapsed=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())

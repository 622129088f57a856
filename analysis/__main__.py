"""Command line: ``python -m analysis {sweep,report,main} ...``.

- ``sweep``: run the depth-study notebook over a grid of depths and settings.
- ``report``: compile executed notebooks into HTML reports and an index.
- ``main``: the default study (a small sweep) followed by its report; ``make report`` runs it.

Every command reports bad input (a value, a path, an unreachable scheduler, a
folder another process holds) as one line naming what is wrong, with exit
status 2; a sweep stopped by SIGINT, SIGTERM or SIGHUP exits with 128 + the
signal number once its points are stopped and recorded.
"""
from __future__ import annotations

import argparse
import sys

from analysis.checks import shown
from analysis.extras import MissingExtra
from analysis.locks import FolderBusy

USAGE_ERRORS = (ValueError, ConnectionError, FolderBusy, OSError, MissingExtra)
"""What a command raises for input it cannot use (or a feature whose extra is missing); one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    try:
        from analysis import default_study, report, sweep
    except MissingExtra as exc:
        print(f"python -m analysis: {exc}", file=sys.stderr)
        return 2
    commands_of = {"sweep": sweep, "report": report, "main": default_study}
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(commands_of) + "}")
    for name, module in commands_of.items():
        sub = commands.add_parser(name, help=module.__doc__.strip().splitlines()[0],
                                  description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    try:
        return commands_of[args.command].run(args)
    except sweep.SweepCancelled as exc:
        print(f"{args.command}: {exc}; unfinished points are recorded as cancelled", file=sys.stderr)
        return 128 + exc.signum
    except USAGE_ERRORS as exc:
        print(f"{args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2


def error_line(exc: BaseException) -> str:
    """One line for a usage error: the message (an OSError's with the path it names)."""
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {shown(str(exc.filename))}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())

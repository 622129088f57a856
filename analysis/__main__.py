"""Command line: ``python -m analysis {sweep,report,main} ...``.

- ``sweep``: run the depth-study notebook over a grid of depths and settings.
- ``report``: compile executed notebooks into HTML reports and an index.
- ``main``: the default study (a small sweep) followed by its report; ``make report`` runs it.
"""
from __future__ import annotations

import argparse
import sys

from analysis import default_study, report, sweep

COMMANDS = {
    "sweep": sweep,
    "report": report,
    "main": default_study,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.__doc__.strip().splitlines()[0],
                                  description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())

"""python -m analysis.bench {overhead,peak,peers,reductions} ...: see analysis.bench."""

from __future__ import annotations

import argparse
import sys

from analysis.bench import overhead, peers, reductions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.bench",
                                     description="Benchmarks of the hook Monitor, written as markdown tables.")
    commands = parser.add_subparsers(dest="command", required=True)
    overhead.add_parser(commands)
    peers.add_parser(commands)
    reductions.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())

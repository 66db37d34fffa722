"""The ``storedvalue`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module is
imported only when listed here, so ``storedvalue terminal`` never loads the HQ's database
code and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

# Subcommand modules, in the order ``--help`` shows them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "storedvalue.cli.serve",
    "storedvalue.cli.admin",
    "storedvalue.cli.terminal",
    "storedvalue.cli.demo",
)


def _version() -> str:
    try:
        return version("storedvalue")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storedvalue",
        description="Stored value (gift cards, credit memos) for tills that keep selling offline.",
    )
    parser.add_argument("--version", action="version", version=f"storedvalue {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

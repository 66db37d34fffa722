"""The ``storedvalue`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module exposing ``register(subparsers)``; only the module
of the subcommand being run is imported (``storedvalue --help`` lists them from the table
below), so ``storedvalue terminal`` and ``admin`` never load HQ's modules, and a till
installed without the ``hq`` extra runs them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

# Subcommands: their module and what ``storedvalue --help`` says of them, in its order.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("storedvalue.cli.serve", "run the HQ server (needs storedvalue[hq])"),
    "admin": ("storedvalue.cli.admin", "back-office operations against a running HQ"),
    "terminal": ("storedvalue.cli.terminal",
                 "act as one till: lock, sell, check balances, sync the outbox"),
    "demo": ("storedvalue.cli.demo",
             "play the offline-switch story with a real HQ and two tills (needs "
             "storedvalue[hq])"),
}


def _version() -> str:
    try:
        return version("storedvalue")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the full options of `command` only (its module imported); the other
    subcommands are listed by name and summary."""
    parser = argparse.ArgumentParser(
        prog="storedvalue",
        description="Stored value (gift cards, credit memos) for tills that keep selling offline.",
    )
    parser.add_argument("--version", action="version", version=f"storedvalue {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in SUBCOMMANDS.items():
        if name == command:
            importlib.import_module(module_name).register(subparsers, summary)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # The top level has no option taking a value: the first word is the subcommand.
    command = next((word for word in arguments if not word.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(arguments)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

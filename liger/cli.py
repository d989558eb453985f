"""`python -m liger <command>`: the entry point that the Snakemake rules and users call."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from liger.errors import LigerError

# Modules that contribute subcommands through `add_cli(subparsers)`.
COMMAND_MODULES = [
    "liger.cli_model",
    "liger.data",
    "liger.stages_cli",
    "liger.evaluate",
    "liger.coverage",
    "liger.passkey",
    "liger.position_loss",
    "liger.gates",
    "liger.profile",
    "liger.report",
    "liger.publish",
    "liger.plan",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liger", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = args.func(args)
    except LigerError as e:
        message = " ".join(str(e).split())  # one line, whatever a wrapped library message holds
        print(f"liger {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"liger {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def path_arg(value: str) -> Path:
    return Path(value).expanduser()


if __name__ == "__main__":
    sys.exit(main())

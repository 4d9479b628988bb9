"""The ``qualiclip`` command: one module per subcommand, what they share in :mod:`qualiclip_metric.cli.common`.

Exit codes: 0 every input was scored; 1 some inputs could not be scored (they are in the output
with their error); 2 invalid arguments, no input images, or an output that cannot be written;
3 the weights could not be loaded; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys

from qualiclip_metric.cli import download, evaluate, export, info, map, report, score
from qualiclip_metric.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    EXIT_WEIGHTS,
    CommandError,
)

#: The subcommands, in the order ``qualiclip --help`` lists them.
COMMANDS = (score, evaluate, map, report, download, export, info)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``run``, the function that carries it out."""
    from qualiclip_metric import __version__

    parser = argparse.ArgumentParser(
        prog="qualiclip", description="QualiCLIP no-reference image quality (higher is better)."
    )
    parser.add_argument("--version", action="version", version=f"qualiclip-metric {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``qualiclip`` with ``argv`` (default ``sys.argv[1:]``) and return its exit code.

    Examples:
        >>> main(["info"])  # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CommandError as err:
        print(f"qualiclip: {err.message}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:  # while loading or scoring; `score` keeps what it has written (see score.run)
        print("qualiclip: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "EXIT_WEIGHTS",
    "CommandError",
    "build_parser",
    "main",
]

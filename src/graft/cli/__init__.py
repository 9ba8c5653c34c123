"""The `graft` command: parse arguments, call one library function, print the result.

Every subcommand is one import away in Python; nothing here trains, tokenizes or samples by
itself. Each lives in the module of its stage (data, train, use, evaluate) as a parser and a
runner; COMMANDS below lists them in the order `graft --help` shows. A GraftError (bad input)
prints as one line on stderr and exits 2; `--debug` shows the traceback. Ctrl-C exits 130,
leaving the last complete checkpoint in place. An experiment whose report holds a failed run
exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from graft.cli import data, evaluate, train, use
from graft.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_RUNS_FAILED,
    Command,
    split_overrides,
)
from graft.errors import GraftError

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_RUNS_FAILED", "build_parser", "main"]

# `overrides`: the command takes --section.key=value besides its own flags. `one_process`: it
# plans and runs its own trainings one after another, so under torchrun every rank would run the
# whole plan and write the same files at once.
COMMANDS = (
    Command("quickstart", train.add_quickstart, train.run_quickstart, one_process=True),
    Command("tokenizer", data.add_tokenizer, data.run_tokenizer),
    Command("data", data.add_data, data.run_data),
    Command("pretrain", train.add_pretrain, train.run_pretrain, overrides=True),
    Command("finetune", train.add_finetune, train.run_finetune, overrides=True),
    Command("generate", use.add_generate, use.run_generate),
    Command("export", use.add_export, use.run_export),
    Command(
        "experiment",
        train.add_experiment,
        train.run_experiment,
        overrides=True,
        one_process=True,
    ),
    Command("audit", train.add_audit, train.run_audit, overrides=True, one_process=True),
    Command("eval", evaluate.add_eval, evaluate.run_eval),
    Command("extract", evaluate.add_extract, evaluate.run_extract),
    Command("serve", use.add_serve, use.run_serve),
    Command("chat", use.add_chat, use.run_chat),
    Command("runs", evaluate.add_runs, evaluate.run_runs),
    Command("explain", evaluate.add_explain, evaluate.run_explain),
)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, as every other bad input is: the usage block it
    prints first pushes the one line that says what is wrong away from the prompt."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graft", description="Transfer learning with transformer language models."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks"
    )  # the default for COMMON
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def _refuse_torchrun(command: str) -> None:
    from graft.distributed import world_from_env

    if world_from_env().size > 1:
        raise GraftError(
            f"graft {command} runs in one process (it runs its trainings one after another): "
            "launch it without torchrun"
        )


def _command_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the (sub)command that was run, so that its error points to its own help
    (`graft tokenizer train --help`), which lists the flags, not `graft --help`."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or getattr(args, subs[0].dest, None) is None:
            return parser
        parser = subs[0].choices[getattr(args, subs[0].dest)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    try:
        if command.one_process:
            _refuse_torchrun(command.name)
        if command.overrides:
            args.overrides = split_overrides(extra)
        elif extra:
            _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
        return command.run(args)
    except GraftError as err:
        if args.debug:
            traceback.print_exc()
        print(f"graft: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of a pipe stopped (`graft data collect ... --out - | head`): not an
        # error of ours. Later writes (Python's own flush at exit) go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:
        # A path the system refused (a file where a folder must be, no permission, a read-only
        # disk): the user's to fix, so one line naming it. An OSError without a path is a bug
        # of ours and keeps its traceback. A rename names its destination second.
        path = err.filename2 if err.filename2 is not None else err.filename
        if path is None:
            raise
        if args.debug:
            traceback.print_exc()
        shown = os.fsdecode(path) if isinstance(path, str | bytes) else str(path)
        print(f"graft: error: {shown}: {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT

"""What the `graft` subcommands share: exit statuses, the flags several commands take alike, the
`--section.key=value` override syntax, and the step from parsed flags to a library options
record. It imports no torch, so that `graft --help` is quick."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from graft.errors import GraftError

if TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed import DataclassInstance

_Options = TypeVar("_Options", bound="DataclassInstance")

EXIT_RUNS_FAILED = 1  # an experiment ran to its report, but some of its runs failed
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process killed by it


# Options every command takes, before or after its name (graft --debug pretrain /
# graft pretrain --debug).
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument(
    "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
)

# Flags several commands take alike, so each has one help text.
_SHARED: dict[str, dict[str, Any]] = {
    "checkpoint": {
        "type": Path,
        "help": "checkpoint directory, run directory or Hugging Face directory",
    },
    "--device": {"help": "cpu, cuda, cuda:N, mps or auto (default: cpu)"},
    "--no-progress": {"action": "store_true", "help": "no progress bars"},
    "--resume": {
        "action": "store_true",
        "help": "continue the run in train.out_dir from checkpoints/last",
    },
    "--print-config": {"action": "store_true", "help": "print the resolved config and exit"},
    "--text-field": {"help": "text field of the labelled records (default: text)"},
    "--label-field": {"help": "label field of the labelled records (default: label)"},
}


def add_shared(parser: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        parser.add_argument(name, **_SHARED[name])


def split_overrides(extra: list[str]) -> list[str]:
    """`--a.b=1` and `--a.b 1` both become 'a.b=1'; anything else is an error."""
    overrides, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--") or "." not in item.split("=", 1)[0]:
            raise GraftError(
                f"unrecognised argument {item!r}; config overrides look like --train.max_steps=100"
            )
        if "=" in item:
            overrides.append(item[2:])
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            overrides.append(f"{item[2:]}={extra[i + 1]}")
            i += 2
        else:
            raise GraftError(f"override {item} has no value; write {item}=VALUE")
    return overrides


def options_from(cls: type[_Options], args: argparse.Namespace, **values: object) -> _Options:
    """`cls` from `values` and from the flags named as its fields (--out for out_dir). None is left
    out: flags left unset keep the dataclass's defaults, so every default lives in one place."""
    given = {
        f.name: getattr(args, "out" if f.name == "out_dir" else f.name, None) for f in fields(cls)
    }
    given.update(values)
    return cls(**{key: value for key, value in given.items() if value is not None})


@dataclass(frozen=True)
class Command:
    """One `graft` subcommand: `add` registers its parser, `run` does it and returns the exit
    status. A command that takes `--section.key=value` overrides reads them, already split, from
    `args.overrides`; one that runs its trainings one after another refuses torchrun."""

    name: str
    add: Callable[[argparse._SubParsersAction], None]
    run: Callable[[argparse.Namespace], int]
    overrides: bool = False
    one_process: bool = False

"""Every objective is a self-describing plug-in: its config, in the union the run config reads,
says what data it reads, what it asks of the model, and how it is built. A new objective that
forgets one of them fails here."""

from __future__ import annotations

import argparse
import inspect
from typing import get_args

import pytest

from graft.cli import build_parser
from graft.config import OBJECTIVES, ObjectiveConfig
from graft.model.config import preset
from graft.objectives.base import ObjectiveSection, RecordObjective, ShardObjective

UNION = get_args(get_args(ObjectiveConfig)[0])


def test_the_union_holds_every_objective_config_once() -> None:
    assert len(set(UNION)) == len(UNION) >= 8
    assert set(OBJECTIVES.values()) == set(UNION)
    for name, cls in OBJECTIVES.items():
        assert name in get_args(cls.model_fields["name"].annotation)


@pytest.mark.parametrize("cls", UNION, ids=lambda c: c.__name__)
def test_each_objective_declares_its_data_problems_and_build(cls: type) -> None:
    assert issubclass(cls, ObjectiveSection)
    assert issubclass(cls, ShardObjective) != issubclass(cls, RecordObjective)
    assert cls.reads in ("shards", "records")
    assert cls.__doc__ and cls.__module__.startswith("graft.objectives.")
    # build is the objective's own, not the base's placeholder
    assert not getattr(cls.build, "__isabstractmethod__", False)
    assert cls.build is not (ShardObjective if cls.reads == "shards" else RecordObjective).build
    assert set(inspect.signature(cls.build).parameters) == set(
        inspect.signature(
            (ShardObjective if cls.reads == "shards" else RecordObjective).build
        ).parameters
    )
    if issubclass(cls, RecordObjective):
        assert cls.head in ("sequence", "token", "span", "lm") and cls.monitor.startswith("val/")
    config = cls.model_validate(
        {"mix": {"clm": 1}} if cls.reads == "shards" and "mix" in cls.model_fields else {}
    )
    answers = [config.problems(preset("nano")), config.problems(preset("bert-nano"))]
    assert all(isinstance(problem, str) for problems in answers for problem in problems)
    if cls.attention is not None:  # an objective that needs one attention refuses the other
        assert [bool(problems) for problems in answers] != [False, False]


def test_the_finetune_command_offers_every_record_objective() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    finetune = commands.choices["finetune"]
    tasks = next(a for a in finetune._actions if isinstance(a, argparse._SubParsersAction))
    assert set(tasks.choices) == {
        n for n, c in OBJECTIVES.items() if issubclass(c, RecordObjective)
    }


def test_the_pretrain_help_names_every_shard_objective() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    option = next(a for a in commands.choices["pretrain"]._actions if a.dest == "objective")
    assert option.help is not None
    listed = option.help.split(" (")[0].replace(" or ", ", ").split(", ")
    assert set(listed) == {n for n, c in OBJECTIVES.items() if issubclass(c, ShardObjective)}

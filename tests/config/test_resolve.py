"""One resolve() before setup (DESIGN.md, Configuration): with train.init the model section is the
checkpoint's (read without weights), under one policy for what a run may override, and
--print-config prints what will run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graft.checkpoint import resolve, save_checkpoint
from graft.cli import main
from graft.config import (
    TrainConfig,
    load_finetune_config,
    load_run_config,
    validate_run_config,
)
from graft.data.tokenizer import Tokenizer
from graft.errors import CheckpointError, ConfigError
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel
from graft.objectives.classify import ClassifyConfig

SHAPE = {"n_layers": 2, "d_model": 32, "n_heads": 2, "max_seq_len": 48}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, bytes_data: Path) -> Path:
    """A tiny saved graft checkpoint whose shape differs from every ModelConfig default."""
    tokenizer = Tokenizer.load(bytes_data)
    model = LanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, **SHAPE))
    out = tmp_path_factory.mktemp("resolve") / "ckpt"
    return save_checkpoint(out, model=model, tokenizer=tokenizer, run_config_yaml="{}\n")


def _printed(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(args) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_pretrain_print_config_with_init_shows_the_checkpoints_model(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = _printed(["pretrain", "--init", str(checkpoint), "--print-config"], capsys)
    assert {k: printed["model"][k] for k in SHAPE} == SHAPE


def test_finetune_print_config_with_init_shows_the_checkpoints_model(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = _printed(
        ["finetune", "classify", "--init", str(checkpoint), "--train", "t.jsonl", "--print-config"],
        capsys,
    )
    assert {k: printed["model"][k] for k in SHAPE} == SHAPE
    assert printed["model"]["dropout"] == 0.1  # a run may set dropout


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_model_field_that_clashes_with_the_checkpoint_is_refused_by_both_commands(
    checkpoint: Path, command: str
) -> None:
    overrides = [f"train.init={checkpoint}", "model.n_layers=3", "model.d_model=32"]
    config = (
        load_finetune_config("classify", None, overrides)
        if command == "finetune"
        else load_run_config(None, overrides)
    )
    with pytest.raises(ConfigError) as err:
        resolve(config)
    assert "model.n_layers: run says 3, checkpoint has 2" in str(err.value)
    assert "d_model" not in str(err.value)  # agrees with the checkpoint: not a clash


def test_finetune_refuses_a_clashing_model_field_instead_of_dropping_it(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "train.jsonl"
    records.write_text('{"text": "a", "label": "x"}\n', encoding="utf-8")
    args = ["finetune", "classify", "--init", str(checkpoint), "--train", str(records)]
    out = tmp_path / "run"
    assert main([*args, "--out", str(out), "--model.n_layers=3", "--train.progress=false"]) == 2
    assert "model.n_layers: run says 3, checkpoint has 2" in capsys.readouterr().err
    assert not out.exists()


def test_resolve_takes_dropout_and_pooling_and_is_idempotent(checkpoint: Path) -> None:
    config = load_run_config(
        None,
        [f"train.init={checkpoint}", "model.dropout=0.2", "model.classifier_pooling=mean"],
    )
    resolved = resolve(config)
    assert resolved.model.n_layers == 2 and resolved.model.max_seq_len == 48
    assert resolved.model.dropout == 0.2 and resolved.model.classifier_pooling == "mean"
    assert resolve(resolved) == resolved
    plain = load_run_config(None, ["train.max_steps=3"])
    assert resolve(plain) == plain  # nothing to resolve without train.init


def test_a_train_seq_len_longer_than_the_checkpoint_is_refused_at_resolve(checkpoint: Path) -> None:
    config = load_finetune_config(
        "classify", None, [f"train.init={checkpoint}", "train.seq_len=64"]
    )
    with pytest.raises(ConfigError, match=r"train.seq_len \(64\) exceeds model.max_seq_len \(48\)"):
        resolve(config)


def test_the_continue_recipe_without_init_is_refused_naming_train_init(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """configs/pretrain/continue.yaml is for continued pre-training: run without --init it
    trained a fresh model, silently. Its placeholder init is now refused, naming the key."""
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).parents[2] / "configs" / "pretrain" / "continue.yaml"
    refused = r"^train\.init: CHECKPOINT: no such .*--init sets it"
    with pytest.raises(CheckpointError, match=refused):
        resolve(load_run_config(recipe))


def test_finetune_reads_the_resolved_seq_len(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With train.seq_len unset, the run's context is the checkpoint's max_seq_len, read from
    RunConfig.seq_len (the one place it is computed)."""
    config = load_finetune_config("classify", None, [f"train.init={checkpoint}"])
    assert config.train.seq_len is None
    assert resolve(config).seq_len == 48
    seen: list[int] = []

    class Seen(Exception):
        pass

    def build(self, records, tokenizer, *, max_len, bidirectional):  # noqa: ANN001, ARG001
        seen.append(max_len)
        raise Seen

    monkeypatch.setattr(ClassifyConfig, "build", build)
    monkeypatch.setattr(type(config), "seq_len", property(lambda self: 40))
    records = tmp_path / "train.jsonl"
    records.write_text('{"text": "a", "label": "x"}\n', encoding="utf-8")
    from graft.train.finetune import finetune

    run = config.model_copy(update={"data": config.data.model_copy(update={"train_file": records})})
    with pytest.raises(Seen):
        finetune(run, echo=lambda _: None)
    assert seen == [40]  # RunConfig.seq_len, not a recomputation


def test_no_train_section_and_a_train_section_without_a_limit_train_the_same() -> None:
    absent = validate_run_config({})
    partial = validate_run_config({"train": {"batch_size": 8}})
    limits = ("max_steps", "max_tokens", "max_minutes")
    assert [getattr(absent.train, k) for k in limits] == [getattr(partial.train, k) for k in limits]
    assert absent.train.max_steps == TrainConfig().max_steps is not None
    assert partial.train.batch_size == 8
    only_tokens = validate_run_config({"train": {"max_tokens": 1000}}).train
    assert only_tokens.max_steps is None and only_tokens.max_tokens == 1000


def test_resume_resolves_the_model_from_the_runs_last_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume with no model settings continues the run's own model, not the default one; a
    model setting that contradicts it is refused, naming the field."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "checkpoints" / "last")
    printed = _printed(
        ["pretrain", "--resume", "--out", str(run), "--data", "d", "--print-config"], capsys
    )
    assert {k: printed["model"][k] for k in SHAPE} == SHAPE
    with pytest.raises(ConfigError, match=r"--resume: .*model\.n_layers: run says 5"):
        resolve(load_run_config(None, [f"train.out_dir={run}", "model.n_layers=5"]), resume=True)
    fresh = load_run_config(None, [f"train.out_dir={run}"])
    assert resolve(fresh) == fresh  # without --resume the run's checkpoint is not read

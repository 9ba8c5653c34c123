"""Pre-training objectives through the `graft` command (in-process, tiny models): BERT's mlm+nsp
exported as BertForPreTraining, denoising, a mixture, continued pre-training with replay, and
the refusals that name what to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graft.cli import main
from graft.train.metrics_log import read_metrics

pytestmark = pytest.mark.e2e

TINY = [
    "--model.max_seq_len=32",
    "--model.d_model=32",
    "--model.n_layers=1",
    "--model.n_heads=2",
    "--train.batch_size=4",
    "--train.max_steps=4",
    "--train.eval_every=2",
    "--train.eval_batches=2",
    "--train.log_every=1",
    "--train.progress=false",
    "--optim.warmup_steps=1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, make_corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("objectives_cli")
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--kind",
                "bytes",
                "--sentinels",
                "8",
                "--out",
                str(root / "tok"),
            ]
        )
        == 0
    )
    general = make_corpus(root / "general", documents=12, seed=0)
    domain = make_corpus(root / "domain", documents=8, seed=7)
    for name, corpus in (("general", general), ("domain", domain)):
        assert (
            main(
                [
                    "data",
                    "prepare",
                    str(corpus),
                    "--tokenizer",
                    str(root / "tok"),
                    "--out",
                    str(root / f"{name}_data"),
                    "--no-progress",
                ]
            )
            == 0
        )
    return {"root": root, "general": root / "general_data", "domain": root / "domain_data"}


def last_eval(run: Path) -> dict[str, float]:
    return [row for row in read_metrics(run / "metrics.jsonl") if "val/loss" in row][-1]


def test_mlm_nsp_trains_and_exports_as_bert_for_pretraining(data: dict[str, Path]) -> None:
    run = data["root"] / "bert"
    assert (
        main(
            [
                "pretrain",
                "--objective",
                "mlm+nsp",
                "--data",
                str(data["general"]),
                "--out",
                str(run),
                "--model.preset=bert-nano",
                *TINY,
            ]
        )
        == 0
    )
    metrics = last_eval(run)
    assert {"val/mlm_acc", "val/nsp_acc", "val/mlm_unigram_acc"} <= set(metrics)
    train_rows = [r for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert "train/nsp_acc" in train_rows[-1]
    assert main(["export", str(run), "--out", str(data["root"] / "bert_hf"), "--no-verify"]) == 0
    config = json.loads((data["root"] / "bert_hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"]


def test_denoise_and_mix_train_decoders(data: dict[str, Path]) -> None:
    for name, extra in (
        ("denoise", ["--objective", "denoise"]),
        ("bart", ["--objective", "denoise", "--objective.denoise_style=bart"]),
        ("mix", ["--objective", "mix", "--objective.mix={clm: 1, denoise: 1}"]),
    ):
        run = data["root"] / name
        assert (
            main(
                [
                    "pretrain",
                    *extra,
                    "--data",
                    str(data["general"]),
                    "--out",
                    str(run),
                    "--model.preset=nano",
                    *TINY,
                ]
            )
            == 0
        )
        metrics = last_eval(run)
        assert metrics["val/loss"] > 0
        if name == "mix":
            assert {"val/clm/loss", "val/denoise/loss"} <= set(metrics)


def test_continued_pretraining_replays_and_scores_both_domains(data: dict[str, Path]) -> None:
    base = data["root"] / "base"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(data["general"]),
                "--out",
                str(base),
                "--model.preset=nano",
                *TINY,
            ]
        )
        == 0
    )
    run = data["root"] / "continued"
    assert (
        main(
            [
                "pretrain",
                "--init",
                str(base / "checkpoints" / "last"),
                "--data",
                str(data["domain"]),
                "--replay",
                str(data["general"]),
                "--replay-fraction",
                "0.25",
                "--out",
                str(run),
                *[a for a in TINY if not a.startswith("--model.")],
            ]
        )
        == 0
    )
    metrics = last_eval(run)
    assert metrics["val/loss"] == metrics["val/domain/loss"] and "val/general/loss" in metrics
    # It starts from the base's weights: before its first step it scores the general data exactly as
    # the base ended.
    first = read_metrics(run / "metrics.jsonl")[0]
    assert first["step"] == 0 and first["val/general/loss"] == pytest.approx(
        last_eval(base)["val/loss"], rel=1e-5
    )


def test_init_refuses_model_settings_that_contradict_the_checkpoint(
    data: dict[str, Path], capsys
) -> None:
    base = data["root"] / "base2"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(data["general"]),
                "--out",
                str(base),
                "--model.preset=nano",
                *TINY,
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = main(
        [
            "pretrain",
            "--init",
            str(base),
            "--data",
            str(data["domain"]),
            "--out",
            str(data["root"] / "x"),
            "--model.d_model=64",
            *[a for a in TINY if not a.startswith("--model.")],
        ]
    )
    assert code == 2
    assert "model.d_model: run says 64, checkpoint has 32" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objective", "nsp", "--model.preset=nano"], "objective nsp trains an encoder"),
        (
            ["--objective", "mix", "--objective.mix={clm: 0}", "--model.preset=nano"],
            "sum to a positive number",
        ),
    ],
)
def test_bad_objective_settings_get_one_line(
    data: dict[str, Path], capsys, args: list[str], message: str
) -> None:
    assert (
        main(
            [
                "pretrain",
                *args,
                "--data",
                str(data["general"]),
                "--out",
                str(data["root"] / "bad"),
                *TINY,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (data["root"] / "bad").exists()


def test_pretrain_refuses_a_fine_tuning_objective_before_writing(
    data: dict[str, Path], capsys
) -> None:
    # BUG: it validated, wrote config.yaml, then died with a raw AssertionError.
    out = data["root"] / "classify_pretrain"
    code = main(
        [
            "pretrain",
            "--objective",
            "classify",
            "--data",
            str(data["general"]),
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classify" in err[0] and "pretrain" in err[0]
    assert not (out / "config.yaml").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--objective.mask_probability=0.5"], ["objective.mask_probability", "classify"]),
        (["--objective.name=clm"], ["objective.name", "clm", "finetune"]),
    ],
)
def test_finetune_refuses_options_and_objectives_it_cannot_use(
    data: dict[str, Path], capsys, args: list[str], words: list[str]
) -> None:
    out = data["root"] / "classify_bad"
    code = main(
        [
            "finetune",
            "classify",
            "--init",
            str(data["root"] / "no_such_checkpoint"),
            "--train",
            str(data["root"] / "no_such.jsonl"),
            "--out",
            str(out),
            *args,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(word in err[0] for word in words), err
    assert not out.exists()

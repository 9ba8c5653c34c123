"""Fine-tuning resumes exactly: a run interrupted after some steps and continued with
`graft finetune TASK ... --resume` ends with the weights (bitwise) and metrics of an uninterrupted
one; a run directory is never reused without --resume, nor resumed with another model or
adaptation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from graft.checkpoint import load_model
from graft.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, main
from graft.objectives.classify import Classify
from graft.objectives.tokens import TagTokens
from graft.train.metrics_log import read_metrics

RUN = [
    "--train.batch_size=4",
    "--train.grad_accum=2",
    "--train.max_steps=12",
    "--train.eval_every=4",
    "--train.log_every=2",
    "--train.patience=10",
    "--train.progress=false",
    "--optim.lr=3e-3",
    "--optim.warmup_steps=2",
]
# wall-clock figures: the only ones a resume may change
TIMINGS = {"elapsed_s", "tokens_per_s", "flop_s", "mfu"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, bytes_data: Path) -> Path:
    out = tmp_path_factory.mktemp("resume_base") / "base"
    model = ["--model.preset=nano", "--model.max_seq_len=32", "--model.d_model=32"]
    model += ["--model.n_layers=2", "--model.n_heads=2"]
    steps = ["--train.max_steps=2", "--train.eval_every=2", "--train.progress=false"]
    assert main(["pretrain", "--data", str(bytes_data), "--out", str(out), *model, *steps]) == 0
    return out / "checkpoints" / "last"


def write_texts(path: Path, labels: tuple[str, str] = ("neg", "pos")) -> Path:
    rng = random.Random(0)
    words = ["good great fine nice".split(), "bad awful poor sad".split()]
    rows = [
        {"text": " ".join(rng.choice(words[i % 2]) for _ in range(5)), "label": labels[i % 2]}
        for i in range(60)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_conll(path: Path) -> Path:
    rng = random.Random(0)
    lines = []
    for _ in range(40):
        person, city = rng.choice(["Ann", "Bob", "Eve"]), rng.choice(["Oslo", "Lima"])
        lines += [f"{person} B-PER", "went O", "to O", f"{city} B-LOC", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def finetune_args(task: str, base: Path, records: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", task, "--init", str(base), "--train", str(records), "--out", str(out)] + [
        *RUN,
        *extra,
    ]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, a LoRA adapter's included."""
    model, _ = load_model(checkpoint)
    return model.state_dict()


def metrics(run: Path) -> list[dict[str, object]]:
    return [
        {k: v for k, v in line.items() if k not in TIMINGS}
        for line in read_metrics(run / "metrics.jsonl")
    ]


@pytest.mark.parametrize(
    ("task", "method"), [("classify", "full"), ("classify", "lora"), ("tokens", "freeze")]
)
def test_an_interrupted_fine_tune_resumed_ends_as_an_uninterrupted_one(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str, method: str
) -> None:
    objective, write, name = {
        "classify": (Classify, write_texts, "train.jsonl"),
        "tokens": (TagTokens, write_conll, "train.conll"),
    }[task]
    records = write(tmp_path / name)
    method_args = ["--method", method]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(finetune_args(task, base, records, straight, *method_args)) == 0

    # Ctrl-C while drawing the batch of step 7: the checkpoint of step 4 is the last one, and the
    # data order of steps 5 and 6 must be drawn again from its saved generator state.
    draw = objective.train_batch
    calls = {"n": 0}

    def interrupting(self: object, batch_size: int, generator: torch.Generator) -> object:
        calls["n"] += 1
        if calls["n"] > 6 * 2:  # two micro-batches a step
            raise KeyboardInterrupt
        return draw(self, batch_size, generator)  # type: ignore[arg-type]

    monkeypatch.setattr(objective, "train_batch", interrupting)
    assert main(finetune_args(task, base, records, split, *method_args)) == EXIT_INTERRUPTED
    monkeypatch.setattr(objective, "train_batch", draw)

    assert main(finetune_args(task, base, records, split, *method_args, "--resume")) == 0
    for checkpoint in ("last", "best"):
        a = weights(straight / "checkpoints" / checkpoint)
        b = weights(split / "checkpoints" / checkpoint)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (checkpoint, name)
    # Same figures at the same steps: the log was cut back to step 4 and continued, not doubled.
    assert metrics(split) == metrics(straight)


def test_a_run_directory_is_reused_only_with_resume(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = finetune_args("classify", base, write_texts(tmp_path / "t.jsonl"), out)
    args += ["--train.max_steps=4"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == EXIT_BAD_INPUT
    assert (
        f"{out} already holds a run; pass --resume to continue it, or set another train.out_dir"
        in capsys.readouterr().err
    )


def test_resume_of_a_run_that_never_made_its_folder_starts_it_saying_so(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed while it set up has no folder; a job restarted with --resume after every
    kill was refused then, and never got going."""
    out = tmp_path / "never"
    args = finetune_args("classify", base, write_texts(tmp_path / "t.jsonl"), out, "--resume")
    assert main(args) == 0
    said = capsys.readouterr()
    notice = f"notice: --resume: {out} does not exist (nothing saved); starting at step 0"
    assert notice in said.out + said.err
    assert (out / "checkpoints" / "last").is_dir()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("labels", "--resume: the model config differs from"),
        ("--adapt.lora_rank=4", "--resume: the adaptation differs from"),
        ("--method=full", "adapt.method: 'lora' -> 'full'"),
    ],
)
def test_resume_refuses_another_model_or_adaptation(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, message: str
) -> None:
    out = tmp_path / "run"
    records = write_texts(tmp_path / "t.jsonl")
    assert main(finetune_args("classify", base, records, out, "--method=lora")) == 0
    before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))
    capsys.readouterr()
    if change == "labels":
        args = finetune_args(
            "classify", base, write_texts(tmp_path / "other.jsonl", ("no", "yes")), out
        )
        args.append("--method=lora")
    else:
        args = finetune_args("classify", base, records, out, "--method=lora", change)
    assert main([*args, "--resume"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and str(out) in err, err
    if change == "labels":
        assert "labels: ('neg', 'pos') -> ('no', 'yes')" in err
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == before

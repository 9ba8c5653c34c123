"""kill -9 of `graft pretrain` and `graft finetune` at chosen moments, then `--resume`.

Each trial kills a run with SIGKILL at one named crash point (graft.crash_points): after a given
training step, inside an evaluation, inside a checkpoint's write (weights written, the rest not),
with the new checkpoint complete but not yet renamed, between a checkpoint's two renames, and
after the swap before the old copy is deleted. A moment chosen by timing alone would rarely land
in the few milliseconds of a write window. After each kill:

- the newest checkpoint on disk verifies against its manifest (if one was completed at all);
- `--resume` runs to the end (a run killed before its first save starts again from step 0);
- its final weights (`last` and `best`) equal an uninterrupted run's bit for bit;
- its metrics.jsonl holds exactly the uninterrupted run's rows (wall-clock figures aside);
- nothing temporary is left in the run directory.
"""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from graft.checkpoint import saved_checkpoint, verify_checkpoint

Graft = Callable[..., int]  # the `graft` fixture of conftest.py

TIMINGS = {"elapsed_s", "tokens_per_s", "flop_s", "mfu"}  # the only figures a resume may change
STEPS, EVAL_EVERY = 8, 2  # four evaluations and saves after the baseline one
COMMON = [
    f"--train.max_steps={STEPS}",
    f"--train.eval_every={EVAL_EVERY}",
    "--train.eval_batches=1",
    "--train.log_every=1",
    "--train.progress=false",
    "--train.seed=7",
    "--optim.warmup_steps=2",
    "--optim.lr=3e-3",
]
MODEL = ["--model.preset=nano", "--model.max_seq_len=32", "--model.d_model=32"]
MODEL += ["--model.n_layers=1", "--model.n_heads=2", "--model.dropout=0.1"]  # dropout: RNG
# (crash point, which pass through it kills): every kind of moment, several times over a run.
POINTS = (
    [("train:step", k) for k in range(1, STEPS + 1)]
    + [("train:eval", k) for k in (1, 2, 4)]
    + [("checkpoint:weights", k) for k in (1, 2, 4)]
    + [("atomic_directory:filled", k) for k in (1, 3, 4)]
    + [("atomic_directory:aside", k) for k in (1, 2)]
    + [("atomic_directory:swapped", k) for k in (1, 3, 4)]
)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    words = ["good great fine nice".split(), "bad awful poor sad".split()]
    rows = [
        {"text": " ".join(rng.choice(words[i % 2]) for _ in range(5)), "label": "np"[i % 2]}
        for i in range(48)
    ]
    path = tmp_path_factory.mktemp("kill_records") / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def pretrain_args(data: Path, out: Path) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(out), *MODEL, *COMMON]


def finetune_args(base: Path, records: Path, out: Path) -> list[str]:
    return ["finetune", "classify", "--init", str(base), "--train", str(records)] + [
        "--out",
        str(out),
        "--train.batch_size=4",
        *COMMON,
    ]


def outcome(run: Path) -> tuple[dict[str, bytes], list[dict[str, object]]]:
    """What must not depend on a kill: the weight files' bytes and the metrics rows."""
    weights = {
        name: (run / "checkpoints" / name / "model.safetensors").read_bytes()
        for name in ("last", "best")
    }
    rows = [
        {k: v for k, v in json.loads(line).items() if k not in TIMINGS}
        for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return weights, rows


def leftovers(run: Path) -> list[str]:
    """Anything a write leaves while under way: hidden `.NAME.*.partial|tmp` and `.NAME.old`."""
    return [str(p.relative_to(run)) for p in run.rglob(".*")]


def kill_trials(
    graft: Graft,
    tally: Callable[[str, str, int], None],
    tmp_path: Path,
    args: Callable[[Path], list[str]],
) -> None:
    reference = tmp_path / "reference"
    assert graft(args(reference), tmp_path / "reference.log") == 0
    expected = outcome(reference)
    assert load_file(str(reference / "checkpoints" / "last" / "model.safetensors"))
    failures = []
    for point, nth in POINTS:
        run, log = tmp_path / f"{point.replace(':', '-')}-{nth}", tmp_path / "trial.log"
        code = graft(args(run), log, kill_at=f"{point}:{nth}")
        assert code == -signal.SIGKILL, f"{point}:{nth} was not reached:\n{log.read_text()}"
        tally("kill -9", "trials", 1)
        saved = saved_checkpoint(run)
        if saved is not None:
            verify_checkpoint(saved)  # raises on a torn or half-written checkpoint
            tally("kill -9", "checkpoints verified", 1)
        code = graft([*args(run), "--resume"], log)
        assert code == 0, f"--resume after {point}:{nth} failed:\n{log.read_text()}"
        tally("kill -9", "resumed", 1)
        weights, rows = outcome(run)
        if weights == expected[0]:
            tally("kill -9", "bitwise identical", 1)
        else:
            failures.append(f"{point}:{nth}: final weights differ")
        if rows == expected[1]:
            tally("kill -9", "metrics identical", 1)
        else:
            failures.append(f"{point}:{nth}: metrics.jsonl differs")
        left = leftovers(run)
        tally("kill -9", "temp dirs left", len(left))
        if left:
            failures.append(f"{point}:{nth}: left {left}")
    assert not failures, "\n".join(failures)


def test_kill_9_during_pretraining_then_resume(
    graft: Graft, tally: Callable[[str, str, int], None], tmp_path: Path, bytes_data: Path
) -> None:
    kill_trials(graft, tally, tmp_path, lambda out: pretrain_args(bytes_data, out))


def test_kill_9_during_finetuning_then_resume(
    graft: Graft,
    tally: Callable[[str, str, int], None],
    tmp_path: Path,
    bytes_data: Path,
    records: Path,
) -> None:
    base = tmp_path / "base"
    assert graft(pretrain_args(bytes_data, base), tmp_path / "base.log") == 0
    last = base / "checkpoints" / "last"
    kill_trials(graft, tally, tmp_path, lambda out: finetune_args(last, records, out))

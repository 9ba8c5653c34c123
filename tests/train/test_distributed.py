"""torchrun on CPU (gloo, 2 processes): DDP and FSDP train exactly as one process with the same
global batch, and a run killed after a checkpoint resumes on 2 processes or on 1 (or a run of
one process on 2) to the same losses. Each run is launched as a user would launch graft:
tests/train/distributed_run.py, or the graft command, under torchrun."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graft.checkpoint import RUN_CONFIG_FILE, SHARDED_DIR, load_model
from graft.config import RunConfig, TrainConfig
from graft.crash_points import KILL_AT
from graft.data.shards import prepare_shards
from graft.data.tokenizer import bytes_tokenizer
from graft.distributed import World, step_layout
from graft.errors import CheckpointError, ConfigError
from graft.train.resume import check_same_step

RUN = Path(__file__).with_name("distributed_run.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    (root / "docs").mkdir()
    for i in range(20):
        (root / "docs" / f"{i}.txt").write_text(
            f"Document {i}. " + "the quick brown fox jumps over the lazy dog " * (5 + i)
        )
    prepare_shards([root / "docs"], bytes_tokenizer(), root / "data", progress=False)
    return root / "data"


def _run(
    data: Path,
    out: Path,
    parallel: str = "ddp",
    processes: int = 1,
    stop_after: int = 0,
    resume: bool = False,
) -> str:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    args = [str(data), str(out), parallel, "20", str(stop_after), "1" if resume else "0"]
    done = subprocess.run(
        [sys.executable, *(launcher if processes > 1 else []), str(RUN), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _losses(run: Path) -> dict[tuple[int, str], float]:
    """Every logged train and validation loss by (step, split)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        (m["step"], key): m[key] for m in lines for key in ("train/loss", "val/loss") if key in m
    }


def _assert_same(run: Path, reference: Path) -> None:
    ours, ref = _losses(run), _losses(reference)
    assert ours.keys() == ref.keys() and len(ref) == 20 + 3  # 20 train, 3 evaluations
    worst = max(abs(ours[key] - ref[key]) for key in ref)
    assert worst <= 1e-5, f"losses differ by up to {worst}"


@pytest.fixture(scope="module")
def one_process(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    assert "stopped: max_steps at 20" in _run(data, out)
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_as_one(
    parallel: str, data: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / parallel
    assert _run(data, out, parallel, processes=2).count("stopped: max_steps at 20") == 2
    _assert_same(out, one_process)
    last = out / "checkpoints" / "last"
    assert (last / SHARDED_DIR).is_dir() == (parallel == "fsdp")
    # What graft export and generate read: the whole model, shards consolidated.
    model, _ = load_model(last)
    # Shards read into a model built on the meta device: its head is its embedding again, as
    # saved (two tensors trained apart under `--init`, and a save kept only one).
    assert model.lm_head.weight is model.model.embed_tokens.weight
    reference, _ = load_model(one_process / "checkpoints" / "last")
    for (name, ours), (_, theirs) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5, msg=name)


def test_a_killed_ddp_run_resumes_on_one_process(
    data: Path, one_process: Path, tmp_path: Path
) -> None:
    # A DDP checkpoint is the one-process checkpoint (rank 0 writes it whole), so one change of
    # world size covers DDP; FSDP's sharded checkpoints get every direction below.
    run = tmp_path / "run"
    stopped = _run(data, run, "ddp", processes=2, stop_after=10)
    assert stopped.count("stopped: interrupted at 10") == 2
    _run(data, run, "ddp", processes=1, resume=True)
    _assert_same(run, one_process)


def test_a_killed_fsdp_run_resumes_on_another_number_of_processes(
    data: Path, one_process: Path, tmp_path: Path
) -> None:
    two, one, grown = tmp_path / "two", tmp_path / "one", tmp_path / "grown"
    stopped = _run(data, two, "fsdp", processes=2, stop_after=10)
    assert stopped.count("stopped: interrupted at 10") == 2
    subprocess.run(["cp", "-r", str(two), str(one)], check=True)
    _run(data, two, "fsdp", processes=2, resume=True)
    _run(data, one, "fsdp", processes=1, resume=True)
    # and the other way: a run of one process continued on two
    assert "stopped: interrupted at 10" in _run(data, grown, "fsdp", stop_after=10)
    _run(data, grown, "fsdp", processes=2, resume=True)
    for run in (two, one, grown):
        _assert_same(run, one_process)
    _assert_damaged_shards_are_one_error(two / "checkpoints" / "last", tmp_path / "damaged")


def _assert_damaged_shards_are_one_error(checkpoint: Path, copy: Path) -> None:
    """Shards cut short, behind a manifest a tool re-hashed: one CheckpointError naming the
    shard folder. DCP's own failure derives from BaseException and slipped past every handler
    as a traceback."""
    import hashlib
    import json

    from graft.checkpoint import load_model

    subprocess.run(["cp", "-r", str(checkpoint), str(copy)], check=True)
    metadata = copy / "sharded" / ".metadata"
    metadata.write_bytes(metadata.read_bytes()[:200])
    manifest = json.loads((copy / "manifest.json").read_text())
    for name in manifest["files"]:
        body = (copy / name).read_bytes()
        manifest["files"][name] = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"sharded: cannot read \(.*truncated"):
        load_model(copy)


def test_the_global_batch_sets_accumulation_per_world_size() -> None:
    train = TrainConfig(batch_size=2, global_batch=8)
    assert step_layout(train, World()).grad_accum == 4
    assert step_layout(train, World(0, 2)).grad_accum == 2
    assert step_layout(step_layout(train, World(0, 2)), World(0, 2)).grad_accum == 2
    assert step_layout(TrainConfig(batch_size=2, grad_accum=3), World(0, 2)).global_batch == 12
    with pytest.raises(ConfigError, match=r"train.global_batch 8 is not a multiple of 3 process"):
        step_layout(train, World(0, 3))
    with pytest.raises(ConfigError, match="train.grad_accum 3 contradicts train.global_batch 8"):
        step_layout(TrainConfig(batch_size=2, global_batch=8, grad_accum=3), World())


def _finetune(
    one_process: Path, labelled: Path, out: Path, method: str, parallel: str | None
) -> None:
    """`graft finetune classify` of the one-process run on `labelled`: under torchrun on two
    processes with `parallel`, or as one process (None)."""
    settings = [
        f"--init={one_process}",
        f"--train={labelled}",
        f"--method={method}",
        "--model.dropout=0.0",  # dropout draws differ from rank to rank
        *(["--adapt.lora_dropout=0.0"] if method == "lora" else []),  # full refuses it
        "--train.batch_size=2",
        "--train.global_batch=8",
        "--train.max_steps=12",
        "--train.eval_every=6",
        "--train.log_every=1",
        *([f"--train.parallel={parallel}"] if parallel else []),
        "--train.device=cpu",
        "--train.progress=false",
    ]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*(launcher if parallel else []), "-m", "graft", "finetune", "classify"]
    done = subprocess.run(
        [sys.executable, *command, *settings, f"--out={out}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("stopped (max_steps) at step 12") == 1  # rank 0 reports


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labelled") / "labelled.jsonl"
    rows = [
        {"text": ("good fine nice " if i % 2 else "bad poor sad ") * (1 + i % 3), "label": i % 2}
        for i in range(64)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def one_process_finetunes(
    one_process: Path, labelled: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The one-process reference of each method, each run once for the module."""
    runs = {}
    for method in ("full", "lora"):
        runs[method] = tmp_path_factory.mktemp(f"one-{method}") / "run"
        _finetune(one_process, labelled, runs[method], method, None)
    return runs


@pytest.mark.parametrize(
    ("method", "parallel"), [("full", "fsdp"), ("lora", "ddp"), ("lora", "fsdp")]
)
def test_fine_tuning_on_two_processes_trains_as_one(
    method: str,
    parallel: str,
    one_process: Path,
    labelled: Path,
    one_process_finetunes: dict[str, Path],
    tmp_path: Path,
) -> None:
    two, one = tmp_path / "2", one_process_finetunes[method]
    _finetune(one_process, labelled, two, method, parallel)
    ours, ref = _losses(two), _losses(one)
    assert ours.keys() == ref.keys() and len(ref) == 12 + 3
    assert max(abs(ours[key] - ref[key]) for key in ref) <= 1e-5
    # A sharded LoRA checkpoint reads back whole, adapter included, as one process wrote it.
    model, _ = load_model(two / "checkpoints" / "last")
    reference, _ = load_model(one / "checkpoints" / "last")
    for (name, ours_t), (_, theirs) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(ours_t, theirs, rtol=0, atol=1e-5, msg=name)


def test_a_resume_with_another_global_batch_seed_or_split_is_refused(tmp_path: Path) -> None:
    # The data a step draws follows from the global batch: another one would silently change it.
    saved = RunConfig(train=TrainConfig(batch_size=2, global_batch=8))
    (tmp_path / RUN_CONFIG_FILE).write_text(saved.to_yaml())

    def resumed(train: TrainConfig, **data: object) -> RunConfig:
        laid_out = step_layout(train, World(0, 2))
        return saved.model_copy(
            update={"train": laid_out, "data": saved.data.model_copy(update=data)}
        )

    check_same_step(tmp_path, resumed(TrainConfig(batch_size=4, global_batch=8)))
    with pytest.raises(ConfigError, match=r"trained with 8 sequences per step, this run would "):
        check_same_step(tmp_path, resumed(TrainConfig(batch_size=2)))
    # A fine-tune splits its records again at a resume: another seed or split moved former
    # validation records into training, unseen.
    same = TrainConfig(batch_size=2, global_batch=8)
    with pytest.raises(ConfigError, match=r"--resume: train.seed 1337 -> 7 from .*: the run"):
        check_same_step(tmp_path, resumed(same.model_copy(update={"seed": 7})))
    with pytest.raises(ConfigError, match=r"data.val_fraction 0.1 -> 0.3"):
        check_same_step(tmp_path, resumed(same, val_fraction=0.3))
    with pytest.raises(ConfigError, match=r"data.max_train_examples None -> 50"):
        check_same_step(tmp_path, resumed(same, max_train_examples=50))
    # The same validation file spelt another way is the same split.
    with_val = saved.model_copy(update={"data": saved.data.model_copy(update={"val_file": "v"})})
    (tmp_path / RUN_CONFIG_FILE).write_text(with_val.to_yaml())
    check_same_step(tmp_path, resumed(same, val_file=Path("v").resolve()))
    with pytest.raises(ConfigError, match=r"data.val_file v -> w"):
        check_same_step(tmp_path, resumed(same, val_file=Path("w")))


def test_an_encoder_with_idle_heads_trains_under_ddp_as_one_process(
    data: Path, tmp_path: Path
) -> None:
    # mlm leaves BERT's pooler and NSP head without gradients: DDP must not wait for them, and a
    # sharded checkpoint, which holds no optimizer moments for them, must resume (DCP called
    # them missing).
    settings = [
        "--objective=mlm",
        f"--data={data}",
        "--model.preset=bert-nano",
        "--model.max_seq_len=32",
        "--train.batch_size=2",
        "--train.global_batch=8",
        "--train.max_steps=6",
        "--train.eval_every=3",
        "--train.log_every=1",
        "--train.device=cpu",
        "--train.progress=false",
    ]

    def run(processes: int, out: Path, *more: str, kill_at: str | None = None) -> int:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*(launcher if processes > 1 else []), "-m", "graft", "pretrain", *settings]
        env = {**os.environ, **({KILL_AT: kill_at} if kill_at else {})}
        done = subprocess.run(
            [sys.executable, *command, f"--out={out}", *more],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert kill_at or done.returncode == 0, done.stderr[-3000:]
        return done.returncode

    run(1, tmp_path / "1")
    run(2, tmp_path / "2")
    ref = _losses(tmp_path / "1")
    fsdp = tmp_path / "fsdp"
    assert run(2, fsdp, "--train.parallel=fsdp", kill_at="train:step:4") != 0
    assert (fsdp / "checkpoints" / "last" / SHARDED_DIR).is_dir()  # step 3's
    run(2, fsdp, "--train.parallel=fsdp", "--resume")
    for ours in (_losses(tmp_path / "2"), _losses(fsdp)):
        assert ours.keys() == ref.keys() and len(ref) == 6 + 3
        assert max(abs(ours[key] - ref[key]) for key in ref) <= 1e-5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set but RANK is not"),
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer >= 1"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK 2 is not below WORLD_SIZE 2"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1'"),
    ],
)
def test_a_hand_set_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    from graft.distributed import world_from_env

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^environment: {re.escape(message)}"):
        world_from_env()

"""Throughput and peak memory of private (DP-SGD) fine-tuning against non-private fine-tuning, on
the same model and data, measured in the same run.

Method. One run config is built the way `graft finetune classify` builds it (FINETUNE_DEFAULTS,
then this script's settings, then any `--section.key=value` overrides), and each arm is set up by
graft's own `prepare_finetune` (records, model with its head, adaptation, AdamW, the privacy
engine) and stepped by fit's own `train_step`, so every step is one that fine-tune runs. The base
is a randomly initialised preset (`--preset` with any `--model.KEY=VALUE` architecture overrides,
vocabulary of graft's byte tokenizer) saved as a checkpoint, or the `--init` checkpoint. The arms
(`--methods`: full, lora):

    plain     fit's non-private step: grad_accum micro-batches of batch_size random records,
              accumulate_gradients, clip_grad_norm(optim.grad_clip), optimizer.step
    dp-ghost  make_private with dp.clipping=ghost, dp.noise_multiplier=1: a Poisson sample of the
              records (expected batch_size x grad_accum, micro-batches of at most batch_size),
              accumulate_gradients(privacy=...), privacy.step (clip, noise, step, accounting)
    dp-flat   the same with dp.clipping=flat (Opacus's materialised per-sample gradients)

Tokens are the real (non-pad) input tokens of each step (`step_tokens`, what fit logs), so the
Poisson sample's varying size is counted as drawn. After `--warmup` untimed steps per arm,
`--rounds` rounds of `--steps` steps are timed per arm, the arms' order rotated every round so that
drift in the machine hits all of them; the table gives the median tokens/s over rounds (and its
range), and the ratio of each arm's median to plain's for the same method.

Peak memory is measured apart from the timing, in one helper process that imports everything and
then forks a fresh process per arm (RSS never shrinks within a process): that process sets the
arm up, notes its memory, trains warmup + steps steps and reports the peak over that baseline:
on CPU the resident set (VmHWM, reset to the current RSS through /proc/self/clear_refs at the
baseline), on CUDA torch.cuda.max_memory_allocated. So "peak MB" is what training adds on
top of holding the data and the model: gradients (per-sample ones for dp-flat), optimizer state,
activations, Opacus's hooks and buffers.

    python bench/dp_throughput.py
    python bench/dp_throughput.py --preset micro --batch-size 16 --accum 2 --steps 5 --rounds 3
    python bench/dp_throughput.py --init runs/pretrain --records 1000 --model.dropout=0.0
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import torch
from machine import OtherLoad, cpu_name  # bench/machine.py: the bench scripts' own

from graft import checkpoint as ckpt
from graft.adapt import trainable_parameters
from graft.config import RunConfig, load_finetune_config, load_run_config
from graft.data.records import read_labelled
from graft.data.tokenizer import bytes_tokenizer
from graft.device import autocast_for, resolve_device
from graft.distributed import ONE_PROCESS
from graft.model.transformer import LanguageModel
from graft.train.finetune import prepare_finetune
from graft.train.loop import Run, train_step
from graft.train.resume import RunLock

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"
ARMS = ["plain", "dp-ghost", "dp-flat"]
METHODS = ["full", "lora"]
NOISE_MULTIPLIER = 1.0


@dataclass
class Row:
    """One arm under one adaptation method: its timings and its peak memory."""

    arm: str
    method: str
    trainable: int
    tok_s: list[float] = field(default_factory=list)
    tok_s_ratio: float = float("nan")  # median over plain's median, same method
    peak_mb: float = float("nan")  # training's peak over the built model and data
    process_peak_mb: float = float("nan")  # the whole process's (CPU) or allocator's (CUDA)
    peak_ratio: float = float("nan")
    memory_error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.tok_s) if self.tok_s else float("nan")


@dataclass
class Report:
    rows: list[Row]
    table: str
    command: str
    machine: str
    settings: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Set-up: the run config, the data and one arm, as `graft finetune classify` builds them.


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Further --section.key=value arguments override the run config (as graft finetune).",
    )
    p.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="labelled records (label<TAB>text)"
    )
    p.add_argument("--preset", default="micro", help="model preset when no --init (default micro)")
    p.add_argument(
        "--init", type=Path, help="a graft checkpoint or HF directory instead of a preset"
    )
    p.add_argument("--seq-len", type=int, default=64, help="train.seq_len (default 64)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per micro-batch (default 16)")
    p.add_argument("--accum", type=int, default=2, help="micro-batches per plain step (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per arm and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, arms interleaved")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated: full,lora")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated: " + ",".join(ARMS))
    p.add_argument("--records", type=int, help="train on N records (data.max_train_examples)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch.set_num_threads; default: torch's own")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)
    methods, arms = args.methods.split(","), args.arms.split(",")
    for given, known, flag in ((methods, METHODS, "--methods"), (arms, ARMS, "--arms")):
        unknown = [x for x in given if x not in known]
        if unknown or not given:
            p.error(f"{flag}: unknown {unknown}; choose from {','.join(known)}")
    if "plain" not in arms:
        p.error("--arms: the ratios are to plain, so it must be among them")
    args.method_list, args.arm_list = methods, arms
    return args, overrides(p, extra)


def overrides(p: argparse.ArgumentParser, extra: list[str]) -> list[str]:
    """`--section.key=value` (or `--section.key value`) arguments as config overrides."""
    out, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--") or "." not in item.split("=", 1)[0]:
            p.error(f"unrecognised argument {item!r}; config overrides look like --model.dropout=0")
        if "=" in item:
            out.append(item[2:])
        elif i + 1 < len(extra):
            out.append(f"{item[2:]}={extra[i + 1]}")
            i += 1
        else:
            p.error(f"{item}: no value")
        i += 1
    return out


def run_config(
    args: argparse.Namespace, extra: list[str], method: str, arm: str, base: Path, out: Path
) -> RunConfig:
    """The resolved config of one arm: fine-tune defaults, this bench's settings, the overrides."""
    settings = [
        f"data.train_file={args.data}",
        f"train.init={base}",
        f"train.out_dir={out}",
        f"train.seq_len={args.seq_len}",
        f"train.batch_size={args.batch_size}",
        f"train.grad_accum={args.accum}",
        f"train.device={args.device}",
        "train.progress=false",
        f"adapt.method={method}",
    ]
    if args.records is not None:
        settings.append(f"data.max_train_examples={args.records}")
    if arm != "plain":
        clipping = arm.removeprefix("dp-")
        settings += [f"dp.noise_multiplier={NOISE_MULTIPLIER}", f"dp.clipping={clipping}"]
        # Private training takes its label set as given (public), never from the records; a
        # throughput bench may read it from them.
        records, _ = read_labelled(args.data)
        settings.append(f"objective.labels={json.dumps(sorted({r.label for r in records}))}")
    run_overrides = [o for o in extra if not _architecture(o)]
    return ckpt.resolve(load_finetune_config("classify", overrides=settings + run_overrides))


def _architecture(override: str) -> bool:
    """A model override the base checkpoint takes (a fine-tune may set only a few model keys)."""
    key = override.split("=", 1)[0]
    return key.startswith("model.") and key.removeprefix("model.") not in ckpt.RUN_MODEL_FIELDS


def base_checkpoint(args: argparse.Namespace, extra: list[str], directory: Path) -> Path:
    """What every arm fine-tunes: --init, or a randomly initialised --preset (with the
    architecture overrides in `extra`) over graft's byte tokenizer, saved as a checkpoint."""
    if args.init is not None:
        return Path(args.init)
    tokenizer = bytes_tokenizer()
    overrides = [f"model.preset={args.preset}", f"model.vocab_size={tokenizer.vocab_size}"]
    overrides += [o for o in extra if _architecture(o)]
    torch.manual_seed(0)
    model = LanguageModel(load_run_config(overrides=overrides).model)
    return ckpt.save_checkpoint(
        directory / "base", model=model, tokenizer=tokenizer, run_config_yaml=RunConfig().to_yaml()
    )


class Arm:
    """One arm's fine-tune, set up by graft's own `prepare_finetune` (model, optimizer, data and,
    for dp, the privacy engine); `step` is fit's own `train_step`."""

    def __init__(self, name: str, method: str, run: Run) -> None:
        self.name, self.method, self.run = name, method, run
        self.config, self.model, self.device = run.config, run.model, run.device
        self.privacy = run.privacy
        self.autocast = autocast_for(self.device, self.config.train.precision)

    def step(self) -> int:
        tokens, _, _ = train_step(self.run, self.autocast)
        return tokens


def _quiet(message: str) -> None:
    """prepare_finetune's `say`: main prints one summary for every arm."""


def build_arm(
    args: argparse.Namespace, extra: list[str], name: str, method: str, base: Path, work: Path
) -> Arm:
    config = run_config(args, extra, method, name, base, work / f"{name}-{method}")
    device = resolve_device(args.device)
    lock = RunLock(config.train.out_dir, ONE_PROCESS)  # an arm's own folder, held while it runs
    return Arm(name, method, prepare_finetune(config, False, ONE_PROCESS, device, _quiet, lock))


# ---------------------------------------------------------------------------------------------
# Timing: every arm in this process, interleaved.


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(arm: Arm, steps: int) -> float:
    """Tokens per second over `steps` steps."""
    sync(arm.device)
    start, tokens = time.perf_counter(), 0
    for _ in range(steps):
        tokens += arm.step()
    sync(arm.device)
    return tokens / (time.perf_counter() - start)


def time_arms(
    arms: list[Arm],
    rows: dict[tuple[str, str], Row],
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> None:
    """Warm every arm up, then `rounds` rounds of `steps` timed steps per arm, rotated."""
    for arm in arms:
        for _ in range(args.warmup):
            arm.step()
    for r in range(args.rounds):
        shift = r % len(arms)
        for arm in arms[shift:] + arms[:shift]:  # rotated: drift hits every arm alike
            rows[(arm.name, arm.method)].tok_s.append(timed(arm, args.steps))
        say(f"round {r + 1}/{args.rounds} done")


# ---------------------------------------------------------------------------------------------
# Peak memory: one fresh process per arm.


def proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_one(
    args: argparse.Namespace, extra: list[str], name: str, method: str, base: Path, work: Path
) -> dict:
    """Set the arm up (data, model, optimizer, Opacus's wrappers and checks), note the memory,
    then train warmup + steps steps: the peak over the noted baseline."""
    arm = build_arm(args, extra, name, method, base, work)
    device, steps = arm.device, args.warmup + args.steps
    if device.type == "cuda":
        sync(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            arm.step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "peak_mb": (peak - baseline) / 2**20,
            "process_peak_mb": peak / 2**20,
            "reset": True,
        }
    base_kb, reset = proc_status_kb("VmRSS"), reset_peak_rss()
    for _ in range(steps):
        arm.step()
    peak_kb = proc_status_kb("VmHWM")
    if base_kb is None or peak_kb is None:  # no /proc: ru_maxrss (KiB on Linux), never reset
        import resource

        base_kb, peak_kb, reset = 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False
    return {
        "peak_mb": (peak_kb - base_kb) / 1024,
        "process_peak_mb": peak_kb / 1024,
        "reset": reset,
    }


def memory_child(args: argparse.Namespace, extra: list[str]) -> None:
    """The helper process: every import done once (Opacus and PEFT too, so that no arm's peak
    holds an import), then one forked process per arm (forked before any computation, so no
    thread pool is copied), each printing one JSON line. main passes the base checkpoint as
    --init."""
    import opacus.accountants
    import opacus.grad_sample
    import opacus.optimizers
    import opacus.utils.fast_gradient_clipping_utils
    import peft

    del opacus, peft
    for method in args.method_list:
        for name in args.arm_list:
            sys.stdout.flush()  # or the fork would print it twice
            pid = os.fork()
            if pid:
                os.waitpid(pid, 0)
                continue
            code = 0
            try:
                work = Path(tempfile.mkdtemp(prefix="dp_throughput_"))
                measured = measure_one(args, extra, name, method, Path(args.init), work)
                result = {"arm": name, "method": method, **measured}
            except Exception as err:  # reported in the table, not fatal to the other arms
                error = f"{type(err).__name__}: {err}".splitlines()[0]
                result, code = {"arm": name, "method": method, "error": error}, 1
            print(json.dumps(result), flush=True)
            shutil.rmtree(work, ignore_errors=True)  # os._exit runs no cleanup
            os._exit(code)


def start_memory(argv: list[str]) -> tuple[subprocess.Popen[str], IO[str]]:
    errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: it cannot fill up and block
    child = subprocess.Popen(
        [sys.executable, __file__, *argv, "--memory-child"],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    return child, errors


def collect_memory(child: subprocess.Popen[str], errors: IO[str]) -> list[dict]:
    out, _ = child.communicate()
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not results:
        errors.seek(0)
        raise RuntimeError(
            f"the memory process failed (exit {child.returncode}): {errors.read()[-2000:]}"
        )
    errors.close()
    return results


# ---------------------------------------------------------------------------------------------
# Report.


def machine_line(device: torch.device) -> str:
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}{gpu}; "
        f"torch {torch.__version__}; {date}"
    )


def markdown_table(rows: list[Row]) -> str:
    def num(v: float, spec: str, unit: str = "") -> str:
        return "—" if math.isnan(v) else format(v, spec) + unit

    lines = [
        "| arm | method | trainable | tokens/s (median [min–max]) | vs plain "
        "| peak MB (training) | vs plain | peak MB (process) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = f"{r.median:,.0f} [{min(r.tok_s):,.0f}–{max(r.tok_s):,.0f}]" if r.tok_s else "—"
        memory = f"failed: {r.memory_error}" if r.memory_error else num(r.peak_mb, ",.0f")
        lines.append(
            f"| {r.arm} | {r.method} | {r.trainable:,} | {speed} "
            f"| {num(r.tok_s_ratio, '.2f', 'x')} "
            f"| {memory} | {num(r.peak_ratio, '.2f', 'x')} | {num(r.process_peak_mb, ',.0f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Report:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args, extra)
        return Report([], "", "", "", {})

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # The memory process imports and measures while this one builds its arms; it is done before
    # anything is timed, so it takes no CPU from the timing.
    if not hasattr(os, "fork"):
        say("no os.fork here: peak memory is not measured")
        args.no_memory = True
    work = Path(tempfile.mkdtemp(prefix="dp_throughput_"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # forked arms leave by os._exit
    base = base_checkpoint(args, extra, work)
    child = None if args.no_memory else start_memory([*argv, "--init", str(base)])
    by_arm: dict[tuple[str, str], Row] = {}
    arms: list[Arm] = []
    for method in args.method_list:
        for name in args.arm_list:
            arm = build_arm(args, extra, name, method, base, work)
            arms.append(arm)
            by_arm[(name, method)] = Row(name, method, trainable_parameters(arm.model)[0])
    private = [arm for arm in arms if arm.privacy is not None]
    device = arms[0].device
    memory = collect_memory(*child) if child is not None else []
    load = OtherLoad()
    time_arms(arms, by_arm, args, say)
    other_cores = load.cores()

    rows = list(by_arm.values())
    for result in memory:
        row = by_arm[(result["arm"], result["method"])]
        row.memory_error = result.get("error")
        row.peak_mb = result.get("peak_mb", float("nan"))
        row.process_peak_mb = result.get("process_peak_mb", float("nan"))
    for row in rows:
        plain = by_arm[("plain", row.method)]
        row.tok_s_ratio = row.median / plain.median
        row.peak_ratio = row.peak_mb / plain.peak_mb if plain.peak_mb > 0 else float("nan")
    reset = all(r.get("reset", True) for r in memory)

    config = arms[0].config
    model = arms[0].model.config
    command = "python bench/dp_throughput.py " + shlex.join(argv)
    machine = machine_line(device)
    params = sum(p.numel() for p in arms[0].model.parameters())
    print(f"machine: {machine}")
    print(f"command: {command.strip()}")
    print(
        f"model: {'--init ' + str(args.init) if args.init else args.preset + ' (random init)'}, "
        f"{params:,} parameters, d_model {model.d_model}, {model.n_layers} layers, "
        f"vocab {model.vocab_size}, dropout {model.dropout}, head sequence {list(model.labels)}"
    )
    print(
        f"data: {args.data}, seq_len {config.seq_len}"
        f"{', data.max_train_examples ' + str(args.records) if args.records else ''}, "
        f"{arms[0].privacy.settings.records if arms[0].privacy else 'all'} training records"
    )
    print(
        f"step: plain {args.batch_size} x {args.accum} records; dp a Poisson sample of expected "
        f"{args.batch_size * args.accum} records in micro-batches of at most {args.batch_size}"
    )
    if private:
        dp = private[0].privacy
        assert dp is not None
        clipping = ", ".join(
            f"{a.name}/{a.method} {'ghost' if a.privacy and a.privacy.ghost else 'flat'}"
            for a in private
        )
        print(
            f"dp: sample rate {dp.settings.sample_rate:.4g}, noise multiplier "
            f"{dp.settings.noise_multiplier:g}, max_grad_norm {dp.settings.max_grad_norm:g}; "
            f"clipping {clipping}"
        )
    print(
        f"device {device}, {'fp32' if arms[0].autocast is None else 'bf16 autocast'} "
        f"(train.precision {config.train.precision}); {args.warmup} warm-up steps, then "
        f"{args.rounds} rounds x {args.steps} steps per arm, interleaved (order rotated)"
    )
    print(
        f"other processes used {other_cores:.2f} CPU cores on average while timing "
        "(0: a quiet machine)"
    )
    if memory and not reset:
        print("note: VmHWM could not be reset: the training peaks include the set-up's")
    table = markdown_table(rows)
    print()
    print(table)
    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("memory_child",)
    }
    report = Report(rows, table, command.strip(), machine, {**settings, "overrides": extra})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {**asdict(report), "other_processes_cores": other_cores}, f, indent=2, default=str
            )
    return report


if __name__ == "__main__":
    main()

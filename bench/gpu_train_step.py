"""graft's whole training step against transformers' GPT2LMHeadModel on one GPU, several ways.

Method. Every arm is a GPT-2 style model of the same shape (default: GPT-2 124M, graft's preset
`gpt2-124m`, vocabulary 50,304, dropout 0), built fresh from the same seed, and trains on the same
batch of random token ids x (B, T+1): inputs x[:, :-1], targets x[:, 1:], so every arm scores B*T
tokens. A step is forward + loss + backward + optimizer step + zero_grad(set_to_none=True), under
bf16 autocast (the backward outside it, as graft's loop runs it), with fused AdamW (lr 6e-4, betas
(0.9, 0.95), weight decay 0.1 on matrices, none on biases and norm gains, graft's groups) on every
arm. The arms:

    hf                 transformers' GPT2LMHeadModel (attention sdpa, use_cache False) under
                       torch.compile; its loss from labels + shift_labels (targets already shifted,
                       as bench/train_throughput.py gives them), a mean over the B*T tokens.
    graft              as `graft pretrain` runs it with train.compile: the backbone compiled in
                       place (model.model.compile()), the loss the model's own fused chunked
                       cross-entropy, model(inputs, heads=["lm"], targets=targets).lm_loss, a sum,
                       divided by the token count; graft.model.losses._CHUNK_ROWS = 512.
    graft_whole_plain  the plain loss: logits = model(inputs, heads=["lm"]).logits and
                       F.cross_entropy over them (full B*T x V logits), model and loss compiled
                       together (torch.compile of one module holding both, as nanoGPT and the hf
                       arm have the loss inside the compiled forward).
    graft_chunk4096    as graft with _CHUNK_ROWS = 4096 (set while this arm runs, then restored).
    graft_chunk16384   as graft with _CHUNK_ROWS = 16384.
    graft_whole_fused  torch.compile(model) around the whole model, fused loss (chunk 512). Dynamo
                       cannot trace the loss's data-dependent `if` (a graph break, seen with torch
                       2.13 on CPU), so its loss runs eagerly, as in graft.

After `--warmup` untimed steps per arm (the first compiles; its seconds are reported), one more
step per arm measures peak memory, then R repeats of K steps are timed, interleaved across arms
(a1, a2, ..., a1, a2, ...) so that drift in the machine hits every arm; tokens/s is the median
over repeats, with its range. Peak memory is the arm's own: its parameters, buffers and optimizer
state plus the most the step allocated above what was allocated before it (every arm stays
resident, so torch.cuda.max_memory_allocated, reset before the step, also counts the others; that
raw figure is in the JSON too). MFU = tokens/s x graft.model.flops.training_flops_per_token /
graft.device.peak_flops (the GPU's dense bf16 peak; on a CPU the measured fp32 matmul rate).
The loss of each arm's first step (same weights, same batch) is reported: the graft arms must
agree with each other, the fused loss with the plain one.

An arm that fails (a compile error, out of memory) is reported as failed in the table and the JSON,
and the others go on. `--budget-s` bounds the run: arms not yet built when it is spent are skipped,
and timing stops after the repeat that crosses it (at least one repeat is timed).

GPU run (expected 4-6 minutes on an H200, most of it compiling; bench/device_check.sh runs it):
    python bench/gpu_train_step.py --out gpu_train_step.json
CPU smoke (seconds; tests/bench/test_gpu_train_step_smoke.py):
    python bench/gpu_train_step.py --tiny --device cpu --no-compile --steps 1 --repeats 1 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from machine import cpu_name  # bench/machine.py: the bench scripts' own
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

import graft.model.losses as losses
from graft.device import peak_flops
from graft.model.config import PRESETS, ModelConfig, preset
from graft.model.flops import training_flops_per_token
from graft.model.transformer import LanguageModel

PRESET = "gpt2-124m"
GPU_VOCAB = 50304  # GPT-2's 50,257 rounded up to a multiple of 64 (nanoGPT's choice)
LR, BETAS, WEIGHT_DECAY = 6e-4, (0.9, 0.95), 0.1
TINY = dict(layers=2, d_model=64, heads=4, vocab=512, batch=2, seq_len=64)
HF_REFERENCE = "hf"


@dataclass(frozen=True)
class ArmSpec:
    name: str
    kind: str  # hf | backbone | whole_fused | whole_plain
    chunk_rows: int | None  # graft.model.losses._CHUNK_ROWS while the arm runs; None: untouched
    what: str


ARMS: dict[str, ArmSpec] = {
    a.name: a
    for a in [
        ArmSpec(
            "hf",
            "hf",
            None,
            "transformers GPT2LMHeadModel (sdpa), compiled; labels + shift_labels",
        ),
        ArmSpec("graft", "backbone", 512, "as graft pretrain: backbone compiled, fused loss 512"),
        ArmSpec(
            "graft_whole_plain", "whole_plain", None, "model + F.cross_entropy compiled together"
        ),
        ArmSpec("graft_chunk4096", "backbone", 4096, "backbone compiled, fused loss 4096"),
        ArmSpec("graft_chunk16384", "backbone", 16384, "backbone compiled, fused loss 16384"),
        ArmSpec("graft_whole_fused", "whole_fused", 512, "whole model compiled, fused loss 512"),
    ]
}
# The reference first (the ratios need it), then by importance: a tight --budget-s skips the last.
DEFAULT_ARMS = list(ARMS)


@dataclass
class ArmResult:
    name: str
    what: str
    status: str = "pending"  # ok | failed | skipped
    error: str | None = None
    chunk_rows: int | None = None
    first_step_s: float | None = None  # the first step alone: it compiles
    warmup_s: float | None = None  # every warm-up step, the first included
    first_loss: float | None = None  # the loss of step one: same weights, same batch in every arm
    last_loss: float | None = None  # after the last timed repeat
    tok_s: list[float] = field(default_factory=list)
    tok_s_median: float | None = None
    ratio_to_hf: float | None = None
    mfu: float | None = None
    state_bytes: int | None = None  # parameters, buffers and optimizer state
    step_peak_bytes: int | None = None  # the most one step allocated above what it started with
    peak_bytes: int | None = None  # state + step peak: this arm's own peak
    raw_max_memory_allocated: int | None = None  # max_memory_allocated incl. the resident others
    notes: str | None = None


@dataclass
class Live:
    """A built arm: its step and what must stay alive for it."""

    step: Callable[[], torch.Tensor]
    model: nn.Module
    optimizer: torch.optim.Optimizer


def log(start: float, message: str) -> None:
    now = datetime.now(UTC).strftime("%H:%M:%S")
    print(f"[{now} +{time.perf_counter() - start:6.1f}s] {message}", flush=True)


def model_config(args: argparse.Namespace) -> ModelConfig:
    """graft's GPT-2 124M preset (or its GPT-2 style fields, should the preset be gone), with the
    shape overrides; max_seq_len grows to --seq-len when that is longer."""
    overrides: dict[str, object] = {"vocab_size": args.vocab, "dropout": 0.0}
    for key, value in (
        ("n_layers", args.layers),
        ("d_model", args.d_model),
        ("n_heads", args.heads),
    ):
        if value is not None:
            overrides[key] = value
    if PRESET in PRESETS:
        cfg = preset(PRESET, **overrides)
    else:
        gpt2 = dict(norm="layernorm", positions="learned", mlp="gelu_tanh", bias=True)
        gpt2.update(tie_embeddings=True, d_model=768, n_layers=12, n_heads=12, max_seq_len=1024)
        cfg = ModelConfig.model_validate({**gpt2, **overrides})
    if args.seq_len > cfg.max_seq_len:
        cfg = ModelConfig.model_validate({**cfg.model_dump(), "max_seq_len": args.seq_len})
    return cfg


def hf_config(cfg: ModelConfig) -> GPT2Config:
    assert cfg.vocab_size is not None
    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_positions=cfg.max_seq_len,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=cfg.norm_eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=cfg.vocab_size - 1,
        eos_token_id=cfg.vocab_size - 1,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation="sdpa",
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied tensor once


def optimizer_for(model: nn.Module) -> torch.optim.AdamW:
    """graft's groups (train/optim.py): decay on matrices, none on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=True)


class PlainLoss(nn.Module):
    """graft's model with the plain loss: full logits, then F.cross_entropy (a mean)."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs, heads=["lm"]).logits
        assert logits is not None
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@contextlib.contextmanager
def chunk_rows(rows: int | None) -> Iterator[None]:
    """graft.model.losses._CHUNK_ROWS = rows for the block, restored after it."""
    if rows is None:
        yield
        return
    saved = losses._CHUNK_ROWS
    losses._CHUNK_ROWS = rows
    try:
        yield
    finally:
        losses._CHUNK_ROWS = saved


def build_arm(
    spec: ArmSpec,
    cfg: ModelConfig,
    x: torch.Tensor,
    device: torch.device,
    *,
    compile: bool,
    compile_mode: str | None,
    precision: str,
    seed: int,
) -> Live:
    """The arm's model (fresh, from `seed`), its optimizer and its step on inputs/targets of x."""
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    n_tokens = targets.numel()
    torch.manual_seed(seed)
    model: nn.Module
    if spec.kind == "hf":
        model = GPT2LMHeadModel(hf_config(cfg))
    else:
        model = LanguageModel(cfg)
    model.to(device)
    model.train()
    optimizer = optimizer_for(model)

    def compiled(module: nn.Module) -> nn.Module:
        return torch.compile(module, mode=compile_mode) if compile else module

    forward: Callable[[], torch.Tensor]
    if spec.kind == "hf":
        hf = compiled(model)

        def forward() -> torch.Tensor:
            return hf(input_ids=inputs, labels=targets, shift_labels=targets).loss

    elif spec.kind == "backbone":
        assert isinstance(model, LanguageModel)
        graft = model
        if compile:
            graft.model.compile(mode=compile_mode)  # in place, as graft pretrain does

        def forward() -> torch.Tensor:
            out = graft(inputs, heads=["lm"], targets=targets)
            assert out.lm_loss is not None
            return out.lm_loss / n_tokens

    elif spec.kind == "whole_fused":
        whole = compiled(model)

        def forward() -> torch.Tensor:
            out = whole(inputs, heads=["lm"], targets=targets)
            assert out.lm_loss is not None
            return out.lm_loss / n_tokens

    elif spec.kind == "whole_plain":
        assert isinstance(model, LanguageModel)
        plain = compiled(PlainLoss(model))

        def forward() -> torch.Tensor:
            return plain(inputs, targets)

    else:
        raise ValueError(f"unknown arm kind {spec.kind!r}")

    def step() -> torch.Tensor:
        with autocast(device, precision):
            loss = forward()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return Live(step, model, optimizer)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def state_bytes(live: Live) -> int:
    tensors: dict[int, torch.Tensor] = {}
    for t in [*live.model.parameters(), *live.model.buffers()]:
        tensors[id(t)] = t
    for state in live.optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                tensors[id(v)] = v
    return sum(t.numel() * t.element_size() for t in tensors.values())


def time_steps(live: Live, spec: ArmSpec, steps: int, device: torch.device) -> float:
    with chunk_rows(spec.chunk_rows):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            live.step()
        sync(device)
        return time.perf_counter() - start


def short_error(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def raise_recompile_limit(limit: int = 64) -> None:
    """Many models (each arm its own) run through the same code: let dynamo keep them all."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        with contextlib.suppress(Exception):  # names differ across torch versions
            setattr(config, name, max(getattr(config, name), limit))


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_name()
    return device.type


def gib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f}"


def markdown_table(results: list[ArmResult]) -> str:
    rows = [
        "| arm | what | status | tok/s median [min–max] | vs hf | MFU | peak GiB "
        "| first loss | first step s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        status = r.status if r.error is None else f"{r.status}: {r.error}"
        status = status.replace("|", "/").replace("\n", " ")
        if r.tok_s:
            speed = f"{statistics.median(r.tok_s):,.0f} [{min(r.tok_s):,.0f}–{max(r.tok_s):,.0f}]"
        else:
            speed = "–"
        ratio = "–" if r.ratio_to_hf is None else f"{r.ratio_to_hf:.3f}x"
        mfu = "–" if r.mfu is None else f"{r.mfu:.1%}"
        loss = "–" if r.first_loss is None else f"{r.first_loss:.6f}"
        warm = "–" if r.first_step_s is None else f"{r.first_step_s:.1f}"
        rows.append(
            f"| {r.name} | {r.what} | {status} | {speed} | {ratio} | {mfu} "
            f"| {gib(r.peak_bytes)} | {loss} | {warm} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--tiny", action="store_true", help=f"smoke shape: {TINY}")
    p.add_argument("--batch", type=int, help="sequences per step (default 16; tiny 2)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 1024; tiny 64)")
    p.add_argument("--layers", type=int, help="n_layers override (preset 12; tiny 2)")
    p.add_argument("--d-model", type=int, help="d_model override (preset 768; tiny 64)")
    p.add_argument("--heads", type=int, help="n_heads override (preset 12; tiny 4)")
    p.add_argument("--vocab", type=int, help=f"vocabulary (default {GPU_VOCAB}; tiny 512)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed repeat (K)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per arm (R)")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps per arm (the first compiles)"
    )
    p.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
        help=f"comma-separated, from: {', '.join(ARMS)}",
    )
    p.add_argument("--no-compile", action="store_true", help="every arm eager")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: default)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="autocast")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (graft does not)")
    p.add_argument("--seed", type=int, default=0, help="weights; the batch uses seed + 1")
    p.add_argument(
        "--budget-s", type=float, default=None, help="stop building arms / timing after this"
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    for key, tiny_value in TINY.items():
        if getattr(args, key, None) is None and args.tiny:
            setattr(args, key, tiny_value)
    args.batch = args.batch or 16
    args.seq_len = args.seq_len or 1024
    args.vocab = args.vocab or GPU_VOCAB
    args.arm_names = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arm_names if a not in ARMS]
    if unknown or not args.arm_names:
        p.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    if min(args.steps, args.repeats, args.warmup) < 1:
        p.error("--steps, --repeats and --warmup must be at least 1")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """Atomically: a run killed mid-way leaves the last complete report."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device)
    compile = not args.no_compile
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if compile:
        raise_recompile_limit()
    cfg = model_config(args)
    with torch.device("meta"):  # shapes only: FLOPs and parameter counts
        meta_graft = LanguageModel(cfg)
        meta_hf = GPT2LMHeadModel(hf_config(cfg))
    params, hf_params = count_params(meta_graft), count_params(meta_hf)
    flops_per_token = training_flops_per_token(meta_graft, args.seq_len)
    del meta_graft, meta_hf
    peak = peak_flops(device) if args.precision == "bf16" or device.type == "cpu" else None
    tokens_per_step = args.batch * args.seq_len
    # The arms' descriptions say what compile does in each; with --no-compile none of it happens.
    eager = "" if compile else " [all eager: --no-compile]"
    results = [
        ArmResult(name, ARMS[name].what + eager, chunk_rows=ARMS[name].chunk_rows)
        for name in args.arm_names
    ]
    report: dict[str, Any] = {
        "command": shlex.join(sys.argv if argv is None else ["bench/gpu_train_step.py", *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": device_name(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "tf32": bool(args.tf32),
        "precision": args.precision,
        "compile": compile,
        "compile_mode": args.compile_mode,
        "model": cfg.model_dump(mode="json"),
        "params": params,
        "hf_params": hf_params,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "tokens_per_step": tokens_per_step,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "optimizer": {"lr": LR, "betas": BETAS, "weight_decay": WEIGHT_DECAY, "fused": True},
        "flops_per_token": flops_per_token,
        "peak_flops": peak,
        "budget_s": args.budget_s,
        "arms": results,
    }

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - start
        write_json(args.out, {**report, "arms": [asdict(r) for r in results]})

    log(
        start,
        f"{report['device_name']} ({device}); torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, transformers {transformers.__version__}",
    )
    log(
        start,
        f"{PRESET} shape: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
        f"vocab {cfg.vocab_size}; {params:,} parameters (transformers: {hf_params:,}); "
        f"batch {args.batch} x {args.seq_len}; {args.precision}; compile {compile}",
    )
    if params != hf_params:
        log(start, f"WARNING: parameter counts differ: graft {params:,}, hf {hf_params:,}")
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=g).to(device)

    def over_budget() -> bool:
        return args.budget_s is not None and time.perf_counter() - start > args.budget_s

    live: dict[str, Live] = {}
    for r in results:
        spec = ARMS[r.name]
        if over_budget():
            r.status, r.error = "skipped", "time budget spent before it was built"
            log(start, f"{r.name}: skipped (budget)")
            continue
        log(start, f"{r.name}: building, {args.warmup} warm-up step(s) ({spec.what})")
        arm: Live | None = None
        try:
            arm = build_arm(
                spec,
                cfg,
                x,
                device,
                compile=compile,
                compile_mode=args.compile_mode,
                precision=args.precision,
                seed=args.seed,
            )
            with chunk_rows(spec.chunk_rows):
                t0 = time.perf_counter()
                first = arm.step()
                r.first_loss = float(first.item())  # .item() waits for the step
                r.first_step_s = time.perf_counter() - t0
                for _ in range(args.warmup - 1):
                    arm.step()
                sync(device)
                r.warmup_s = time.perf_counter() - t0
                r.state_bytes = state_bytes(arm)
                if device.type == "cuda":
                    base = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    arm.step()
                    sync(device)
                    raw = torch.cuda.max_memory_allocated(device)
                    r.raw_max_memory_allocated = raw
                    r.step_peak_bytes = raw - base
                    r.peak_bytes = r.state_bytes + r.step_peak_bytes
            live[r.name] = arm
            r.status = "ok"
            attention = getattr(getattr(arm.model, "config", None), "_attn_implementation", None)
            if spec.kind == "hf":
                r.notes = f"attn_implementation {attention}"
            log(
                start,
                f"{r.name}: first loss {r.first_loss:.6f}, first step {r.first_step_s:.1f} s, "
                f"warm-up {r.warmup_s:.1f} s, peak {gib(r.peak_bytes)} GiB",
            )
        except Exception as exc:  # an arm's failure is a result, not the end of the run
            r.status, r.error = "failed", short_error(exc)
            log(start, f"{r.name}: FAILED while building/warming up: {r.error}")
            traceback.print_exc(file=sys.stderr)
            arm = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        save()

    for repeat in range(args.repeats):
        if repeat and over_budget():
            log(start, f"time budget spent: stopping after {repeat} repeat(s)")
            break
        for r in results:
            if r.name not in live:
                continue
            try:
                seconds = time_steps(live[r.name], ARMS[r.name], args.steps, device)
                r.tok_s.append(tokens_per_step * args.steps / seconds)
            except Exception as exc:
                r.status, r.error = "failed", f"while timed: {short_error(exc)}"
                log(start, f"{r.name}: FAILED while timed: {r.error}")
                traceback.print_exc(file=sys.stderr)
                del live[r.name]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        done = ", ".join(f"{r.name} {r.tok_s[-1]:,.0f}" for r in results if r.name in live)
        log(start, f"repeat {repeat + 1}/{args.repeats} tok/s: {done}")
        save()

    for r in results:  # one more step each, outside every timed span: where training got to
        if r.name in live:
            try:
                with chunk_rows(ARMS[r.name].chunk_rows):
                    r.last_loss = float(live[r.name].step().item())
            except Exception as exc:
                r.status, r.error = "failed", f"after timing: {short_error(exc)}"
                traceback.print_exc(file=sys.stderr)
    hf = next((r for r in results if r.name == HF_REFERENCE and r.tok_s), None)
    for r in results:
        if not r.tok_s:
            continue
        r.tok_s_median = statistics.median(r.tok_s)
        if hf is not None:
            r.ratio_to_hf = r.tok_s_median / statistics.median(hf.tok_s)
        if peak:
            r.mfu = r.tok_s_median * flops_per_token / peak
    report["table"] = markdown_table(results)
    save()
    print()
    timed = max((len(r.tok_s) for r in results), default=0)
    print(
        f"{report['device_name']}; {PRESET} shape ({params / 1e6:.1f}M params), vocab "
        f"{cfg.vocab_size}, batch {args.batch} x {args.seq_len}, "
        + ("bf16 autocast" if args.precision == "bf16" else "fp32 (no autocast)")
        + f", fused AdamW, compile {compile}; {timed} x {args.steps} steps timed per arm after "
        f"{args.warmup} warm-up, interleaved; "
        + (f"MFU against {peak / 1e12:.1f} TFLOP/s" if peak else "no MFU (no known peak)")
    )
    print()
    print(report["table"], flush=True)
    report["arms"] = [asdict(r) for r in results]
    return report


if __name__ == "__main__":
    main()

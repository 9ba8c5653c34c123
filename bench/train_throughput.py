"""Training throughput of graft against Hugging Face transformers on identical models, same run.

Method. For each preset, graft's LanguageModel and a transformers reference (GPT2LMHeadModel for
GPT-2 style presets, LlamaForCausalLM for Llama style) are built locally from configs at the same
shape; their parameter counts are asserted equal before anything is timed. Both train in fp32, train
mode, dropout 0, with the same fused AdamW settings on the same batch of token ids, and score the
same tokens: inputs x[:, :-1], targets x[:, 1:] (T tokens per row). graft uses its fused
`linear_cross_entropy_sum` divided by the token count; transformers gets `labels` plus
`shift_labels=x[:, 1:]` (a kwarg its causal-LM loss accepts: targets already shifted), so it scores
all T positions too, not T-1; it keeps its default attention (sdpa) and runs with use_cache=False,
as training does. A step is forward, backward, optimizer step, zero_grad(set_to_none=True).

After warm-up steps for both, R repeats of K steps are timed, interleaved (graft, hf, graft, hf...)
so that drift in the machine hits both sides; we report the median and range of tokens/s over
repeats and the ratio of the medians, and how much CPU other processes took during the run (on a
shared machine that, not graft or transformers, is what usually moves the numbers). MFU divides
the achieved model FLOP/s by the higher of two matmul peaks measured in the same run (each a median
of fp32 square matmuls, one before and one after the models), with the PaLM / nanoGPT estimate
    FLOPs per step = 6 * N * tokens + 12 * n_layers * d_model * T * tokens,
where N counts every parameter that takes part in a matmul: the blocks, final norm and the LM head
(the tied token embedding counted once, as the head); learned position embeddings are excluded.

The ceiling. A ratio can only grow by cutting what graft does besides the work every
implementation of the model must do: its matrix products, its attention kernel and the optimizer
update. torch.profiler times those ops in graft's own step (their self time, per step); the
ceiling is transformers' median step time over that floor: the ratio graft would reach if
everything else in its step (norms, activations, RoPE, copies, the loss's softmax) took no time
at all, its products running as fast as they do now.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import transformers
from machine import OtherLoad, cpu_name  # bench/machine.py: the bench scripts' own
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from graft.model.config import ModelConfig, preset
from graft.model.transformer import LanguageModel

DEFAULT_PRESETS = ["micro", "llama-micro", "small", "llama-small"]
# (batch, seq_len): the default run takes about two minutes on an idle two-core machine.
DEFAULT_SHAPES = {
    "micro": (8, 256),
    "llama-micro": (8, 256),
    "small": (4, 256),
    "llama-small": (4, 256),
}
FLOPS_FORMULA = (
    "6 * N * tokens + 12 * n_layers * d_model * T * tokens (N: matmul params incl. LM head)"
)


@dataclass
class Result:
    preset: str
    params: int
    batch: int
    seq_len: int
    graft_tok_s: list[float]
    hf_tok_s: list[float]
    ratio: float
    flops_per_token: float
    graft_mfu: float = 0.0  # set once the peak is known, at the end of the run
    hf_mfu: float = 0.0
    graft_floor_s: float = 0.0  # seconds per step of graft's essential ops (see ESSENTIAL_OPS)
    ceiling: float = 0.0  # transformers' median step time / graft_floor_s

    def set_mfu(self, peak: float) -> None:
        self.graft_mfu = statistics.median(self.graft_tok_s) * self.flops_per_token / peak
        self.hf_mfu = statistics.median(self.hf_tok_s) * self.flops_per_token / peak


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def build_models(
    name: str, vocab: int, seed: int = 0
) -> tuple[ModelConfig, LanguageModel, nn.Module]:
    """graft's model and its transformers twin; raises AssertionError if their sizes differ."""
    cfg = preset(name, vocab_size=vocab)
    torch.manual_seed(seed)
    graft = LanguageModel(cfg)
    common = dict(
        vocab_size=vocab, tie_word_embeddings=True, use_cache=False
    )  # no KV cache in training
    if cfg.positions == "learned":
        hf: nn.Module = GPT2LMHeadModel(
            GPT2Config(
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
                bos_token_id=vocab - 1,
                eos_token_id=vocab - 1,
                **common,
            )
        )
    else:
        hf = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=cfg.d_model,
                intermediate_size=cfg.ff_dim,
                num_hidden_layers=cfg.n_layers,
                num_attention_heads=cfg.n_heads,
                num_key_value_heads=cfg.kv_heads,
                max_position_embeddings=cfg.max_seq_len,
                rms_norm_eps=cfg.norm_eps,
                rope_theta=cfg.rope_theta,
                hidden_act="silu",
                attention_bias=False,
                mlp_bias=False,
                attention_dropout=0.0,
                **common,
            )
        )
    n_graft, n_hf = count_params(graft), count_params(hf)
    assert n_graft == n_hf, f"{name}: graft has {n_graft:,} parameters, transformers {n_hf:,}"
    return cfg, graft, hf


def make_steps(
    graft: LanguageModel, hf: nn.Module, x: torch.Tensor
) -> tuple[Callable[[], None], Callable[[], None]]:
    """One training step for each side on the same (B, T+1) ids; both score the B*T next tokens."""
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    # Fused AdamW on both sides: graft's loop uses it, and so does transformers' Trainer by default
    # on torch >= 2.8 (adamw_torch_fused), so the optimizer is not what the ratio measures.
    opts = [
        torch.optim.AdamW(m.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        for m in (graft, hf)
    ]
    graft.train()
    hf.train()

    def graft_step() -> None:
        (graft(inputs, targets=targets).lm_loss / targets.numel()).backward()
        opts[0].step()
        opts[0].zero_grad(set_to_none=True)

    def hf_step() -> None:
        hf(input_ids=inputs, labels=targets, shift_labels=targets).loss.backward()
        opts[1].step()
        opts[1].zero_grad(set_to_none=True)

    return graft_step, hf_step


def time_steps(step: Callable[[], None], k: int) -> float:
    start = time.perf_counter()
    for _ in range(k):
        step()
    return time.perf_counter() - start


# The ops every implementation of these models runs, whose self time is graft's floor: matrix
# products, the attention kernel (forward and backward) and the fused AdamW update.
ESSENTIAL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")
ESSENTIAL_PREFIXES = ("aten::_scaled_dot_product", "aten::_fused_adam")


def essential_seconds(step: Callable[[], None], k: int) -> float:
    """Seconds per step that `step` spends in ESSENTIAL_OPS, by torch.profiler's self time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        time_steps(step, k)
    micros = sum(
        event.self_cpu_time_total
        for event in prof.key_averages()
        if event.key in ESSENTIAL_OPS or event.key.startswith(ESSENTIAL_PREFIXES)
    )
    return micros / 1e6 / k


def matmul_peak(n: int = 2048, repeats: int = 7) -> float:
    """Median fp32 FLOP/s of an n x n matmul: the machine's practical peak for MFU."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = [time_steps(lambda: a @ b, 1) for _ in range(repeats)]
    return 2 * n**3 / statistics.median(times)


def flops_per_step(cfg: ModelConfig, params: int, batch: int, seq_len: int) -> float:
    n = params - (cfg.max_seq_len * cfg.d_model if cfg.positions == "learned" else 0)
    tokens = batch * seq_len
    return 6 * n * tokens + 12 * cfg.n_layers * cfg.d_model * seq_len * tokens


def bench_preset(
    name: str, vocab: int, batch: int, seq_len: int, repeats: int, steps: int, warmup: int
) -> Result:
    cfg, graft, hf = build_models(name, vocab)
    params = count_params(graft)
    print(
        f"{name}: {params:,} parameters in both (graft == transformers); "
        f"batch {batch}, seq {seq_len}, hf attention: {hf.config._attn_implementation}",
        flush=True,
    )
    x = torch.randint(0, vocab, (batch, seq_len + 1), generator=torch.Generator().manual_seed(1))
    graft_step, hf_step = make_steps(graft, hf, x)
    for step in (graft_step, hf_step):
        time_steps(step, warmup)
    tokens = batch * seq_len * steps
    graft_tps, hf_tps = [], []
    for _ in range(repeats):  # interleaved so drift hits both
        graft_tps.append(tokens / time_steps(graft_step, steps))
        hf_tps.append(tokens / time_steps(hf_step, steps))
    ratio = statistics.median(graft_tps) / statistics.median(hf_tps)
    flops_per_token = flops_per_step(cfg, params, batch, seq_len) / (batch * seq_len)
    floor = essential_seconds(graft_step, steps)
    hf_step_s = batch * seq_len / statistics.median(hf_tps)
    return Result(
        name,
        params,
        batch,
        seq_len,
        graft_tps,
        hf_tps,
        ratio,
        flops_per_token,
        graft_floor_s=floor,
        ceiling=hf_step_s / floor if floor > 0 else float("inf"),
    )


def markdown_table(results: list[Result]) -> str:
    def cell(v: list[float]) -> str:
        return f"{statistics.median(v):,.0f} [{min(v):,.0f}–{max(v):,.0f}]"

    rows = [
        "| preset | params | batch x seq | graft tok/s (median [min–max]) "
        "| hf tok/s (median [min–max]) | ratio graft/hf | graft MFU | hf MFU "
        "| ceiling graft/hf |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.preset} | {r.params / 1e6:.2f}M | {r.batch} x {r.seq_len} "
            f"| {cell(r.graft_tok_s)} | {cell(r.hf_tok_s)} | {r.ratio:.2f}x "
            f"| {r.graft_mfu:.1%} | {r.hf_mfu:.1%} | {r.ceiling:.2f}x |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS)
    p.add_argument("--batch-size", type=int, help="override every preset's default batch size")
    p.add_argument("--seq-len", type=int, help="override every preset's default sequence length")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per side (interleaved)")
    p.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side before timing")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--threads", type=int, help="torch.set_num_threads; default: torch's own choice")
    p.add_argument(
        "--peak-size", type=int, default=2048, help="side of the square fp32 matmul for the peak"
    )
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"CPU: {cpu_name()}; torch {torch.__version__}; transformers {transformers.__version__}; "
        f"threads {torch.get_num_threads()}"
    )
    print(f"MFU = achieved FLOP/s / peak; FLOPs per step = {FLOPS_FORMULA}")
    print(
        "both sides score the same B*T tokens: inputs x[:, :-1], targets x[:, 1:] "
        "(transformers via labels + shift_labels)",
        flush=True,
    )
    # The peak is measured before and after the models and the higher one is used, so one burst of
    # load from another process cannot inflate MFU.
    load = OtherLoad()
    peak = matmul_peak(args.peak_size)
    print(
        f"matmul peak before (fp32 {args.peak_size}x{args.peak_size}, median of 7): "
        f"{peak / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    results = []
    for name in args.presets:
        batch, seq = DEFAULT_SHAPES.get(name, (4, 256))
        results.append(
            bench_preset(
                name,
                args.vocab,
                args.batch_size or batch,
                args.seq_len or seq,
                args.repeats,
                args.steps,
                args.warmup,
            )
        )
    peak_after = matmul_peak(args.peak_size)
    print(f"matmul peak after: {peak_after / 1e9:.1f} GFLOP/s; MFU uses the higher")
    peak = max(peak, peak_after)
    # Another process on the same cores slows both sides unevenly, so say how much there was.
    other_cores = load.cores()
    print(
        f"other processes used {other_cores:.2f} CPU cores on average during the run "
        "(0: a quiet machine)"
    )
    for r in results:
        r.set_mfu(peak)
    print(
        f"\nvocab {args.vocab}, fp32, fused AdamW, {args.repeats} repeats x {args.steps} steps "
        f"after {args.warmup} warm-up steps, interleaved\n"
    )
    print(markdown_table(results))
    print(
        "\nceiling: transformers' step time over the time graft's step spends in matrix products, "
        "attention and the AdamW update (torch.profiler): the ratio if nothing else took time"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "cpu": cpu_name(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "threads": torch.get_num_threads(),
                    "peak_flops": peak,
                    "flops_formula": FLOPS_FORMULA,
                    "other_processes_cores": other_cores,
                    "results": [asdict(r) for r in results],
                },
                f,
                indent=2,
            )
    return results


if __name__ == "__main__":
    main()

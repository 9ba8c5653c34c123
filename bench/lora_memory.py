"""Trainable parameters, peak memory and step time of LoRA against full fine-tuning (and freezing).

Method. Each adaptation method runs in a fresh Python process, so each has its own peak resident
set size (ru_maxrss, what the kernel saw at the worst moment). The process builds the same
sequence classifier (a preset's shape, random init, 2 labels), records its peak RSS once the model
exists, then applies the method with graft's own `apply_adaptation` and AdamW (`build_optimizer`)
and runs K training steps (forward, backward, optimizer step) on fixed random batches of B x T
tokens. "Training overhead" is the peak after training minus the peak after building the model:
gradients, optimizer state and activations, the memory fine-tuning adds on top of holding the model.
LoRA still back-propagates through the frozen blocks, so its activations match full fine-tuning's;
what it saves is the gradients and AdamW's two moments for every frozen weight. PEFT's adapter
dropout (`--lora-dropout`, default 0.05 as in graft's AdaptConfig) keeps a dropped copy of each
adapted layer's input for the backward pass, which costs activation memory.

    python bench/lora_memory.py --preset small --steps 5
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import subprocess
import sys
import time


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_one(
    method: str,
    preset_name: str,
    vocab: int,
    batch: int,
    seq_len: int,
    steps: int,
    lora_dropout: float,
) -> dict:
    import torch
    import torch.nn.functional as F

    from graft.adapt import apply_adaptation, trainable_parameters
    from graft.config import AdaptConfig, OptimConfig
    from graft.model.config import ModelConfig, preset
    from graft.model.transformer import LanguageModel
    from graft.train.optim import build_optimizer

    importlib.import_module(
        "peft"
    )  # by every method before the baseline, so LoRA is not charged for the import

    torch.manual_seed(0)
    config = preset(preset_name).model_copy(update={"vocab_size": vocab, "max_seq_len": seq_len})
    config = ModelConfig.model_validate(
        {**config.model_dump(), "head": "sequence", "labels": ("a", "b")}
    )
    model = LanguageModel(config)
    loaded = peak_rss_mib()
    apply_adaptation(model, AdaptConfig(method=method, lora_dropout=lora_dropout))
    trainable, total = trainable_parameters(model)
    model.train()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4), torch.device("cpu"))
    ids = torch.randint(0, vocab, (batch, seq_len))
    labels = torch.randint(0, 2, (batch,))
    last = torch.full((batch,), seq_len - 1)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logits = model(ids, heads=["classifier"], last_index=last).class_logits
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = peak_rss_mib()
    return {
        "method": method,
        "trainable": trainable,
        "total": total,
        "loaded_mib": loaded,
        "peak_mib": peak,
        "overhead_mib": peak - loaded,
        "step_s": sorted(times)[len(times) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default="full,lora,freeze")
    parser.add_argument(
        "--lora-dropout", type=float, default=0.05, help="PEFT's dropout on the adapters' input"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                run_one(
                    args.child,
                    args.preset,
                    args.vocab,
                    args.batch,
                    args.seq_len,
                    args.steps,
                    args.lora_dropout,
                )
            )
        )
        return
    rows = []
    for method in args.methods.split(","):
        command = [
            sys.executable,
            __file__,
            "--child",
            method,
            "--preset",
            args.preset,
            "--vocab",
            str(args.vocab),
            "--batch",
            str(args.batch),
            "--seq-len",
            str(args.seq_len),
            "--steps",
            str(args.steps),
            "--lora-dropout",
            str(args.lora_dropout),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    full = next((r for r in rows if r["method"] == "full"), rows[0])
    print(
        f"preset {args.preset}, vocab {args.vocab}, batch {args.batch} x {args.seq_len} tokens, "
        f"{args.steps} steps, lora rank 8 on q/k/v/o_proj with dropout {args.lora_dropout}, "
        "fp32 CPU\n"
    )
    print(
        "| method | trainable parameters | share | peak RSS (MiB) | training overhead (MiB) "
        "| vs full | step (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['trainable']:,} | {r['trainable'] / r['total']:.2%} "
            f"| {r['peak_mib']:.0f} | {r['overhead_mib']:.0f} "
            f"| {r['overhead_mib'] / full['overhead_mib']:.2f}x | {r['step_s']:.2f} |"
        )


if __name__ == "__main__":
    main()

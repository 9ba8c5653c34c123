"""Per-process memory of the training state for every model preset: weights, gradients and AdamW
moments on one process, under DDP, and under FSDP. Computed from parameter counts, not measured.

Method. Each preset's LanguageModel is built on the meta device (shapes only: no memory, no random
init) and its parameters are counted with `LanguageModel.num_parameters()`, which counts a tied
LM head once. Presets without a vocabulary of their own (all but gpt2-124m, llama-124m and
bert-base) take `--vocab` (default 8192, the README's BPE tokenizer). Training keeps, per
parameter, in fp32:

    weights        4 bytes   the master weights: bf16 autocast computes with bf16 copies made on
                             the fly, and FSDP's bf16 policy all-gathers bf16 copies of a block,
                             but what is stored (and stepped by AdamW) stays fp32
    gradients      4 bytes   fp32 (FSDP reduces them in fp32: reduce_dtype)
    AdamW moments  8 bytes   exp_avg and exp_avg_sq

One process and DDP hold all of it on every process (DDP keeps a whole copy per process). FSDP over
N processes (`train.parallel=fsdp`) shards all three: each process holds 1/N (FSDP2 pads each
parameter's first dimension to a multiple of N, a few rows at most).

Not included, and often larger: activations (they grow with train.batch_size x train.seq_len
and the model's width and depth), the parameters FSDP gathers whole while it computes (the block
at hand and the root unit: embeddings, final norm and heads), DDP's gradient buckets (one more
gradient-sized buffer), the CUDA context and the caching allocator's slack. At start-up every
process builds the whole model in fp32 before FSDP shards it, so the one-process weights must fit
on each device.

    python bench/memory_table.py                          # every preset, FSDP over 8 processes
    python bench/memory_table.py --presets micro small --vocab 32000 --processes 4
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from graft.model.config import PRESETS, preset
from graft.model.transformer import LanguageModel

WEIGHT_BYTES = 4  # fp32 master weights
GRADIENT_BYTES = 4  # fp32 gradients
MOMENT_BYTES = 8  # AdamW: exp_avg and exp_avg_sq, fp32 each
DEFAULT_VOCAB = 8192


@dataclass(frozen=True)
class Row:
    """One preset's parameter count and the bytes each process holds for it."""

    preset: str
    vocab: int
    parameters: int
    processes: int  # FSDP's world size

    @property
    def weights(self) -> int:
        return self.parameters * WEIGHT_BYTES

    @property
    def gradients(self) -> int:
        return self.parameters * GRADIENT_BYTES

    @property
    def moments(self) -> int:
        return self.parameters * MOMENT_BYTES

    @property
    def total(self) -> int:
        """Per process, one process or DDP."""
        return self.weights + self.gradients + self.moments

    def sharded(self, nbytes: int) -> float:
        """Per process under FSDP over `processes`."""
        return nbytes / self.processes


def parameter_count(name: str, vocab: int = DEFAULT_VOCAB) -> tuple[int, int]:
    """(parameters, vocabulary) of preset `name`, built on the meta device: no memory used. A
    preset with its own vocabulary keeps it; the others take `vocab`."""
    overrides = {} if PRESETS[name].get("vocab_size") else {"vocab_size": vocab}
    config = preset(name, **overrides)
    assert config.vocab_size is not None
    with torch.device("meta"):
        model = LanguageModel(config)
    return model.num_parameters(), config.vocab_size


def table(rows: list[Row]) -> str:
    processes = rows[0].processes if rows else 8
    caption = (
        "Per-process memory of the training state, **computed from parameter counts, not "
        "measured**: fp32 weights, fp32 gradients and AdamW's two fp32 moments (16 bytes a "
        "parameter; bf16 compute does not change what is stored). **Activations are not "
        "included**, nor FSDP's gathered blocks, DDP's gradient buckets or the CUDA context."
    )
    one, fsdp = "1 process / DDP", f"FSDP, {processes} processes"
    header = [
        "preset",
        "vocab",
        "parameters",
        f"{one}: weights",
        "gradients",
        "AdamW moments",
        "total (computed)",
        f"{fsdp}: weights",
        "gradients",
        "AdamW moments",
        "total (computed)",
    ]
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        parts = (r.weights, r.gradients, r.moments, r.total)
        cells = [
            f"`{r.preset}`",
            f"{r.vocab:,}",
            f"{r.parameters:,}",
            *(human(n) for n in parts),
            *(human(r.sharded(n)) for n in parts),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def human(nbytes: float) -> str:
    """Binary units: MiB below a GiB, GiB from there."""
    if nbytes < 1024**3:
        return f"{nbytes / 1024**2:,.1f} MiB"
    return f"{nbytes / 1024**3:,.2f} GiB"


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument(
        "--vocab",
        type=int,
        default=DEFAULT_VOCAB,
        help="vocabulary of the presets without their own (default: 8192)",
    )
    p.add_argument("--processes", type=int, default=8, help="FSDP's world size (default: 8)")
    args = p.parse_args(argv)
    if args.processes < 1:
        p.error("--processes must be at least 1")
    rows = []
    for name in args.presets:
        parameters, vocab = parameter_count(name, args.vocab)
        rows.append(Row(name, vocab, parameters, args.processes))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()

"""BERT-style masked-LM corruption: which tokens are chosen, and what each chosen token becomes.

Pure and seedable: every draw comes from the caller's `torch.Generator`, so the same generator
state builds the same batch. The objective class decides which positions are maskable (never
special tokens or padding) and which ids a random replacement may take; this module only draws.
"""

from __future__ import annotations

import torch

from graft.data.records import IGNORE_INDEX


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _word_start_index(word_starts: torch.Tensor) -> torch.Tensor:
    """For each position, the index of the first token of its word (B, T). Tokens before a row's
    first word start form one word that starts at position 0."""
    B, T = word_starts.shape
    idx = torch.arange(T, device=word_starts.device).expand(B, T)
    return torch.cummax(torch.where(word_starts, idx, torch.zeros_like(idx)), dim=1).values


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    maskable: torch.Tensor,
    mask_id: int,
    replacement_ids: torch.Tensor,
    generator: torch.Generator,
    probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a (B, T) batch for masked-LM training; returns (corrupted ids, targets).

    Each maskable position is chosen with `probability` (with `word_starts`: each word is, and all
    its maskable tokens with it). Of the chosen tokens, `mask_fraction` become `mask_id`,
    `random_fraction` an id drawn uniformly from `replacement_ids`, the rest keep their id; the
    split is per token, also under whole-word masking. targets hold the original id at chosen
    positions and IGNORE_INDEX elsewhere. `input_ids` is never modified.
    """
    for name, value in (
        ("probability", probability),
        ("mask_fraction", mask_fraction),
        ("random_fraction", random_fraction),
    ):
        _check_fraction(name, value)
    if mask_fraction + random_fraction > 1.0 + 1e-9:
        raise ValueError(
            f"mask_fraction + random_fraction must be <= 1, got {mask_fraction} + {random_fraction}"
        )
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
    if maskable.shape != input_ids.shape or maskable.dtype != torch.bool:
        raise ValueError(
            f"maskable must be a bool tensor shaped like input_ids {tuple(input_ids.shape)}, "
            f"got {maskable.dtype} {tuple(maskable.shape)}"
        )
    if word_starts is not None and (
        word_starts.shape != input_ids.shape or word_starts.dtype != torch.bool
    ):
        raise ValueError(
            f"word_starts must be a bool tensor shaped like input_ids {tuple(input_ids.shape)}, "
            f"got {word_starts.dtype} {tuple(word_starts.shape)}"
        )
    if replacement_ids.dim() != 1 or (random_fraction > 0 and replacement_ids.numel() == 0):
        raise ValueError(
            "replacement_ids must be a non-empty 1-D tensor of ids, "
            f"got shape {tuple(replacement_ids.shape)}"
        )

    device = input_ids.device

    # Drawn on the generator's device, then moved: a CPU generator can corrupt a GPU batch.
    def draw() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=generator.device).to(device)

    choose = draw()
    if word_starts is not None:
        # One draw per word, read at the word's first token: a word is chosen whole or not at all.
        choose = choose.gather(1, _word_start_index(word_starts))
    chosen = (choose < probability) & maskable

    # A second, independent draw splits the chosen tokens per token: [0, mask) mask, then random.
    split = draw()
    masked = chosen & (split < mask_fraction)
    randomised = chosen & (split >= mask_fraction) & (split < mask_fraction + random_fraction)

    corrupted = input_ids.clone()
    corrupted[masked] = mask_id
    n_random = int(randomised.sum())
    if n_random:
        # Only as many draws as replacements: cheap on large vocabularies, still reproducible.
        picks = torch.randint(
            replacement_ids.numel(), (n_random,), generator=generator, device=generator.device
        )
        corrupted[randomised] = replacement_ids.to(device)[picks.to(device)].to(corrupted.dtype)
    targets = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return corrupted, targets

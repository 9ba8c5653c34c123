"""From an ObjectiveConfig and prepared data to the objective the loop runs (and, for continued
pre-training, the replay mixture of domain and general data)."""

from __future__ import annotations

from graft.config import ObjectiveConfig
from graft.data.shards import TokenShards
from graft.data.tokenizer import Tokenizer
from graft.objectives.batch import Objective
from graft.objectives.clm import CausalLM
from graft.objectives.denoise import Denoise
from graft.objectives.mix import Mixture
from graft.objectives.mlm import MaskedLM
from graft.objectives.nsp import NextSentence


def build_objective(
    cfg: ObjectiveConfig,
    train: TokenShards,
    val: TokenShards | None,
    *,
    seq_len: int,
    tokenizer: Tokenizer,
    vocab_size: int,
    mask_doc_boundaries: bool = False,
) -> Objective:
    """The configured objective over one dataset (a `mix` builds each part over the same data)."""

    def one(name: str) -> Objective:
        if name == "clm":
            return CausalLM(train, val, seq_len, mask_doc_boundaries=mask_doc_boundaries)
        if name == "mlm":
            return MaskedLM(
                train,
                val,
                seq_len,
                tokenizer,
                vocab_size,
                probability=cfg.mask_probability,
                whole_word=cfg.whole_word_mask,
            )
        if name in ("nsp", "mlm+nsp"):
            return NextSentence(
                train,
                val,
                seq_len,
                tokenizer,
                vocab_size,
                with_mlm=name == "mlm+nsp",
                probability=cfg.mask_probability,
                whole_word=cfg.whole_word_mask,
                same_document_negatives=cfg.nsp_same_document_negatives,
            )
        if name == "denoise":
            return Denoise(
                train,
                val,
                seq_len,
                tokenizer,
                style=cfg.denoise_style,
                noise_density=cfg.noise_density,
                mean_span=cfg.mean_span,
                prefix_lm=cfg.prefix_lm,
            )
        raise AssertionError(f"unknown objective {name}")  # the config's Literal rules this out

    if cfg.name == "mix":
        return Mixture({name: (one(name), weight) for name, weight in cfg.mix.items()})
    return one(cfg.name)


def with_replay(domain: Objective, general: Objective, fraction: float) -> Objective:
    """Continued pre-training: `fraction` of the batches replay general data to limit forgetting;
    both validation sets are scored, and the domain's loss is the run's val/loss."""
    return Mixture(
        {"domain": (domain, 1.0 - fraction), "general": (general, fraction)},
        primary="domain",
        name=domain.name,
    )

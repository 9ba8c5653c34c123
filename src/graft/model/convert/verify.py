"""Checks that a Hugging Face export behaves as the graft model and tokenizer it came from.

`verify_hf_export` reloads the written directory the way a user would (transformers'
AutoModelForCausalLM and AutoTokenizer when transformers is importable; otherwise graft's own HF
reader and the exported tokenizer.json) and returns one `CheckRecord` per check: logits on a probe
batch, the ids a mixed-script probe text gives the model (framed as graft frames it: an encoder's
[CLS] ... [SEP], a Llama tokenizer's bos; against transformers' `tokenizer(text)`), the eos id in
generation_config.json and tokenizer_config.json (the one `exported_eos_id` names; none for an
encoder whose tokenizer has none, as BERT's), and the tokenizer fitting the embedding matrix.
transformers stays optional: it is imported here only if present, and its absence is itself a
record.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graft.data.chat import render_chat
from graft.data.inputs import model_inputs
from graft.data.tokenizer import Tokenizer
from graft.errors import CheckpointError, GraftError, first_line
from graft.model.config import ModelConfig
from graft.model.convert.hf import GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, load_hf_model
from graft.model.convert.hf_export import exported_eos_id
from graft.model.convert.model_card import read_json
from graft.model.transformer import LanguageModel

__all__ = ["PROBE_TEXT", "CheckRecord", "format_table", "raise_on_failure", "verify_hf_export"]

#: ASCII, accents, CJK, emoji (with a skin-tone modifier and a ZWJ sequence) and code.
PROBE_TEXT = (
    "The quick brown fox, 42 times! Café naïve résumé Ærøskøbing. 日本語のテキストと中文。 "
    "😀🚀👍🏽👩‍💻 def f(x):\n\treturn {'k': x ** 2}  # done\n"
)
LOGIT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CheckRecord:
    """One verification check: `ok` is None when the check could not run (and says why)."""

    check: str
    ok: bool | None
    detail: str


def _transformers_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def _probe_ids(model: LanguageModel, tokenizer: Tokenizer | None) -> torch.Tensor:
    """Two rows: the probe text's ids (when a tokenizer is given) and seeded random ids."""
    rows = model.config.vocab_size or 1
    length = min(model.config.max_seq_len, 32)
    random_row = torch.randint(0, rows, (length,), generator=torch.Generator().manual_seed(0))
    if tokenizer is None:
        return torch.stack([random_row, random_row.flip(0)])
    text_row = torch.tensor(tokenizer.encode(PROBE_TEXT)[:length], dtype=torch.long).clamp(
        max=rows - 1
    )
    text_row = torch.cat([text_row, random_row[: length - len(text_row)]])
    return torch.stack([text_row, random_row])


def _graft_outputs(model: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """What the export must reproduce: classifier logits for a classifier, hidden states for a bare
    encoder, LM logits otherwise."""
    config = model.config
    if config.head != "lm":
        out = model(ids, heads=["classifier"]).class_logits
    elif not config.is_encoder or config.mlm_head:
        out = model(ids).logits
    else:
        out = model(ids, heads=[]).hidden
    assert out is not None
    return out


def _transformers_outputs(out_dir: Path, config: ModelConfig, ids: torch.Tensor) -> torch.Tensor:
    import transformers

    if config.head == "span":
        # graft's span head gives (B, T, 2): transformers' start and end logits side by side.
        qa = transformers.AutoModelForQuestionAnswering.from_pretrained(out_dir).eval()(
            input_ids=ids
        )
        return torch.stack([qa.start_logits, qa.end_logits], dim=-1)
    auto: Any
    if config.head == "sequence":
        auto, output = transformers.AutoModelForSequenceClassification, "logits"
    elif config.head == "token":
        auto, output = transformers.AutoModelForTokenClassification, "logits"
    elif not config.is_encoder:
        auto, output = transformers.AutoModelForCausalLM, "logits"
    elif config.nsp_head:
        auto, output = transformers.AutoModelForPreTraining, "prediction_logits"
    elif config.mlm_head:
        auto, output = transformers.AutoModelForMaskedLM, "logits"
    else:
        auto, output = transformers.AutoModel, "last_hidden_state"
    return getattr(auto.from_pretrained(out_dir).eval()(input_ids=ids), output)


def _check_logits(
    out_dir: Path,
    model: LanguageModel,
    ids: torch.Tensor,
    use_transformers: bool,
    pad_id: int | None = None,
) -> CheckRecord:
    reader = "transformers" if use_transformers else "graft's HF reader"
    if pad_id is not None and model.config.head == "sequence":
        # A sequence classifier reads the token before the first pad: keep the probe pad-free.
        ids = torch.where(ids == pad_id, (pad_id + 1) % (model.config.vocab_size or 1), ids)
    try:
        with torch.no_grad():
            if use_transformers:
                theirs = _transformers_outputs(out_dir, model.config, ids)
            else:
                theirs = _graft_outputs(load_hf_model(out_dir), ids)
    except (GraftError, OSError, ValueError, RuntimeError, KeyError) as err:
        return CheckRecord("logits", False, f"{reader} cannot load the export: {first_line(err)}")
    device = next(model.parameters()).device
    with torch.no_grad():
        ours = _graft_outputs(model.eval(), ids.to(device)).float().cpu()
    if theirs.shape != ours.shape:
        detail = f"{reader} gives shape {tuple(theirs.shape)}, graft {tuple(ours.shape)}"
        return CheckRecord("logits", False, detail)
    diff = (theirs.float() - ours).abs().max().item()
    ok = diff <= LOGIT_TOLERANCE
    return CheckRecord(
        "logits",
        ok,
        f"max |diff| {diff:.2e} {'<=' if ok else '>'} {LOGIT_TOLERANCE:g} "
        f"({reader}, {ids.shape[0]}x{ids.shape[1]} probe)",
    )


def _exported_tokenizer(out_dir: Path, use_transformers: bool) -> Any:
    """The export's tokenizer as a user loads it: AutoTokenizer, or graft's own Tokenizer."""
    if use_transformers:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(out_dir)
    return Tokenizer.load(out_dir)


def _check_tokenizer_ids(
    out_dir: Path, tokenizer: Tokenizer, config: ModelConfig, use_transformers: bool
) -> CheckRecord:
    # What the model reads (`model_inputs`: an encoder's [CLS] ... [SEP], a Llama tokenizer's
    # bos), against what a user of the export gives it: transformers' `tokenizer(text)`, with
    # its special tokens, or graft reading the exported tokenizer.
    framed = config.is_encoder
    want = model_inputs(tokenizer, [PROBE_TEXT], framed=framed, max_len=None).ids[0]
    reader = "AutoTokenizer" if use_transformers else "exported tokenizer.json"
    try:
        theirs = _exported_tokenizer(out_dir, use_transformers)
        got = (
            theirs(PROBE_TEXT)["input_ids"]
            if use_transformers
            else model_inputs(theirs, [PROBE_TEXT], framed=framed, max_len=None).ids[0]
        )
    except (GraftError, OSError, ValueError, KeyError) as err:
        return CheckRecord(
            "tokenizer ids", False, f"cannot load the exported tokenizer: {first_line(err)}"
        )
    if got == want:
        detail = f"{reader}: {len(want)} ids on the mixed-script probe equal graft's"
        return CheckRecord("tokenizer ids", True, detail)
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return CheckRecord(
        "tokenizer ids",
        False,
        f"{reader} gives {len(got)} ids, graft {len(want)}; first difference at position {first}",
    )


def _check_eos(out_dir: Path, tokenizer: Tokenizer, config: ModelConfig) -> CheckRecord:
    """generation_config.json's eos_token_id and tokenizer_config.json's eos_token are the eos the
    export means to name (exported_eos_id): the same id, or both absent where it names none."""
    eot = exported_eos_id(tokenizer, config)
    if eot is None and not config.is_encoder:
        return CheckRecord("eos ids", None, "the tokenizer has no end-of-text token")
    generation = read_json(out_dir / GENERATION_CONFIG_FILE)
    if not isinstance(generation, dict):
        return CheckRecord("eos ids", False, f"{GENERATION_CONFIG_FILE} is missing or unreadable")
    tok_config = read_json(out_dir / TOKENIZER_CONFIG_FILE)
    eos_token = tok_config.get("eos_token") if isinstance(tok_config, dict) else None
    if isinstance(eos_token, dict):  # the AddedToken form some writers use
        eos_token = eos_token.get("content")
    eos = generation.get("eos_token_id")
    if eot is None:
        # An encoder whose tokenizer has no eos (BERT): as in transformers' own BERT files, no
        # file may name one; one that did would tell transformers' tokenizer and generate of an
        # end-of-sequence graft never had.
        if eos is None and eos_token is None:
            return CheckRecord(
                "eos ids", True, "none: an encoder whose tokenizer has no eos token, as BERT's"
            )
        return CheckRecord(
            "eos ids",
            False,
            f"{GENERATION_CONFIG_FILE} eos_token_id {eos!r} and {TOKENIZER_CONFIG_FILE} eos_token "
            f"{eos_token!r}: the tokenizer has no eos token, so neither should name one",
        )
    eos_ids = eos if isinstance(eos, list) else [eos]
    if eos_ids != [eot]:
        return CheckRecord(
            "eos ids",
            False,
            f"{GENERATION_CONFIG_FILE} eos_token_id {eos!r}, the tokenizer's "
            f"end-of-text id is {eot}",
        )
    if not isinstance(eos_token, str) or tokenizer.token_to_id(eos_token) != eot:
        return CheckRecord(
            "eos ids", False, f"{TOKENIZER_CONFIG_FILE} eos_token {eos_token!r} is not id {eot}"
        )
    return CheckRecord("eos ids", True, f"eos_token_id {eot} = {eos_token} in both configs")


PROBE_CHAT = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
)


def _check_chat_template(
    out_dir: Path, tokenizer: Tokenizer, use_transformers: bool
) -> CheckRecord:
    """The export's chat template renders a probe conversation exactly as graft's does, and its
    end-of-turn token is the generation config's eos."""
    ours = tokenizer.chat_template
    config = read_json(out_dir / TOKENIZER_CONFIG_FILE)
    theirs = config.get("chat_template") if isinstance(config, dict) else None
    if theirs is None and (out_dir / "chat_template.jinja").is_file():
        theirs = (out_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if ours is None and theirs is None:
        return CheckRecord("chat template", None, "none (the model was not instruction-tuned)")
    if ours is None or theirs is None:
        return CheckRecord(
            "chat template",
            False,
            "the checkpoint has a chat template but the export has none"
            if theirs is None
            else "the export has a chat template the checkpoint does not",
        )
    eos = tokenizer.special_tokens_map.get("eos_token")
    try:
        tokens = tokenizer.special_tokens_map
        want = render_chat(ours, PROBE_CHAT, add_generation_prompt=True, special_tokens=tokens)
        if use_transformers:
            got = _exported_tokenizer(out_dir, True).apply_chat_template(
                list(PROBE_CHAT), tokenize=False, add_generation_prompt=True
            )
        else:
            got = render_chat(theirs, PROBE_CHAT, add_generation_prompt=True, special_tokens=tokens)
    except (GraftError, OSError, ValueError, KeyError) as err:
        return CheckRecord(
            "chat template", False, f"cannot render the exported template: {first_line(err)}"
        )
    if got != want:
        reason = "the exported template renders the probe conversation differently"
        return CheckRecord("chat template", False, reason)
    if eos is None or eos not in want:
        return CheckRecord(
            "chat template",
            False,
            f"the template never emits the eos token {eos!r}, so generation "
            "would not stop at the end of a turn",
        )
    return CheckRecord(
        "chat template", True, f"probe conversation renders identically; turns end with {eos}"
    )


def _check_vocab(out_dir: Path, use_transformers: bool) -> CheckRecord:
    config = read_json(out_dir / "config.json")
    rows = config.get("vocab_size") if isinstance(config, dict) else None
    try:
        theirs = _exported_tokenizer(out_dir, use_transformers)
        size = len(theirs) if use_transformers else theirs.vocab_size
    except (GraftError, OSError, ValueError, KeyError) as err:
        return CheckRecord(
            "vocab size", False, f"cannot load the exported tokenizer: {first_line(err)}"
        )
    if not isinstance(rows, int):
        return CheckRecord("vocab size", False, "config.json has no vocab_size")
    ok = size <= rows
    return CheckRecord(
        "vocab size", ok, f"tokenizer {size} {'<=' if ok else '>'} {rows} embedding rows"
    )


def verify_hf_export(
    out_dir: Path, model: LanguageModel, tokenizer: Tokenizer | None = None
) -> list[CheckRecord]:
    """Reload the export in `out_dir` and compare it with the `model` (and `tokenizer`) it was
    written from. Never raises for a mismatch: every outcome is a record (see raise_on_failure)."""
    out_dir = Path(out_dir)
    use_transformers = _transformers_available()
    how = (
        "installed; reloading as a user would"
        if use_transformers
        else "not installed; checked with graft's HF reader and the exported tokenizer.json instead"
    )
    pad_id = tokenizer.pad_id if tokenizer is not None else None
    records = [
        CheckRecord("transformers", True if use_transformers else None, how),
        _check_logits(out_dir, model, _probe_ids(model, tokenizer), use_transformers, pad_id),
    ]
    if tokenizer is None:
        skipped = "exported without a tokenizer; tokenizer checks skipped"
        return [*records, CheckRecord("tokenizer", None, skipped)]
    return [
        *records,
        _check_tokenizer_ids(out_dir, tokenizer, model.config, use_transformers),
        _check_eos(out_dir, tokenizer, model.config),
        _check_chat_template(out_dir, tokenizer, use_transformers),
        _check_vocab(out_dir, use_transformers),
    ]


def format_table(records: list[CheckRecord]) -> str:
    """A plain text table: check, result (ok / FAIL / skipped), detail."""
    rows = [("check", "result", "detail")] + [
        (r.check, "ok" if r.ok else "skipped" if r.ok is None else "FAIL", r.detail)
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows)


def raise_on_failure(records: list[CheckRecord], out_dir: Path) -> None:
    """A one-line CheckpointError naming the failed checks, if any."""
    failed = [r for r in records if r.ok is False]
    if failed:
        names = "; ".join(f"{r.check} ({r.detail})" for r in failed)
        raise CheckpointError(
            f"export verification failed: {names}. The files in {out_dir} are written and complete "
            "but do not behave as the checkpoint; do not publish them"
        )

"""The model card (README.md) of a Hugging Face export: only facts read from the model and the
checkpoint's files (run config, data index, training state, metrics); whatever they do not say is
written as unknown, never guessed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import DataError
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel
from graft.run_files import (
    CHECKPOINTS_DIR,
    EXPLAIN_DIR,
    METRICS_FILE,
    lower_is_better,
    read_metrics,
    run_dir_of,
)

if TYPE_CHECKING:
    from graft.data.tokenizer import Tokenizer


def _pipeline_tag(cfg: ModelConfig) -> str:
    if cfg.head == "sequence":
        return "text-classification"
    if cfg.head == "token":
        return "token-classification"
    if cfg.head == "span":
        return "question-answering"
    if cfg.is_encoder:
        return "fill-mask" if cfg.mlm_head else "feature-extraction"
    return "text-generation"


def _what(cfg: ModelConfig) -> str:
    if cfg.head == "span":
        return "An extractive question-answering model (start and end logits at every token)"
    if cfg.head != "lm":
        kind = "sequence" if cfg.head == "sequence" else "token"
        return f"A {kind} classifier ({len(cfg.labels)} labels)"
    return "A bidirectional encoder" if cfg.is_encoder else "A causal language model"


def _fine_tuned(source: Path) -> bool:
    try:
        text = (source / "run_config.yaml").read_text(encoding="utf-8")
    except OSError:
        return False
    tasks = ("classify", "tokens", "qa", "instruct", "seq2seq")
    return any(f"name: {task}" in text for task in tasks)


_UNKNOWN = "unknown"


def read_json(path: Path) -> Any:
    """The file's JSON value; None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else _UNKNOWN


def _data_facts(source: Path) -> list[str]:
    import yaml  # graft's configs are YAML; pyyaml is a runtime dependency

    try:
        run_config = yaml.safe_load((source / "run_config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return [f"- data: {_UNKNOWN} (no readable run_config.yaml in the checkpoint)"]
    data = (run_config or {}).get("data") if isinstance(run_config, dict) else None
    path = data.get("path") if isinstance(data, dict) else None
    if not path:
        return [f"- data: {_UNKNOWN} (run_config.yaml names no data.path)"]
    lines = [f"- data directory (run_config.yaml data.path): `{path}`"]
    index = read_json(Path(path) / "index.json")
    if not isinstance(index, dict):
        return [*lines, f"- data contents: {_UNKNOWN} (its index.json is not reachable from here)"]
    sources = index.get("sources") or []
    if sources:
        shown = ", ".join(f"`{s}`" for s in sources[:10])
        lines.append(
            f"- sources: {shown}" + (f" and {len(sources) - 10} more" if len(sources) > 10 else "")
        )
    for name, split in sorted((index.get("splits") or {}).items()):
        if isinstance(split, dict):
            lines.append(
                f"- {name} split: {_count(split.get('tokens'))} tokens, "
                f"{_count(split.get('documents'))} documents, "
                f"{_count(split.get('bytes'))} bytes of text"
            )
    if index.get("tokenizer_kind"):
        lines.append(
            f"- tokenizer: {index['tokenizer_kind']}, {index.get('vocab_size', _UNKNOWN)} tokens"
        )
    return lines


def _training_facts(source: Path) -> list[str]:
    state = read_json(source / "training_state" / "state.json")
    if not isinstance(state, dict):
        return [
            f"- steps, tokens, time: {_UNKNOWN} (the checkpoint has no training_state/state.json)"
        ]
    lines = [f"- optimizer steps: {state.get('step', _UNKNOWN)}"]
    if isinstance(state.get("tokens_seen"), int):
        lines.append(f"- tokens seen: {state['tokens_seen']:,}")
    if isinstance(state.get("elapsed_s"), (int, float)):
        lines.append(f"- training time: {state['elapsed_s']:.0f} s")
    return lines


def _privacy_facts(source: Path) -> list[str]:
    """A private run's guarantee, from the checkpoint's privacy.json (graft.train.privacy); the
    card says nothing it does not hold."""
    spent = read_json(source / "privacy.json")
    if not isinstance(spent, dict):
        return ["- trained without differential privacy (the checkpoint has no privacy.json)"]
    fact = {key: spent.get(key, _UNKNOWN) for key in spent.keys() | _PRIVACY_KEYS}
    epsilon = fact["epsilon"]
    shown = f"{epsilon:.3f}" if isinstance(epsilon, float) else _UNKNOWN
    return [
        f"- DP-SGD: epsilon {shown} at delta {fact['delta']} ({fact['accountant']} accountant), "
        f"after {fact['steps']} steps",
        f"- the unit of privacy: {fact['unit']}",
        f"- per-record clipping {fact['max_grad_norm']}, noise multiplier "
        f"{fact['noise_multiplier']}, Poisson sampling rate {fact['sample_rate']} "
        f"of {_count(spent.get('records'))} records",
    ]


_PRIVACY_KEYS = {
    "epsilon", "delta", "accountant", "steps", "unit", "max_grad_norm", "noise_multiplier",
    "sample_rate",
}  # fmt: skip


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _monitor(source: Path) -> str:
    """The run's train.monitor, from its run_config.yaml (val/loss when it does not say)."""
    import yaml

    try:
        saved = yaml.safe_load((source / "run_config.yaml").read_text(encoding="utf-8"))
        monitor = saved["train"]["monitor"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return "val/loss"
    return monitor if isinstance(monitor, str) else "val/loss"


def _metric_facts(source: Path) -> list[str]:
    """The validation table (the untrained baseline, the best evaluation by train.monitor, the
    last) from the run's metrics.jsonl, then each `graft eval` report in the run's eval/."""
    run = run_dir_of(source)
    if run is None or not (run / METRICS_FILE).is_file():
        return [
            f"- final metrics: {_UNKNOWN} "
            "(the checkpoint is not in a run directory with metrics.jsonl)"
        ]
    try:
        rows = [r for r in read_metrics(run / METRICS_FILE) if any(k.startswith("val/") for k in r)]
    except DataError as err:  # a damaged line: the card says so rather than guess around it
        return [f"- final metrics: {_UNKNOWN} ({err})"]
    if not rows:
        return [f"- final metrics: {_UNKNOWN} (metrics.jsonl has no validation line)"]
    monitor = _monitor(source)
    scored = [row for row in rows if isinstance(row.get(monitor), (int, float))]
    picks = [("first", rows[0])]
    if scored:
        pick = min if lower_is_better(monitor) else max
        picks.append((f"best {monitor}", pick(scored, key=lambda row: row[monitor])))
    picks.append(("last", rows[-1]))
    keys = sorted({k for _, row in picks for k in row if k.startswith("val/")})
    lines = [
        "Validation during training (metrics.jsonl):",
        "",
        "| | step | " + " | ".join(keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    lines += [
        f"| {name} | {row.get('step', _UNKNOWN)} | "
        + " | ".join(_cell(row.get(k, "")) for k in keys)
        + " |"
        for name, row in picks
    ]
    for report in sorted((run / "eval").glob("*.json")):
        values = read_json(report)
        if not isinstance(values, dict):
            continue
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float, str))}
        if scalars:
            lines += ["", f"`graft eval` ({report.relative_to(run)}):", ""]
            lines += ["| metric | value |", "|---|---:|"]
            lines += [f"| {k} | {_cell(v)} |" for k, v in scalars.items()]
    if (run / EXPLAIN_DIR / "index.html").is_file():  # export_hf copies it beside this card
        lines += [
            "",
            f"Attention maps, rollout, per-token loss and attributions for a sample text "
            f"(`graft explain`): [{EXPLAIN_DIR}/index.html]({EXPLAIN_DIR}/index.html)",
        ]
    return lines


def _card_title(source: Path | None) -> str:
    if source is None:
        return "graft model"
    # RUN/checkpoints/NAME: the run's name says more than "last" or "best".
    return (
        f"{source.parent.parent.name} ({source.name})"
        if source.parent.name == CHECKPOINTS_DIR
        else source.name
    )


def model_card(
    model: LanguageModel,
    config_json: dict[str, Any],
    tokenizer: Tokenizer | None,
    source: Path | None,
) -> str:
    """README.md for an export: only facts read from the model and the checkpoint's files;
    anything they do not say is written as unknown."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    unknown_source = [f"- {_UNKNOWN} (exported without the source checkpoint directory)"]
    if source is not None:
        source = Path(source)
    tokenizer_fact = (
        f"{tokenizer.kind}, {tokenizer.vocab_size} tokens" if tokenizer is not None else _UNKNOWN
    )
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {_pipeline_tag(cfg)}",
        "tags: [graft]",
        "---",
        "",
        f"# {_card_title(source)}",
        "",
        f"{_what(cfg)} trained with graft, exported as {config_json['architectures'][0]}.",
        "",
        "## Architecture",
        "",
        f"- {config_json['architectures'][0]} (model_type {config_json['model_type']}), "
        f"{params:,} parameters",
        f"- {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} attention heads ({cfg.kv_heads} key/value), "
        f"feed-forward {cfg.ff_dim}, {cfg.mlp} MLP, {cfg.norm}, {cfg.positions} positions",
        f"- context {cfg.max_seq_len} tokens, {cfg.vocab_size} embedding rows, "
        f"tied embeddings: {'yes' if cfg.tie_embeddings else 'no'}",
        f"- tokenizer: {tokenizer_fact}",
        "",
        *(
            ["## Labels", "", ", ".join(f"{i}: {label}" for i, label in enumerate(cfg.labels)), ""]
            if cfg.labels and cfg.head != "span"  # a span head's start/end are no classes
            else []
        ),
        "## Training data",
        "",
        *(_data_facts(source) if source is not None else unknown_source),
        "",
        "## Training",
        "",
        *(_training_facts(source) if source is not None else unknown_source),
        "",
        "## Privacy",
        "",
        *(_privacy_facts(source) if source is not None else unknown_source),
        "",
        "## Evaluation",
        "",
        *(_metric_facts(source) if source is not None else unknown_source),
        "",
        "## Reproduce",
        "",
    ]
    if source is not None and (source / "run_config.yaml").is_file():
        command = (
            "graft pretrain" if cfg.head == "lm" and not _fine_tuned(source) else "graft finetune"
        )
        lines += [
            "The checkpoint stores the resolved run config, which reproduces the run:",
            "",
            "```",
            f"{command} --config {source / 'run_config.yaml'}",
            "```",
        ]
    else:
        lines.append(f"{_UNKNOWN} (no run_config.yaml available)")
    return "\n".join(lines) + "\n"

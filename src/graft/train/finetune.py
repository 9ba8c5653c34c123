"""Fine-tuning: a pre-trained model (graft checkpoint or Hugging Face directory), a head for the
task, labelled records, and the same `fit` loop as pre-training.

`finetune` reads the records, fixes the label set from the training data (validation labels must be
among them), gives the model the task's head (new heads start from the model's initialisation; the
backbone keeps its weights unless adapt.from_scratch), marks what trains (graft.adapt), and
runs `fit`. The best checkpoint follows train.monitor (the task's metric by default). With
`resume`, the same setup is rebuilt and then takes the weights, optimizer, training state and
random generators of the run's checkpoints/last, so the run continues exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from graft import checkpoint as ckpt
from graft.adapt import apply_adaptation, trainable_parameters
from graft.atomic_files import write_atomic
from graft.config import AdaptConfig, RunConfig
from graft.data.chat import DEFAULT_CHAT_TEMPLATE
from graft.data.records import (
    Conversation,
    TextRecord,
    read_conversations,
    read_labelled,
    stratified_split,
)
from graft.data.tagged import TaggedSentence, read_tagged
from graft.data.tokenizer import Tokenizer
from graft.device import resolve_device
from graft.errors import CheckpointError, ConfigError, DataError
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel
from graft.objectives.batch import Objective
from graft.objectives.classify import Classify, label_set
from graft.objectives.instruct import Instruct
from graft.objectives.tokens import TagTokens, tag_set
from graft.train.loop import Run, RunResult, fit
from graft.train.optim import build_optimizer


@dataclass(frozen=True)
class TaskData:
    """What a task's records give the setup: the objective, the head, and counts worth reporting."""

    objective: Objective
    head: str
    labels: tuple[str, ...]
    notes: tuple[str, ...] = ()


def finetune(
    config: RunConfig, *, resume: bool = False, echo: Callable[[str], None] | None = None
) -> RunResult:
    """Fine-tune train.init on the task of config.objective.name (or, with `resume`, continue the
    run in train.out_dir) and return the run's result."""
    say = echo or (lambda message: print(message, file=sys.stderr))
    if config.train.init is None:
        raise ConfigError(
            "train.init: fine-tuning starts from a checkpoint or Hugging Face directory (--init); "
            "for the from-scratch baseline add --adapt.from_scratch=true"
        )
    if config.data.train_file is None:
        raise ConfigError(
            "data.train_file: give the labelled training records (--data.train_file=FILE)"
        )
    run_dir = config.train.out_dir
    last = ckpt.resume_point(run_dir, resume=resume)
    base, tokenizer = ckpt.load_model(config.train.init)
    if tokenizer.pad_id is None:
        # Batches are padded; GPT-2's tokenizer, for one, has no pad token.
        pad = tokenizer.add_pad_token()
        # A built model always has its vocab_size (Transformer refuses a config without one).
        assert base.config.vocab_size is not None
        if tokenizer.vocab_size > base.config.vocab_size:
            base = _with_vocab_rows(base, tokenizer.vocab_size)
        say(
            f"notice: the tokenizer of {config.train.init} had no pad token; "
            f"added {tokenizer.id_to_token(pad)} as id {pad} "
            f"(embedding: {base.config.vocab_size} rows)"
        )
    task = task_data(config, tokenizer, base.config)
    model_config = base.config.model_copy(
        update=dict(
            head=task.head,
            labels=task.labels,
            dropout=config.model.dropout,
            classifier_pooling=config.model.classifier_pooling,
            pooler=base.config.pooler
            or (
                task.head == "sequence"
                and base.config.attention == "bidirectional"
                and config.model.classifier_pooling == "token"
            ),
        )
    )
    if last is not None:
        ckpt.check_resumable(
            last,
            model_config,
            tokenizer,
            tokenizer_source=f"train.init {config.train.init} comes with",
            fix="resume with the original train.init",
        )
        _check_same_adaptation(last, config.adapt)
    torch.manual_seed(config.train.seed)
    model = LanguageModel(model_config)
    if last is None and not config.adapt.from_scratch:
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        new = [name for name in missing if not name.startswith(("classifier.", "pooler."))]
        if new:  # never silently train a half-loaded model
            raise ConfigError(
                f"train.init {config.train.init}: tensor {new[0]} is missing from the checkpoint"
            )
        del unexpected  # heads of another task (nsp_head for a classifier...) are kept but unused
    apply_adaptation(model, config.adapt)
    if last is not None:
        # Copied in place, LoRA adapter included, so the parameters apply_adaptation marked as
        # trainable are the ones that go on training.
        trained, _ = ckpt.load_model(last, verify=False)  # resume_point verified it
        model.load_state_dict(trained.state_dict())
        del trained
    trainable, total = trainable_parameters(model)
    for note in task.notes:
        say(note)
    say(
        f"fine-tuning {trainable:,} of {total:,} parameters ({config.adapt.method}"
        f"{', from scratch' if config.adapt.from_scratch else ''})"
    )
    device = resolve_device(config.train.device)
    model.to(device).train()
    config = config.model_copy(update={"model": model_config})
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", config.to_yaml())
    optimizer = build_optimizer(model, config.optim, device)
    generator = torch.Generator().manual_seed(config.train.seed)
    state = ckpt.TrainingState()
    if last is not None:
        state = ckpt.restore_training_state(last, optimizer, generator, device)
        say(f"resuming {run_dir} at step {state.step}")
    run = Run(
        config,
        model,
        task.objective,
        optimizer,
        tokenizer,
        device,
        generator,
        state,
        resumed=last is not None,
    )
    return fit(run)


def _check_same_adaptation(last: Path, adapt: AdaptConfig) -> None:
    """Refuse to resume with other adapt settings: they decide which tensors exist (LoRA) and
    which train, so the saved weights and optimizer moments would not fit."""
    saved = yaml.safe_load((last / ckpt.RUN_CONFIG_FILE).read_text(encoding="utf-8"))["adapt"]
    changed = ckpt.config_differences(AdaptConfig.model_validate(saved), adapt)
    if changed:
        raise CheckpointError(
            f"--resume: the adaptation differs from {last}: "
            f"{'; '.join('adapt.' + change for change in changed)}; "
            "resume with the original adapt settings or train into a new train.out_dir"
        )


def _with_vocab_rows(model: LanguageModel, rows: int) -> LanguageModel:
    """The model with its vocabulary grown to `rows`: new embedding rows are the mean of the old
    ones (a neutral start), new output biases zero."""
    grown = LanguageModel(model.config.model_copy(update={"vocab_size": rows}))
    state = model.state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight", "lm_head.bias"):
        if name in state and (name != "lm_head.weight" or not model.config.tie_embeddings):
            old = state[name]
            extra = old.mean(0, keepdim=True) if old.dim() == 2 else old.new_zeros(1)
            state[name] = torch.cat([old, extra.expand(rows - old.shape[0], *old.shape[1:])])
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    grown.load_state_dict(state)
    return grown


def task_data(config: RunConfig, tokenizer: Tokenizer, model_config: ModelConfig) -> TaskData:
    """Read the task's records and build its objective."""
    name, data, seed = config.objective.name, config.data, config.train.seed
    max_len = config.train.seq_len or model_config.max_seq_len
    if max_len > model_config.max_seq_len:
        raise ConfigError(
            f"train.seq_len ({max_len}) exceeds the model's max_seq_len "
            f"({model_config.max_seq_len})"
        )
    bidirectional = model_config.attention == "bidirectional"
    if name == "classify":

        def read_texts(path: Path) -> tuple[list[TextRecord], int]:
            return read_labelled(
                path,
                text_field=data.text_field,
                label_field=data.label_field,
                encoding=data.encoding,
                skip_invalid=data.skip_invalid,
            )

        train, val, skipped = _train_and_val(
            config, read_texts, lambda rows: stratified_split(rows, data.val_fraction, seed)
        )
        train = sample_records(train, data.max_train_examples, seed)
        labels = label_set(train, str(data.train_file))
        classify = Classify(
            train,
            val,
            tokenizer,
            labels,
            max_len,
            bidirectional=bidirectional,
            class_weights=config.objective.class_weights,
        )
        notes = _notes(
            f"{len(train):,} training and {len(val):,} validation texts; "
            f"labels: {', '.join(labels)}",
            skipped,
            classify.train.truncated + classify.val.truncated,
            f"texts longer than {max_len} tokens",
        )
        return TaskData(classify, "sequence", labels, notes)
    if name == "tokens":

        def read_sentences(path: Path) -> tuple[list[TaggedSentence], int]:
            return read_tagged(path, encoding=data.encoding, skip_invalid=data.skip_invalid)

        train, val, skipped = _train_and_val(
            config, read_sentences, lambda rows: _split(rows, data.val_fraction, seed)
        )
        train = _head(train, data.max_train_examples, seed)
        tags = tag_set(train, str(data.train_file))
        tagger = TagTokens(train, val, tokenizer, tags, max_len, bidirectional=bidirectional)
        notes = _notes(
            f"{len(train):,} training and {len(val):,} validation sentences; "
            f"tags: {', '.join(tags)}",
            skipped,
            tagger.train.truncated + tagger.val.truncated,
            f"sentences longer than {max_len} tokens",
        )
        return TaskData(tagger, "token", tags, notes)
    if name == "instruct":
        if bidirectional:
            raise ConfigError(
                f"objective instruct trains a decoder; {config.train.init} is an encoder"
            )

        def read_dialogues(path: Path) -> tuple[list[Conversation], int]:
            return read_conversations(path, skip_invalid=data.skip_invalid)

        train, val, skipped = _train_and_val(
            config, read_dialogues, lambda rows: _split(rows, data.val_fraction, seed)
        )
        train = _head(train, data.max_train_examples, seed)
        if tokenizer.chat_template is None:
            # saved with every checkpoint of the run
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        sft = Instruct(
            train,
            val,
            tokenizer,
            tokenizer.chat_template,
            max_len,
            train_on_prompt=config.objective.train_on_prompt,
        )
        notes = _notes(
            f"{len(train):,} training and {len(val):,} validation conversations",
            skipped,
            sft.train.truncated + sft.val.truncated,
            f"conversations longer than {max_len} tokens (kept, cut at the end)",
        )
        return TaskData(sft, "lm", (), notes)
    raise ConfigError(
        f"objective.name: {name!r} is not a fine-tuning task; use classify, tokens or instruct"
    )


def _train_and_val(
    config: RunConfig,
    read: Callable[[Path], tuple[list, int]],
    split: Callable[[list], tuple[list, list]],
) -> tuple[list, list, int]:
    """(training records, validation records, invalid records skipped): data.val_file when given,
    else `split` of data.train_file."""
    assert config.data.train_file is not None
    train, skipped = read(config.data.train_file)
    if config.data.val_file is None:
        return *split(train), skipped
    val, skipped_val = read(config.data.val_file)
    return train, val, skipped + skipped_val


def _notes(counts: str, skipped: int, truncated: int, what: str) -> tuple[str, ...]:
    notes = [counts]
    if skipped:
        notes.append(f"skipped {skipped:,} invalid records (--data.skip_invalid)")
    if truncated:
        notes.append(f"warning: {truncated:,} {what} were truncated")
    return tuple(notes)


def _split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random split: (the rest, `fraction` held out)."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(items) * fraction))
    held = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def _head(items: list, limit: int | None, seed: int) -> list:
    """A seeded random subset of `limit` items (all when None or fewer)."""
    if limit is None or limit >= len(items):
        return items
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()[
        :limit
    ]
    return [items[i] for i in sorted(order)]


def sample_records(records: list[TextRecord], limit: int | None, seed: int) -> list[TextRecord]:
    """A stratified sample of `limit` records (all of them when None or when there are fewer)."""
    if limit is None or limit >= len(records):
        return records
    _, sample = stratified_split(records, limit / len(records), seed)
    if len({r.label for r in sample}) < 2:
        raise DataError(
            f"data.max_train_examples {limit}: the sample holds fewer than two labels; raise it"
        )
    return sample

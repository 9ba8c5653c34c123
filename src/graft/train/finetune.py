"""Fine-tuning: a pre-trained model (graft checkpoint or Hugging Face directory), a head for the
task, labelled records, and the same `fit` loop as pre-training.

`finetune` has the task's objective (its config's `build`) read the records and fix the label set
from the training data (validation labels must be among them), gives the model the task's head
(a new head starts from the model's initialisation, a classifier fine-tuned again on its own
labels keeps its head; the backbone keeps its weights unless adapt.from_scratch), marks what
trains (graft.adapt), and runs `fit`. The best checkpoint follows
train.monitor (the task's metric by default). With `resume`, the same setup is rebuilt and then
takes the weights, optimizer, training state and random generators of the run's checkpoints/last,
so the run continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch

from graft import checkpoint as ckpt
from graft import distributed
from graft.adapt import CLASSIFIER_PREFIX, HEAD_PREFIXES, apply_adaptation, trainable_parameters
from graft.config import AdaptConfig, RunConfig
from graft.data.tokenizer import Tokenizer
from graft.errors import CheckpointError, ConfigError
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel
from graft.objectives.base import RecordObjective, Records, TaskData
from graft.train.loop import Run, RunResult
from graft.train.privacy import refuse_dropping_privacy
from graft.train.resume import RunLock, check_resumable, check_same_step
from graft.train.setup import assemble_run, open_run_folder, train_command


def finetune(
    config: RunConfig, *, resume: bool = False, echo: Callable[[str], None] | None = None
) -> RunResult:
    """Fine-tune train.init on the task of config.objective.name (or, with `resume`, continue the
    run in train.out_dir) and return the run's result. Its notices go to `echo` (standard error
    without one), its evaluations to `echo` (standard output)."""
    return train_command(config, "finetune", prepare_finetune, resume=resume, echo=echo)


def _new_head(base: ModelConfig, task: ModelConfig) -> bool:
    """Whether the task's classifier head differs from the one train.init holds (if any): a
    classifier fine-tuned again on its own labels goes on from its trained head."""
    return (base.head, base.labels) != (task.head, task.labels)


def prepare_finetune(
    config: RunConfig,
    resume: bool,
    world: distributed.World,
    device: torch.device,
    say: Callable[[str], None],
    lock: RunLock,
) -> Run:
    """Everything `fit` needs for the fine-tune `config` (resolved), on `device` in `world`."""
    config = config.model_copy(update={"train": distributed.step_layout(config.train, world)})
    task_config = config.objective
    assert isinstance(task_config, RecordObjective)  # command_problems refused the others
    if config.train.init is None:
        raise ConfigError(
            "train.init: fine-tuning starts from a checkpoint or Hugging Face directory (--init); "
            "for the from-scratch baseline add --adapt.from_scratch=true"
        )
    if config.data.train_file is None:
        raise ConfigError(
            "data.train_file: give the training records (--train FILE, or data.train_file in "
            "the --config recipe)"
        )
    last = open_run_folder(config, resume, world, say, lock)
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
    # The resolved model (the base's, with the run's dropout and pooling), its vocabulary as
    # grown above, the task's head and labels.
    model_config = base.config.model_copy(
        update=dict(
            **{key: getattr(config.model, key) for key in ckpt.RUN_MODEL_FIELDS},
            head=task_config.head,
            labels=task.labels,
            pooler=base.config.pooler
            or (
                task_config.head == "sequence"
                and base.config.is_encoder
                and config.model.classifier_pooling == "token"
            ),
        )
    )
    if last is not None:
        check_resumable(
            last,
            model_config,
            tokenizer,
            tokenizer_source=f"train.init {config.train.init} comes with",
            fix="resume with the original train.init",
        )
        _check_same_adaptation(last, config.adapt)
        check_same_step(last, config)
        refuse_dropping_privacy(last, config)
    torch.manual_seed(config.train.seed)
    model = LanguageModel(model_config)
    if last is None and not config.adapt.from_scratch:
        weights = base.state_dict()
        if _new_head(base.config, model_config):
            # A classifier of other labels (or of another kind): its head would not fit, or would
            # answer with the wrong names. The task's head starts afresh, as a new one does.
            weights = {k: v for k, v in weights.items() if not k.startswith(CLASSIFIER_PREFIX)}
            if base.config.head != "lm":
                was = f"a {base.config.head} classifier of {', '.join(base.config.labels)}"
                labels = ", ".join(model_config.labels)
                now = (
                    f"the {task_config.head} head for {labels} starts afresh"
                    if labels
                    else "its classifier is left out"
                )
                say(f"notice: train.init {config.train.init} is {was}; {now}")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        new = [name for name in missing if not name.startswith(HEAD_PREFIXES)]
        if new:  # never silently train a half-loaded model
            raise ConfigError(
                f"train.init {config.train.init}: tensor {new[0]} is missing from the checkpoint"
            )
        # The model config is the base's, so its other heads (an nsp head...) load and are kept.
        assert not unexpected, unexpected
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
    return assemble_run(
        config.model_copy(update={"model": model_config}),
        model,
        task.objective,
        tokenizer,
        last=last,
        world=world,
        device=device,
        say=say,
        lock=lock,
    )


def _check_same_adaptation(last: Path, adapt: AdaptConfig) -> None:
    """Refuse to resume with other adapt settings: they decide which tensors exist (LoRA) and
    which train, so the saved weights and optimizer moments would not fit."""
    changed = ckpt.config_differences(ckpt.read_saved_section(last, "adapt", AdaptConfig), adapt)
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
    """Read the task's records and build its objective (`config` resolved: ckpt.resolve checked
    the context and the objective's needs against the model)."""
    objective, data = config.objective, config.data
    assert isinstance(objective, RecordObjective)  # command_problems refused the others
    assert data.train_file is not None  # finetune() refused a run without one
    # The data section's settings of the same names, and the run's seed.
    settings = {f.name: getattr(data, f.name) for f in fields(Records) if f.name != "seed"}
    records = Records(**settings, seed=config.train.seed)
    return objective.build(
        records,
        tokenizer,
        max_len=config.seq_len,  # resolved: train.seq_len, else the base model's max_seq_len
        bidirectional=model_config.is_encoder,
    )

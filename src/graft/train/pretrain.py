"""Pre-training setup: from a run's config to a `Run` that `fit` trains. It opens the prepared
data (and the replay data), takes the model from scratch, from `train.init` (continued
pre-training) or from the last checkpoint (`--resume`), builds the optimizer and the objective, and
hands all of it to the loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from graft import checkpoint as ckpt
from graft import distributed
from graft.atomic_files import complete_version
from graft.config import RunConfig
from graft.data.shards import ShardIndex, TokenShards, prepared_tokenizer
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError, TokenizerError
from graft.model.transformer import LanguageModel
from graft.objectives.base import ShardObjective, Shards
from graft.objectives.mix import with_replay
from graft.train.loop import Run, RunResult
from graft.train.privacy import refuse_dropping_privacy
from graft.train.resume import RunLock, check_resumable, check_same_step
from graft.train.setup import assemble_run, open_run_folder, train_command


def pretrain(
    config: RunConfig, *, resume: bool = False, echo: Callable[[str], None] | None = None
) -> RunResult:
    """Set up a pre-training run from its config (fresh or resumed) and train it. Its notices
    go to `echo` (standard error without one), its evaluations to `echo` (standard output)."""
    return train_command(config, "pretrain", prepare_pretrain, resume=resume, echo=echo)


def prepare_pretrain(
    config: RunConfig,
    resume: bool,
    world: distributed.World,
    device: torch.device,
    say: Callable[[str], None],
    lock: RunLock,
) -> Run:
    """Everything `fit` needs for the pre-training `config` (resolved), on `device` in `world`."""
    config = config.model_copy(update={"train": distributed.step_layout(config.train, world)})
    if config.data.path is None:
        raise ConfigError(
            "data.path is not set: give a directory made by `graft data prepare` (--data.path=DIR)"
        )
    tokenizer, train_shards, val_shards = open_prepared(config.data.path)
    initial: LanguageModel | None = None
    if config.train.init is not None and not resume:
        initial, config = _initial_model(config, tokenizer)
    last = open_run_folder(config, resume, world, say, lock)
    if last is not None:
        check_resumable(
            last,
            config.model,
            tokenizer,
            tokenizer_source=f"{config.data.path} was prepared with",
            fix=f"prepare the data with {last / ckpt.TOKENIZER_FILE}",
        )
        check_same_step(last, config)
        refuse_dropping_privacy(last, config)
    # After the resume checks: data from another tokenizer is named as such, not as a vocabulary
    # the run never set.
    config = _with_vocab(config, tokenizer)

    torch.manual_seed(config.train.seed)  # the same initial weights on every rank
    model = initial if initial is not None else LanguageModel(config.model)
    if last is not None:
        ckpt.load_weights(model, last)
    assert config.model.vocab_size is not None  # _with_vocab took the tokenizer's
    objective_config = config.objective
    assert isinstance(objective_config, ShardObjective)  # command_problems refused the others
    data = Shards(
        train_shards,
        val_shards,
        config.seq_len,
        tokenizer,
        config.model.vocab_size,
        mask_doc_boundaries=config.data.mask_doc_boundaries,
    )
    objective = objective_config.build(data)
    if config.data.replay_path is not None:
        _, replay_train, replay_val = open_prepared(
            config.data.replay_path, expected_tokenizer=tokenizer
        )
        general = objective_config.build(replace(data, train=replay_train, val=replay_val))
        objective = with_replay(objective, general, config.data.replay_fraction)
    return assemble_run(
        config,
        model,
        objective,
        tokenizer,
        last=last,
        world=world,
        device=device,
        say=say,
        lock=lock,
    )


def open_prepared(
    directory: Path, expected_tokenizer: Tokenizer | None = None
) -> tuple[Tokenizer, TokenShards, TokenShards | None]:
    """A prepared data directory's tokenizer and its train and val splits (val None when empty)."""
    directory = complete_version(directory)  # a rewrite cut between its renames left the old one
    # first: a missing or unprepared directory says "run data prepare"
    tokenizer = prepared_tokenizer(directory, ShardIndex.load(directory))
    if (
        expected_tokenizer is not None
        and tokenizer.encoding_sha256 != expected_tokenizer.encoding_sha256
    ):
        raise TokenizerError(
            f"{directory} was prepared with tokenizer {tokenizer.sha256[:12]}, the run's data with "
            f"{expected_tokenizer.sha256[:12]}; prepare both with the same tokenizer"
        )
    train = TokenShards.open(directory, "train", expected_tokenizer_sha256=tokenizer.sha256)
    has_val = train.index.splits.get("val") is not None and train.index.splits["val"].tokens > 0
    val = (
        TokenShards.open(directory, "val", expected_tokenizer_sha256=tokenizer.sha256)
        if has_val
        else None
    )
    return tokenizer, train, val


def _initial_model(config: RunConfig, tokenizer: Tokenizer) -> tuple[LanguageModel, RunConfig]:
    """Continued pre-training: the weights of train.init, built with the run's resolved model
    config (the checkpoint's, with the training choices ckpt.resolve lets a run make)."""
    init = config.train.init
    assert init is not None
    model, trained_with = ckpt.load_model(init)
    if trained_with.encoding_sha256 != tokenizer.encoding_sha256:
        raise TokenizerError(
            f"train.init: {init} has tokenizer {trained_with.sha256[:12]} "
            f"but {config.data.path} was prepared with {tokenizer.sha256[:12]}; "
            f"prepare the data with --tokenizer {init}"
        )
    model_config = model.config.model_copy(
        update={key: getattr(config.model, key) for key in ckpt.RUN_MODEL_FIELDS}
    )
    if model_config != model.config:
        reloaded = LanguageModel(model_config)
        reloaded.load_state_dict(model.state_dict())
        model = reloaded
    return model, config.model_copy(update={"model": model_config})


def _with_vocab(config: RunConfig, tokenizer: Tokenizer) -> RunConfig:
    vocab = config.model.vocab_size
    if vocab is None:
        model = config.model.model_copy(update={"vocab_size": tokenizer.vocab_size})
        return config.model_copy(update={"model": model})
    if vocab < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size ({vocab}) is smaller than the tokenizer's vocabulary "
            f"({tokenizer.vocab_size}); leave it unset to take the tokenizer's"
        )
    return config

"""Checkpoints: plain directories any tool can read, written atomically, verified on load.

    config.json          architecture and ModelConfig
    model.safetensors    weights (a tied lm_head is not stored twice)
    tokenizer.json       the tokenizer the model was trained with
    run_config.yaml      the resolved run config that produced it
    manifest.json        size and sha256 of every file, so truncation or corruption is caught
    training_state/      only for resuming: state.json, rng.safetensors, optimizer.pt
    sharded/             instead of model.safetensors and optimizer.pt, from an FSDP run: each
                         process's shards, written through torch.distributed.checkpoint (DCP);
                         read back on any number of processes, or whole by one
    adapter_config.json, adapter_model.safetensors
                         a LoRA fine-tune's adapter, in PEFT's format, over the base weights above
    privacy.json         a private (DP-SGD) run's settings, accountant history and spent epsilon

A checkpoint is built in a temporary sibling directory, every file fsynced, then renamed into
place; the previous version is moved aside first and deleted only after the new one is in place,
so an interruption at any moment leaves one complete checkpoint on disk. Loading a single-file
checkpoint never unpickles arbitrary objects: weights are safetensors, the optimizer state is read
with weights_only=True. A sharded checkpoint is read through DCP, whose metadata is a pickle: load
those only from sources you trust (the manifest catches damage, not a crafted file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_args, get_type_hints

import torch
import yaml
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import graft
from graft.adapt import ADAPTER_CONFIG_FILE, has_lora, load_adapter, save_adapter, split_lora_state
from graft.atomic_files import aside_path, atomic_directory, complete_version
from graft.config import RunConfig, model_problems
from graft.crash_points import crash_point
from graft.data.shards import INDEX_FILE
from graft.data.tokenizer import Tokenizer
from graft.distributed import World
from graft.errors import CheckpointError, ConfigError, OutputError, first_line
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel, RotaryEmbedding
from graft.run_files import CHECKPOINTS_DIR
from graft.torch_files import load_torch_file

if TYPE_CHECKING:
    from graft.config import AdaptConfig

_Section = TypeVar("_Section", bound=BaseModel)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
RUN_CONFIG_FILE = "run_config.yaml"
MANIFEST_FILE = "manifest.json"
PRIVACY_FILE = "privacy.json"  # a private run's settings and spent epsilon (graft.train.privacy)
STATE_DIR = "training_state"
SHARDED_DIR = "sharded"


@dataclass
class TrainingState:
    """Everything besides weights and optimizer moments that an exact resume needs."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    # The best value of train.monitor so far (val/loss unless told).
    best_metric: float | None = None
    evals_without_improvement: int = 0
    # Tokens seen when warm-up ended, where the token-based decay starts: real tokens vary from
    # step to step, so the boundary is recorded, not estimated. None until then, and in checkpoints
    # written before it was kept (the loop then derives it once, see train.loop).
    warmup_tokens: int | None = None
    # Steps whose loss was not finite and were skipped (train.nonfinite: skip): in all, and in a
    # row up to now (the run stops at train.nonfinite_limit).
    nonfinite_skipped: int = 0
    nonfinite_in_a_row: int = 0


@dataclass(frozen=True)
class RngStates:
    torch_cpu: torch.Tensor
    data: torch.Tensor  # the generator that picks training windows: the data position
    cuda: torch.Tensor | None = None

    def tensors(self, rank: int = 0) -> dict[str, torch.Tensor]:
        """As stored: rank 0's under the plain names; another rank's dropout generators under
        `NAME.RANK` (the data generator is the same on every rank)."""
        if rank == 0:
            return {key: value for key, value in vars(self).items() if value is not None}
        return {f"torch_cpu.{rank}": self.torch_cpu} | (
            {} if self.cuda is None else {f"cuda.{rank}": self.cuda}
        )


def save_checkpoint(
    directory: Path,
    *,
    model: LanguageModel,
    tokenizer: Tokenizer,
    run_config_yaml: str,
    optimizer: torch.optim.Optimizer | None = None,
    state: TrainingState | None = None,
    rng: RngStates | Sequence[RngStates] | None = None,
    adapter: tuple[AdaptConfig, str] | None = None,
    world: World | None = None,
    privacy: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (see module docstring). Returns its path. A model
    with LoRA adapters needs `adapter`: (the adapt config, the base it was trained over). `rng`
    is one process's generators, or every rank's in rank order. `privacy`: what a private run
    has spent (graft.train.privacy), written as privacy.json.

    With `world`, a model sharded by FSDP is saved by every rank together: each writes its
    shards of the weights and optimizer moments through DCP into the directory rank 0 builds,
    and rank 0 writes the rest. Every rank must call it then.
    """
    directory = Path(directory)
    if world is not None:
        return _save_sharded(
            directory, world, model, tokenizer, run_config_yaml, optimizer, state, rng, adapter
        )
    with atomic_directory(directory) as tmp:
        if has_lora(model):
            if adapter is None:
                raise ValueError(
                    "a model with LoRA adapters needs adapter=(AdaptConfig, base) to be saved"
                )
            weights, _ = split_lora_state(model)
            save_adapter(model, adapter[0], tmp, adapter[1])
        else:
            weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_embeddings:
            weights.pop("lm_head.weight", None)  # the same tensor as model.embed_tokens.weight
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        crash_point("checkpoint:weights")
        if state is not None and optimizer is not None:
            (tmp / STATE_DIR).mkdir()
            # Through a Python file, so that a full disk surfaces as the OSError it is (torch's
            # own writer reports "unexpected pos") and becomes one line (atomic_directory).
            with open(tmp / STATE_DIR / "optimizer.pt", "wb") as handle:
                torch.save(optimizer.state_dict(), handle)
        _write_the_rest(tmp, model.config, tokenizer, run_config_yaml, state, rng, privacy)
    return directory


def _save_sharded(
    directory: Path,
    world: World,
    model: LanguageModel,
    tokenizer: Tokenizer,
    run_config_yaml: str,
    optimizer: torch.optim.Optimizer | None,
    state: TrainingState | None,
    rng: RngStates | Sequence[RngStates] | None,
    adapter: tuple[AdaptConfig, str] | None,
) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    building = atomic_directory(directory) if world.is_main else contextlib.nullcontext()
    with building as work:
        tmp = Path(world.gather(str(work))[0])  # rank 0's directory, on a filesystem all share
        model_state, optim_state = get_state_dict(model, [optimizer] if optimizer else [])
        shards: dict[str, object] = {"model": model_state}
        if state is not None and optimizer is not None:
            shards["optimizer"] = optim_state
        dcp.save(shards, checkpoint_id=tmp / SHARDED_DIR)
        if world.is_main:
            if has_lora(model):  # its tensors are among the shards: the config says what they are
                if adapter is None:
                    raise ValueError("a model with LoRA adapters needs adapter=(AdaptConfig, base)")
                save_adapter(model, adapter[0], tmp, adapter[1], weights=False)
            _write_the_rest(tmp, model.config, tokenizer, run_config_yaml, state, rng)
    world.barrier()  # rank 0 has put it in place
    return directory


def _write_the_rest(
    tmp: Path,
    config: ModelConfig,
    tokenizer: Tokenizer,
    run_config_yaml: str,
    state: TrainingState | None,
    rng: RngStates | Sequence[RngStates] | None,
    privacy: dict[str, Any] | None = None,
) -> None:
    """Everything beside the weights and optimizer moments, then the manifest of it all."""
    header = {"architecture": "LanguageModel", "graft_version": graft.__version__}
    _write_text(
        tmp / CONFIG_FILE, json.dumps({**header, "model": config.model_dump(mode="json")}, indent=2)
    )
    _write_text(tmp / RUN_CONFIG_FILE, run_config_yaml)
    tokenizer.save(tmp)
    if privacy is not None:
        _write_text(tmp / PRIVACY_FILE, json.dumps(privacy, indent=2))
    if state is not None:
        (tmp / STATE_DIR).mkdir(exist_ok=True)
        _write_text(tmp / STATE_DIR / "state.json", json.dumps(asdict(state), indent=2))
        if rng is not None:
            ranks = [rng] if isinstance(rng, RngStates) else list(rng)
            tensors = {k: v for rank, r in enumerate(ranks) for k, v in r.tensors(rank).items()}
            save_file(tensors, str(tmp / STATE_DIR / "rng.safetensors"))
    files = {
        str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    _write_text(tmp / MANIFEST_FILE, json.dumps({"files": files}, indent=2))


def refuse_writing_into(out: Path, flag: str) -> None:
    """Refuse an output folder that is a checkpoint or prepared data: a file added to or
    replaced in either breaks it (a checkpoint's manifest lists every file; prepared data's index
    records its tokenizer's hash), and the file it replaced is lost."""
    out = Path(out)
    for marker, what in ((MANIFEST_FILE, "a graft checkpoint"), (INDEX_FILE, "prepared data")):
        if (out / marker).is_file():
            raise OutputError(
                f"{flag} {out}: is {what}; writing into it would break it, so choose another {flag}"
            )


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory from a checkpoint path or a run directory (its checkpoints/last).
    Falls back to the previous version if a save was interrupted between its two renames."""
    path = Path(path)
    if (path / CHECKPOINTS_DIR).is_dir() and not (path / CONFIG_FILE).exists():
        path = path / CHECKPOINTS_DIR / "last"
    if not path.exists():
        aside = aside_path(path)
        if (aside / MANIFEST_FILE).is_file():
            return aside
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path}: not a graft checkpoint (no {CONFIG_FILE})")
    return path


def model_source(path: Path) -> Path:
    """The directory a model's files are read from: a Hugging Face directory itself, else the
    checkpoint that a checkpoint or run path names (where a card or generation config is)."""
    from graft.model.convert.hf import is_hf_directory

    # An export cut between its two renames is read from its previous version, as load_model
    # reads it.
    path = complete_version(Path(path))
    return path if is_hf_directory(path) else resolve_checkpoint(path)


def verify_checkpoint(directory: Path) -> None:
    """Check every file against manifest.json: catches truncated copies, flipped bytes and files
    added after the save."""
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{manifest_path}: missing or unreadable; the checkpoint is incomplete"
        ) from None
    if not _is_manifest(manifest):
        raise CheckpointError(
            f"{manifest_path}: expected files mapping each name to its bytes (an integer) and "
            "sha256 (a string); the manifest is damaged"
        )
    for name, entry in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(
                f"{path}: listed in {MANIFEST_FILE} but missing; the checkpoint is incomplete"
            )
        if path.stat().st_size != entry["bytes"]:
            raise CheckpointError(
                f"{path}: {path.stat().st_size} bytes, expected {entry['bytes']} "
                f"({MANIFEST_FILE}); the file is truncated or was replaced"
            )
        if _sha256(path) != entry["sha256"]:
            raise CheckpointError(
                f"{path}: contents do not match {MANIFEST_FILE} (sha256); the file (or the "
                "manifest) is corrupt"
            )
    # A file added later is refused too: loaders read some files only when they are there (a
    # chat_template.jinja or tokenizer_config.json changes the tokenizer, and a chat template is
    # code), so the directory must hold what was saved and nothing more.
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_file() and path != manifest_path and name not in manifest:
            raise CheckpointError(
                f"{path}: not listed in {MANIFEST_FILE}, so not part of the checkpoint as saved; "
                "remove it or re-save the checkpoint"
            )


def _is_manifest(files: object) -> bool:
    """Whether manifest.json's `files` has the shape _write_the_rest gives it."""
    return isinstance(files, dict) and all(
        isinstance(entry, dict)
        and type(entry.get("bytes")) is int  # not a bool, not a string of digits
        and isinstance(entry.get("sha256"), str)
        for entry in files.values()
    )


def read_model_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ModelConfig.model_validate(raw["model"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as err:
        raise CheckpointError(
            f"{path}: not a valid graft model config ({_first_problem(err, 'model.')})"
        ) from None


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: unreadable ({first_line(err)}); the file is damaged")


def _first_problem(err: Exception, prefix: str = "") -> str:
    """An exception in one line; pydantic's as its first error and the field (under `prefix`)
    it is about, where its own first line only counts the errors."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"{prefix}{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return first_line(err)


# What a run may set on a model it starts from (train.init): training choices, not architecture.
RUN_MODEL_FIELDS = frozenset({"dropout", "classifier_pooling"})
# What setup owns: the vocabulary may grow (fine-tuning adds a pad token to a tokenizer without
# one) and fine-tuning sets the head and its labels from the task's data.
SETUP_MODEL_FIELDS = frozenset({"vocab_size", "head", "labels"})


def resolve(config: RunConfig, *, resume: bool = False) -> RunConfig:
    """The config that will run, resolved once before any setup (and by --print-config).

    Without train.init the config is returned as it is. With train.init (a graft checkpoint or
    run directory, or a Hugging Face directory) the model section becomes the init's model config,
    read from its config.json without loading weights, under one policy for both `graft pretrain`
    and `graft finetune`:

    - the run may set `dropout` and `classifier_pooling` (RUN_MODEL_FIELDS): its values are taken;
    - `vocab_size`, `head` and `labels` (SETUP_MODEL_FIELDS) are the checkpoint's here; setup
      grows the vocabulary (a pad token) and sets a fine-tune's head and labels from its data;
    - any other model field the run sets explicitly must agree with the checkpoint: every one
      that differs is named in one ConfigError.

    With `resume`, the model comes the same way from the run's own last checkpoint (in
    train.out_dir), which is what the run continues, whether or not it started from train.init.

    Then the run's requirements of the model (train.seq_len within max_seq_len, the objective's
    needs) are checked against the resolved model. Resolving a resolved config changes nothing.
    """
    init, where = config.train.init, "train.init"
    if resume and saved_checkpoint(config.train.out_dir) is not None:
        init, where = config.train.out_dir, "--resume"
    if init is None:
        return config
    from graft.model.convert.hf import is_hf_directory, read_hf_config

    if is_hf_directory(Path(init)):
        base, source = read_hf_config(Path(init)), Path(init) / CONFIG_FILE
    else:
        try:
            source = resolve_checkpoint(init) / CONFIG_FILE
        except CheckpointError as error:
            raise CheckpointError(
                f"{where}: {error} (expected a graft checkpoint, a run directory or a Hugging "
                "Face model directory; --init sets it)"
            ) from None
        base = read_model_config(source.parent)
    asked = config.model.model_fields_set - RUN_MODEL_FIELDS - SETUP_MODEL_FIELDS
    clashes = [
        f"model.{key}: run says {getattr(config.model, key)!r}, "
        f"checkpoint has {getattr(base, key)!r}"
        for key in sorted(asked)
        if getattr(config.model, key) != getattr(base, key)
    ]
    if clashes:
        raise ConfigError(
            f"{where}: the model comes from {source}; {'; '.join(clashes)} "
            "(drop these model settings)"
        )
    taken = {
        key: getattr(config.model, key) for key in RUN_MODEL_FIELDS & config.model.model_fields_set
    }
    resolved = config.model_copy(update={"model": base.model_copy(update=taken)})
    problems = model_problems(resolved)
    if problems:
        raise ConfigError(f"{where} {init}: " + "; ".join(problems))
    return resolved


def load_model(
    path: Path, *, device: torch.device | str = "cpu", verify: bool = True
) -> tuple[LanguageModel, Tokenizer]:
    """The model (in eval mode) and tokenizer of a checkpoint or run directory, verified first
    (unless the caller just did). A Hugging Face model directory (config.json with a model_type)
    is accepted too."""
    from graft.model.convert.hf import is_hf_directory

    path = complete_version(path)  # an export rewritten and cut between its renames: the old one
    if is_hf_directory(Path(path)):
        return load_hf_checkpoint(Path(path), device=device)
    directory = resolve_checkpoint(path)
    if verify:
        verify_checkpoint(directory)
    config = read_model_config(directory)
    with torch.device("meta"):
        model = LanguageModel(config)  # no wasted random init: weights come from the file
    lora = (directory / ADAPTER_CONFIG_FILE).is_file()
    if (directory / SHARDED_DIR).is_dir():  # the adapter's tensors are among the shards
        if lora:
            load_adapter(model, directory, weights=False)
        load_weights(model, directory)
    else:
        load_weights(model, directory)
        if lora:
            load_adapter(model, directory)
    tokenizer = Tokenizer.load(directory / TOKENIZER_FILE)
    _check_vocabulary(tokenizer, directory / TOKENIZER_FILE, model)
    return model.to(device).eval(), tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer load_model would give with the model of `path`, without the model: for a
    check that needs only the text's tokens (a Hugging Face directory's files, or a graft
    checkpoint's tokenizer.json)."""
    from graft.model.convert.hf import is_hf_directory

    if is_hf_directory(Path(path)):
        return Tokenizer.load(Path(path))
    return Tokenizer.load(resolve_checkpoint(path) / TOKENIZER_FILE)


def load_hf_checkpoint(
    directory: Path, *, device: torch.device | str = "cpu"
) -> tuple[LanguageModel, Tokenizer]:
    """A transformers directory as a graft model plus its tokenizer (tokenizer.json or a BERT
    vocab.txt, with the special-token roles and chat template of tokenizer_config.json)."""
    from graft.model.convert.hf import load_hf_model, read_hf_config

    read_hf_config(directory)  # config.json first: a model folder is named by its config
    # a directory without tokenizer files: TokenizerError naming it
    tokenizer = Tokenizer.load(directory)
    tokenizer_path = directory / (
        TOKENIZER_FILE if (directory / TOKENIZER_FILE).is_file() else "vocab.txt"
    )
    model = load_hf_model(directory)
    _check_vocabulary(tokenizer, tokenizer_path, model)
    return model.to(device).eval(), tokenizer


def _check_vocabulary(tokenizer: Tokenizer, path: Path, model: LanguageModel) -> None:
    """Refuse a tokenizer with ids past the embedding: they would fail at the first such token."""
    # A built model always has its vocab_size (Transformer refuses a config without one).
    assert model.config.vocab_size is not None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{path}: {tokenizer.vocab_size} tokens, "
            f"but tensor model.embed_tokens.weight has only {model.config.vocab_size} rows; "
            "the tokenizer belongs to another model"
        )


def load_weights(model: LanguageModel, directory: Path) -> None:
    if (directory / SHARDED_DIR).is_dir():
        _load_sharded_weights(model, directory)
        return
    path = directory / WEIGHTS_FILE
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read weights ({err})") from None
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match the config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"{directory / CONFIG_FILE} expects {tuple(expected[name].shape)}"
            )
        if tensor.is_floating_point() != expected[name].is_floating_point():
            raise CheckpointError(  # else the first matmul would fail, far from the file
                f"{path}: tensor {name} holds {tensor.dtype}, expected {expected[name].dtype}"
            )
    model.load_state_dict(weights, strict=False, assign=True)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers derived from the config (RoPE tables) are not stored; rebuild them off the meta
    # device.
    if model.config.positions == "rope":
        model.model.rotary = RotaryEmbedding(model.config)


def _load_sharded_weights(model: LanguageModel, directory: Path) -> None:
    """An FSDP checkpoint's weights, whole, into an unsharded model: on one process (`graft
    export`, `generate`, a resume without FSDP) or on each of a process group's ranks."""
    if model.model.embed_tokens.weight.is_meta:
        model.to_empty(device="cpu")  # DCP reads into allocated tensors
        if model.config.tie_embeddings:
            # to_empty gives the head its own tensor: tie it again, or the two train apart
            # and a save keeps only the embedding (the head's updates lost).
            model.lm_head.weight = model.model.embed_tokens.weight
        if model.config.positions == "rope":
            model.model.rotary = RotaryEmbedding(model.config)
    weights = model.state_dict()
    try:
        _read_shards({"model": weights}, directory)
    except Exception as err:  # DCP wraps every reader failure in its own exception types
        raise CheckpointError(
            f"{directory / SHARDED_DIR}: cannot read ({first_line(err)})"
        ) from None
    model.load_state_dict(weights)


def _read_shards(state: dict[str, Any], directory: Path) -> None:
    """Fill `state` from an FSDP checkpoint's shards: in a process group each rank reads what
    its tensors hold; alone, one process reads them whole (which DCP warns of, as if a slip)."""
    import torch.distributed.checkpoint as dcp  # here: half a second to import, rarely needed
    from torch.distributed.checkpoint.api import CheckpointException

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        # DCP logs each reader failure with its traceback on the root logger before it raises;
        # the error below says it in one line.
        quiet = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        try:
            dcp.load(state, checkpoint_id=directory / SHARDED_DIR)
        except CheckpointException as err:
            # DCP's failure derives from BaseException, which the callers' `except Exception`
            # (and a CLI's error handling) would let through as a traceback. Its last line is
            # the reader's own reason (truncated pickle data, a missing shard).
            reasons = [line for line in str(err).splitlines() if line.strip()]
            raise RuntimeError(reasons[-1] if reasons else type(err).__name__) from None
        finally:
            logging.disable(quiet)


def _sharded_keys(directory: Path) -> set[str]:
    """The keys an FSDP checkpoint's shards hold ("model.NAME", "optimizer.state.NAME.MOMENT"),
    read from its metadata alone."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(directory / SHARDED_DIR)).read_metadata()
    except Exception as err:  # a damaged .metadata: the reader's own exception types
        raise CheckpointError(
            f"{directory / SHARDED_DIR}: cannot read ({first_line(err)})"
        ) from None
    return set(metadata.state_dict_metadata)


def _sharded_like(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A whole optimizer state (one process or DDP wrote it) cut to the shards of an optimizer
    over FSDP's parameters, so such a run resumes under FSDP; as it is for whole parameters.
    Both optimizers were built alike, so the saved indices follow the parameters' order."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_ids = [i for group in saved["param_groups"] for i in group["params"]]
    for index, param in zip(saved_ids, params, strict=True):
        if not isinstance(param, DTensor):
            continue
        moments = saved["state"].get(index, {})
        for key, value in moments.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                moments[key] = distribute_tensor(
                    value.to(param.device), param.device_mesh, param.placements
                )
    return saved


def restore_training_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_generator: torch.Generator,
    device: torch.device,
    rank: int = 0,
) -> TrainingState:
    """Load the optimizer moments and training state saved in `directory`, and put the random
    generators (dropout, data order) back where they were: what makes a resume exact. `model`
    is what the optimizer trains (sharded under FSDP); `rank` picks this process's dropout
    generators (a rank the checkpoint did not have keeps its own seed's)."""
    state_dir = directory / STATE_DIR
    if not (state_dir / "state.json").is_file():
        raise CheckpointError(
            f"{directory}: has no {STATE_DIR}/ to resume from (it was exported without it)"
        )
    # Each file is checked as it is read: a manifest re-hashed by a tool vouches for damage.
    state = _read_training_state(state_dir / "state.json")
    rng_path = state_dir / "rng.safetensors"
    rng = _read_rng_states(rng_path)
    if (directory / SHARDED_DIR).is_dir():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        moments = get_optimizer_state_dict(model, optimizer)
        # That call gives every parameter moments; a parameter that never had a gradient (an
        # idle head: BERT's pooler under MLM) has none saved, and DCP would call it missing.
        saved = _sharded_keys(directory)
        per_parameter = cast(dict[str, Any], moments["state"])  # name -> its moments
        for name in [n for n in per_parameter if f"optimizer.state.{n}.step" not in saved]:
            del per_parameter[name]
        try:
            _read_shards({"optimizer": moments}, directory)
        except Exception as err:  # DCP wraps every reader failure in its own exception types
            raise CheckpointError(
                f"{directory / SHARDED_DIR}: cannot read the optimizer moments ({first_line(err)})"
            ) from None
        # Not strict: the idle parameters above stay without moments, as they were saved.
        options = StateDictOptions(strict=False)
        set_optimizer_state_dict(model, optimizer, moments, options=options)
    else:
        _load_optimizer(optimizer, state_dir / "optimizer.pt")
    suffix = "" if rank == 0 else f".{rank}"
    try:
        if f"torch_cpu{suffix}" in rng:
            torch.set_rng_state(rng[f"torch_cpu{suffix}"])
        data_generator.set_state(rng["data"])
        if f"cuda{suffix}" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng[f"cuda{suffix}"], device)
    except RuntimeError as err:  # a state of the wrong length
        raise CheckpointError(
            f"{rng_path}: not the states of torch's generators ({first_line(err)})"
        ) from None
    return state


def _read_training_state(path: Path) -> TrainingState:
    """state.json, each field of the type TrainingState declares (a count is an int)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # JSON and UTF-8 errors are ValueErrors
        raise _unreadable(path, err) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    types = get_type_hints(TrainingState)
    for key, value in raw.items():
        if key not in types:
            raise CheckpointError(
                f"{path}: unknown key {key!r}; expected some of {', '.join(types)}"
            )
        allowed = get_args(types[key]) or (types[key],)
        # bool is an int subclass and an int is a fine float; a true/false is neither here.
        fits = not isinstance(value, bool) and (
            isinstance(value, allowed) or (float in allowed and isinstance(value, int))
        )
        if not fits:
            kind = getattr(types[key], "__name__", str(types[key]))  # int, or float | None
            raise CheckpointError(f"{path}: {key} must be {kind}, got {json.dumps(value)[:40]}")
    return TrainingState(**raw)


def _read_rng_states(path: Path) -> dict[str, torch.Tensor]:
    """rng.safetensors: byte tensors, `data` among them (what RngStates.tensors writes)."""
    try:
        rng = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from None
    wrong = [name for name, tensor in rng.items() if tensor.dtype != torch.uint8]
    if "data" not in rng or wrong:
        raise CheckpointError(
            f"{path}: expected byte tensors of generator states, 'data' among them; "
            f"got {', '.join(f'{n} ({t.dtype})' for n, t in rng.items()) or 'none'}"
        )
    return rng


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """optimizer.pt into `optimizer`, refused in one line unless it fits the run's parameters:
    torch checks the groups' sizes but not the moments' shapes, which would fail at the first
    step instead."""
    saved = load_torch_file(path)
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: expected an optimizer state, got a {type(saved).__name__}")
    try:
        optimizer.load_state_dict(_sharded_like(saved, optimizer))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: not this run's optimizer state ({type(err).__name__}: {first_line(err)})"
        ) from None
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, moment in optimizer.state.get(param, {}).items():
                if not isinstance(moment, torch.Tensor) or moment.dim() == 0:
                    continue  # the step count
                if moment.shape != param.shape:
                    raise CheckpointError(
                        f"{path}: moment {name} has shape {tuple(moment.shape)}, its parameter "
                        f"{tuple(param.shape)}; the optimizer state belongs to another model"
                    )


def _saved_run(path: Path) -> dict[str, Any]:
    """A checkpoint's run_config.yaml as plain data, to refine a default: {} for a Hugging Face
    directory, a checkpoint saved without one, or one that cannot be read (load_model reports a
    damaged checkpoint)."""
    from graft.model.convert.hf import is_hf_directory

    directory = model_source(path)  # an export cut between its renames: its previous version
    if is_hf_directory(directory):
        return {}
    try:
        saved = yaml.safe_load((directory / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return saved if isinstance(saved, dict) else {}


def trained_context(path: Path) -> int | None:
    """The ids per input a checkpoint's run trained on, when its train.seq_len was set below the
    model's context: fine-tuning cut every text there, so evaluation and serving read texts as
    that long too. None for a model trained on its whole context, a Hugging Face directory, or a
    checkpoint saved without a run config."""
    train = _saved_run(path).get("train")
    seq_len = train.get("seq_len") if isinstance(train, dict) else None
    return seq_len if isinstance(seq_len, int) and not isinstance(seq_len, bool) else None


def trained_objective(path: Path) -> str | None:
    """The objective a checkpoint's run trained (its objective.name); None for a Hugging Face
    directory or a checkpoint saved without a run config."""
    objective = _saved_run(path).get("objective")
    name = objective.get("name") if isinstance(objective, dict) else None
    return name if isinstance(name, str) else None


def read_saved_section(checkpoint: Path, section: str, kind: type[_Section]) -> _Section:
    """One section (train, adapt) of a checkpoint's run_config.yaml, validated: what a resume
    compares the run with. A damaged file is one CheckpointError naming it."""
    path = checkpoint / RUN_CONFIG_FILE
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as err:  # UTF-8 errors are ValueErrors
        raise _unreadable(path, err) from None
    # A saved run config has every section: one without was cut short.
    if not isinstance(saved, dict) or not isinstance(saved.get(section), dict):
        raise CheckpointError(f"{path}: no {section} section; the file is damaged")
    try:
        return kind.model_validate(saved[section])
    except ValidationError as err:
        raise CheckpointError(
            f"{path}: not a valid run config ({_first_problem(err, section + '.')}); "
            "the file is damaged"
        ) from None


def saved_checkpoint(run_dir: Path) -> Path | None:
    """The run's last complete checkpoint, where a resume continues from: checkpoints/last, or
    its previous version when a save was cut between its two renames; None when the run never
    finished a save. The one test of "has this run a checkpoint" (resolve and resume_point)."""
    last = run_dir / CHECKPOINTS_DIR / "last"
    aside = aside_path(last)
    if (last / CONFIG_FILE).is_file():
        return last
    return aside if (aside / MANIFEST_FILE).is_file() else None


def config_differences(old: BaseModel, new: BaseModel) -> list[str]:
    a, b = old.model_dump(), new.model_dump()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]


def _write_text(path: Path, text: str) -> None:
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

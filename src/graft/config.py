"""Typed run configuration: YAML recipes, dotted CLI overrides, validation with one clear error.

A run config has sections (model, data, objective, optim, train), each a pydantic model that
forbids unknown keys; the objective section is the config of one objective, declared in its own
module under graft.objectives and chosen by `name`. Every default lives on a field.
`load_run_config` merges a YAML file with `--section.key=value` overrides, expands a model
`preset`, validates everything, and raises one ConfigError listing every problem, each naming its
key (and file) and what was expected.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from graft.data.redact import KINDS as REDACT_KINDS
from graft.errors import ConfigError
from graft.model.config import PRESETS, ConfigSection, ModelConfig
from graft.objectives.base import DataKind, ObjectiveSection, RecordObjective, ShardObjective
from graft.objectives.classify import ClassifyConfig
from graft.objectives.clm import CLMConfig
from graft.objectives.denoise import DenoiseConfig
from graft.objectives.instruct import InstructConfig
from graft.objectives.mix import MixConfig
from graft.objectives.mlm import MLMConfig
from graft.objectives.nsp import NSPConfig
from graft.objectives.qa import QAConfig
from graft.objectives.seq2seq import Seq2SeqConfig
from graft.objectives.tokens import TokensConfig


class DataConfig(ConfigSection):
    path: Path | None = Field(
        default=None, description="A prepared data directory (from `graft data prepare`)."
    )
    mask_doc_boundaries: bool = Field(
        default=False,
        description="Packed windows span documents; True stops attention across an end-of-text "
        "boundary and restarts positions at each document.",
    )
    replay_path: Path | None = Field(
        default=None,
        description=(
            "Continued pre-training: prepared general-domain data to replay against forgetting."
        ),
    )
    replay_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Fraction of batches drawn from replay_path."
    )
    # Fine-tuning reads labelled records instead of token shards.
    train_file: Path | None = Field(
        default=None,
        description="Fine-tuning: labelled training records (jsonl/json/csv/tsv/CoNLL).",
    )
    val_file: Path | None = Field(
        default=None,
        description="Fine-tuning: validation records; None = a stratified split of train_file.",
    )
    val_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Fine-tuning: held-out share of train_file when no val_file.",
    )
    text_field: str = Field(default="text", description="Fine-tuning: the text column / key.")
    label_field: str = Field(default="label", description="Fine-tuning: the label column / key.")
    encoding: str = Field(
        default="utf-8", description="Fine-tuning: the records' text encoding (e.g. latin-1)."
    )
    skip_invalid: bool = Field(
        default=False, description="Fine-tuning: skip and count bad records instead of stopping."
    )
    max_train_examples: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Fine-tuning: a stratified sample of this many training records (learning curves)."
        ),
    )
    redact: tuple[str, ...] = Field(
        default=(),
        description="Fine-tuning: sensitive text to replace in the records before training: "
        "email, phone, card, iban, ip, url_credentials, name, or all.",
    )
    redact_names: Path | None = Field(
        default=None,
        description="Fine-tuning: a UTF-8 file of names to redact, one per line (adds name).",
    )
    redact_mode: Literal["mask", "pseudonym"] = Field(
        default="mask",
        description="Fine-tuning: mask writes [EMAIL], [PHONE]...; pseudonym a consistent fake "
        "of the same kind, keyed by train.seed.",
    )

    @field_validator("redact", mode="before")
    @classmethod
    def _redact_kinds(cls, value: Any) -> Any:
        """`--data.redact=email,phone` as well as a YAML list; every kind known."""
        kinds = value.split(",") if isinstance(value, str) else value
        if isinstance(kinds, (list, tuple)):
            unknown = [k for k in kinds if k not in (*REDACT_KINDS, "all")]
            if unknown:
                raise ValueError(
                    f"unknown kind {unknown[0]!r}; choose from {', '.join(REDACT_KINDS)} or all"
                )
        return kinds


# Every objective, each a config class in its own module (graft.objectives.base says what one
# declares); the run config's objective section is one of them, chosen by `name`.
ObjectiveConfig = Annotated[
    CLMConfig
    | MLMConfig
    | NSPConfig
    | DenoiseConfig
    | MixConfig
    | ClassifyConfig
    | TokensConfig
    | InstructConfig
    | Seq2SeqConfig
    | QAConfig,
    Field(discriminator="name"),
]
OBJECTIVES: dict[str, type[ObjectiveSection]] = {
    name: member
    for member in get_args(get_args(ObjectiveConfig)[0])
    for name in get_args(member.model_fields["name"].annotation)
}
# What each command trains on.
COMMAND_DATA: dict[str, DataKind] = {"pretrain": "shards", "finetune": "records"}


class OptimConfig(ConfigSection):
    lr: float = Field(default=6e-4, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(
        default=0.1, ge=0, le=1, description="Final LR as a fraction of the peak."
    )
    schedule: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Decay after warm-up."
    )
    warmup_steps: int = Field(default=100, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(
        default=0.1, ge=0, description="AdamW decay on matrices (not biases or norms)."
    )
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float = Field(
        default=1.0, ge=0, description="Max global gradient norm; 0 turns clipping off."
    )
    head_lr_scale: float = Field(
        default=1.0,
        gt=0,
        description="Fine-tuning: the LR of the head the fine-tune adds (classifier, pooler) as a "
        "multiple of the body's. A head starts from random weights and can take larger steps "
        "than pre-trained weights should; under DP noise this is what lets it learn.",
    )


# A run stops at the first of these it reaches; one given none trains DEFAULT_MAX_STEPS steps.
_LIMITS = ("max_steps", "max_tokens", "max_minutes")
DEFAULT_MAX_STEPS = 1000


class TrainConfig(ConfigSection):
    out_dir: Path = Field(default=Path("runs/pretrain"), description="Run directory.")
    init: Path | None = Field(
        default=None,
        description="Start from these weights (a graft checkpoint or a Hugging Face directory): "
        "continued pre-training. The model section then comes from the checkpoint.",
    )
    seed: int = Field(default=1337, description="Seed for initialisation, data order and dropout.")
    batch_size: int = Field(default=12, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(
        default=1, ge=1, description="Micro-batches per optimizer step, on each process."
    )
    global_batch: int | None = Field(
        default=None,
        ge=1,
        description="Sequences per optimizer step over every process; grad_accum is derived from "
        "it, the number of processes and batch_size. None = batch_size x grad_accum x processes.",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="How 2+ processes (torchrun) train one model: ddp keeps a whole copy on "
        "each; fsdp shards parameters, gradients and optimizer state (FSDP2, one unit per block). "
        "One process trains the whole model.",
    )
    seq_len: int | None = Field(
        default=None, ge=1, description="Training context; None = model.max_seq_len."
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many optimizer steps. When no limit is given (none of "
        f"max_steps, max_tokens, max_minutes), {DEFAULT_MAX_STEPS}, whether or not the run has "
        "a train section.",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Stop after this many training tokens."
    )
    max_minutes: float | None = Field(
        default=None, gt=0, description="Stop after this much wall-clock time."
    )
    eval_every: int = Field(
        default=250, ge=1, description="Evaluate (and checkpoint) every N steps."
    )
    eval_batches: int = Field(
        default=20,
        ge=1,
        description="Validation batches per evaluation, in pre-training. Fine-tuning scores its "
        "whole validation set (its metrics and early stopping read every record).",
    )
    log_every: int = Field(default=10, ge=1, description="Write train metrics every N steps.")
    log: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = Field(
        default=("jsonl",),
        description="Where metric rows go: jsonl (RUN_DIR/metrics.jsonl, always written, named "
        "or not), tensorboard (RUN_DIR/tensorboard/, needs graft[tensorboard]), wandb (offline "
        "mode only, RUN_DIR/wandb/, needs wandb installed).",
    )
    norms_every: int | None = Field(
        default=None,
        ge=1,
        description="Every N steps log the weight norm and the gradient norm (before clipping) "
        "of each block, of the embeddings and of the head: norm/weight/block.3, "
        "norm/grad/embeddings... None = off. No gradient norms under dp.",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many evaluations without a better train.monitor.",
    )
    monitor: str = Field(
        default="val/loss",
        description="The validation metric for best checkpoints and patience (e.g. val/macro_f1); "
        "losses and perplexities improve downwards, other metrics upwards.",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on CUDA, fp32 elsewhere."
    )
    compile: bool = Field(
        default=False, description="torch.compile the model (costs ~30 s per process on CPU)."
    )
    activation_checkpointing: bool = Field(
        default=False,
        description="Recompute each block's activations in the backward pass instead of keeping "
        "them: far less activation memory for about a third more compute.",
    )
    deterministic: bool = Field(
        default=False, description="torch.use_deterministic_algorithms for bitwise repeats."
    )
    progress: bool = Field(default=True, description="Show a progress bar on stderr.")
    nonfinite: Literal["stop", "skip"] = Field(
        default="stop",
        description="A step whose loss is NaN or infinite: stop the run (its weights and the "
        "last checkpoint are as they were), or skip the step (no update), count it in metrics "
        "(nonfinite_skipped) and go on.",
    )
    nonfinite_limit: int = Field(
        default=5,
        ge=1,
        description="With nonfinite: skip, stop after this many non-finite steps in a row.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_limit(cls, data: Any) -> Any:
        """No limit given: DEFAULT_MAX_STEPS steps (the same for `train: {batch_size: 8}` as for
        no train section at all)."""
        if isinstance(data, dict) and all(data.get(key) is None for key in _LIMITS):
            return {**data, "max_steps": DEFAULT_MAX_STEPS}
        return data

    @field_validator("log", mode="before")
    @classmethod
    def _log_names(cls, value: Any) -> Any:
        """`--train.log=jsonl,tensorboard` as well as a YAML list; a name given twice counts
        once."""
        names = value.split(",") if isinstance(value, str) else value
        if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
            return tuple(dict.fromkeys(name.strip() for name in names))
        return names


class AdaptConfig(ConfigSection):
    """What a fine-tune trains."""

    method: Literal["full", "freeze", "lora"] = Field(
        default="full",
        description="full; freeze: only the last blocks and the heads; lora: PEFT LoRA adapters.",
    )
    trainable_blocks: int = Field(
        default=1, ge=0, description="freeze: how many of the last blocks train."
    )
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    lora_targets: tuple[str, ...] = Field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"),
        description="lora: the blocks' linear layers (by name) that get adapters: q_proj, k_proj, "
        "v_proj, o_proj, up_proj, down_proj, gate_proj (Llama style).",
    )
    from_scratch: bool = Field(
        default=False,
        description=(
            "Keep train.init's architecture and tokenizer but re-initialise its weights "
            "(the baseline)."
        ),
    )


class DPConfig(ConfigSection):
    """Differentially private training (DP-SGD through Opacus, graft.train.privacy): off unless
    dp.epsilon or dp.noise_multiplier is set. The privacy unit is one training record: one
    labelled text or conversation for a fine-tune, one window of train.seq_len + 1 tokens for
    pre-training."""

    epsilon: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,  # infinite epsilon is no privacy, and privacy.json's JSON breaks
        description="Target epsilon at train.max_steps: the noise is calibrated to spend it.",
    )
    delta: float = Field(
        default=1e-5, gt=0, lt=1, description="Target delta; must be below 1 / training records."
    )
    noise_multiplier: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Noise std / max_grad_norm, instead of dp.epsilon.",
    )
    max_grad_norm: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,  # an infinite bound clips nothing: no privacy
        description="Per-record gradient clipping bound (L2).",
    )
    batch: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Expected records per step (Poisson sampling rate = dp.batch / records); default: "
            "train.global_batch, else batch_size x grad_accum. Micro-batches of at most "
            "train.batch_size rows carry it."
        ),
    )
    accountant: Literal["rdp", "prv"] = Field(
        default="rdp", description="Privacy accountant: rdp (Renyi DP) or prv (PRV, tighter)."
    )
    clipping: Literal["auto", "ghost", "flat"] = Field(
        default="auto",
        description=(
            "ghost: per-record gradient norms without per-record gradients (two backward "
            "passes, little memory); flat: Opacus's per-sample gradients; auto: ghost where a "
            "check before training shows it exact for this model, else flat."
        ),
    )

    @model_validator(mode="after")
    def _one_noise_setting(self) -> DPConfig:
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise ValueError(
                "dp: give dp.epsilon (the noise is calibrated to it) or dp.noise_multiplier, "
                "not both"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None


class RunConfig(ConfigSection):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    objective: ObjectiveConfig = Field(default_factory=CLMConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    dp: DPConfig = Field(default_factory=DPConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> RunConfig:
        # With train.init the model comes from the checkpoint: checked by resolve() (checkpoint.py).
        if self.train.init is None:
            problems = model_problems(self)
            if problems:
                raise ValueError("; ".join(problems))
        return self

    @property
    def seq_len(self) -> int:
        """The training context: the one place train.seq_len's default is applied. Read it from
        a resolved config (graft.checkpoint.resolve), whose model is the one that will run."""
        return self.train.seq_len or self.model.max_seq_len

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def model_problems(config: RunConfig) -> list[str]:
    """What the run asks of its model that the model config does not give."""
    problems = []
    model, seq_len = config.model, config.train.seq_len
    if seq_len is not None and seq_len > model.max_seq_len:
        problems.append(
            f"train.seq_len ({seq_len}) exceeds model.max_seq_len ({model.max_seq_len})"
        )
    return problems + config.objective.problems(model)


def command_problems(objective: str, command: str) -> list[str]:
    """An objective that `command` cannot run (pretrain reads shards, finetune records)."""
    reads = COMMAND_DATA[command]
    if objective not in OBJECTIVES or OBJECTIVES[objective].reads == reads:
        return []
    names = [name for name, member in OBJECTIVES.items() if member.reads == reads]
    return [
        f"objective.name: graft {command} cannot run objective {objective} "
        f"(it trains on {OBJECTIVES[objective].reads}, {command} on {reads}); "
        f"choose one of: {', '.join(names)}"
    ]


# The data settings of each command: pretrain reads prepared shards, finetune labelled records.
_SHARD_DATA = ("path", "mask_doc_boundaries", "replay_path", "replay_fraction")
_RECORD_DATA = tuple(name for name in DataConfig.model_fields if name not in _SHARD_DATA)
# The record tasks, and each data setting that some of them read and the others do not.
_TASKS = {n: m for n, m in OBJECTIVES.items() if issubclass(m, RecordObjective)}
_TASK_DATA = {
    key: [name for name, task in _TASKS.items() if key in task.data_fields]
    for task in _TASKS.values()
    for key in task.data_fields
}
# The adapt settings that one method alone reads.
_METHOD_ADAPT = {
    "trainable_blocks": "freeze",
    **{key: "lora" for key in AdaptConfig.model_fields if key.startswith("lora_")},
}


def method_reads(key: str, method: str) -> bool:
    """Whether a fine-tune with adapt.method `method` reads the dotted setting `key`: every
    setting but the adapt ones another method alone reads (adapt.lora_* under full)."""
    section, _, name = key.partition(".")
    return section != "adapt" or _METHOD_ADAPT.get(name, method) == method


def unused_settings(config: RunConfig, command: str) -> list[str]:
    """Settings given (other than their defaults) that `command` would ignore with this
    objective and these switches. Each is refused: a knob that does nothing leaves a user
    believing a run was redacted, private or compiled when it was not."""
    data, adapt, objective = config.data, config.adapt, config.objective
    if command == "pretrain":
        problems = [
            f"data.{key}: a fine-tuning setting; graft pretrain reads prepared shards"
            + (" (redact them with `graft data prepare --redact`)" if "redact" in key else "")
            for key in data.given(*_RECORD_DATA)
        ]
        problems += [
            f"adapt.{key}: a fine-tuning setting; graft pretrain trains every weight"
            for key in adapt.given(*AdaptConfig.model_fields)
        ]
        assert isinstance(objective, ShardObjective)  # command_problems refused the others
        if data.mask_doc_boundaries and not objective.reads_document_boundaries():
            problems.append(
                f"data.mask_doc_boundaries: objective {objective.name} does not read it; only "
                "clm (alone or in a mix) masks attention at document boundaries"
            )
        if data.given("replay_fraction") and data.replay_path is None:
            problems.append("data.replay_fraction: nothing to replay; give data.replay_path too")
    else:
        problems = [
            f"data.{key}: a pre-training setting; graft finetune reads labelled records"
            for key in data.given(*_SHARD_DATA)
        ]
        assert isinstance(objective, RecordObjective)  # command_problems refused the others
        problems += [
            f"data.{key}: task {objective.name} does not read it "
            f"({' and '.join(_TASK_DATA[key])} does)"
            for key in data.given(*_TASK_DATA)
            if key not in objective.data_fields
        ]
        problems += [
            f"adapt.{key}: adapt.method {adapt.method} does not read it ({_METHOD_ADAPT[key]} does)"
            for key in adapt.given(*_METHOD_ADAPT)
            if not method_reads(f"adapt.{key}", adapt.method)
        ]
    if config.train.nonfinite == "stop" and config.train.given("nonfinite_limit"):
        problems.append("train.nonfinite_limit: counts skipped steps; set train.nonfinite=skip")
    if not config.dp.enabled:
        # dp.delta is read without privacy too: the canary audit's one-run bound states it.
        problems += [
            f"dp.{key}: private training is off; turn it on with dp.epsilon or dp.noise_multiplier"
            for key in config.dp.given(*DPConfig.model_fields)
            if key != "delta"
        ]
    return problems


def load_run_config(path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A pre-training RunConfig from a YAML file (optional) plus `section.key=value` overrides
    (fine-tuning's: load_finetune_config)."""
    raw = _read_yaml(path) if path is not None else {}
    overridden = [apply_override(raw, item) for item in overrides or []]
    where = str(path) if path else "command line" if overrides else "config"
    return validate_run_config(raw, where=where, command="pretrain", overridden=overridden)


def validate_run_config(
    raw: dict[str, Any],
    *,
    where: str = "config",
    command: str | None = None,
    overridden: list[str] | None = None,
) -> RunConfig:
    """A RunConfig from plain data, every problem in one ConfigError; with `command`, also
    refuse an objective that command cannot run. `overridden`: the dotted keys that came from
    the command line, whose problems are blamed on it rather than on `where` (the file)."""
    raw = dict(raw)
    problems: list[str] = []
    objective = raw.setdefault("objective", {})
    if isinstance(objective, dict):
        raw["objective"] = {"name": CLMConfig().name, **objective}  # RunConfig's default
        if command is not None and isinstance(raw["objective"]["name"], str):
            problems += command_problems(raw["objective"]["name"], command)
    model = raw.get("model")
    if isinstance(model, dict) and "preset" in model:
        model = dict(model)
        name = model.pop("preset")
        if isinstance(name, str) and name in PRESETS:
            model = {**PRESETS[name], **model}
        else:  # reported together with every other problem, not alone
            close = difflib.get_close_matches(name, PRESETS, n=1) if isinstance(name, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"model.preset: unknown preset {name!r}{hint}; choose one of: {', '.join(PRESETS)}"
            )
        raw["model"] = model
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        # An unknown objective is offered the ones this command runs.
        runnable = [
            name
            for name, member in OBJECTIVES.items()
            if command is None or member.reads == COMMAND_DATA[command]
        ]
        problems += [_describe(e, runnable) for e in err.errors()]
    else:
        if command is not None and not problems:
            problems += unused_settings(config, command)
    if problems:
        raise ConfigError(_blame(problems, where, overridden or []))
    return config


def _blame(problems: list[str], where: str, overridden: list[str]) -> str:
    """The problems as one line, each under where it came from: the file, or the command line
    for a key an override set."""

    def from_command_line(problem: str) -> bool:
        # A problem starts with the dotted key it is about ("train.seq_len: ..." or, for a rule
        # across sections, "train.seq_len (4096) exceeds model.max_seq_len"), which may be the
        # section an override named ("trian: unknown key" for --trian.max_steps).
        key = problem.split(":", 1)[0].split(" ", 1)[0]
        return any(
            key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in overridden
        )

    cli = [p for p in problems if from_command_line(p)]
    rest = [p for p in problems if not from_command_line(p)]
    if where == "command line" or not cli:
        return f"{where}: " + "; ".join(problems)
    parts = ([f"{where}: " + "; ".join(rest)] if rest else []) + ["command line: " + "; ".join(cli)]
    return "; ".join(parts)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    silently, and a second `train:` block would drop every setting of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a config file (a YAML file is expected)")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: byte {err.start} is not valid UTF-8; save the file as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (model, data, optim, train), "
            f"got {type(data).__name__}"
        )
    return data


def apply_override(raw: dict[str, Any], item: str) -> str:
    """Set one `section.key=value` in raw (the value read as YAML); return the dotted key."""
    key, sep, value = item.partition("=")
    key = key.removeprefix("--")
    if not sep or not key or "." not in key:
        raise ConfigError(
            f"override {item!r}: expected --section.key=value, e.g. --train.max_steps=100"
        )
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = child
    try:
        node[leaf] = _load_yaml(value) if value != "" else None
    except yaml.YAMLError:
        node[leaf] = value
    return key


def _describe(error: Any, objectives: list[str] | None = None) -> str:
    """One pydantic error as 'section.key: what was wrong', with a did-you-mean for unknown keys."""
    loc = [str(p) for p in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a cross-section rule: its message names the keys itself
        return message
    keys, parent, objective = _walk(loc)
    key = ".".join(keys)
    if error["type"] == "extra_forbidden":
        known = list(parent.model_fields) if parent is not None else []
        known += ["preset"] if parent is ModelConfig else []
        close = difflib.get_close_matches(keys[-1], known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        whose = f" for objective {objective}" if objective and len(keys) == 2 else ""
        return f"{key}: unknown key{whose} ({hint}valid keys: {', '.join(known)})"
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        tag = error.get("ctx", {}).get("tag")
        names = objectives or list(OBJECTIVES)
        close = difflib.get_close_matches(str(tag), names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return (
            f"{key}.name: unknown objective {tag!r} "
            f"({hint}choose one of: {', '.join(map(repr, names))})"
        )
    if message.startswith((f"{key}.", f"{key}:")):  # a section's rule naming its own key
        return message
    field, sep, rest = message.partition(": ")
    if error["type"] == "value_error" and sep and field.isidentifier():
        return f"{key}.{field}: {rest}"  # a section's rule naming one of its fields
    if error["type"] == "literal_error":
        return f"{key}: {message}, got {error.get('input')!r}"
    if (
        "input" in error
        and error["type"] not in ("missing", "value_error")
        and not isinstance(error["input"], dict)
    ):
        return f"{key}: {message}, got {error['input']!r}"
    return f"{key}: {message}"


def _walk(loc: list[str]) -> tuple[list[str], type[BaseModel] | None, str | None]:
    """An error's location as the user wrote it (pydantic adds the objective's name after
    `objective`), the section holding its last key, and the objective it is in."""
    keys: list[str] = []
    node: Any = RunConfig
    parent: type[BaseModel] | None = None
    objective = None
    for part in loc:
        if keys == ["objective"] and objective is None and part in OBJECTIVES:
            node, objective = OBJECTIVES[part], part
            continue
        keys.append(part)
        parent = node if isinstance(node, type) and issubclass(node, BaseModel) else None
        field = parent.model_fields.get(part) if parent is not None else None
        node = field.annotation if field is not None else None
    return keys, parent, objective


# Fine-tuning practice, as the base of every `graft finetune` config (a recipe, shown by
# --print-config): a learning rate well below pre-training's, a short warm-up, weight decay,
# dropout, early stopping on the task's validation metric, the best checkpoint kept.
FINETUNE_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"dropout": 0.1},
    "optim": {
        "lr": 1e-4,
        "warmup_steps": 20,
        "weight_decay": 0.01,
        "min_lr_ratio": 0.0,
        "schedule": "linear",
    },
    "train": {"max_steps": 500, "eval_every": 50, "patience": 4, "batch_size": 16, "log_every": 10},
}


def load_finetune_config(
    task: str, path: Path | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """A fine-tuning RunConfig: FINETUNE_DEFAULTS, then the YAML file, then the overrides."""
    raw: dict[str, Any] = {section: dict(values) for section, values in FINETUNE_DEFAULTS.items()}
    raw["objective"] = {"name": task}
    objective = OBJECTIVES.get(task)
    if objective is None or not issubclass(objective, RecordObjective):
        raise ConfigError(f"finetune: {task!r} is not a fine-tuning task")
    raw["train"]["monitor"] = objective.monitor
    raw["train"]["out_dir"] = f"runs/{task}"  # not pre-training's runs/pretrain
    if path is not None:
        for section, values in _read_yaml(path).items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section].update(values)
            else:
                raw[section] = values
    overridden = [apply_override(raw, item) for item in overrides or []]
    where = str(path) if path else "command line"
    return validate_run_config(raw, where=where, command="finetune", overridden=overridden)

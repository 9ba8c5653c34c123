"""`graft audit canaries`: how much a fine-tuning run leaks about its training records.

The audit writes one training file into `out_dir`: the input's records as one-turn conversations
(a labelled text becomes the assistant's reply to a fixed instruction, "Write a text message.",
because exposure is measured on a generative model; conversation files are kept as they are),
plus two kinds of canary, each a record of the same shape:

- exposure canaries: `canaries` random six-digit secrets after distinct tags ("the code for qzkpw
  is 381942"), each inserted `repeats` times, and as many `controls` made the same way but never
  inserted, the baseline an inserted canary's exposure is read against;
- membership canaries: `members` secrets of another template, each put in once with probability
  1/2 (seeded), for the one-run epsilon lower bound of Steinke, Nasr and Jagielski (2023).

The validation split is held out from the input's records before any canary is added, so the
validation loss never sees one. Then it fine-tunes with objective `instruct` through graft's
`finetune`, the code path of `graft finetune instruct`: one run without DP, and a second with it
when the overrides turn DP on (`--dp.epsilon=8`); every other override applies to both runs. Each
run's LAST checkpoint is scored: it is the model after every step the privacy accountant counted
(the epsilon in its privacy.json is the run's whole budget), and the one that has seen the
canaries most; the best checkpoint is chosen on canary-free validation data and is an earlier
model of the same run (for a private run its epsilon is no larger; its exposure is not
measured). `report.json` and `report.md` hold the figures (`graft.evaluate.audit` defines them;
`canaries_report` lays them out).
"""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from graft import checkpoint as ckpt
from graft.atomic_files import write_atomic
from graft.config import RunConfig, load_finetune_config
from graft.data.chat import DEFAULT_CHAT_TEMPLATE, encode_conversation
from graft.data.records import Conversation, read_conversations, read_labelled
from graft.device import resolve_device
from graft.errors import CheckpointError, ConfigError, DataError, first_line
from graft.evaluate.audit import (
    Canary,
    SecretTemplate,
    candidate_secrets,
    conversation,
    exposure,
    make_canaries,
    one_run_bound,
    reply_nll,
)
from graft.experiments.canaries_report import CanaryResult, RunAudit, report_markdown
from graft.experiments.runner import (
    Planned,
    command_line,
    raise_if_interrupted,
    run_plan,
    setting,
)
from graft.run_files import CHECKPOINTS_DIR
from graft.train.finetune import finetune

__all__ = ["AuditOptions", "run_canary_audit"]

INSTRUCTION = "Write a text message."
EXPOSURE_TEXT = "the code for {tag} is {secret}"
MEMBERSHIP = SecretTemplate("the passphrase of {tag} is {secret}", string.ascii_lowercase, 8)
DATA_FILES = ("audit_train.jsonl", "audit_val.jsonl")
CANARIES_FILE = "canaries.json"
# What the audit sets for every run; an override of these (or of any data.* key: the audit writes
# the data files itself) is refused.
_OWNED = ("train.init", "train.out_dir", "objective.")
# The run without DP drops the dp overrides but dp.delta, which both runs' one-run bounds are
# stated at (a dp setting a run without DP does not read is refused).
_SHARED_DP = "dp.delta"
# The overrides that turn DP on: the run without DP drops them and keeps the rest (dp.delta too,
# so both runs' one-run bounds are stated at the same delta).


@dataclass(frozen=True)
class AuditOptions:
    init: Path  # the base checkpoint (graft checkpoint, run directory or Hugging Face directory)
    data: Path  # labelled records or conversations
    out_dir: Path
    canaries: int = 10  # exposure canaries inserted...
    repeats: int = 10  # ...this many times each
    controls: int = 10  # exposure canaries never inserted
    members: int = 200  # membership canaries, each inserted once with probability 1/2
    samples: int = 2000  # candidate secrets each exposure is ranked against
    digits: int = 6  # of an exposure secret: |R| = 10^digits
    seed: int = 0
    beta: float = 0.05  # the one-run bound holds at confidence 1 - beta
    val_fraction: float = 0.1
    instruction: str = INSTRUCTION
    text_field: str = "text"
    label_field: str = "label"
    encoding: str = "utf-8"
    batch_size: int = 32  # conversations per forward pass when scoring
    overrides: tuple[str, ...] = ()  # `section.key=value` for every run
    progress: bool = True


@dataclass(frozen=True)
class AuditData:
    """The canaries of one audit and what went into training."""

    template: SecretTemplate
    inserted: list[Canary]
    controls: list[Canary]
    members: list[Canary]
    included: list[bool]  # per membership canary: in the training file
    train_records: int
    val_records: int


def run_canary_audit(options: AuditOptions, echo: Callable[[str], None] = lambda _: None) -> Path:
    """Write the audited data, fine-tune each configuration, score each run's last checkpoint,
    and write report.json and report.md into options.out_dir; returns report.md's path. Bad
    options, overrides, data and checkpoints are refused before any training."""
    check_options(options)
    runs_dir = options.out_dir / "runs"
    if runs_dir.is_dir() and any(runs_dir.iterdir()):
        raise ConfigError(f"--out {options.out_dir}: {runs_dir} already holds runs; choose another")
    plans = [(name, ckpt.resolve(config)) for name, config in run_configs(options)]
    _check_canaries_fit(options, [config.seq_len for _, config in plans])
    data = write_audit_data(options, read_conversation_records(options))
    echo(
        f"audit data: {data.train_records:,} training records ({len(data.inserted)} canaries x "
        f"{options.repeats}, {sum(data.included)} of {len(data.members)} membership canaries), "
        f"{data.val_records:,} validation records: {options.out_dir / DATA_FILES[0]}"
    )
    configs = dict(plans)
    plan = [Planned(name, options.out_dir / "runs" / name, name) for name, _ in plans]

    def run(planned: Planned[str]) -> RunAudit:
        return _audit_run(planned, configs[planned.key], data, options, echo)

    outcomes = run_plan(plan, run, RunAudit, summary=_summary, echo=echo)
    runs = [outcomes[p.key] for p in plan]
    record = {
        "command": command_line(),
        "options": asdict(options),
        "canaries": _canary_record(data),
        "runs": [asdict(r) for r in runs],
    }
    write_atomic(options.out_dir / "report.json", json.dumps(record, indent=2, default=str) + "\n")
    text = report_markdown(options, data.template, len(data.members), runs)
    return write_atomic(options.out_dir / "report.md", text)


def check_options(options: AuditOptions) -> None:
    """Refuse options no audit can run with, naming the flag."""
    counts = {
        "--canaries": (options.canaries, 1),
        "--repeats": (options.repeats, 1),
        "--controls": (options.controls, 1),
        "--members": (options.members, 4),
        "--samples": (options.samples, 10),
        "--digits": (options.digits, 1),
        "batch_size": (options.batch_size, 1),
    }
    for flag, (value, least) in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{flag} {value}: give a whole number, {least} or more")
    if options.canaries + options.controls > 10**options.digits:
        raise ConfigError(
            f"--digits {options.digits}: {10**options.digits} secrets cannot give "
            f"{options.canaries + options.controls} distinct canaries; raise --digits"
        )
    if not 0 < options.beta < 1:
        raise ConfigError(f"--beta {options.beta}: give a number between 0 and 1, e.g. 0.05")
    if not 0 < options.val_fraction < 1:
        raise ConfigError(f"val_fraction {options.val_fraction}: give a number between 0 and 1")
    if not options.instruction.strip():
        raise ConfigError("--instruction: give a non-empty instruction")


def run_configs(options: AuditOptions) -> list[tuple[str, RunConfig]]:
    """The fine-tunes to run, by name: "plain" (no DP), and "dp" when the overrides turn DP on."""
    for item in options.overrides:
        key = item.partition("=")[0].removeprefix("--")
        if key.startswith("data.") or key.startswith(_OWNED):
            raise ConfigError(
                f"override --{key}: the audit sets it (its own data files, --init and "
                "objective instruct); drop it"
            )
    base = [
        setting("train.init", options.init),
        setting("data.train_file", options.out_dir / DATA_FILES[0]),
        setting("data.val_file", options.out_dir / DATA_FILES[1]),
        setting("train.progress", options.progress),
    ]
    private = load_finetune_config("instruct", None, [*base, *options.overrides])
    plain = [
        o
        for o in options.overrides
        if not o.removeprefix("--").startswith("dp.") or o.removeprefix("--").startswith(_SHARED_DP)
    ]
    runs = [
        ("plain", [*base, setting("train.out_dir", options.out_dir / "runs" / "plain"), *plain])
    ]
    if private.dp.enabled:
        dp_dir = setting("train.out_dir", options.out_dir / "runs" / "dp")
        runs.append(("dp", [*base, dp_dir, *options.overrides]))
    return [(name, load_finetune_config("instruct", None, items)) for name, items in runs]


def read_conversation_records(options: AuditOptions) -> list[Conversation]:
    """The input as conversations: instruction or chat records as they are; labelled records
    (any format `read_labelled` reads) as the instruction and the text as the reply."""
    path, problems = options.data, []
    if path.suffix.lower() in (".jsonl", ".json"):
        try:
            return read_conversations(path, encoding=options.encoding)[0]
        except DataError as err:
            problems.append(f"as conversations: {first_line(err)}")
    try:
        records = read_labelled(
            path,
            text_field=options.text_field,
            label_field=options.label_field,
            encoding=options.encoding,
        )[0]
    except DataError as err:
        if not problems:
            raise
        raise DataError(
            f"--data {path}: expected conversations or labelled records; {problems[0]}; "
            f"as labelled records: {first_line(err)}"
        ) from None
    return [conversation(options.instruction, r.text, r.source) for r in records]


def _check_canaries_fit(options: AuditOptions, contexts: list[int]) -> None:
    """Refuse, before any training, canaries whose reply does not fit the smallest training
    context with its prompt: training would cut them, and scoring (reply_nll) refuses them
    once the runs are done."""
    tokenizer = ckpt.load_tokenizer(options.init)
    template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    exposure = SecretTemplate(EXPOSURE_TEXT, string.digits, options.digits)
    canaries = make_canaries(exposure, options.canaries + options.controls, options.seed)
    canaries += make_canaries(MEMBERSHIP, options.members, options.seed)
    max_len = min(contexts)
    for canary in canaries:
        item = conversation(options.instruction, canary.text, f"canary text {canary.text!r}")
        if encode_conversation(tokenizer, template, item, max_len=max_len + 1).truncated:
            reply = len(tokenizer.encode(canary.text))
            raise ConfigError(
                f"{item.source}: {reply}-token reply does not fit in the training context of "
                f"{max_len} tokens with its prompt; raise train.seq_len or shorten --instruction"
            )


def write_audit_data(options: AuditOptions, records: list[Conversation]) -> AuditData:
    """Split off the validation records, add the canaries to the rest, write both files and the
    canaries' answer key (canaries.json)."""
    if len(records) < 2:
        raise DataError(f"--data {options.data}: {len(records)} record; give 2 or more")
    rng = random.Random(f"{options.seed}/audit")
    order = list(range(len(records)))
    rng.shuffle(order)
    held = set(order[: max(1, round(len(records) * options.val_fraction))])
    val = [r for i, r in enumerate(records) if i in held]
    train = [r for i, r in enumerate(records) if i not in held]
    template = SecretTemplate(EXPOSURE_TEXT, string.digits, options.digits)
    exposure_canaries = make_canaries(template, options.canaries + options.controls, options.seed)
    inserted, controls = (
        exposure_canaries[: options.canaries],
        exposure_canaries[options.canaries :],
    )
    members = make_canaries(MEMBERSHIP, options.members, options.seed)
    included = [rng.random() < 0.5 for _ in members]
    say = options.instruction
    train += [
        conversation(say, c.text, f"canary {c.tag}")
        for c in inserted
        for _ in range(options.repeats)
    ]
    train += [conversation(say, c.text, f"member {c.tag}") for c, i in zip(members, included) if i]
    rng.shuffle(train)
    for name, part in zip(DATA_FILES, (train, val)):
        write_atomic(options.out_dir / name, "".join(_chat_line(c) for c in part))
    data = AuditData(template, inserted, controls, members, included, len(train), len(val))
    write_atomic(options.out_dir / CANARIES_FILE, json.dumps(_canary_record(data), indent=2) + "\n")
    return data


def _chat_line(item: Conversation) -> str:
    messages = [{"role": m.role, "content": m.content} for m in item.messages]
    return json.dumps({"messages": messages}, ensure_ascii=False) + "\n"


def _canary_record(data: AuditData) -> dict[str, object]:
    """The answer key: every canary, its secret and whether (or how often) it was trained on."""
    return {
        "exposure_template": data.template.text,
        "secret_space": data.template.space,
        "membership_template": MEMBERSHIP.text,
        "inserted": [asdict(c) for c in data.inserted],
        "controls": [asdict(c) for c in data.controls],
        "members": [asdict(c) | {"included": i} for c, i in zip(data.members, data.included)],
    }


def _audit_run(
    planned: Planned[str],
    config: RunConfig,
    data: AuditData,
    options: AuditOptions,
    echo: Callable[[str], None],
) -> RunAudit:
    started = time.perf_counter()
    result = finetune(config, echo=lambda m: echo(f"  {m}"))
    raise_if_interrupted(result.stop_reason)
    last = planned.run_dir / CHECKPOINTS_DIR / "last"
    model, tokenizer = ckpt.load_model(last, device=resolve_device(config.train.device))
    template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE

    def nll(texts: list[str]) -> list[float]:
        items = [conversation(options.instruction, t, f"canary text {t!r}") for t in texts]
        return reply_nll(
            model, tokenizer, template, items, max_len=config.seq_len, batch_size=options.batch_size
        )

    echo(
        f"  scoring {len(data.inserted) + len(data.controls)} exposure canaries against "
        f"{options.samples:,} candidates each, and {len(data.members)} membership canaries"
    )
    results = []
    for canary in data.inserted + data.controls:
        candidates, _ = candidate_secrets(
            data.template, canary.secret, options.samples, options.seed
        )
        texts = [canary.text] + [data.template.fill(canary.tag, s) for s in candidates]
        scores = nll(texts)
        figures = exposure(scores[0], scores[1:], data.template.space)
        repeats = options.repeats if canary in data.inserted else 0
        results.append(CanaryResult(canary.tag, canary.secret, repeats, scores[0], figures))
        kind = f"inserted {repeats}x" if repeats else "control"
        echo(f"  canary {canary.tag} ({kind}): exposure {figures.sampled:.2f} bits")
    bound = one_run_bound(
        nll([c.text for c in data.members]), data.included, delta=config.dp.delta, beta=options.beta
    )
    epsilon, delta = _accountant(last)
    val = [e["val/loss"] for e in result.evals if "val/loss" in e]
    return RunAudit(
        name=planned.key,
        run_dir=str(planned.run_dir),
        private=config.dp.enabled,
        checkpoint=str(last),
        steps=result.step,
        stop_reason=result.stop_reason,
        val_loss=val[-1] if val else None,
        best_val_loss=result.best_metric,
        accountant_epsilon=epsilon,
        accountant_delta=delta,
        inserted=[r for r in results if r.repeats],
        controls=[r for r in results if not r.repeats],
        one_run=bound,
        seconds=time.perf_counter() - started,
    )


def _accountant(checkpoint: Path) -> tuple[float | None, float | None]:
    """(epsilon, delta) from the checkpoint's privacy.json; (None, None) for a run without DP."""
    path = checkpoint / ckpt.PRIVACY_FILE
    if not path.is_file():
        return None, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return float(record["epsilon"]), float(record["delta"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: unreadable ({first_line(err)}); expected JSON with epsilon and delta"
        ) from None


def _summary(outcome: RunAudit) -> str:
    parts = [
        f"exposure mean {outcome.exposure_mean:.2f} bits (controls {outcome.control_mean:.2f})",
        f"one-run epsilon >= {outcome.one_run.epsilon:.3f}",
    ]
    if outcome.accountant_epsilon is not None:
        parts.append(f"accountant epsilon {outcome.accountant_epsilon:.3f}")
    return ", ".join(parts) + f" ({outcome.seconds:.0f} s)"

"""Differentially private training (DP-SGD): the loop's privacy extension point.

Opacus does the parts it is built for: per-sample gradients (`GradSampleModule`'s hooks), clipping
each record's gradient to dp.max_grad_norm and adding Gaussian noise (`DPOptimizer`), and the
privacy accountants (RDP, PRV) with the noise calibration for a target epsilon. graft keeps its own
loop and data: each step draws a Poisson sample of the training records (each record in with
probability q = dp.batch / records, so the step's size varies), carries it in micro-batches of at
most train.batch_size rows (Opacus's virtual steps: clipped sums accumulate, the noise is added
once), and averages over the EXPECTED batch, never the drawn one, whose size would leak.

The unit of privacy is one record (`RecordSampled`): a labelled text or a conversation for a
fine-tune, a disjoint window of train.seq_len + 1 tokens for pre-training. A record's gradient is
that of its summed loss (its scored tokens); clipping bounds it whatever its length.

What a run spends is logged (metrics.jsonl `epsilon`), stored with every checkpoint
(`privacy.json`: the settings and the accountant's history, from which a resumed run keeps
counting) and written into an exported model card.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from graft.checkpoint import PRIVACY_FILE
from graft.config import DPConfig, RunConfig
from graft.distributed import World
from graft.errors import CheckpointError, ConfigError, TrainingError
from graft.model.transformer import Attention, LanguageModel
from graft.objectives.batch import Batch, LossSum, Objective, RecordSampled
from graft.objectives.classify import ClassifyConfig
from graft.objectives.tokens import TokensConfig


@dataclass(frozen=True)
class PrivacySettings:
    """What a private run was promised and how it samples: stored with every checkpoint, and
    compared on resume (another sampling rate or noise would make the accounting wrong)."""

    records: int  # N, the training records the sampling rate is over
    expected_batch: int  # records per step on average: q * N
    sample_rate: float  # q
    noise_multiplier: float  # sigma: noise std / max_grad_norm
    max_grad_norm: float
    delta: float
    accountant: str
    unit: str  # what one record is, in words
    target_epsilon: float | None = None
    planned_steps: int | None = None


@dataclass
class PrivacySpent:
    """The accountant's history, [noise_multiplier, sample_rate, steps] per stretch of steps."""

    history: list[list[float]] = field(default_factory=list)


class Privacy:
    """DP-SGD around a model and its optimizer, for `fit` (train/loop.py). `ghost`: clip by
    ghost norms (Opacus's fast gradient clipping) instead of materialised per-sample gradients."""

    def __init__(
        self,
        settings: PrivacySettings,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        model: LanguageModel,
        spent: PrivacySpent | None = None,
        *,
        ghost: bool = False,
    ) -> None:
        from opacus.accountants import create_accountant
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

        self.settings, self.module, self.model, self.ghost = settings, module, model, ghost
        # Noise is drawn from torch's global generator, which checkpoints save and restore.
        self.optimizer = (DPOptimizerFastGradientClipping if ghost else DPOptimizer)(
            optimizer,
            noise_multiplier=settings.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            expected_batch_size=settings.expected_batch,
            loss_reduction="mean",  # divide the noisy sum by the expected batch
        )
        self.accountant = create_accountant(settings.accountant)
        self.accountant.history = [tuple(h) for h in (spent or PrivacySpent()).history]
        self._trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def draw(self, objective: Objective, max_rows: int, generator: torch.Generator) -> list[Batch]:
        """A Poisson sample of the training records, in micro-batches of at most max_rows."""
        assert isinstance(objective, RecordSampled)
        chosen = torch.rand(self.settings.records, generator=generator) < self.settings.sample_rate
        rows = chosen.nonzero().flatten().tolist()
        return [
            objective.records_batch(rows[i : i + max_rows], generator)
            for i in range(0, len(rows), max_rows)
        ]

    def backward(self, loss: LossSum, *, last: bool) -> None:
        """A micro-batch's backward, each record's gradient clipped to max_grad_norm and summed
        into the step's; the last one of a step leaves the sum for `step`. The loss is summed
        over records (not divided by the step's size: that comes after the noise)."""
        if self.ghost:
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            assert loss.rows is not None  # make_private checked the objective gives them
            # Two passes: the first measures each record's gradient norm, the second
            # backpropagates the records' losses weighted by min(1, C / norm).
            DPTensorFastGradientClipping(self.module, self.optimizer, loss.rows, "sum").backward()
        else:
            loss.total.backward()
            self._check_per_sample()
        if not last:  # a virtual step: add the clipped sums up, free the rest
            self.optimizer.signal_skip_step(do_skip=True)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def step(self, drew_any: bool) -> float:
        """Clip the last micro-batch, add the noise, average over the expected batch, step the
        optimizer and account for it; check that the trained weights moved and stayed finite.
        Returns the norm of the noisy gradient."""
        if not drew_any:  # an empty Poisson sample still takes a (pure-noise) step
            for _, param in self._trainable:
                if self.ghost:
                    param.grad = torch.zeros_like(param)
                else:
                    param.grad_sample = param.new_zeros((0, *param.shape))  # type: ignore[attr-defined]
        # A copy of the trained tensors: small beside the per-sample gradients of one micro-batch.
        before = [p.detach().clone() for _, p in self._trainable]
        self.optimizer.pre_step()  # clip, noise, average (DPOptimizer.step without the step)
        grads = [p.grad for _, p in self._trainable if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        self.optimizer.original_optimizer.step()
        self.accountant.step(
            noise_multiplier=self.settings.noise_multiplier, sample_rate=self.settings.sample_rate
        )
        self._check_moved(before)
        return norm

    def _check_per_sample(self) -> None:
        missing = [name for name, p in self._trainable if getattr(p, "grad_sample", None) is None]
        if missing:
            raise TrainingError(
                f"dp: no per-sample gradient reached {missing[0]} "
                f"({len(missing)} trained tensors without one); its module is not called on "
                "(batch, ...) inputs, so DP-SGD cannot clip it: freeze it or report the model"
            )

    def _check_moved(self, before: list[torch.Tensor]) -> None:
        """Opacus with some PEFT versions trained LoRA adapters silently wrong (loss and epsilon
        looked normal, adapter weights never moved or were corrupted; Opacus issue #820): every
        trained tensor must change at every step and stay finite."""
        if self.optimizer.param_groups[0]["lr"] == 0:
            return
        for (name, param), old in zip(self._trainable, before, strict=True):
            if not bool(torch.isfinite(param).all()):
                raise TrainingError(f"dp: {name} became non-finite after a private step")
            if torch.equal(param.detach(), old):
                raise TrainingError(
                    f"dp: {name} did not move in a private step: its per-sample gradients are "
                    "not reaching the optimizer"
                )

    def epsilon(self) -> float:
        """The epsilon spent so far, at the run's delta."""
        if not self.accountant.history:
            return 0.0
        with warnings.catch_warnings():  # PRV warns about its own numerical tolerances
            warnings.simplefilter("ignore")
            return float(self.accountant.get_epsilon(delta=self.settings.delta))

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores: the settings, the accountant's history, the epsilon."""
        return {
            **asdict(self.settings),
            "epsilon": self.epsilon(),
            "steps": sum(int(h[2]) for h in self.accountant.history),
            "history": [list(h) for h in self.accountant.history],
        }


def make_private(
    config: RunConfig,
    model: LanguageModel,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    world: World,
    last: Path | None,
    say: Callable[[str], None],
) -> Privacy:
    """Check that the run can train privately, calibrate the noise, attach the per-sample
    gradient hooks and wrap the optimizer. `last`: the checkpoint a resumed run continues."""

    dp, train = config.dp, config.train
    _refuse_unsupported(config, objective, world)
    assert isinstance(objective, RecordSampled)
    records = objective.train_records()
    expected = dp.batch or train.global_batch or train.batch_size * train.grad_accum
    if expected > records:
        raise ConfigError(
            f"dp.batch: {expected} records per step is more than the {records:,} training records"
        )
    if dp.delta >= 1 / records:
        raise ConfigError(
            f"dp.delta: {dp.delta:g} is not below 1 / {records:,} training records "
            f"({1 / records:.2g}); a delta that large allows leaking whole records: "
            f"use at most {0.1 / records:.1g}"
        )
    rate = expected / records
    settings = PrivacySettings(
        records=records,
        expected_batch=expected,
        sample_rate=rate,
        noise_multiplier=dp.noise_multiplier or _calibrated_noise(dp, rate, train.max_steps),
        max_grad_norm=dp.max_grad_norm,
        delta=dp.delta,
        accountant=dp.accountant,
        unit=_unit(config),
        target_epsilon=dp.epsilon,
        planned_steps=train.max_steps,
    )
    spent = _resumed(last, settings)
    # The token embedding's input (ids) needs no gradient, so torch notes that its backward hook
    # fires on outputs only: exactly what per-sample gradients of an embedding need.
    warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
    model.per_sample_gradients(True)
    _freeze_unused(model, objective)
    module, ghost = _attach(model, objective, dp, say)
    say(
        f"dp: each step samples each of {records:,} records with probability {rate:.4g} "
        f"(expected {expected} per step, in micro-batches of at most {train.batch_size}); "
        f"noise multiplier {settings.noise_multiplier:.4g}, "
        f"{'ghost' if ghost else 'flat'} clipping at {dp.max_grad_norm:g}"
        + (f", for epsilon {dp.epsilon:g} at step {train.max_steps}" if dp.epsilon else "")
        + (", train.grad_accum is not used" if train.grad_accum > 1 else "")
    )
    return Privacy(settings, module, optimizer, model, spent, ghost=ghost)


def _refuse_unsupported(config: RunConfig, objective: Objective, world: World) -> None:
    dp, train = config.dp, config.train
    if dp.epsilon is not None and train.max_steps is None:
        raise ConfigError(
            "dp.epsilon: the noise is calibrated for a planned number of steps; set "
            "train.max_steps (a token or time limit cannot be planned), or give "
            "dp.noise_multiplier instead"
        )
    if config.data.replay_path is not None:
        raise ConfigError(
            "data.replay_path: private pre-training samples the records of one dataset; replay "
            "mixes a second one in, which the accounting does not cover"
        )
    if isinstance(config.objective, ClassifyConfig | TokensConfig) and not config.objective.labels:
        # The accounting covers the gradients, not the label set the model is published with:
        # a label only one record has would reveal that record whatever the epsilon.
        raise ConfigError(
            "objective.labels: under dp give the label set (--objective.labels='[neg, pos]'); "
            "read from the private records it is published with the model, and a label only "
            "one record has reveals that record"
        )
    if isinstance(config.objective, ClassifyConfig) and config.objective.class_weights:
        raise ConfigError(
            "objective.class_weights: under dp the weights would come from the private "
            "records' label counts, which the accounting does not cover; leave it false"
        )
    supported = (
        "private training supports clm, mlm, denoise, classify, tokens, instruct and seq2seq"
    )
    if not isinstance(objective, RecordSampled):
        raise ConfigError(
            f"dp: objective {config.objective.name} does not sample fixed training records, "
            f"which DP-SGD's accounting needs; {supported}"
        )
    unlike = getattr(objective, "rows_unlike_records", None)
    if unlike is not None:
        # Sampling rows that are not records would undercount what one record adds (qa: a
        # question spans several windows), and N and the unit of privacy would be wrong.
        raise ConfigError(
            f"dp: objective {config.objective.name} {unlike}, "
            f"which DP-SGD's accounting needs; {supported}"
        )
    if train.nonfinite == "skip":
        raise ConfigError(
            "dp: train.nonfinite=skip would drop steps by a test of the sampled records' loss, "
            "which the privacy accounting does not cover; leave train.nonfinite at stop"
        )
    reasons = {
        "train.activation_checkpointing": train.activation_checkpointing,
        "train.compile": train.compile,
        "more than one process (torchrun)": world.size > 1,
    }
    for what, given in reasons.items():
        if given:
            raise ConfigError(
                f"dp: private training does not combine with {what}: per-sample gradients are "
                "taken by hooks on one uncompiled, unsharded model"
            )
    data = config.data
    if data.val_file is not None and data.train_file is not None:
        if data.val_file.resolve() == data.train_file.resolve():
            raise ConfigError(
                "data.val_file: it is the training file; evaluation data must be held out of "
                "private training (leave it unset for a held-out split)"
            )


def _calibrated_noise(dp: DPConfig, rate: float, steps: int | None) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    assert dp.epsilon is not None and steps is not None  # _refuse_unsupported checked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=dp.epsilon,
                    target_delta=dp.delta,
                    sample_rate=rate,
                    steps=steps,
                    accountant=dp.accountant,
                    epsilon_tolerance=0.01,
                )
            )
        except ValueError as err:  # Opacus: "The privacy budget is too low."
            if "too low" not in str(err):
                raise
            raise ConfigError(_unreachable(dp, rate, steps)) from err


def _unreachable(dp: DPConfig, rate: float, steps: int) -> str:
    """Why no noise multiplier reaches dp.epsilon, and what would."""
    from opacus.accountants import create_accountant
    from opacus.accountants.utils import MAX_SIGMA

    assert dp.epsilon is not None
    if dp.accountant == "rdp":
        # RDP's conversion to (epsilon, delta) has a floor that no noise goes below, and that
        # hardly depends on the steps or the sampling rate: only epsilon or PRV help.
        accountant = create_accountant("rdp")
        accountant.history = [(2 * MAX_SIGMA, rate, steps)]
        floor = float(accountant.get_epsilon(delta=dp.delta))
        return (
            f"dp.epsilon: {dp.epsilon:g} is below {floor:.3g}, the least the rdp accountant can "
            f"certify at dp.delta {dp.delta:g} whatever the noise; give a larger dp.epsilon or "
            "dp.accountant=prv (fewer steps or a smaller dp.batch do not lower this floor)"
        )
    return (
        f"dp.epsilon: {dp.epsilon:g} at dp.delta {dp.delta:g} is out of reach of any noise "
        f"multiplier up to {MAX_SIGMA:g} over {steps} steps at sampling rate {rate:.3g} "
        "(prv accountant); give a larger dp.epsilon, fewer train.max_steps or a smaller dp.batch"
    )


def _unit(config: RunConfig) -> str:
    if config.objective.reads == "records":
        return f"one training record of {config.data.train_file} ({config.objective.name})"
    # clm reads seq_len + 1 tokens a record; mlm and denoise fewer (their objectives say)
    return f"one disjoint training window of {config.data.path} ({config.objective.name})"


def refuse_dropping_privacy(last: Path | None, config: RunConfig) -> None:
    """A private run resumed without dp would go on without noise under the same name: refused."""
    if last is not None and not config.dp.enabled and (last / PRIVACY_FILE).is_file():
        raise CheckpointError(
            f"--resume: {last} was trained with dp ({last / PRIVACY_FILE}); resume with the same "
            "dp settings, or train into a new train.out_dir"
        )


def _resumed(last: Path | None, settings: PrivacySettings) -> PrivacySpent | None:
    """The privacy already spent by the run a resume continues; refuses other settings."""
    if last is None:
        return None
    path = last / PRIVACY_FILE
    if not path.is_file():
        raise CheckpointError(
            f"--resume: {last} was trained without dp; a private run cannot continue it "
            "(train into a new train.out_dir)"
        )
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = [
        f"{key} {saved.get(key)!r} -> {value!r}"
        for key, value in asdict(settings).items()
        if key
        in ("records", "expected_batch", "noise_multiplier", "max_grad_norm", "delta", "accountant")
        and not _same(saved.get(key), value)
    ]
    if changed:
        raise CheckpointError(
            f"--resume: the privacy settings differ from {path}: {'; '.join(changed)}; the "
            "accounting would be wrong: resume with the original dp, batch and data settings"
        )
    return PrivacySpent(history=saved.get("history", []))


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _two_records(model: LanguageModel, objective: RecordSampled) -> list[Batch]:
    """The first two training records, one batch each and together: the preflight's data."""
    rows = min(2, objective.train_records())
    device = next(model.parameters()).device
    batch = objective.records_batch(list(range(rows)), torch.Generator().manual_seed(0))
    return [batch.to(device)] + [
        objective.records_batch([i], torch.Generator().manual_seed(0)).to(device)
        for i in range(rows)
    ]


@contextlib.contextmanager
def _quiet(model: LanguageModel) -> Iterator[None]:
    """For the checks before training: no dropout (the gradients must be comparable), and the
    run's random generators left as they were (a resumed run must match an uninterrupted one)."""
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    attention = [m for m in model.modules() if isinstance(m, Attention)]  # SDPA's dropout_p
    rates = [m.p for m in dropouts], [m.dropout for m in attention]
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            for m in dropouts:
                m.p = 0.0
            for a in attention:
                a.dropout = 0.0
            yield
        finally:
            for m, rate in zip(dropouts, rates[0], strict=True):
                m.p = rate
            for a, rate in zip(attention, rates[1], strict=True):
                a.dropout = rate
            for param in model.parameters():
                param.grad = None


def _freeze_unused(model: LanguageModel, objective: RecordSampled) -> None:
    """Freeze the tensors the objective never uses (BERT's NSP head under mlm alone): they would
    stay unchanged anyway, and the DP optimizer would wait for their per-sample gradients."""
    batch = _two_records(model, objective)[0]
    with _quiet(model):
        cast(Objective, objective).loss(model, batch).total.backward()
        for param in model.parameters():
            if param.requires_grad and param.grad is None:
                param.requires_grad_(False)


def _attach(
    model: LanguageModel, objective: RecordSampled, dp: DPConfig, say: Callable[[str], None]
) -> tuple[nn.Module, bool]:
    """Opacus's hooks on the model: ghost clipping where a check on two records shows its norms
    exact for this model (dp.clipping auto or ghost), else per-sample gradients (flat). Returns
    the module to train through and whether it clips by ghost norms."""
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    if dp.clipping != "flat":
        module = GradSampleModuleFastGradientClipping(
            model, batch_first=True, loss_reduction="sum", max_grad_norm=dp.max_grad_norm
        )
        problem = _ghost_problem(module, model, objective)
        if problem is None:
            return module, True
        module._close()
        _clean(model)
        if dp.clipping == "ghost":
            raise ConfigError(f"dp.clipping: ghost clipping {problem}; use flat or auto")
        say(f"dp: per-sample gradients (flat clipping): ghost clipping {problem}")
    module = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    _flat_preflight(module, model, objective)
    return module, False


def _clean(model: nn.Module) -> None:
    """Remove what hooks that are gone left behind on the tensors and layers (activations of a
    refused forward would otherwise be read by the next hooks)."""
    for part in [*model.parameters(), *model.modules()]:
        for left in ("_current_grad_sample", "grad_sample", "_norm_sample", "_forward_counter"):
            if left in vars(part):
                delattr(part, left)
        if isinstance(part, nn.Module) and "activations" in vars(part):
            del part.activations


def _ghost_problem(module: Any, model: LanguageModel, objective: RecordSampled) -> str | None:
    """Why ghost norms would be wrong here, or None: each record's norm as measured by the hooks
    must equal the norm of its gradient computed alone. A tensor shared by two layers (tied
    embeddings under an LM loss) is measured layer by layer, which is not its norm."""
    together, *alone = _two_records(model, objective)
    with _quiet(model):
        try:
            loss = cast(Objective, objective).loss(cast(LanguageModel, module), together)
        except NotImplementedError as err:  # Opacus refuses some layouts itself: tied weights
            return f"does not support this model ({err})"
        if loss.rows is None:
            return f"needs per-record losses, which objective {objective_name(objective)} lacks"
        loss.rows.sum().backward()
        measured = module.get_norm_sample().detach()
        model.zero_grad(set_to_none=True)
        module.disable_hooks()
        truth = []
        for batch in alone:
            cast(Objective, objective).loss(model, batch).total.backward()
            truth.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in _grads(model)])))
            model.zero_grad(set_to_none=True)
        module.enable_hooks()
    if not torch.allclose(measured, torch.stack(truth), rtol=1e-3, atol=1e-6):
        return (
            "measures this model's per-record gradient norms wrong (a tensor shared by two "
            "layers, such as tied embeddings under an LM loss)"
        )
    return None


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in model.parameters() if p.grad is not None]


def objective_name(objective: object) -> str:
    return str(getattr(objective, "name", type(objective).__name__))


def _flat_preflight(module: nn.Module, model: LanguageModel, objective: RecordSampled) -> None:
    """One backward over two records, before training: every trained tensor must get a
    per-sample gradient for each of them, or the run is refused now."""
    batch = _two_records(model, objective)[0]
    rows = batch.input_ids.shape[0]
    with _quiet(model):
        cast(Objective, objective).loss(cast(LanguageModel, module), batch).total.backward()
        try:
            for name, param in model.named_parameters():
                sample = getattr(param, "grad_sample", None)
                if param.requires_grad and (sample is None or sample.shape[0] != rows):
                    raise ConfigError(
                        f"dp: {name} gets no per-sample gradient (its module is not called on "
                        "(batch, ...) inputs), so DP-SGD cannot bound what one record adds to "
                        "it; freeze it (adapt.method freeze or lora) or use another model"
                    )
        finally:
            for param in model.parameters():
                param.grad_sample = None  # type: ignore[attr-defined]

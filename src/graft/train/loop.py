"""The training loop: one function, `fit`, that every objective and every fine-tuning method runs.

Read `fit` top to bottom: pick the learning rate, draw the micro-batches, accumulate gradients
normalised by the objective's units in the whole step (its target tokens; rows for a per-row
part such as NSP's), clip, step the optimizer, log, evaluate, checkpoint, stop on a limit or
on patience. `train.pretrain` and `train.finetune` set
a run up (data, model, optimizer, resume) and call it. The loop never asks which objective it
runs: an objective gives batches, a summed loss with its count, and its evaluation metrics.
Tokens are real tokens (`step_tokens`): a fine-tune padded to its longest row counts its texts,
not batch x accum x seq_len.

With 2+ processes (torchrun) every rank draws the whole step and trains on its share
(graft.distributed); losses and evaluations are summed over ranks, and rank 0 logs and plots.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import nn
from tqdm import tqdm

from graft import checkpoint as ckpt
from graft.config import RunConfig, TrainConfig
from graft.crash_points import crash_point
from graft.data.tokenizer import Tokenizer
from graft.device import autocast_for, peak_flops
from graft.distributed import ONE_PROCESS, World
from graft.errors import ConfigError, TrainingError
from graft.model.flops import training_flops_per_token
from graft.model.transformer import LanguageModel
from graft.objectives.batch import Batch, LossTotals, Objective
from graft.run_files import CHECKPOINTS_DIR, lower_is_better
from graft.train.metrics_log import LOSS_CURVE_FILE, MetricsLog, plot_loss_curve
from graft.train.norms import gradient_norms, weight_norms
from graft.train.optim import learning_rate
from graft.train.parallel import clip_grad_norm, gradient_sync, is_sharded
from graft.train.privacy import Privacy


@dataclass
class RunResult:
    run_dir: Path
    step: int
    tokens_seen: int
    elapsed_s: float
    stop_reason: str  # max_steps | max_tokens | max_minutes | patience | interrupted
    # A resumed run that had already stopped on that limit: nothing was trained, evaluated or
    # written (raise the limit to go on).
    already_finished: bool = False
    evals: list[dict[str, float]] = field(default_factory=list)  # every evaluation of this process
    best_metric: float | None = None  # of train.monitor
    epsilon: float | None = None  # spent, when the run trained privately (dp)


@dataclass
class Run:
    """Everything `fit` needs, assembled by `pretrain` (or by a fine-tuning setup)."""

    config: RunConfig
    model: LanguageModel
    objective: Objective
    optimizer: torch.optim.Optimizer
    tokenizer: Tokenizer
    device: torch.device
    data_generator: torch.Generator
    state: ckpt.TrainingState
    resumed: bool = False
    world: World = ONE_PROCESS
    # What training calls: DDP's wrapper of `model`, Opacus's per-sample gradient wrapper, or None
    # for the model itself (one process, or FSDP2, which shards the model in place).
    module: nn.Module | None = None
    privacy: Privacy | None = None  # DP-SGD (dp); its DP optimizer is `optimizer`

    @property
    def run_dir(self) -> Path:
        return self.config.train.out_dir


def step_tokens(micro_batches: Sequence[Batch]) -> int:
    """The real (non-pad) input tokens of one optimizer step: the single count behind tokens seen,
    tokens/s, train.max_tokens and the token-based learning-rate decay. Packed pre-training windows
    count batch x seq_len per micro-batch, as they always did."""
    return sum(batch.n_tokens for batch in micro_batches)


def accumulate_gradients(
    model: LanguageModel,
    objective: Objective,
    micro_batches: list[Batch],
    autocast: contextlib.AbstractContextManager | None = None,
    *,
    step_units: int | None = None,
    step_rows: int | None = None,
    world_size: int = 1,
    privacy: Privacy | None = None,
) -> LossTotals:
    """Backward over every micro-batch; gradients end up equal to those of one big batch.

    Each micro-batch's summed loss is divided by the units of the WHOLE step (`step_units`, over
    every process; default: these micro-batches'), not its own: with padding or masked targets,
    micro-batches score different numbers of tokens, and a per-micro-batch mean would weight
    their tokens unequally. Every loss must count the units its batch declares (`Batch.units`):
    two definitions of the count once mis-scaled mixtures. A loss's `per_row` part is divided by
    the step's rows (`step_rows`) the same way. DDP and FSDP average gradients over
    the processes, so each loss is scaled up by their number: the average is then the sum.
    With `privacy` (DP-SGD) each record's gradient is clipped instead (graft.train.privacy): its
    optimizer adds the noise and divides by the expected batch. Returns this process's loss
    totals.
    """
    total_units = sum(b.units for b in micro_batches) if step_units is None else step_units
    total_rows = sum(b.rows for b in micro_batches) if step_rows is None else step_rows
    totals = LossTotals()
    for i, batch in enumerate(micro_batches):
        with gradient_sync(model, i == len(micro_batches) - 1):  # the backward too
            with autocast or contextlib.nullcontext():
                out = objective.loss(model, batch)
            if out.count != batch.units:
                raise AssertionError(
                    f"objective {objective.name}: a loss counts {out.count} units, "
                    f"but its batch declares {batch.units}"
                )
            if privacy is None:
                loss = out.total / max(total_units, 1)
                if out.per_row is not None:
                    loss = loss + out.per_row / max(total_rows, 1)
                (loss * world_size).backward()
            else:
                privacy.backward(out, last=i == len(micro_batches) - 1)
        totals.add(out)
    return totals


def summed(totals: LossTotals, world: World) -> LossTotals:
    """Loss totals added up over every process."""
    if world.size == 1:
        return totals
    merged = LossTotals()
    for part in world.gather(totals):
        merged.merge(part)
    return merged


@torch.no_grad()
def evaluate(
    model: LanguageModel,
    objective: Objective,
    batches: list[Batch],
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    world: World = ONE_PROCESS,
) -> dict[str, float]:
    """The objective's validation metrics over `batches`, each process scoring every
    world.size-th one. Under FSDP every forward is collective, so a process with one batch fewer
    scores its last again and discards it."""
    was_training = model.training
    model.eval()
    totals = LossTotals()
    rounds = -(-len(batches) // world.size)
    for index in range(world.rank, rounds * world.size, world.size):
        with autocast or contextlib.nullcontext():
            out = objective.loss(model, batches[min(index, len(batches) - 1)].to(device))
        if index < len(batches):
            totals.add(out)
        crash_point("train:eval")
    model.train(was_training)
    return objective.metrics(summed(totals, world), "val")


class NonFiniteLoss(Exception):
    """A step's loss was NaN or infinite: its update was not applied (train.nonfinite decides
    what happens next)."""

    def __init__(self, loss: float, tokens: int) -> None:
        super().__init__(f"loss {loss}")
        self.loss, self.tokens = loss, tokens


def train_step(
    run: Run,
    autocast: contextlib.AbstractContextManager | None = None,
    *,
    norms: dict[str, float] | None = None,
) -> tuple[int, LossTotals, float]:
    """One optimizer step at the learning rate already set: draw grad_accum micro-batches (every
    process its share of them; private training a Poisson sample of records instead), forward and
    backward, clip, step. Returns the step's real tokens, this process's loss totals and the
    gradient norm (before clipping; under DP the noisy gradient's). A non-finite loss raises
    NonFiniteLoss instead of stepping. `norms`, when given, gets each block's gradient norm
    before clipping (graft.train.norms; none under DP, whose per-record gradients Opacus
    holds)."""
    train_cfg, world, privacy = run.config.train, run.world, run.privacy
    drawn = (
        privacy.draw(run.objective, train_cfg.batch_size, run.data_generator)
        if privacy is not None
        else [
            run.objective.train_batch(train_cfg.batch_size, run.data_generator)
            for _ in range(train_cfg.grad_accum * world.size)
        ]
    )
    tokens = step_tokens(drawn)  # counted on the host, before the copy: no device sync
    micro = [batch.to(run.device) for batch in world.share(drawn)]
    totals = accumulate_gradients(
        cast(LanguageModel, run.module or run.model),  # DDP's or Opacus's wrapper trains alike
        run.objective,
        micro,
        autocast,
        step_units=sum(b.units for b in drawn),
        step_rows=sum(b.rows for b in drawn),
        world_size=world.size,
        privacy=privacy,
    )
    # Every rank must see the same verdict, or one would stop while the others wait: the step's
    # summed loss over ranks (a scalar); the whole totals only when logged. Checked before the
    # step, so the weights stay as they were.
    step_loss = world.total(totals.loss)
    if not math.isfinite(step_loss):
        run.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(step_loss, tokens)
    if privacy is None:
        if norms is not None:  # every rank: under FSDP the norms are collective
            norms.update(gradient_norms(run.model))
        grad_norm = clip_grad_norm(run.model, run.config.optim.grad_clip)
        run.optimizer.step()
    else:  # per-record clipping replaces optim.grad_clip
        grad_norm = privacy.step(drew_any=bool(drawn))
    run.optimizer.zero_grad(set_to_none=True)
    return tokens, totals, grad_norm


def fit(run: Run, echo: Callable[[str], None] | None = None) -> RunResult:
    """Train `run` to its first limit, evaluating, logging and checkpointing on the way. Every
    command that trains comes here, so train.compile and train.deterministic apply to all.
    Its lines (each evaluation, a skipped step, a notice) go to `echo`, or to standard output
    between the progress bar's redraws."""
    if run.config.train.compile:
        run.model.compile_backbone()
    # Deterministic kernels are a process-wide switch: set it for this run only.
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(run.config.train.deterministic or previous)
    try:
        return _train(run, echo)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(run: Run, echo: Callable[[str], None] | None) -> RunResult:
    cfg, train_cfg = run.config, run.config.train
    model, objective, optimizer, state = run.model, run.objective, run.optimizer, run.state
    world = run.world
    finished = _finished(train_cfg, state, state.elapsed_s) if run.resumed else ""
    if finished:  # resuming a run that is done changes nothing: no step, evaluation or save
        return RunResult(
            run.run_dir,
            state.step,
            state.tokens_seen,
            state.elapsed_s,
            stop_reason=finished,
            already_finished=True,
            best_metric=state.best_metric,
            epsilon=None if run.privacy is None else run.privacy.epsilon(),
        )
    autocast = autocast_for(run.device, train_cfg.precision)
    eval_batches = objective.eval_batches(train_cfg.batch_size, train_cfg.eval_batches)
    # Model FLOPs per real token and the peak of every process together: achieved FLOP/s and MFU.
    flops_per_token = training_flops_per_token(model, cfg.seq_len)
    peak = peak_flops(run.device)
    log = MetricsLog(
        run.run_dir,
        resume_from_step=state.step if run.resumed else None,
        writes=world.is_main,
        backends=train_cfg.log,
    )
    # Its counts are filled in when the run stops.
    result = RunResult(run.run_dir, state.step, state.tokens_seen, state.elapsed_s, stop_reason="")
    bar = tqdm(
        total=train_cfg.max_steps,
        initial=state.step,
        disable=not (train_cfg.progress and world.is_main),
        unit="step",
        dynamic_ncols=True,
        leave=False,
    )

    def tell(line: str, *, notice: bool = False) -> None:
        if not world.is_main:  # rank 0 speaks for the run
            return
        if echo is not None:
            with bar.external_write_mode():
                echo(line)
        elif notice:  # as the commands' other notices
            print(line, file=sys.stderr)
        else:
            bar.write(line)

    if train_cfg.norms_every is not None and run.privacy is not None:
        tell(
            "notice: train.norms_every: no gradient norms under dp (Opacus clips each record's "
            "gradient); weight norms only",
            notice=True,
        )
    clock = time.perf_counter() - state.elapsed_s  # elapsed time carries over a resume
    window_start, window_tokens, window = time.perf_counter(), 0, LossTotals()
    evaluated_at = -1
    saved_at = state.step if run.resumed else None  # the step of checkpoints/last

    def evaluate_and_checkpoint() -> bool:
        """Evaluate, keep `last` (and `best` when train.monitor improves); True if patience ran
        out."""
        nonlocal evaluated_at, saved_at
        evaluated_at = state.step
        metrics = (
            evaluate(model, objective, eval_batches, run.device, autocast, world)
            if eval_batches
            else {}
        )
        value = _monitored(metrics, train_cfg.monitor, cfg.objective.name)
        improved = value is not None and (
            state.best_metric is None or _better(value, state.best_metric, train_cfg.monitor)
        )
        if improved:
            state.best_metric, state.evals_without_improvement = value, 0
        elif value is not None:
            state.evals_without_improvement += 1
        state.elapsed_s = time.perf_counter() - clock
        if metrics:
            log.write(
                state.step, {**metrics, "tokens": state.tokens_seen, "elapsed_s": state.elapsed_s}
            )
            result.evals.append({"step": state.step, **metrics})
            tell(f"step {state.step}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        # `best` first: a complete `last` is the mark that this step is done, so a crash between
        # the two resumes from the step before and writes `best` again.
        if improved:
            _save(run, "best", with_training_state=False)
        _save(run, "last")
        saved_at = state.step
        return (
            train_cfg.patience is not None and state.evals_without_improvement >= train_cfg.patience
        )

    if state.step == 0 and eval_batches:
        # The untrained model's validation loss: the baseline every later figure is read against.
        metrics = evaluate(model, objective, eval_batches, run.device, autocast, world)
        # a misnamed monitor fails now, not later
        _monitored(metrics, train_cfg.monitor, cfg.objective.name)
        log.write(0, {**metrics, "tokens": 0, "elapsed_s": 0.0})
        result.evals.append({"step": 0, **metrics})
    try:
        while True:
            # 1. Stop on a limit: steps, tokens or wall-clock time (rank 0's clock on every rank).
            elapsed = world.from_main(time.perf_counter() - clock)
            result.stop_reason = _finished(train_cfg, state, elapsed, patience=False)
            if result.stop_reason:
                break
            # 2. Learning rate for this step: warm-up, then decay by progress through the run.
            _mark_warmup_end(state, cfg.optim.warmup_steps)
            lr = learning_rate(state.step, _decay_progress(cfg, state, elapsed), cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints before it lack it
            # 3. Forward and backward over the step's micro-batches, then one optimizer step.
            every = train_cfg.norms_every
            norms: dict[str, float] | None = {} if every and (state.step + 1) % every == 0 else None
            try:
                tokens, step_totals, grad_norm = train_step(run, autocast, norms=norms)
                state.nonfinite_in_a_row = 0
            except NonFiniteLoss as bad:
                _nonfinite(train_cfg, state, bad.loss, saved_at)  # raises unless it skips
                tell(
                    f"step {state.step + 1}: the loss was {bad.loss}; step skipped "
                    f"({state.nonfinite_in_a_row} in a row, {state.nonfinite_skipped} in all)"
                )
                tokens, step_totals, grad_norm = bad.tokens, LossTotals(), math.nan
            state.step += 1
            state.tokens_seen += tokens
            window_tokens += tokens
            window.merge(step_totals)
            crash_point("train:step")
            # 4. Log training metrics every log_every steps, norms every norms_every.
            if norms is not None:  # the gradients before clipping, the weights after the update
                log.write(state.step, {**norms, **weight_norms(model)})
            if state.step % train_cfg.log_every == 0:
                seconds = time.perf_counter() - window_start
                train_metrics = objective.metrics(summed(window, world), "train")
                tokens_per_s = window_tokens / max(seconds, 1e-9)
                figures = {"lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s}
                figures["flop_s"] = tokens_per_s * flops_per_token
                if peak is not None:
                    figures["mfu"] = figures["flop_s"] / (peak * world.size)
                if run.privacy is not None:
                    figures["epsilon"] = run.privacy.epsilon()
                if state.nonfinite_skipped:
                    figures["nonfinite_skipped"] = state.nonfinite_skipped
                log.write(state.step, {**train_metrics, **figures, "tokens": state.tokens_seen})
                shown = {
                    "loss": f"{train_metrics['train/loss']:.3f}",
                    "lr": f"{lr:.2e}",
                    "tok_s": f"{tokens_per_s:,.0f}",
                }
                if train_cfg.max_minutes is not None:  # no time limit, no time left to show
                    shown["left"] = _time_left(train_cfg.max_minutes, elapsed)
                bar.set_postfix(shown, refresh=False)  # in this order (keywords are sorted)
                window_start, window_tokens, window = time.perf_counter(), 0, LossTotals()
            bar.update(1)
            # 5. Evaluate and checkpoint every eval_every steps; stop early when patience runs out.
            if state.step % train_cfg.eval_every == 0:
                if evaluate_and_checkpoint():
                    result.stop_reason = "patience"
                    break
                window_start = time.perf_counter()  # evaluation time is not training throughput
        if evaluated_at != state.step:
            evaluate_and_checkpoint()
    except KeyboardInterrupt:
        # Checkpoints are written atomically, so the last complete one is intact; saving now
        # could be interrupted again, so we do not.
        result.stop_reason = "interrupted"
    finally:
        bar.close()
        log.close()
        if world.is_main:
            plot_loss_curve(
                log.read(),
                run.run_dir / LOSS_CURVE_FILE,
                title=f"{cfg.objective.name} · {run.run_dir.name}",
            )
    result.step, result.tokens_seen = state.step, state.tokens_seen
    result.elapsed_s, result.best_metric = time.perf_counter() - clock, state.best_metric
    if run.privacy is not None:
        result.epsilon = run.privacy.epsilon()
    return result


def _monitored(metrics: dict[str, float], monitor: str, objective: str) -> float | None:
    if metrics and monitor not in metrics:
        raise ConfigError(
            f"train.monitor: {monitor!r} is not a metric of objective {objective}; "
            f"choose one of: {', '.join(metrics)}"
        )
    return metrics.get(monitor)


def _better(value: float, best: float, metric: str) -> bool:
    return value < best if lower_is_better(metric) else value > best


def _finished(
    train_cfg: TrainConfig, state: ckpt.TrainingState, elapsed: float, *, patience: bool = True
) -> str:
    """The limit the run has reached ("" for none): steps, tokens, wall-clock time, and with
    `patience` the evaluations without improvement (the loop checks those after evaluating)."""
    if train_cfg.max_steps is not None and state.step >= train_cfg.max_steps:
        return "max_steps"
    if train_cfg.max_tokens is not None and state.tokens_seen >= train_cfg.max_tokens:
        return "max_tokens"
    if train_cfg.max_minutes is not None and elapsed >= 60 * train_cfg.max_minutes:
        return "max_minutes"
    if (
        patience
        and train_cfg.patience is not None
        and state.evals_without_improvement >= train_cfg.patience
    ):
        return "patience"
    return ""


def _nonfinite(
    train_cfg: TrainConfig, state: ckpt.TrainingState, loss: float, saved_at: int | None
) -> None:
    """train.nonfinite for a step whose loss was `loss`: count it and return (skip), or raise
    TrainingError saying where the run can go on from (stop, or too many in a row)."""
    step = state.step + 1
    if train_cfg.nonfinite == "skip":
        state.nonfinite_skipped += 1
        state.nonfinite_in_a_row += 1
        if state.nonfinite_in_a_row < train_cfg.nonfinite_limit:
            return
        what = f"was not finite for {state.nonfinite_in_a_row} steps in a row (to step {step})"
    else:
        what = f"became {loss} at step {step}"
    fix = "lower optim.lr or raise optim.warmup_steps"
    if saved_at is None:
        where = f"no checkpoint was written yet ({fix} and start again)"
    else:
        where = f"the last checkpoint (step {saved_at}) is intact ({fix} and --resume)"
    raise TrainingError(f"the training loss {what}; {where}")


def _mark_warmup_end(state: ckpt.TrainingState, warmup_steps: int) -> None:
    """Record the tokens seen when warm-up ended: where the token-based decay starts.

    A checkpoint written before the boundary was kept, resumed past warm-up, gets the boundary
    its own counts imply: tokens per step so far times the warm-up steps. Those checkpoints
    counted a fixed number of tokens per step, so this is the boundary they decayed from."""
    if state.warmup_tokens is not None or state.step < warmup_steps:
        return
    state.warmup_tokens = (
        state.tokens_seen
        if state.step == warmup_steps
        else state.tokens_seen * warmup_steps // state.step
    )


def _decay_progress(cfg: RunConfig, state: ckpt.TrainingState, elapsed: float) -> float:
    """How far through the decay phase (after warm-up) the run is, by whichever limit is nearest.
    By tokens: the real tokens seen since warm-up ended, out of those the limit leaves after it
    (none during warm-up, where the learning rate does not depend on progress)."""
    t, warmup = cfg.train, cfg.optim.warmup_steps
    fractions = []
    if t.max_steps is not None:
        fractions.append((state.step - warmup) / max(t.max_steps - warmup, 1))
    if t.max_tokens is not None and state.warmup_tokens is not None:
        fractions.append(
            (state.tokens_seen - state.warmup_tokens) / max(t.max_tokens - state.warmup_tokens, 1)
        )
    if t.max_minutes is not None:
        fractions.append(elapsed / (60 * t.max_minutes))
    return max(fractions) if fractions else 0.0


def _time_left(max_minutes: float, elapsed: float) -> str:
    left = max(60 * max_minutes - elapsed, 0)
    return f"{int(left // 60)}m{int(left % 60):02d}s"


def _save(run: Run, name: str, *, with_training_state: bool = True) -> None:
    """Checkpoint `name`: written by rank 0 (one process, DDP) or by every rank (FSDP's shards),
    with every rank's random generators."""
    world = run.world
    rng = ckpt.RngStates(
        torch_cpu=torch.get_rng_state(),
        data=run.data_generator.get_state(),
        cuda=torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
    )
    ranks_rng = world.gather(rng) if with_training_state else None
    sharded = is_sharded(run.model)
    if world.is_main or sharded:
        with interrupts_deferred():
            ckpt.save_checkpoint(
                run.run_dir / CHECKPOINTS_DIR / name,
                model=run.model,
                tokenizer=run.tokenizer,
                run_config_yaml=run.config.to_yaml(),
                optimizer=run.optimizer if with_training_state else None,
                state=run.state if with_training_state else None,
                rng=ranks_rng,
                adapter=(run.config.adapt, str(run.config.train.init))
                if run.config.adapt.method == "lora"
                else None,
                world=world if sharded else None,
                privacy=None if run.privacy is None else run.privacy.record(),
            )
    world.barrier()  # no rank reads or writes on before the checkpoint is complete


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Let a Ctrl-C that arrives during a checkpoint write take effect once the write is done.

    The write is atomic either way, but an interrupt inside its clean-up (deleting the copy it
    replaced) can hit shutil.rmtree between a close and its error path, which then raises
    "Bad file descriptor" instead of KeyboardInterrupt. Outside the main thread (where signal
    handlers cannot be set), or where SIGINT is ignored (a background job of a shell that is not
    interactive: Ctrl-C is not meant for it), the write runs as it is."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt

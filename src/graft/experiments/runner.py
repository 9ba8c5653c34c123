"""The runner every experiment shares: `graft experiment transfer`, `graft experiment objectives`
and the quickstart's fine-tuning comparison.

An experiment plans its runs as a keyed list (`Planned`) and `run_plan` runs them in order, each
into its own directory with its outcome record beside it (`outcome.json`), so that resuming keeps a
finished run and clears an unfinished or failed one, which runs again from the start. After every
run, and when Ctrl-C stops the experiment, `results.json` is rewritten atomically, with the command
line that started the process. The rest is what the reports share: means with 95% intervals, two
arms compared paired by seed, markdown tables, and the figures.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import Field, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from graft.atomic_files import write_atomic
from graft.errors import ConfigError, GraftError
from graft.evaluate.metrics import mean_ci95

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OUTCOME_FILE = "outcome.json"
RESULTS_FILE = "results.json"
OPTIONS_FILE = "experiment.json"  # the options a resumed experiment must match
# Options that say where and how an experiment runs, not what its runs mean.
_DRIVING = ("out_dir", "progress", "resume")


class Outcome(Protocol):
    """An experiment's record of one run: a dataclass of JSON values, `error` set if it failed."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def error(self) -> str | None: ...


K = TypeVar("K")
R = TypeVar("R", bound=Outcome)


@dataclass(frozen=True)
class Planned(Generic[K]):
    key: K
    run_dir: Path
    name: str  # as progress lines show it: "full, 200 examples, seed 0"


def run_plan(
    plan: Sequence[Planned[K]],
    run: Callable[[Planned[K]], R],
    kind: type[R],
    *,
    summary: Callable[[R], str],
    failed: Callable[[Planned[K], str, float], R] | None = None,
    resume: bool = False,
    results: Callable[[list[R]], object] = lambda _: None,
    echo: Callable[[str], None] = lambda _: None,
) -> dict[K, R]:
    """Every planned run's outcome, by key, in plan order.

    A GraftError from `run` becomes `failed(planned, message, seconds)` when `failed` is given (one
    run's failure is part of the results, and the others go on) and ends the experiment when not.
    `results` gets the outcomes so far after every run and before Ctrl-C ends the experiment.
    """
    outcomes: dict[K, R] = {}
    try:
        for i, planned in enumerate(plan, start=1):
            where = f"[{i}/{len(plan)}] {planned.name}"
            kept = _finished(planned.run_dir, kind) if resume else None
            if kept is not None:
                outcomes[planned.key] = kept
                echo(f"{where}: kept from the earlier run")
                continue
            echo(f"{where}: training")
            started = time.perf_counter()
            try:
                outcome = run(planned)
            except GraftError as err:
                if failed is None:
                    raise
                outcome = failed(planned, str(err), time.perf_counter() - started)
            if planned.run_dir.is_dir():
                write_atomic(planned.run_dir / OUTCOME_FILE, _json(asdict(outcome)))
            outcomes[planned.key] = outcome
            echo(f"{where}: " + (f"failed: {outcome.error}" if outcome.error else summary(outcome)))
            results(list(outcomes.values()))
    except KeyboardInterrupt:
        results(list(outcomes.values()))  # what finished stays readable; a resume goes on
        raise
    return outcomes


def _finished(run_dir: Path, kind: type[R]) -> R | None:
    if not run_dir.exists():
        return None
    path = run_dir / OUTCOME_FILE
    if path.is_file():
        outcome = kind(**json.loads(path.read_text(encoding="utf-8")))
        if outcome.error is None:
            return outcome
    shutil.rmtree(run_dir)  # our own run directory, interrupted or failed
    return None


def raise_if_interrupted(stop_reason: str) -> None:
    """Ctrl-C during one run (which `fit` turns into a last checkpoint and this stop reason) ends
    the whole experiment, not just that run."""
    if stop_reason == "interrupted":
        raise KeyboardInterrupt


def setting(key: str, value: object) -> str:
    """A `section.key=value` override. Overrides are read as YAML, so a path is single-quoted (it
    may hold ': ' or '#'), a flag is true or false and None is empty."""
    if isinstance(value, Path):
        return f"{key}='" + str(value).replace("'", "''") + "'"
    text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{key}={text}"


# -- options and results ---------------------------------------------------------------------


def _absolute(value: Any) -> Any:
    if isinstance(value, Path):
        return Path(os.path.abspath(value))
    return tuple(map(_absolute, value)) if isinstance(value, tuple) else value


def _deciding(options: DataclassInstance) -> dict[str, Any]:
    """The options that decide what the runs mean, paths made absolute: `../data/x` and the same
    file by its full path are one experiment, wherever its out_dir is read from."""
    deciding = {f.name: _absolute(getattr(options, f.name)) for f in fields(options)}
    return json.loads(_json({k: v for k, v in deciding.items() if k not in _DRIVING}))


def check_distinct(name: str, values: Sequence[object], choices: Sequence[str] = ()) -> None:
    """Refuse an empty list of `name`, one that repeats an item, or (given `choices`) one holding
    an item not among them."""
    unknown = ", ".join(repr(v) for v in values if choices and v not in choices)
    if unknown:
        raise ConfigError(f"{name}: unknown {unknown}; choose from {', '.join(choices)}")
    if not values or len(set(values)) < len(values):
        among = f" from {', '.join(choices)}" if choices else ""
        raise ConfigError(f"{name}: got {list(values)}; name one or more, each once{among}")


def check_out_dir(
    out_dir: Path, options: DataclassInstance, *, resume: bool, may_change: Sequence[str] = ()
) -> None:
    """Refuse to mix two experiments' runs in `out_dir/runs`: one holding runs needs `resume`, and
    a resume needs the options it ran with, bar `may_change` (options that add or drop runs and
    leave the finished ones meaning what they did)."""
    runs, stored = out_dir / "runs", out_dir / OPTIONS_FILE
    if not resume:
        if runs.exists() and any(runs.iterdir()):
            raise ConfigError(
                f"{runs} already holds runs; pass --resume to finish that experiment, "
                "or choose another --out"
            )
        return
    if not stored.is_file():
        if runs.exists():
            raise ConfigError(
                f"{stored}: missing, so the runs in {runs} cannot be matched to these options; "
                "choose another --out"
            )
        return
    before, now = json.loads(stored.read_text(encoding="utf-8")), _deciding(options)
    changed = [k for k in now if k not in may_change and before.get(k) != now[k]]
    if changed:
        raise ConfigError(
            f"{stored}: the experiment there ran with another {changed[0]} "
            f"({before.get(changed[0])!r}, now {now[changed[0]]!r}); resume with the same "
            f"options ({', '.join(may_change) or 'none'} may change) or choose another --out"
        )


def record_options(out_dir: Path, options: DataclassInstance) -> Path:
    """`experiment.json`, which `check_out_dir` compares a resume's options with."""
    return write_atomic(out_dir / OPTIONS_FILE, _json(_deciding(options)))


def command_line() -> str:
    """The command that started this process: `shlex.join(sys.argv)`, the program by its name
    (`python -m graft` puts graft/__main__.py first). From Python it is that program's command
    line; the options are in results.json either way."""
    program = Path(sys.argv[0])
    name = program.parent.name if program.name == "__main__.py" else program.name
    return shlex.join([name, *sys.argv[1:]])


def write_results(
    out_dir: Path, options: DataclassInstance | None, outcomes: Iterable[Outcome], **more: Any
) -> Path:
    """`results.json`: the command line, the options, what `more` holds and every run's outcome."""
    record: dict[str, Any] = {"command": command_line()}
    record |= {"options": asdict(options)} if options is not None else {}
    record |= {**more, "runs": [asdict(outcome) for outcome in outcomes]}
    return write_atomic(out_dir / RESULTS_FILE, _json(record))


def failed_runs(out_dir: Path) -> list[str]:
    """The run directories that `results.json` in `out_dir` records as failed."""
    record = json.loads((out_dir / RESULTS_FILE).read_text(encoding="utf-8"))
    return [run["run_dir"] for run in record["runs"] if run.get("error")]


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str) + "\n"  # paths as text


# -- reports ---------------------------------------------------------------------------------


def interval(values: Sequence[float], clip: bool = True) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% interval by Student's t. Scores lie in [0, 1], and
    with few seeds t reaches past it, so the interval is clipped there unless `clip` is off (as
    for differences)."""
    mean, low, high = mean_ci95(values)
    return (mean, max(low, 0.0), min(high, 1.0)) if clip else (mean, low, high)


def with_interval(values: Sequence[float]) -> tuple[str, str]:
    """The mean and its interval as two table cells; one run has no interval."""
    if not values:
        return "–", "–"
    mean, low, high = interval(values)
    return f"{mean:.3f}", f"[{low:.3f}, {high:.3f}]" if len(values) > 1 else "– (1 run)"


def mean_text(values: Sequence[float], clip: bool = True, sign: str = "") -> str:
    """The mean and its 95% interval as text, `0.853 [0.840, 0.866]`; one value alone, as `0.853`
    (`sign="+"` signs them, for differences)."""
    mean, low, high = interval(values, clip)
    number = f"{{:{sign}.3f}}".format
    return number(mean) + (f" [{number(low)}, {number(high)}]" if len(values) > 1 else "")


def verdict(better: Mapping[int, float], worse: Mapping[int, float], claim: str) -> str:
    """Whether the `better` arm's scores (by seed) beat the `worse` arm's, judged paired by seed.

    A seed runs both arms on the same sample and batch order, which moves both scores together (an
    easy sample lifts both). Separate intervals count that shared spread twice; the per-seed
    differences cancel it, so the verdict rests on their mean and 95% interval (a paired t
    interval): a winner only when that interval excludes 0.
    """
    differences = [score - worse[seed] for seed, score in better.items() if seed in worse]
    if len(differences) < 2:
        return "fewer than two seeds finished both arms, so this is no evidence either way"
    mean, low, high = interval(differences, clip=False)
    paired = (
        f"paired by seed ({len(differences)} seeds, each running both arms), the difference is "
        f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
    )
    if low > 0:
        return f"**{claim}**; {paired}, which excludes 0"
    if high < 0:
        return f"{claim.replace('beats', 'does not beat')}: it is worse; {paired}, which excludes 0"
    return f"no clear winner; {paired}, which includes 0 at this many seeds"


def table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def command_section() -> list[str]:
    return ["## Command", "", "```", command_line(), "```", ""]


def figure(width: float, height: float, panels: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure of `panels` side by side, drawn by the Agg canvas directly rather than pyplot: no
    global backend switch and no figure registry to leak into."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def save_png(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())


def bars(ax: Axes, groups: Sequence[str], arms: Mapping[str, Sequence[Sequence[float]]]) -> None:
    """Grouped bars: per group (x label) one bar per arm at the mean of its runs' scores, with a
    whisker for the 95% interval where there are two runs or more."""
    width = 0.8 / max(len(arms), 1)
    for index, (arm, per_group) in enumerate(arms.items()):
        stats = [interval(values) for values in per_group]
        whiskers = [[m - low for m, low, _ in stats], [high - m for m, _, high in stats]]
        xs = [g + (index - (len(arms) - 1) / 2) * width for g in range(len(groups))]
        means = [mean for mean, _, _ in stats]
        yerr = whiskers if any(len(values) > 1 for values in per_group) else None
        drawn = ax.bar(xs, means, width, yerr=yerr, capsize=3, color=f"C{index}", label=arm)
        ax.bar_label(drawn, labels=[f"{m:.2f}" for m, _, _ in stats], fontsize=8, padding=2)
    ax.set_xticks(range(len(groups)), labels=groups, fontsize=8)

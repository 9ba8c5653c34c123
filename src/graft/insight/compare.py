"""`graft runs compare`: several runs on one self-contained HTML page.

The page overlays each run's loss, learning rate, throughput and validation curves (inline SVG
drawn by matplotlib, text as paths: no fonts, scripts or requests), shows the resolved-config keys
whose values differ between the runs, and their final metrics. Whatever cannot be compared (a run
without metrics or config, a metric another objective does not log) is left out with a note on the
page, never an error: only a path that is not a folder is refused.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from graft.atomic_files import write_atomic
from graft.errors import DataError, first_line
from graft.run_files import CONFIG_FILE, METRICS_FILE, lower_is_better, read_metrics

__all__ = ["Comparison", "RunRecord", "compare_runs", "flatten", "load_run", "render_page"]

# The curves every run logs, in page order; each validation metric follows them.
CURVES: dict[str, str] = {
    "train/loss": "training loss",
    "val/loss": "validation loss",
    "lr": "learning rate",
    "tokens_per_s": "throughput (tokens / s)",
}
_ABSENT = object()  # a config key a run does not have, unequal to every value


@dataclass(frozen=True)
class RunRecord:
    """One run as read from its folder; `config` is flattened to dotted keys, None if unread."""

    name: str
    path: Path
    config: dict[str, Any] | None
    rows: list[dict[str, Any]]
    notes: tuple[str, ...]

    @property
    def objective(self) -> str | None:
        return _text(self.config.get("objective.name")) if self.config else None

    @property
    def monitor(self) -> str | None:
        return _text(self.config.get("train.monitor")) if self.config else None

    def series(self, metric: str) -> list[tuple[float, float]]:
        """(step, value) of every row that logged `metric` as a finite number."""
        return [
            (float(row["step"]), float(row[metric]))
            for row in self.rows
            if _number(row.get(metric)) and math.isfinite(row[metric])
        ]

    def last(self, metric: str) -> float | None:
        values = [row[metric] for row in self.rows if _number(row.get(metric))]
        return float(values[-1]) if values else None


@dataclass(frozen=True)
class Comparison:
    """What `compare_runs` wrote: the page, the runs on it and every note of what was left out."""

    out: Path
    runs: tuple[RunRecord, ...]
    notes: tuple[str, ...]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists and empty sections stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def load_run(path: Path, name: str | None = None) -> RunRecord:
    """A run folder's config and metrics; what is missing or unreadable becomes a note."""
    if not path.is_dir():
        what = "a file" if path.exists() else "no such folder"
        raise DataError(f"{path}: not a run directory ({what}); give the folder a run wrote")
    name = name or path.resolve().name
    config, config_note = _read_config(path / CONFIG_FILE)
    rows, metrics_notes = _read_rows(path / METRICS_FILE)
    notes = ([config_note] if config_note else []) + metrics_notes
    return RunRecord(name, path, config, rows, tuple(f"{name}: {note}" for note in notes))


def _read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, f"no {CONFIG_FILE}, so it is left out of the config differences"
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return None, f"{CONFIG_FILE} is unreadable ({first_line(err)}); left out of the differences"
    if not isinstance(tree, dict):
        return None, f"{CONFIG_FILE} holds no config sections; left out of the differences"
    return flatten(tree), None


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    if not path.is_file():
        return [], [f"no {METRICS_FILE}, so it has no curves or final metrics"]
    try:
        rows = read_metrics(path)
    except (OSError, UnicodeDecodeError, DataError) as err:
        return [], [f"{first_line(err)}; its curves and final metrics are left out"]
    if not rows:
        return [], [f"{METRICS_FILE} is empty, so it has no curves or final metrics"]
    stepped = [row for row in rows if _number(row.get("step"))]
    dropped = len(rows) - len(stepped)
    return stepped, [f"{dropped} {METRICS_FILE} lines without a step left out"] if dropped else []


def _names(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its path where two runs share a folder name."""
    names = [path.resolve().name for path in paths]
    return [str(path) if names.count(name) > 1 else name for path, name in zip(paths, names)]


def compare_runs(paths: Sequence[Path], out: Path) -> Comparison:
    """Write the comparison page of the runs in `paths` to `out`."""
    if not paths:
        raise DataError("runs compare: give at least one run directory")
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the path of an .html file to write")
    if out.exists() and out.suffix.lower() not in (".html", ".htm"):
        # Replacing a page is expected; replacing weights or a config with one is a typo.
        raise DataError(f"--out {out} exists and is not an .html page; choose another path")
    runs = [load_run(path, name) for path, name in zip(paths, _names(paths))]
    page, notes = render_page(runs)
    write_atomic(out, page)
    return Comparison(out, tuple(runs), tuple(notes))


# --- the page ---------------------------------------------------------------------------------


def curve_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The metrics with a curve: the common four, then each validation metric any run logged."""
    logged = {key for run in runs for row in run.rows for key in row}
    extra = sorted(key for key in logged if key.startswith("val/") and key not in CURVES)
    return [metric for metric in CURVES if metric in logged] + extra


def config_differences(runs: Sequence[RunRecord]) -> list[tuple[str, list[Any]]]:
    """(key, each configured run's value) for the objective and every key whose values differ;
    a key a run lacks counts as different and shows as absent."""
    configs = [run.config for run in runs if run.config is not None]
    keys = list(dict.fromkeys(key for config in configs for key in config))
    rows = []
    for key in keys:
        values = [config.get(key, _ABSENT) for config in configs]
        if key == "objective.name" or any(value != values[0] for value in values[1:]):
            rows.append((key, values))
    rows.sort(key=lambda row: row[0] != "objective.name")  # the objective first, order kept
    return rows


def render_page(runs: Sequence[RunRecord]) -> tuple[str, list[str]]:
    """The HTML page and every note of what was left out, in page order."""
    notes = [note for run in runs for note in run.notes] + _objective_notes(runs)
    plots = []
    for metric in curve_metrics(runs):
        # A run with no metrics at all has its own note; naming it under every plot is noise.
        lacking = [run.name for run in runs if run.rows and not run.series(metric)]
        note = f"{metric}: not logged by {', '.join(lacking)}" if lacking else ""
        notes += [note] if note else []
        plots.append(_figure(metric, runs, note))
    body = [
        f"<h1>Comparing {len(runs)} run{'s' if len(runs) != 1 else ''}</h1>",
        _runs_table(runs),
        _notes_section(notes),
        _differences_section(runs),
        _finals_section(runs),
        _curves_section(plots),
    ]
    return _PAGE.format(title="graft: run comparison", body="\n".join(body)), notes


def _curves_section(plots: Sequence[str]) -> str:
    if not plots:
        return '<h2>Curves</h2>\n<p class="note">No run logged a metric: nothing to plot.</p>'
    return '<h2>Curves</h2>\n<div class="plots">\n' + "\n".join(plots) + "\n</div>"


def _objective_notes(runs: Sequence[RunRecord]) -> list[str]:
    by_objective: dict[str, list[str]] = {}
    for run in runs:
        if run.objective is not None:
            by_objective.setdefault(run.objective, []).append(run.name)
    if len(by_objective) < 2:
        return []
    groups = "; ".join(f"{name}: {', '.join(names)}" for name, names in by_objective.items())
    return [
        f"runs of different objectives ({groups}): their losses measure different tasks, and "
        "each plot shows only the runs that logged its metric"
    ]


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em;
  color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
td.number {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.absent {{ color: #999; }}
code {{ font-size: 0.95em; }}
.notes li, p.note {{ color: #8a4b00; }}
.plots {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(34em, 1fr));
  gap: 1em 2em; }}
figure {{ margin: 0; }}
figure svg {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


def _cell(text: str, css: str = "") -> str:
    return f'<td class="{css}">{html.escape(text)}</td>' if css else f"<td>{html.escape(text)}</td>"


def _table(header: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for title in header)
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"


def _runs_table(runs: Sequence[RunRecord]) -> str:
    rows = [
        "<tr>"
        + _cell(run.name)
        + f"<td><code>{html.escape(str(run.path))}</code></td>"
        + _cell(run.objective or "unknown", "" if run.objective else "absent")
        + _cell(f"{len(run.rows):,}", "number")
        + "</tr>"
        for run in runs
    ]
    return _table(["run", "folder", "objective", "metrics lines"], rows)


def _notes_section(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "\n".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f'<h2>Left out</h2>\n<ul class="notes">\n{items}\n</ul>'


def _show(value: Any) -> str:
    """A config value as its YAML spelling (null, true, [a, b])."""
    if value is _ABSENT:
        return "absent"
    # A bare scalar dumps with YAML's end-of-document marker after it.
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _differences_section(runs: Sequence[RunRecord]) -> str:
    configured = [run for run in runs if run.config is not None]
    title = "<h2>Config differences</h2>"
    if not configured:
        return f'{title}\n<p class="note">No run has a readable {CONFIG_FILE}.</p>'
    if len(configured) == 1:
        alone = html.escape(configured[0].name)
        return f'{title}\n<p class="note">Only {alone} has a readable {CONFIG_FILE}.</p>'
    rows = [
        f"<tr><td><code>{html.escape(key)}</code></td>"
        + "".join(_cell(_show(value), "absent" if value is _ABSENT else "") for value in values)
        + "</tr>"
        for key, values in config_differences(configured)
    ]
    same = "" if len(rows) > 1 else '<p class="note">Their configs agree on every other key.</p>'
    return f"{title}\n{_table(['key', *(run.name for run in configured)], rows)}{same}"


def _final_rows(runs: Sequence[RunRecord]) -> list[tuple[str, list[str]]]:
    metrics = [m for m in curve_metrics(runs) if m == "train/loss" or m.startswith("val/")]
    rows = [("last step", [_format(_last_step(run)) for run in runs])]
    rows += [
        (f"{metric} (last)", [_format(run.last(metric)) for run in runs]) for metric in metrics
    ]
    rows.append(("best of train.monitor", [_best(run) for run in runs]))
    return rows


def _last_step(run: RunRecord) -> float | None:
    return float(run.rows[-1]["step"]) if run.rows else None


def _best(run: RunRecord) -> str:
    if run.monitor is None:
        return "—"
    scored = run.series(run.monitor)
    if not scored:
        return f"— ({run.monitor} not logged)"
    pick = min if lower_is_better(run.monitor) else max
    step, value = pick(scored, key=lambda point: point[1])
    return f"{_format(value)} ({run.monitor}, step {step:,.0f})"


def _format(value: float | None) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)  # nan, inf: a run that diverged says so
    return f"{value:,.0f}" if value == int(value) and abs(value) >= 1 else f"{value:.4g}"


def _finals_section(runs: Sequence[RunRecord]) -> str:
    rows = [
        "<tr>" + _cell(label) + "".join(_cell(text, "number") for text in cells) + "</tr>"
        for label, cells in _final_rows(runs)
    ]
    return "<h2>Final metrics</h2>\n" + _table(["", *(run.name for run in runs)], rows)


def _figure(metric: str, runs: Sequence[RunRecord], note: str) -> str:
    title = CURVES.get(metric, metric)
    caption = html.escape(f"{title} ({metric})" if metric in CURVES else metric)
    svg = _plot(metric, [(run.name, run.series(metric)) for run in runs])
    aside = f'\n<p class="note">{html.escape(note)}</p>' if note else ""
    head = f'<figure id="{html.escape(metric)}">\n<figcaption>{caption}</figcaption>'
    return f"{head}\n{svg}{aside}\n</figure>"


def _plot(metric: str, lines: Sequence[tuple[str, list[tuple[float, float]]]]) -> str:
    """One metric's curves, as an inline <svg> element; a run keeps its colour on every plot."""
    import matplotlib
    from matplotlib.figure import Figure

    # A Figure without pyplot: no backend to choose, no open figures to close. Text as paths
    # needs no font on the reader's side; parse_math off keeps a `$` in a run name literal; a
    # fixed hash salt makes the same runs give the same page.
    with matplotlib.rc_context(
        {"svg.fonttype": "path", "text.parse_math": False, "svg.hashsalt": "graft"}
    ):
        figure = Figure(figsize=(7.5, 3.6))
        axes = figure.subplots()
        drawn, labels = [], []
        for i, (name, points) in enumerate(lines):
            if points:
                marker = "o" if metric.startswith("val/") or len(points) == 1 else ""
                # The id names the curve's run by its place: a reader (or a test) can find it.
                drawn += axes.plot(
                    *zip(*points),
                    color=f"C{i % 10}",
                    marker=marker,
                    markersize=3,
                    gid=f"{metric}:run{i}",
                )
                labels.append(name)
        axes.set(xlabel="step", ylabel=metric)
        axes.grid(alpha=0.3)
        # Labels given outright: the legend would drop a name that starts with "_".
        axes.legend(drawn, labels, fontsize=8)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # the XML prolog and doctype are not allowed inside HTML

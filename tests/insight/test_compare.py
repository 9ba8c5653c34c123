"""`graft runs compare` on run folders written by hand: the config differences (only the keys
that differ), the final metrics, one plot per metric, notes for what was left out, one-line CLI
errors, and the page in headless Chromium with no failed request and no console error."""

from __future__ import annotations

import contextlib
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from graft.cli import main
from graft.errors import DataError
from graft.insight.compare import Comparison, compare_runs, config_differences, load_run

from .conftest import open_page

# The plots of the runs below, in page order: the four every run logs, then each validation
# metric any run logged, sorted.
METRICS = [
    "train/loss",
    "val/loss",
    "lr",
    "tokens_per_s",
    "val/accuracy",
    "val/macro_f1",
    "val/ppl",
]
STEPS = [1, 2, 3, 4, 5, 6]
VAL_STEPS = [2, 4, 6]


def write_config(run: Path, **sections: dict[str, Any]) -> None:
    """A resolved run config: every section as the run wrote it."""
    tree: dict[str, Any] = {
        "objective": {"name": "causal_lm"},
        "model": {"d_model": 32, "n_layers": 2},
        "optim": {"name": "adamw", "lr": 0.001},
        "train": {"steps": 6, "seed": 0, "monitor": "val/loss"},
    }
    for name, changes in sections.items():
        tree[name] = {**tree[name], **changes}
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(tree), encoding="utf-8")


def write_metrics(run: Path, train_loss: list[float], **val: list[float]) -> None:
    """A training row each step and a validation row every other step, as the loop logs them."""
    rows: list[dict[str, Any]] = []
    for i, step in enumerate(STEPS):
        rows.append(
            {
                "step": step,
                "train/loss": train_loss[i],
                "lr": 0.001 * step / 6,
                "tokens_per_s": 1000.0 + 10 * step,
            }
        )
        if step in VAL_STEPS:
            k = VAL_STEPS.index(step)
            rows.append({"step": step, **{f"val/{name}": v[k] for name, v in val.items()}})
    run.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (run / "metrics.jsonl").write_text(text, encoding="utf-8")


def write_runs(root: Path) -> list[Path]:
    """Two causal-LM runs that differ in d_model and lr, a classifier whose monitored macro F1
    peaks before its last evaluation, and a run that never wrote metrics."""
    lm_a, lm_b, cls, empty = (root / name for name in ("lm-a", "lm-b", "cls", "empty"))
    write_config(lm_a)
    write_metrics(
        lm_a, [4.0, 3.5, 3.0, 2.75, 2.5, 2.25], loss=[2.0, 1.5, 1.75], ppl=[7.389, 4.482, 5.755]
    )
    write_config(lm_b, model={"d_model": 64}, optim={"lr": 0.003})
    write_metrics(
        lm_b, [4.0, 3.0, 2.5, 2.0, 1.75, 1.5], loss=[1.9, 1.6, 1.25], ppl=[6.7, 4.95, 3.49]
    )
    write_config(
        cls, objective={"name": "classify", "num_labels": 3}, train={"monitor": "val/macro_f1"}
    )
    write_metrics(
        cls,
        [1.1, 0.9, 0.7, 0.6, 0.5, 0.45],
        loss=[0.8, 0.6, 0.65],
        accuracy=[0.6, 0.75, 0.7],
        macro_f1=[0.5, 0.8, 0.7],
    )
    write_config(empty)
    return [lm_a, lm_b, cls, empty]


def run_cli(*argv: str) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(list(argv))
    return code, printed.getvalue()


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Comparison, str]:
    """The CLI's page of the four runs (its `out`), its notes and runs, and what the CLI printed."""
    root = tmp_path_factory.mktemp("compare")
    runs = write_runs(root)
    report = root / "report.html"
    code, printed = run_cli("runs", "compare", *map(str, runs), "--out", str(report))
    assert code == 0
    # The same call through the API, to a second file: its notes and runs, the CLI's page.
    again = compare_runs(runs, root / "again.html")
    return Comparison(report, again.runs, again.notes), printed


class Page(HTMLParser):
    """The tables (rows of cell texts), each figure's element ids, the notes and every tag."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.absent: list[tuple[int, int, int]] = []  # (table, row, cell) of each absent cell
        self.figures: dict[str, list[str]] = {}
        self.notes: list[str] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None
        self._figure: str | None = None
        self._note: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attr = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
            if attr.get("class") == "absent":
                table = self.tables[-1]
                self.absent.append((len(self.tables) - 1, len(table) - 1, len(table[-1])))
        elif tag == "figure":
            self._figure = attr["id"] or ""
            self.figures[self._figure] = []
        elif tag == "li":
            self._note = []
        elif self._figure is not None and attr.get("id"):
            self.figures[self._figure].append(attr["id"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "figure":
            self._figure = None
        elif tag == "li" and self._note is not None:
            self.notes.append("".join(self._note))
            self._note = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._note):
            if part is not None:
                part.append(data)

    def curves(self, metric: str) -> list[str]:
        """The runs (by place) with a curve on `metric`'s plot."""
        found = [re.fullmatch(re.escape(metric) + r":run(\d+)", i) for i in self.figures[metric]]
        return [f"run{m.group(1)}" for m in found if m]


@pytest.fixture(scope="module")
def page(compared: tuple[Comparison, str]) -> Page:
    comparison, _ = compared
    return Page(comparison.out.read_text(encoding="utf-8"))


NOTES = [
    "empty: no metrics.jsonl, so it has no curves or final metrics",
    "runs of different objectives (causal_lm: lm-a, lm-b, empty; classify: cls): their losses "
    "measure different tasks, and each plot shows only the runs that logged its metric",
    "val/accuracy: not logged by lm-a, lm-b",
    "val/macro_f1: not logged by lm-a, lm-b",
    "val/ppl: not logged by cls",
]


def test_the_cli_prints_every_note_and_the_report(compared: tuple[Comparison, str]):
    comparison, printed = compared
    assert [run.name for run in comparison.runs] == ["lm-a", "lm-b", "cls", "empty"]
    assert list(comparison.notes) == NOTES
    assert printed.splitlines() == [f"note: {n}" for n in NOTES] + [f"report: {comparison.out}"]


def test_the_same_runs_give_the_same_page_byte_for_byte(compared: tuple[Comparison, str]):
    comparison, _ = compared
    again = comparison.out.with_name("again.html")  # the fixture's second, separate call
    assert again.read_bytes() == comparison.out.read_bytes()
    third = compare_runs([run.path for run in comparison.runs], again.with_name("third.html"))
    assert third.out.read_bytes() == comparison.out.read_bytes()


def test_the_config_table_has_only_the_keys_that_differ(page: Page):
    runs_table, differences, _ = page.tables
    assert differences[0] == ["key", "lm-a", "lm-b", "cls", "empty"]
    assert differences[1:] == [
        ["objective.name", "causal_lm", "causal_lm", "classify", "causal_lm"],
        ["model.d_model", "32", "64", "32", "32"],
        ["optim.lr", "0.001", "0.003", "0.001", "0.001"],
        ["train.monitor", "val/loss", "val/loss", "val/macro_f1", "val/loss"],
        ["objective.num_labels", "absent", "absent", "3", "absent"],
    ]
    # Only the classifier has num_labels: the other three cells are marked absent.
    assert page.absent == [(1, 5, 1), (1, 5, 2), (1, 5, 4)]
    # The runs table: name, folder, objective and metrics lines (six training, three validation).
    assert [row[:1] + row[2:] for row in runs_table] == [
        ["run", "objective", "metrics lines"],
        ["lm-a", "causal_lm", "9"],
        ["lm-b", "causal_lm", "9"],
        ["cls", "classify", "9"],
        ["empty", "causal_lm", "0"],
    ]
    assert [Path(row[1]).name for row in runs_table[1:]] == ["lm-a", "lm-b", "cls", "empty"]


def test_config_differences_directly(compared: tuple[Comparison, str]):
    comparison, _ = compared
    lm_a, lm_b, cls, _ = comparison.runs
    assert config_differences([lm_a, lm_a]) == [("objective.name", ["causal_lm", "causal_lm"])]
    differences = dict(config_differences([lm_a, lm_b]))
    assert list(differences) == ["objective.name", "model.d_model", "optim.lr"]
    assert differences["model.d_model"] == [32, 64]
    rows = config_differences([cls, lm_a])
    assert [key for key, _ in rows] == [
        "objective.name",
        "objective.num_labels",
        "train.monitor",
    ]
    absent = dict(rows)["objective.num_labels"][1]  # lm-a has none: a marker, not a value
    assert absent is not None and absent != 3 and absent not in ("", 0, False)
    assert dict(config_differences([lm_a, cls]))["objective.num_labels"][0] is absent


def test_the_final_metrics_table(page: Page):
    finals = page.tables[2]
    assert finals == [
        ["", "lm-a", "lm-b", "cls", "empty"],
        ["last step", "6", "6", "6", "—"],
        ["train/loss (last)", "2.25", "1.5", "0.45", "—"],
        ["val/loss (last)", "1.75", "1.25", "0.65", "—"],
        ["val/accuracy (last)", "—", "—", "0.7", "—"],
        ["val/macro_f1 (last)", "—", "—", "0.7", "—"],
        ["val/ppl (last)", "5.755", "3.49", "—", "—"],
        # The best is not the last: lowest loss for lm-a, highest macro F1 for the classifier.
        [
            "best of train.monitor",
            "1.5 (val/loss, step 4)",
            "1.25 (val/loss, step 6)",
            "0.8 (val/macro_f1, step 4)",
            "— (val/loss not logged)",
        ],
    ]


def test_one_plot_per_metric_with_the_runs_that_logged_it(page: Page):
    assert list(page.figures) == METRICS
    assert page.tags.count("figure") == len(METRICS)
    assert page.tags.count("svg") == len(METRICS)
    every = ["run0", "run1", "run2"]  # the run without metrics (run3) is on no plot
    assert {metric: page.curves(metric) for metric in METRICS} == {
        "train/loss": every,
        "val/loss": every,
        "lr": every,
        "tokens_per_s": every,
        "val/accuracy": ["run2"],
        "val/macro_f1": ["run2"],
        "val/ppl": ["run0", "run1"],
    }


def test_the_page_notes_what_was_left_out(page: Page, compared: tuple[Comparison, str]):
    assert page.notes == NOTES
    comparison, _ = compared
    text = comparison.out.read_text(encoding="utf-8")
    # Each plot missing a run says so under it; the run without metrics is not named there.
    for metric, note in [
        ("val/accuracy", NOTES[2]),
        ("val/macro_f1", NOTES[3]),
        ("val/ppl", NOTES[4]),
    ]:
        figure = text[text.index(f'<figure id="{metric}">') :]
        figure = figure[: figure.index("</figure>")]
        assert figure.endswith(f'<p class="note">{note}</p>\n')
    assert text.count('<p class="note">') == 3


def test_damaged_files_become_notes_not_tracebacks(tmp_path: Path):
    run = tmp_path / "damaged"
    write_metrics(run, [3.0, 2.0, 1.0, 1.0, 1.0, 1.0], loss=[2.0, 1.5, 1.0])
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = '{"step": 3, "train/lo\n'
    (run / "metrics.jsonl").write_text("".join(lines), encoding="utf-8")
    (run / "config.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    record = load_run(run)
    assert record.config is None and record.rows == []
    assert len(record.notes) == 2
    assert record.notes[0].startswith("damaged: config.yaml is unreadable (")
    assert record.notes[0].endswith("); left out of the differences")
    assert re.fullmatch(
        rf"damaged: {re.escape(str(run / 'metrics.jsonl'))}:3: not a JSON line \(.+\); its "
        "curves and final metrics are left out",
        record.notes[1],
    )

    # A config that is no mapping, and rows without a step.
    other = tmp_path / "other"
    write_metrics(other, [3.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    with (other / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"train/loss": 9}\n{"step": 7, "train/loss": 0.5')  # no step; a cut-off line
    (other / "config.yaml").write_text("- just\n- a list\n", encoding="utf-8")
    record = load_run(other)
    assert record.config is None
    assert [row["step"] for row in record.rows] == [1, 2, 2, 3, 4, 4, 5, 6, 6]
    assert record.notes == (
        "other: config.yaml holds no config sections; left out of the differences",
        "other: 1 metrics.jsonl lines without a step left out",
    )

    comparison = compare_runs([run, other], tmp_path / "report.html")
    page = Page(comparison.out.read_text(encoding="utf-8"))
    assert page.notes == list(comparison.notes)
    assert [note for note in page.notes if note.startswith(("damaged: ", "other: "))] == [
        *load_run(run).notes,
        *record.notes,
    ]
    assert list(page.figures) == ["train/loss", "lr", "tokens_per_s"]


def test_hostile_names_and_values_are_escaped(tmp_path: Path):
    hostile = tmp_path / "<b>x&amp;"  # a folder name holds no slash: no closing tag
    write_config(hostile, model={"name": "</td><script>alert(1)</script>"})
    write_metrics(hostile, [3.0, 2.0, 1.0, 1.0, 1.0, 1.0], **{"<i>m</i>": [1.0, 2.0, 3.0]})
    plain = tmp_path / "plain"
    write_config(plain, model={"name": "tiny"})
    write_metrics(plain, [3.0, 2.0, 1.0, 1.0, 1.0, 1.0], loss=[1.0, 1.0, 1.0])
    comparison = compare_runs([hostile, plain], tmp_path / "report.html")
    text = comparison.out.read_text(encoding="utf-8")
    page = Page(text)
    assert not {"b", "i", "script"} & set(page.tags)
    assert "<script" not in text and "<b>" not in text and "<i>" not in text
    assert page.tables[0][1][0] == page.tables[1][0][1] == "<b>x&amp;"
    assert page.tables[1][0] == ["key", "<b>x&amp;", "plain"]
    assert ["model.name", "</td><script>alert(1)</script>", "tiny"] in page.tables[1]
    assert "val/<i>m</i>" in page.figures and page.curves("val/<i>m</i>") == ["run0"]
    assert "&lt;b&gt;x&amp;amp;" in text


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_path_that_is_not_a_folder_is_a_one_line_error(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run = write_runs(tmp_path)[0]
    bad = tmp_path / "nowhere" if kind == "missing" else run / "metrics.jsonl"
    out = tmp_path / "report.html"
    code = main(["runs", "compare", str(run), str(bad), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    what = "no such folder" if kind == "missing" else "a file"
    assert captured.err == (
        f"graft: error: {bad}: not a run directory ({what}); give the folder a run wrote\n"
    )
    assert not out.exists() and list(tmp_path.glob("*.html")) == []
    with pytest.raises(DataError, match="not a run directory"):
        load_run(bad)


def test_the_page_opens_in_chromium_with_no_failed_request_or_error(
    browser: Any, compared: tuple[Comparison, str], tmp_path: Path
):
    from PIL import Image

    comparison, _ = compared
    shot = tmp_path / "compare.png"
    problems, page = open_page(browser, comparison.out, shot)
    assert problems == []
    assert page.locator("figure svg").count() == len(METRICS)
    box = page.locator("figure svg").first.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100  # drawn, not collapsed
    assert shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 1500  # the whole page, tables and plots
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # not blank
    page.close()


def test_the_browser_check_sees_a_failed_request(browser: Any, tmp_path: Path):
    """The harness itself: a page that asks for a missing file reports it."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><img src="missing.png"><script>nope(</script>', encoding="utf-8"
    )
    problems, page = open_page(browser, broken)
    assert any(p.startswith("failed: ") and p.endswith("missing.png") for p in problems)
    assert any(p.startswith(("console: ", "page error: ")) for p in problems)
    page.close()

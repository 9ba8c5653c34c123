"""The docs' Python examples run as written, each from an empty working folder.

docs/python.md: every ```python block, in order, in one namespace. The page teaches the Python
API by example; this keeps each example true as the code changes (a renamed function or argument
fails here, not in a learner's session).

docs/insight.md: each ```python block on its own (a namespace of its own), on the paths it names:
two runs and a classifier checkpoint, made here as the commands above the examples would."""

from __future__ import annotations

import json
import linecache
import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOC = DOCS / "python.md"
# A fence opening a Python block, its body, and the fence closing it, each on lines of their own.
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The body of every ```python block in `text`, in order."""
    return _BLOCK.findall(text)


def run_block(doc: Path, number: int, block: str, namespace: dict[str, object]) -> None:
    # Compiled under a name that says which block failed; registered with linecache so the
    # traceback shows the failing line of the example itself.
    name = f"{doc.name}[block {number}]"
    linecache.cache[name] = (len(block), None, block.splitlines(keepends=True), name)
    code = compile(block, name, "exec")
    exec(code, namespace)  # the page's own examples: running them is the point


def test_python_guide_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 8, "docs/python.md lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_python"}
    for number, block in enumerate(blocks, 1):
        run_block(DOC, number, block, namespace)


def write_run(run: Path, d_model: int, losses: list[float]) -> None:
    """A run folder as training leaves it, as far as `graft runs compare` reads it."""
    run.mkdir(parents=True)
    config = {"objective": {"name": "clm"}, "model": {"d_model": d_model}}
    (run / "config.yaml").write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    rows = [{"step": i + 1, "train/loss": loss, "lr": 0.001} for i, loss in enumerate(losses)]
    rows.append({"step": len(losses), "val/loss": losses[-1]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")


def test_insight_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from graft.checkpoint import save_checkpoint
    from graft.data.tokenizer import bytes_tokenizer
    from graft.model.config import ModelConfig
    from graft.model.transformer import LanguageModel

    doc = DOCS / "insight.md"
    blocks = python_blocks(doc.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "docs/insight.md lost its examples"
    monkeypatch.chdir(tmp_path)
    write_run(Path("runs/base"), 32, [4.0, 3.0])
    write_run(Path("runs/wide"), 64, [4.0, 2.5])
    tokenizer = bytes_tokenizer()
    torch.manual_seed(0)
    classifier = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        max_seq_len=32,
        d_model=16,
        n_layers=4,  # the example reads hidden_states[3]
        n_heads=2,
        attention="bidirectional",
        norm_position="post",
        mlm_head=True,
        pooler=True,
        head="sequence",
        labels=("negative", "positive"),
    )
    best = Path("runs/sst2/checkpoints/best")
    save_checkpoint(
        best, model=LanguageModel(classifier), tokenizer=tokenizer, run_config_yaml="{}"
    )
    for number, block in enumerate(blocks, 1):
        run_block(doc, number, block, {"__name__": "docs_insight"})
    assert Path("report.html").is_file() and Path("explained/index.html").is_file()

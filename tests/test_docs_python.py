"""docs/python.md runs as written: every ```python block, in order, in one namespace, from an
empty working folder. The page teaches the Python API by example; this keeps each example true
as the code changes (a renamed function or argument fails here, not in a learner's session)."""

from __future__ import annotations

import linecache
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"
# A fence opening a Python block, its body, and the fence closing it, each on lines of their own.
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The body of every ```python block in `text`, in order."""
    return _BLOCK.findall(text)


def test_python_guide_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 8, "docs/python.md lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_python"}
    for number, block in enumerate(blocks, 1):
        # Compiled under a name that says which block failed; registered with linecache so the
        # traceback shows the failing line of the example itself.
        name = f"{DOC.name}[block {number}]"
        linecache.cache[name] = (len(block), None, block.splitlines(keepends=True), name)
        code = compile(block, name, "exec")
        exec(code, namespace)  # the page's own examples: running them is the point

"""Tests for the embedded default corpus built from the running Python's standard library."""

from __future__ import annotations

import ast
import json
import os
import platform
import textwrap
from pathlib import Path

import pytest

from graft.data import stdlib_corpus
from graft.data.stdlib_corpus import (
    KIND_MIX,
    CorpusStats,
    StdlibFunction,
    build_stdlib_corpus,
    iter_stdlib_functions,
)
from graft.errors import ConfigError, OutputError

SMALL_BUDGET = 300_000
EXCLUDED_COMPONENTS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def small_corpus(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[CorpusStats, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("corpus") / "stdlib.jsonl"
    stats = build_stdlib_corpus(out, max_bytes=SMALL_BUDGET, seed=0)
    return stats, read_rows(out)


@pytest.fixture(scope="module")
def functions() -> list[StdlibFunction]:
    return list(iter_stdlib_functions(seed=0))


# A miniature stdlib: one file per rule of what is kept and what is left out.
GOOD_PY = '''\
"""A module docstring that is long enough to count as a prose document."""

import functools


def function(a, b):
    """Add two numbers and return their sum, as a plain example.

    A second paragraph that is not part of the first line.
    """
    def inner():
        """A nested function docstring that is an implementation detail."""
        return a
    return a + b


def only_docstring():
    """A function whose body is nothing but this docstring text."""


def short():
    """Tiny."""
    return 1


class Klass:
    """A class whose docstring is long enough to be kept as prose."""

    @staticmethod
    @functools.cache
    def method(x: int) -> int:
        """Double the number given, as an example method.

        More text here.
        """
        y = x * 2  # twice
        return y
'''

EXPECTED_METHOD_CODE = """\
@staticmethod
@functools.cache
def method(x: int) -> int:
    y = x * 2  # twice
    return y"""

PKG_INIT = '"""The package docstring of a small package in the fake stdlib."""\n'

PKG_MOD = '''\
def function(a, b):
    """Add two numbers and return their sum, as a copied example."""
    def inner():
        """A nested function docstring that is an implementation detail."""
        return a
    return a + b


async def fetch(url):
    """Fetch a url asynchronously and return the body bytes."""
    return url
'''

EXCLUDED_FILES = {
    "test/test_thing.py": GOOD_PY,
    "pkg/tests/helper.py": GOOD_PY,
    "idlelib/idle_test/test_x.py": GOOD_PY,
    "site-packages/third_party.py": GOOD_PY,
    "pkg/__pycache__/cached.py": GOOD_PY,
    "lib-dynload/odd_folder.py": GOOD_PY,
    "encodings/cp_fake.py": GOOD_PY,
    "pydoc_data/topics.py": GOOD_PY,
    "test_at_root.py": GOOD_PY,
    "_sysconfigdata__fake.py": GOOD_PY,
    "template.py": 'def broken(:\n    """A template file that does not parse as Python."""\n',
    "table.py": "TABLE = {\n" + "".join(f"    '{i}': 0x{i:04x},\n" for i in range(200)) + "}\n",
    "huge.py": '"""A file far beyond the size limit."""\n'
    + "# filler line of comment text\n" * 12_000,
    "empty/__init__.py": "",
}


@pytest.fixture()
def fake_stdlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "lib" / "python3.x"
    files = {
        "good.py": GOOD_PY,
        "pkg/__init__.py": PKG_INIT,
        "pkg/mod.py": PKG_MOD,
        **EXCLUDED_FILES,
    }
    for relpath, text in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "latin1.py").write_bytes(
        '"""Caf\xe9 au lait, a docstring encoded in Latin-1."""\n'.encode("latin-1")
    )
    monkeypatch.setattr(stdlib_corpus, "_stdlib_root", lambda: root)
    return root


def test_every_line_is_a_document_and_stats_match(
    small_corpus: tuple[CorpusStats, list[dict[str, str]]],
) -> None:
    stats, rows = small_corpus
    assert rows, "the corpus is empty"
    for row in rows:
        assert set(row) == {"text", "source", "kind"}
        assert row["text"].strip() and row["source"]
        assert row["kind"] in KIND_MIX
    assert stats.documents == len(rows)
    assert stats.bytes == sum(len(row["text"].encode("utf-8")) for row in rows)
    assert sum(stats.kind_documents.values()) == stats.documents
    assert sum(stats.kind_bytes.values()) == stats.bytes
    assert stats.python_version == platform.python_version()


def test_budget_is_respected_within_one_document(
    small_corpus: tuple[CorpusStats, list[dict[str, str]]],
) -> None:
    stats, rows = small_corpus
    largest = max(len(row["text"].encode("utf-8")) for row in rows)
    assert SMALL_BUDGET - largest < stats.bytes <= SMALL_BUDGET


def test_all_three_kinds_appear(small_corpus: tuple[CorpusStats, list[dict[str, str]]]) -> None:
    stats, rows = small_corpus
    assert {row["kind"] for row in rows} == {"topic", "module", "docstring"}
    assert all(count > 0 for count in stats.kind_documents.values())


def test_sources_name_their_origin(small_corpus: tuple[CorpusStats, list[dict[str, str]]]) -> None:
    _, rows = small_corpus
    for row in rows:
        if row["kind"] == "topic":
            assert row["source"].startswith("pydoc_data.topics:")
        elif row["kind"] == "module":
            assert row["source"].endswith(".py") and not row["source"].startswith("/")
        else:
            module, _, qualname = row["source"].partition(":")
            names = module.split(".") + (qualname.split(".") if qualname else [])
            assert all(name.isidentifier() for name in names), row["source"]


def test_no_excluded_paths_in_real_corpus(
    small_corpus: tuple[CorpusStats, list[dict[str, str]]],
) -> None:
    _, rows = small_corpus
    for row in rows:
        if row["kind"] == "module":
            parts = row["source"].split("/")
        elif row["kind"] == "docstring":
            parts = row["source"].split(":")[0].split(".")
        else:
            continue
        assert not EXCLUDED_COMPONENTS & set(parts), row["source"]
        assert parts[0] not in {"encodings", "pydoc_data"}, row["source"]


def test_fake_stdlib_keeps_only_the_included_files(fake_stdlib: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "corpus.jsonl"
    build_stdlib_corpus(out, max_bytes=10_000_000)
    rows = read_rows(out)
    modules = {row["source"] for row in rows if row["kind"] == "module"}
    docstrings = {row["source"] for row in rows if row["kind"] == "docstring"}
    assert modules == {"good.py", "pkg/__init__.py", "pkg/mod.py"}
    # Short docstrings and those of nested functions are left out.
    assert docstrings == {
        "good",
        "good:function",
        "good:only_docstring",
        "good:Klass",
        "good:Klass.method",
        "pkg",
        "pkg.mod:function",
        "pkg.mod:fetch",
    }
    by_source = {row["source"]: row["text"] for row in rows}
    assert by_source["good.py"] == GOOD_PY
    assert (
        by_source["good:Klass.method"]
        == "Double the number given, as an example method.\n\nMore text here."
    )


def test_same_seed_gives_identical_bytes_and_another_seed_another_order(
    fake_stdlib: Path, tmp_path: Path
) -> None:
    # On the small fake tree (the walk, the parse and the shuffles are the same code; pydoc's
    # topics give it plenty of documents to order), not three parses of the real one.
    first, again, other = (
        build_stdlib_corpus(tmp_path / f"{name}.jsonl", max_bytes=SMALL_BUDGET, seed=seed)
        for name, seed in (("first", 0), ("again", 0), ("other", 1))
    )
    assert first.documents > 10 and again.path.read_bytes() == first.path.read_bytes()
    assert [row["source"] for row in read_rows(other.path)] != [
        row["source"] for row in read_rows(first.path)
    ]


def test_write_leaves_only_the_output_file(
    small_corpus: tuple[CorpusStats, list[dict[str, str]]],
) -> None:
    stats, _ = small_corpus
    assert sorted(os.listdir(stats.path.parent)) == [stats.path.name]


def test_failed_write_keeps_the_old_file_and_no_temp_file(
    fake_stdlib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out" / "corpus.jsonl"
    out.parent.mkdir()
    out.write_text("previous corpus\n", encoding="utf-8")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match="corpus.jsonl: could not be written .No space left"):
        build_stdlib_corpus(out, max_bytes=10_000_000)
    assert os.listdir(out.parent) == ["corpus.jsonl"]
    assert out.read_text(encoding="utf-8") == "previous corpus\n"


def test_rejects_a_budget_that_is_not_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_bytes"):
        build_stdlib_corpus(tmp_path / "corpus.jsonl", max_bytes=0)


def test_functions_lose_their_docstring_and_still_parse(functions: list[StdlibFunction]) -> None:
    assert len(functions) > 1000
    for record in functions:
        tree = ast.parse(textwrap.dedent(record.code_without_docstring))
        definition = tree.body[0]
        assert isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef)), record.name
        assert definition.name == record.name.rsplit(".", 1)[-1]
        assert ast.get_docstring(definition) is None, record.name
        assert record.package == record.module.split(".")[0]
        assert record.docstring_first_line.strip() == record.docstring_first_line
        assert record.docstring_first_line and "\n" not in record.docstring_first_line
        assert not EXCLUDED_COMPONENTS & set(record.module.split("."))


def test_functions_do_not_keep_the_original_docstring_anywhere(
    functions: list[StdlibFunction],
) -> None:
    # Look the original docstrings up from the source files for a sample and check that no string
    # constant left in the code is one of them.
    root = Path(stdlib_corpus.sysconfig.get_paths()["stdlib"])
    for record in functions[:100]:
        base = root / record.module.replace(".", "/")
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        # A name can be defined more than once (per platform, property setters): check them all.
        nodes: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
        for part in record.name.split("."):
            nodes = [
                child
                for node in nodes
                for child in node.body  # type: ignore[attr-defined]
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and child.name == part
            ]
        originals = {ast.get_docstring(node, clean=False) for node in nodes} - {None}  # type: ignore[arg-type]
        assert any(record.docstring_first_line in original for original in originals), record.name
        left = ast.parse(textwrap.dedent(record.code_without_docstring))
        constants = {
            c.value
            for c in ast.walk(left)
            if isinstance(c, ast.Constant) and isinstance(c.value, str)
        }
        assert not originals & constants, record.name


def test_functions_order_depends_on_the_seed_only(functions: list[StdlibFunction]) -> None:
    reshuffled = list(iter_stdlib_functions(seed=1))
    assert [f.name for f in reshuffled] != [f.name for f in functions]
    assert sorted(reshuffled, key=repr) == sorted(functions, key=repr)


def test_functions_in_fake_stdlib(fake_stdlib: Path) -> None:
    records = {(f.module, f.name): f for f in iter_stdlib_functions()}
    # only_docstring has no code, short() has a one-word docstring, inner() is nested, and
    # pkg.mod.function duplicates good.function's code exactly.
    assert set(records) == {("good", "function"), ("good", "Klass.method"), ("pkg.mod", "fetch")}
    method = records[("good", "Klass.method")]
    assert method.package == "good"
    assert method.code_without_docstring == EXPECTED_METHOD_CODE
    assert method.docstring_first_line == "Double the number given, as an example method."
    assert (
        records[("pkg.mod", "fetch")].code_without_docstring
        == "async def fetch(url):\n    return url"
    )


COPIES_PY = '''\
class Holder:
    """A class holding a copy of good.function, indented deeper and with no docstring."""

    def function(a, b):

        def inner():
            """A nested function docstring that is an implementation detail."""
            return a
        return a + b

    def other(self):
        return 2
'''


def test_excluded_functions_and_their_copies_leave_the_corpus(
    fake_stdlib: Path, tmp_path: Path
) -> None:
    (fake_stdlib / "copies.py").write_text(COPIES_PY, encoding="utf-8")
    records = {(f.module, f.name): f for f in iter_stdlib_functions()}
    held_out = [records[("good", "function")], records[("good", "Klass.method")]]
    stats = build_stdlib_corpus(tmp_path / "corpus.jsonl", max_bytes=10_000_000, exclude=held_out)
    by_source = {row["source"]: row["text"] for row in read_rows(stats.path)}
    # pkg.mod.function is a copy of good.function's code under another docstring, and
    # copies.Holder.function one without a docstring and with other indentation: they go too.
    assert stats.excluded_definitions == 4
    assert "return a + b" not in by_source["copies.py"]
    assert (
        "class Holder:" in by_source["copies.py"] and "def other(self):" in by_source["copies.py"]
    )
    assert {"good:function", "good:Klass.method", "pkg.mod:function"}.isdisjoint(by_source)
    assert {"good", "good:Klass", "good:only_docstring", "pkg.mod:fetch"} <= set(by_source)
    for relpath in ("good.py", "pkg/mod.py"):
        assert "def function(a, b):" not in by_source[relpath]
        assert "return a + b" not in by_source[relpath]
    good = by_source["good.py"]
    assert (
        "def method" not in good
        and "@functools.cache" not in good
        and "Double the number" not in good
    )
    assert "class Klass:" in good and "def only_docstring():" in good and "def short():" in good
    assert "async def fetch(url):" in by_source["pkg/mod.py"]
    # Nothing held out: the same corpus as before.
    plain = build_stdlib_corpus(tmp_path / "plain.jsonl", max_bytes=10_000_000)
    assert plain.excluded_definitions == 0
    assert {row["source"]: row["text"] for row in read_rows(plain.path)}["good.py"] == GOOD_PY

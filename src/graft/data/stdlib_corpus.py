"""The embedded default corpus: text built from the running Python installation.

This module owns the text `graft quickstart` trains on when nothing was given, so that a first
run needs no download: `build_stdlib_corpus` writes a JSONL file of Python's help topics
(English prose), standard-library module sources (code) and their docstrings (short prose that
talks about code). It also owns `iter_stdlib_functions`, labelled function records
(package, qualified name, code, first docstring line) for fine-tuning tasks with real labels, and
lets the corpus leave such functions out (`exclude`), so that a task's held-out functions were never
pre-trained on.

Sources are read and parsed with `ast`, never imported: importing standard-library modules has
side effects (tkinter, antigravity, this). The one import is `pydoc_data.topics`, a plain data
module whose only content is the `topics` dict.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import random
import re
import sysconfig
import time
import warnings
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from graft.atomic_files import write_atomic
from graft.errors import ConfigError, DataError

__all__ = [
    "KIND_MIX",
    "CorpusStats",
    "StdlibFunction",
    "build_stdlib_corpus",
    "iter_stdlib_functions",
]

# Target share of the byte budget per kind. Code gets half: it is the largest and most
# distinctive text on the machine, and a model for a Python toolkit's demo should learn its
# structure. Docstrings get 30%: short English aligned with the code's vocabulary. Help topics
# get 20%: the only long-form English prose available, but only ~0.5 MB of it, so at the default
# 8 MB budget they run out and the other kinds share the rest in their own ratio (5:3).
# The dict's order breaks ties, smallest documents first, so that a tiny budget still gets
# every kind.
KIND_MIX: dict[str, float] = {"topic": 0.2, "docstring": 0.3, "module": 0.5}

# Docstrings and files shorter than this are boilerplate ("Return self.") or empty __init__s.
MIN_TEXT_CHARS = 40
# A first docstring line shorter than this ("XXX", "Todo"), or a single word, is no usable label.
MIN_FIRST_LINE_CHARS = 10
# Beyond this a stdlib file is generated data (pydoc_data/topics.py is ~750 kB), and one file
# would dominate a small budget.
MAX_FILE_BYTES = 300_000
# Share of code lines that are literal table entries above which a file counts as generated
# data (html/entities.py, codec tables, _sysconfigdata, stringprep.py), not text worth learning.
MAX_TABLE_LINE_SHARE = 0.5

# Folders never descended into: test suites (test/, tests/, idlelib/idle_test, ...), bytecode
# caches and third-party packages.
_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
)
# Stdlib-relative prefixes: codecs are generated tables or 40-line boilerplate repeated a hundred
# times; pydoc_data's topics come in as prose documents instead.
_EXCLUDED_PREFIXES = ("encodings/", "pydoc_data/")
# A literal table entry: starts with a literal and ends with a separator, e.g. `'amp': 0x26,`.
_TABLE_LINE = re.compile(r"""^\s*(?:['"(\[{\d\-]|None\b|True\b|False\b).*[,:]\s*(?:#.*)?$""")

_Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


@dataclass(frozen=True)
class CorpusStats:
    """What `build_stdlib_corpus` wrote: document and UTF-8 byte counts of the texts, per kind."""

    path: Path
    documents: int
    bytes: int
    kind_documents: dict[str, int]
    kind_bytes: dict[str, int]
    python_version: str
    seconds: float
    # Distinct (module, qualified name) pairs whose definitions were cut out of the text because
    # `exclude` asked for them or for a copy of their code (a property's getter and setter count
    # once).
    excluded_definitions: int = 0


@dataclass(frozen=True)
class StdlibFunction:
    """A documented stdlib function or method, as parsed from its source file.

    `code_without_docstring` starts at its first decorator (or `def`), is dedented to column 0
    and no longer holds the docstring statement; it parses on its own.
    """

    module: str
    package: str
    name: str
    code_without_docstring: str
    docstring_first_line: str


@dataclass(frozen=True)
class _Document:
    text: str
    source: str
    kind: str
    size: int = field(compare=False)  # UTF-8 bytes of text, the unit of the budget


@dataclass(frozen=True)
class _ModuleSource:
    relpath: str  # posix path relative to the stdlib root, e.g. "json/decoder.py"
    module: str  # dotted name, e.g. "json.decoder"
    text: str
    tree: ast.Module


def build_stdlib_corpus(
    out_path: Path,
    *,
    max_bytes: int = 8_000_000,
    seed: int = 0,
    exclude: Iterable[StdlibFunction] = (),
) -> CorpusStats:
    """Write a JSONL corpus of at most `max_bytes` UTF-8 bytes of text from this Python install.

    Each line is `{"text", "source", "kind"}` with kind "topic", "module" or "docstring".
    Documents of each kind are sorted, shuffled with `random.Random(seed)`, then interleaved so
    that every prefix of the file keeps close to `KIND_MIX` by bytes; a document that does not fit
    in what is left of the budget is skipped, so the total never exceeds `max_bytes` and falls
    short of it by less than one document. The same install, seed and `exclude` give the same bytes.

    `exclude` holds functions (from `iter_stdlib_functions`) to keep out of the text: every
    definition with the same module and qualified name, or anywhere with the same code without
    docstring (ignoring indentation and blank lines), loses its lines (decorators to last line) from
    its module's source, and its docstring document. Text that merely repeats a docstring's words
    (a module docstring, a comment, another function's docstring) stays.
    """
    if max_bytes <= 0:
        raise ConfigError(
            f"stdlib corpus max_bytes must be a positive number of bytes, got {max_bytes}"
        )
    started = time.perf_counter()
    rng = random.Random(seed)
    held_out = _HeldOut.of(exclude)
    excluded: set[tuple[str, str]] = set()
    candidates: dict[str, list[_Document]] = {kind: [] for kind in KIND_MIX}
    candidates["topic"] = _topic_documents()
    for source in _iter_stdlib_sources(_stdlib_root()):
        names, lines = held_out.find(source)
        excluded.update((source.module, name) for name in names)
        text = source.text
        if lines:
            text = "\n".join(
                line for number, line in enumerate(text.split("\n")) if number not in lines
            )
        candidates["module"].append(_document(text, source.relpath, "module"))
        candidates["docstring"].extend(_docstring_documents(source, skip=names))
    for kind in KIND_MIX:
        candidates[kind].sort(key=lambda d: (d.source, d.text))
        rng.shuffle(candidates[kind])
    chosen = _interleave_within_budget(candidates, max_bytes)
    if not chosen:
        raise DataError(
            f"found no usable text under the Python standard library at {_stdlib_root()}; "
            "give graft quickstart a corpus of your own"
        )
    out_path = Path(out_path)
    _write_jsonl_atomically(out_path, chosen)
    kind_documents = {kind: sum(doc.kind == kind for doc in chosen) for kind in KIND_MIX}
    kind_bytes = {kind: sum(doc.size for doc in chosen if doc.kind == kind) for kind in KIND_MIX}
    return CorpusStats(
        path=out_path,
        documents=len(chosen),
        bytes=sum(kind_bytes.values()),
        kind_documents=kind_documents,
        kind_bytes=kind_bytes,
        python_version=platform.python_version(),
        seconds=time.perf_counter() - started,
        excluded_definitions=len(excluded),
    )


def iter_stdlib_functions(seed: int = 0) -> Iterator[StdlibFunction]:
    """Yield every documented stdlib function and method once, in an order fixed by `seed`.

    Covers module-level functions and methods of (nested) classes in the same modules the corpus
    uses; functions local to other functions are implementation details and are left out, as
    are functions whose body is only a docstring (no code to learn from) and exact duplicates of
    code already yielded (stdlib copies code between packages, which would make a package
    label ambiguous and leak between train and test splits).
    """
    records: list[StdlibFunction] = []
    seen_code: set[str] = set()
    for source in _iter_stdlib_sources(_stdlib_root()):
        lines = source.text.split("\n")
        for qualname, node in _definitions(source.tree.body, ""):
            if isinstance(node, ast.ClassDef):
                continue
            record = _function_record(source.module, qualname, node, lines)
            if record is not None and record.code_without_docstring not in seen_code:
                seen_code.add(record.code_without_docstring)
                records.append(record)
    records.sort(key=lambda r: (r.module, r.name, r.code_without_docstring))
    random.Random(seed).shuffle(records)
    yield from records


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _iter_stdlib_sources(root: Path) -> Iterator[_ModuleSource]:
    """Read and parse every included `.py` file under `root`, in sorted path order.

    A generator on purpose: callers take what they need from each tree and drop it. Holding all
    ~600 trees at once makes the cyclic garbage collector rescan millions of nodes and triples
    the run time.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps os.walk out of test suites (the largest part of the stdlib) and
        # sorting makes the walk order independent of the file system.
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS and d.isidentifier())
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            relpath = path.relative_to(root).as_posix()
            if _excluded_file(relpath):
                continue
            source = _read_source(path, relpath)
            if source is not None:
                yield source


def _excluded_file(relpath: str) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    if not name.endswith(".py") or not name[:-3].isidentifier():
        return True
    # _sysconfigdata_* is generated per build, test_*.py are tests outside a test folder.
    return name.startswith(("test_", "_sysconfigdata_")) or relpath.startswith(_EXCLUDED_PREFIXES)


def _read_source(path: Path, relpath: str) -> _ModuleSource | None:
    """The parsed file, or None when it is too large, not UTF-8, not Python or a data table."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    # One newline convention keeps the corpus uniform and ast line numbers aligned with split("\n").
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if len(text.strip()) < MIN_TEXT_CHARS or _looks_like_table(text):
        return None
    try:
        with warnings.catch_warnings():
            # Old escape sequences in a few files warn on parse; they are not our problem.
            warnings.simplefilter("ignore")
            tree = ast.parse(text, filename=relpath)
    except (SyntaxError, ValueError):
        # Templates and files for other Python versions; ValueError is a stray NUL byte.
        return None
    module = relpath[:-3].replace("/", ".")
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    return _ModuleSource(relpath=relpath, module=module, text=text, tree=tree)


def _looks_like_table(text: str) -> bool:
    code_lines = [
        s for s in (line.strip() for line in text.split("\n")) if s and not s.startswith("#")
    ]
    table_lines = sum(1 for line in code_lines if _TABLE_LINE.match(line))
    return table_lines > MAX_TABLE_LINE_SHARE * len(code_lines)


def _document(text: str, source: str, kind: str) -> _Document:
    return _Document(text=text, source=source, kind=kind, size=len(text.encode("utf-8")))


def _topic_documents() -> list[_Document]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        # Some distributions split pydoc_data into a separate package; the other kinds then
        # share the topics' budget.
        return []
    return [
        _document(text.strip(), f"pydoc_data.topics:{name}", "topic")
        for name, text in topics.items()
        if len(text.strip()) >= MIN_TEXT_CHARS
    ]


def _docstring_documents(source: _ModuleSource, skip: Collection[str] = ()) -> list[_Document]:
    nodes: list[tuple[str, ast.Module | _Definition]] = [("", source.tree)]
    nodes.extend(_definitions(source.tree.body, ""))
    documents = []
    for qualname, node in nodes:
        if qualname in skip:
            continue
        docstring = ast.get_docstring(node, clean=True)
        if docstring is None or len(docstring.strip()) < MIN_TEXT_CHARS:
            continue
        name = f"{source.module}:{qualname}" if qualname else source.module
        documents.append(_document(docstring.strip(), name, "docstring"))
    return documents


@dataclass(frozen=True)
class _HeldOut:
    """The functions `build_stdlib_corpus` leaves out: by (module, qualified name), and by their
    code without docstring, compared line by line ignoring indentation and blank lines."""

    names: frozenset[tuple[str, str]]
    codes: frozenset[tuple[str, ...]]

    @classmethod
    def of(cls, functions: Iterable[StdlibFunction]) -> _HeldOut:
        functions = list(functions)
        return cls(
            frozenset((f.module, f.name) for f in functions),
            frozenset(_stripped_lines(f.code_without_docstring.split("\n")) for f in functions),
        )

    def find(self, source: _ModuleSource) -> tuple[set[str], set[int]]:
        """(qualified names, 0-based line numbers) of the held-out definitions in `source`.

        Matching the code as well as the name matters because `iter_stdlib_functions` yields one
        of several identical copies (stdlib copies code between modules, under another docstring
        or none): a copy left in would put the held-out code back into the corpus under another
        name.
        """
        names: set[str] = set()
        lines: set[int] = set()
        if not self.names:
            return names, lines
        text_lines = source.text.split("\n")
        for qualname, node in _definitions(source.tree.body, ""):
            if isinstance(node, ast.ClassDef):
                continue
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            assert node.end_lineno is not None  # parsed nodes carry end positions
            code = _stripped_lines(_without_docstring(node, text_lines))
            if (source.module, qualname) in self.names or code in self.codes:
                names.add(qualname)
                lines.update(range(start - 1, node.end_lineno))
        return names, lines


def _stripped_lines(lines: Iterable[str]) -> tuple[str, ...]:
    return tuple(s for s in (line.strip() for line in lines) if s)


def _without_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> list[str]:
    """A definition's lines from its first decorator to its last, less its docstring's lines."""
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    first = node.body[0]
    # Parsed nodes always carry end positions; the assert only narrows the Optional types.
    assert node.end_lineno is not None and first.end_lineno is not None
    if ast.get_docstring(node, clean=False) is None:
        return lines[start - 1 : node.end_lineno]
    return lines[start - 1 : first.lineno - 1] + lines[first.end_lineno : node.end_lineno]


def _definitions(body: Iterable[ast.stmt], prefix: str) -> Iterator[tuple[str, _Definition]]:
    """Functions and classes at module level and inside classes, with qualified names."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qualname = f"{prefix}{node.name}"
            yield qualname, node
            if isinstance(node, ast.ClassDef):
                yield from _definitions(node.body, f"{qualname}.")


def _function_record(
    module: str, qualname: str, node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]
) -> StdlibFunction | None:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring or len(node.body) < 2:
        return None
    first_line = docstring.strip().split("\n", 1)[0].strip()
    if len(first_line) < MIN_FIRST_LINE_CHARS or " " not in first_line:
        return None
    expr = node.body[0]
    assert expr.end_lineno is not None and expr.end_col_offset is not None  # as above
    # ast columns count UTF-8 bytes. Whole lines are cut out, so the docstring must be alone on
    # its lines: not after `def f():` on one line, not followed by `; more code`.
    before = lines[expr.lineno - 1].encode("utf-8")[: expr.col_offset]
    after = lines[expr.end_lineno - 1].encode("utf-8")[expr.end_col_offset :].strip()
    if before.strip() or (after and not after.startswith(b"#")):
        return None
    kept = _without_docstring(node, lines)
    # Remove exactly the def's own indentation: every statement line carries it, and lines that
    # do not (inside a multi-line string) are left as they are, so the result always parses.
    indent = kept[0][: len(kept[0]) - len(kept[0].lstrip())]
    code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in kept)
    return StdlibFunction(
        module=module,
        package=module.split(".", 1)[0],
        name=qualname,
        code_without_docstring=code,
        docstring_first_line=first_line,
    )


def _interleave_within_budget(
    candidates: dict[str, list[_Document]], max_bytes: int
) -> list[_Document]:
    """Take documents from each kind's shuffled list, always from the kind furthest below its share.

    Choosing by bytes taken divided by the kind's share keeps every prefix close to KIND_MIX; a
    kind that runs out simply stops being chosen, so the others fill its budget.
    """
    positions = {kind: 0 for kind in KIND_MIX}
    taken_bytes = {kind: 0 for kind in KIND_MIX}
    chosen: list[_Document] = []
    left = max_bytes
    while left >= MIN_TEXT_CHARS:
        open_kinds = [k for k in KIND_MIX if positions[k] < len(candidates[k])]
        if not open_kinds:
            break
        kind = min(open_kinds, key=lambda k: taken_bytes[k] / KIND_MIX[k])
        doc = candidates[kind][positions[kind]]
        positions[kind] += 1
        if doc.size <= left:
            chosen.append(doc)
            taken_bytes[kind] += doc.size
            left -= doc.size
    return chosen


def _write_jsonl_atomically(out_path: Path, documents: list[_Document]) -> None:
    text = "".join(
        json.dumps({"text": doc.text, "source": doc.source, "kind": doc.kind}, ensure_ascii=False)
        + "\n"
        for doc in documents
    )
    try:
        write_atomic(out_path, text)
    except OSError as exc:
        raise DataError(
            f"cannot write the stdlib corpus to {out_path}: {exc.strerror or exc}"
        ) from exc

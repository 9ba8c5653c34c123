"""Token shards: the prepared, tokenized form of a text corpus, and reading it back.

A prepared directory holds `train.bin` and `val.bin` (flat arrays of token ids, uint16 when
the vocabulary fits, else uint32, as nanoGPT writes them), `index.json` (a ShardIndex: token
and document counts, source bytes, the tokenizer's hash) and a copy of `tokenizer.json`.
Preparation streams: documents are read in pieces and encoded in bounded batches, so memory
stays flat however large the corpus. The directory appears all at once or not at all.

Each document is followed by the EOT id. Documents go to train or val whole, by a seeded coin
(`val_fraction`), and each split is guaranteed at least one document. A corpus of fewer
documents than 1/val_fraction (10 at 0.1; 1/(1 - val_fraction) when that is larger), too few for
the coin to give val a fair share, is split by position instead, as nanoGPT splits its one
text: the first `1 - val_fraction` of each document's tokens train, the rest (ending with its
EOT) val, in reading order, with an EOT between two documents' parts in train. A split whose
share of the tokens is still off by more than a factor of 2 gets a `notice:`. Given
`val_inputs` (a held-out corpus) there is no coin: all of the inputs are train, all of
`val_inputs` is val, and each split lists its own files as `sources` in index.json. With
redaction (graft.data.redact), each document's text is redacted before it is tokenized, and
index.json says how many spans of each kind were replaced (`redaction`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from graft.atomic_files import atomic_directory, fsync_path, write_atomic
from graft.data.documents import Document, iter_documents, list_input_files, utf8_size
from graft.data.inputs import input_frame
from graft.data.redact import RedactConfig, Redactor
from graft.data.tokenizer import EOT, TOKENIZER_FILE, Tokenizer
from graft.errors import ConfigError, DataError, TokenizerError

__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "ShardIndex",
    "SplitInfo",
    "TokenShards",
    "prepare_shards",
    "prepared_tokenizer",
    "token_dtype",
]

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SPLITS: tuple[str, ...] = ("train", "val")
_DTYPES: tuple[str, ...] = ("uint16", "uint32")

# Documents are encoded in pieces this large; small enough that one piece's ids as Python
# ints stay around a megabyte, large enough that a batch keeps every core busy.
_PIECE_BYTES = 1 << 16
# Text characters encoded per batch at most: bounds the memory of one batch. That is eight
# pieces of a long document, which `tokenizers` shares evenly among 2, 4 or 8 cores (half as
# many measured slower on a busy 2-core machine).
_BATCH_CHARS = 1 << 19
# Tokens (or bytes) copied per step when moving part of a split file.
_COPY_TOKENS = 1 << 20
# Tokens checked per step against the vocabulary when a split is opened.
_CHECK_TOKENS = 1 << 26
_RERUN = "re-run `graft data prepare`"


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype holding every id of a `vocab_size` vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass
class SplitInfo:
    """One split of a prepared directory."""

    file: str
    tokens: int
    documents: int
    #: UTF-8 bytes of the source text in this split (for bits per byte).
    bytes: int
    #: The files this split alone was read from, when each split had its own (a held-out val
    #: corpus); None when documents were dealt to the splits from `ShardIndex.sources`.
    sources: list[str] | None = None


@dataclass
class ShardIndex:
    """The contents of `index.json`: what a prepared directory holds and how it was made."""

    dtype: str
    vocab_size: int
    eot_id: int
    tokenizer_sha256: str
    tokenizer_kind: str
    splits: dict[str, SplitInfo]
    sources: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    #: What redaction replaced (`RedactionReport.to_dict()`); None when the text was not redacted.
    redaction: dict[str, Any] | None = None

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # Left out rather than null, so directories prepared without a held-out corpus read
        # exactly as before.
        for split in data["splits"].values():
            if split["sources"] is None:
                del split["sources"]
        if data["redaction"] is None:
            del data["redaction"]
        return data

    @classmethod
    def from_dict(cls, data: object, where: str) -> ShardIndex:
        """Validate parsed JSON; `where` (the file) prefixes every error."""
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]!r}; {_RERUN}")
        version = _field(data, "format_version", int, where)
        if version != FORMAT_VERSION:
            newer = " by a newer graft" if version > FORMAT_VERSION else ""
            raise DataError(
                f"{where}: format_version {version} was written{newer}; this graft reads "
                f"format {FORMAT_VERSION}; {_RERUN}"
            )
        dtype = _field(data, "dtype", str, where)
        if dtype not in _DTYPES:
            raise DataError(f"{where}: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        vocab_size = _field(data, "vocab_size", int, where)
        eot_id = _field(data, "eot_id", int, where)
        if not 0 <= eot_id < vocab_size:
            raise DataError(
                f"{where}: eot_id {eot_id} is outside the vocabulary (0..{vocab_size - 1})"
            )
        raw_splits = _field(data, "splits", dict, where)
        splits = {
            name: _split_info(value, f"{where}: splits.{name}")
            for name, value in raw_splits.items()
        }
        sources = _field(data, "sources", list, where)
        if not all(isinstance(s, str) for s in sources):
            raise DataError(f"{where}: sources must be a list of strings")
        # Optional: only directories prepared with redaction have it.
        redaction = _field(data, "redaction", dict, where) if "redaction" in data else None
        return cls(
            dtype=dtype,
            vocab_size=vocab_size,
            eot_id=eot_id,
            tokenizer_sha256=_field(data, "tokenizer_sha256", str, where),
            tokenizer_kind=_field(data, "tokenizer_kind", str, where),
            splits=splits,
            sources=sources,
            format_version=version,
            redaction=redaction,
        )

    @classmethod
    def load(cls, directory: Path | str) -> ShardIndex:
        """Read and validate `directory/index.json`, checking each split file's size."""
        directory = Path(directory)
        file = directory / INDEX_FILE
        if not file.is_file():
            raise DataError(
                f"{directory} is not a prepared data directory (no {INDEX_FILE}); "
                "run `graft data prepare` first"
            )
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: cannot read ({exc})") from exc
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{file}: line {exc.lineno}: invalid JSON ({exc.msg}); {_RERUN}"
            ) from exc
        index = cls.from_dict(data, str(file))
        itemsize = index.np_dtype.itemsize
        for name, info in index.splits.items():
            path = directory / info.file
            if not path.is_file():
                raise DataError(f"{path}: missing (split {name!r} of {file}); {_RERUN}")
            size = path.stat().st_size
            if size != info.tokens * itemsize:
                raise DataError(
                    f"{path}: {size} bytes, but {file} records {info.tokens} {index.dtype} "
                    f"tokens ({info.tokens * itemsize} bytes); the file is truncated or "
                    f"corrupt; {_RERUN}"
                )
        return index

    def save(self, directory: Path) -> Path:
        path = Path(directory) / INDEX_FILE
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise DataError(f"{where}: missing key {key!r}; {_RERUN}")
    value = data[key]
    # bool is an int subclass; a true/false where a count belongs is corruption, not a count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"{where}: {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _split_info(value: object, where: str) -> SplitInfo:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected an object, got {type(value).__name__}")
    file = _field(value, "file", str, where)
    # The file must sit inside the prepared directory: a path could point anywhere.
    if not file or Path(file).name != file or file in (".", ".."):
        raise DataError(f"{where}: 'file' must be a plain file name, got {file!r}")
    counts = {key: _field(value, key, int, where) for key in ("tokens", "documents", "bytes")}
    for key, count in counts.items():
        if count < 0:
            raise DataError(f"{where}: {key!r} must be >= 0, got {count}")
    # Optional: index.json files written before held-out val corpora have no per-split sources.
    sources = _field(value, "sources", list, where) if "sources" in value else None
    if sources is not None and not all(isinstance(s, str) for s in sources):
        raise DataError(f"{where}: sources must be a list of strings")
    return SplitInfo(file=file, **counts, sources=sources)


# -- writing -----------------------------------------------------------------------------


class _DocumentLog:
    """Each document's split, tokens and text bytes, in reading order, for the first `keep`
    documents: all that splitting every document by position needs, kept only while the
    corpus is small enough to be split that way."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.entries: list[tuple[str, int, int]] = []

    def add(self, split: str, tokens: int, text_bytes: int) -> None:
        if len(self.entries) < self.keep:
            self.entries.append((split, tokens, text_bytes))


class _SplitWriter:
    """Appends one split's ids to its .bin file and counts what went in."""

    def __init__(
        self,
        name: str,
        path: Path,
        dtype: np.dtype,
        eot_id: int,
        opening: Sequence[int] = (),
        log: _DocumentLog | None = None,
    ) -> None:
        self.name, self.path = name, path
        self.log = log
        self.handle: BinaryIO = path.open("wb")
        self.tokens = self.documents = self.bytes = 0
        self.doc_tokens = self.doc_bytes = 0
        # The last finished document's size, so that it can be moved to an empty split.
        self.last_doc_tokens = self.last_doc_bytes = 0
        self._eot = np.array([eot_id], dtype=dtype)
        # What opens each document (a Llama tokenizer's bos), as the model reads every text.
        self._opening = np.array(opening, dtype=dtype)
        self._in_document = False
        self._parts: list[np.ndarray] = []

    def add(self, ids: np.ndarray, text_bytes: int) -> None:
        if not self._in_document:
            self._in_document = True
            self._parts.append(self._opening)
            self.doc_tokens += len(self._opening)
        self._parts.append(ids)
        self.doc_tokens += len(ids)
        self.doc_bytes += text_bytes

    def end_document(self) -> None:
        if not self._in_document:  # a document that had no piece still gets its opening
            self.add(self._eot[:0], 0)
        self._in_document = False
        self._parts.append(self._eot)
        self.doc_tokens += 1
        self.tokens += self.doc_tokens
        self.bytes += self.doc_bytes
        self.documents += 1
        self.last_doc_tokens, self.last_doc_bytes = self.doc_tokens, self.doc_bytes
        if self.log is not None:
            self.log.add(self.name, self.doc_tokens, self.doc_bytes)
        self.doc_tokens = self.doc_bytes = 0

    def flush(self) -> None:
        # Through the file's buffer, once per batch: a tofile call per tiny document would
        # dominate the run time, and joining the parts first would copy the batch's ids.
        for part in self._parts:
            self.handle.write(part.data)  # the ids' bytes, as tofile writes them
        self._parts.clear()

    def close(self) -> None:
        self.flush()
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()

    def info(self) -> SplitInfo:
        return SplitInfo(
            file=self.path.name, tokens=self.tokens, documents=self.documents, bytes=self.bytes
        )


def _move_tail(src: Path, dst: Path, count: int, dtype: np.dtype) -> None:
    """Move the last `count` ids of `src` into the empty file `dst`, then truncate `src`."""
    itemsize = dtype.itemsize
    total = src.stat().st_size // itemsize
    start = total - count
    if dst.stat().st_size != 0 or not 0 <= start < total:
        raise AssertionError(f"cannot move {count} of {total} tokens from {src} to {dst}")
    tail = np.memmap(src, dtype=dtype, mode="r", offset=start * itemsize, shape=(count,))
    try:
        with dst.open("ab") as out:
            # Chunked so that moving a huge tail never loads it whole.
            for first in range(0, count, _COPY_TOKENS):
                np.asarray(tail[first : first + _COPY_TOKENS]).tofile(out)
            out.flush()
            os.fsync(out.fileno())
    finally:
        # The map must be gone before truncating (Windows refuses otherwise).
        del tail
    os.truncate(src, start * itemsize)
    fsync_path(src)


def _coin_documents(val_fraction: float) -> int:
    """The fewest documents the coin deals out. With fewer, val (or train) would get under one
    document on average, so each document is split by position instead."""
    # Rounded first: 1 - 0.9 is 0.0999...98, whose inverse is a hair over 10.
    return math.ceil(round(1 / min(val_fraction, 1 - val_fraction), 9))


def _copy_bytes(src: BinaryIO, dst: BinaryIO, size: int) -> None:
    while size:
        chunk = src.read(min(size, _COPY_TOKENS))
        if not chunk:
            raise AssertionError(f"{src.name} is shorter than the documents it holds")
        dst.write(chunk)
        size -= len(chunk)


def _split_by_position(
    writers: dict[str, _SplitWriter],
    log: list[tuple[str, int, int]],
    val_fraction: float,
    dtype: np.dtype,
) -> dict[str, SplitInfo]:
    """Split every document (`log`, in reading order) by position, as nanoGPT splits its one
    text: the first `1 - val_fraction` of its tokens train, the rest (ending with its EOT) val.
    Train's pieces are joined by an EOT, so no piece runs into the next document's."""
    train, val = writers["train"], writers["val"]
    itemsize = dtype.itemsize
    eot = train._eot.tobytes()
    tokens = {name: 0 for name in SPLITS}
    text = {name: 0 for name in SPLITS}
    with contextlib.ExitStack() as files:
        # The coin's files are read in order, each document from the one the coin chose.
        read = {w.name: files.enter_context(w.path.open("rb")) for w in (train, val)}
        write = {
            w.name: files.enter_context(w.path.with_suffix(".split").open("wb"))
            for w in (train, val)
        }
        for split, doc_tokens, doc_bytes in log:
            head = min(doc_tokens - 1, max(1, round(doc_tokens * (1 - val_fraction))))
            if tokens["train"]:
                write["train"].write(eot)
                tokens["train"] += 1
            _copy_bytes(read[split], write["train"], head * itemsize)
            _copy_bytes(read[split], write["val"], (doc_tokens - head) * itemsize)
            # Bytes cannot be attributed to single tokens; share them in proportion to tokens.
            val_bytes = round(doc_bytes * (doc_tokens - head) / doc_tokens)
            tokens["train"] += head
            tokens["val"] += doc_tokens - head
            text["train"] += doc_bytes - val_bytes
            text["val"] += val_bytes
    for writer in (train, val):
        os.replace(writer.path.with_suffix(".split"), writer.path)
    # Every document spans both splits, so each counts it once.
    return {
        w.name: SplitInfo(w.path.name, tokens[w.name], len(log), text[w.name]) for w in (train, val)
    }


def _balance(writers: dict[str, _SplitWriter], dtype: np.dtype) -> dict[str, SplitInfo]:
    """Give each split at least one document."""
    train, val = writers["train"], writers["val"]
    for full, empty in ((train, val), (val, train)):
        if empty.documents == 0:
            # Only tiny corpora or extreme fractions get here: the last document moves over
            # (it is at the end of its file, so moving it is a copy and a truncate).
            _move_tail(full.path, empty.path, full.last_doc_tokens, dtype)
            moved = SplitInfo(empty.path.name, full.last_doc_tokens, 1, full.last_doc_bytes)
            kept = SplitInfo(
                full.path.name,
                full.tokens - moved.tokens,
                full.documents - 1,
                full.bytes - moved.bytes,
            )
            return {full.name: kept, empty.name: moved}
    return {name: writer.info() for name, writer in writers.items()}


def _far_from_fraction(
    splits: dict[str, SplitInfo], val_fraction: float, whole: bool
) -> str | None:
    """A notice when a split's share of the tokens is off by more than a factor of 2 from what
    `val_fraction` asks: whole documents dealt by a coin miss it when one outweighs the rest,
    and short documents split by position still give val their EOT each."""
    train, val = splits["train"], splits["val"]
    total = train.tokens + val.tokens
    share = val.tokens / total
    wanted = ((share, val_fraction), (1 - share, 1 - val_fraction))
    if all(want / 2 <= got <= 2 * want for got, want in wanted):
        return None
    why = (
        "each document went to one split whole"
        if whole
        else "each document's last tokens, its end-of-text at least, went to val"
    )
    return (
        f"notice: val holds {share:.1%} of the tokens ({val.tokens:,} of {total:,}), far from "
        f"--val-fraction {val_fraction:g} ({why}); hold out files with --val FILES, cut texts "
        "into more documents with --split-on REGEX, or add documents"
    )


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _routed_documents(
    inputs: Sequence[Path],
    val_inputs: Sequence[Path] | None,
    val_fraction: float,
    seed: int,
    split_on: str | None = None,
) -> Iterator[tuple[str, Document]]:
    """(split name, document) for every document, in reading order."""
    if val_inputs is None:
        rng = np.random.default_rng(seed)
        for doc in iter_documents(inputs, split_on=split_on):
            yield ("val" if rng.random() < val_fraction else "train"), doc
    else:
        for doc in iter_documents(inputs, split_on=split_on):
            yield "train", doc
        for doc in iter_documents(val_inputs, split_on=split_on):
            yield "val", doc


def _write_split_files(
    documents: Iterator[tuple[str, Document]],
    writers: dict[str, _SplitWriter],
    tokenizer: Tokenizer,
    dtype: np.dtype,
    total_bytes: int,
    batch_size: int,
    progress: bool,
    redactor: Redactor | None = None,
) -> None:
    """Encode each (split name, document) into its split's writer, then close the writers."""
    # Queue of (writer, piece text or None for "end of document", piece bytes), in order.
    pending: list[tuple[_SplitWriter, str | None, int]] = []
    pending_texts = 0
    pending_chars = 0

    def encode_pending() -> None:
        nonlocal pending_texts, pending_chars
        texts = [text for _, text, _ in pending if text is not None]
        arrays = iter(tokenizer.encode_batch_arrays(texts, dtype=dtype))
        for writer, text, size in pending:
            if text is None:
                writer.end_document()
            else:
                writer.add(next(arrays), size)
        for writer in writers.values():
            writer.flush()
        pending.clear()
        pending_texts = pending_chars = 0

    try:
        with tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="preparing shards",
            disable=not progress,
            leave=False,
        ) as bar:
            for split, doc in documents:
                writer = writers[split]
                read = 0
                pieces = doc.pieces(_PIECE_BYTES)
                if redactor is not None:
                    pieces = redactor.redact_pieces(pieces)
                for piece in pieces:
                    # A piece that would take the batch past its limit starts the next one, so
                    # that a batch holds whole pieces (eight of an ASCII text) that the cores
                    # share evenly; one piece over (nine) left a core idle for the last one.
                    if pending_texts and pending_chars + len(piece) > _BATCH_CHARS:
                        encode_pending()
                    size = utf8_size(piece)
                    pending.append((writer, piece, size))
                    pending_texts += 1
                    pending_chars += len(piece)
                    read += size
                    bar.update(size)
                    if pending_texts >= batch_size:
                        encode_pending()
                pending.append((writer, None, 0))
                # Text bytes undercount the file (BOM, CRLF, JSON syntax); catch up per document.
                bar.update(max(0, doc.size - read))
            encode_pending()
    except BaseException:
        for writer in writers.values():
            writer.handle.close()
        raise
    for writer in writers.values():
        writer.close()


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder; choose another output folder")
    if (out_dir / INDEX_FILE).is_file() or not any(out_dir.iterdir()):
        return
    # Replacing is a delete: never do it to a folder that is not ours.
    raise DataError(
        f"{out_dir}: exists and is not a prepared data directory (no {INDEX_FILE}); "
        "choose another output folder or empty it"
    )


def prepare_shards(
    inputs: Sequence[Path],
    tokenizer: Tokenizer,
    out_dir: Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    val_inputs: Sequence[Path] | None = None,
    split_on: str | None = None,
    redact: RedactConfig | None = None,
    say: Callable[[str], None] | None = None,
) -> ShardIndex:
    """Tokenize the documents in `inputs` into a prepared directory at `out_dir`.

    Documents go to train or val by a seeded coin (`val_fraction`), each split getting at least
    one; with fewer documents than 1/val_fraction (or 1/(1 - val_fraction)) every document is
    split by position instead (see the module's docstring). When a split's share of the tokens
    is still far from what `val_fraction` asks, `say` (default: print to stderr) is told one
    `notice:` line. Given `val_inputs` (a held-out corpus), all of `inputs` trains, all of
    `val_inputs` is val, `val_fraction` is not used, and each split records its own files as
    `sources`. A file in both is an error
    (its text would be scored on what the model trained on). `split_on` cuts text files into
    documents (see `iter_documents`). `redact` redacts each document's text before it is
    tokenized; split bytes then count the redacted text, the text the tokens stand for.
    `out_dir` is built in a hidden temporary sibling and renamed into place once complete,
    replacing an earlier prepared directory; on any error nothing at `out_dir` changes.
    `batch_size` is the number of text pieces per parallel encode call. A progress bar
    (bytes read) goes to stderr when `progress` is true.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    eot_id = tokenizer.eot_id
    if eot_id is None:
        raise TokenizerError(
            f"the {tokenizer.kind} tokenizer has no {EOT} token; shards "
            "need it to separate documents"
        )
    vocab_size = tokenizer.vocab_size
    dtype = token_dtype(vocab_size)
    files = list_input_files(inputs)
    val_files = [] if val_inputs is None else list_input_files(val_inputs)
    trained = {path.resolve() for path in files}
    for path in val_files:
        if path.resolve() in trained:
            raise DataError(
                f"{path}: is both a training input and a val input; a held-out "
                "val corpus must not overlap the training inputs"
            )
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    total_bytes = sum(path.stat().st_size for path in files + val_files)
    # The work directory is a hidden sibling, so input folders that contain out_dir skip it.
    with atomic_directory(out_dir) as work:
        opening = input_frame(tokenizer, framed=False).before
        log = _DocumentLog(keep=_coin_documents(val_fraction))
        writers = {
            name: _SplitWriter(name, work / f"{name}.bin", dtype, eot_id, opening, log)
            for name in SPLITS
        }
        routed = _routed_documents(inputs, val_inputs, val_fraction, seed, split_on)
        redactor = Redactor(redact) if redact is not None else None
        _write_split_files(
            routed, writers, tokenizer, dtype, total_bytes, batch_size, progress, redactor
        )
        if val_inputs is None:
            documents = writers["train"].documents + writers["val"].documents
            whole = documents >= _coin_documents(val_fraction)
            if whole:
                splits = _balance(writers, dtype)
            else:  # the log holds every document
                splits = _split_by_position(writers, log.entries, val_fraction, dtype)
            notice = _far_from_fraction(splits, val_fraction, whole)
            if notice:
                (say or _to_stderr)(notice)
        else:
            # Each input list yielded a document (iter_documents insists): neither split is empty.
            splits = {name: writer.info() for name, writer in writers.items()}
            splits["train"].sources = [str(path) for path in files]
            splits["val"].sources = [str(path) for path in val_files]
        index = ShardIndex(
            dtype=dtype.name,
            vocab_size=vocab_size,
            eot_id=eot_id,
            tokenizer_sha256=tokenizer.sha256,
            tokenizer_kind=tokenizer.kind,
            splits=splits,
            sources=[str(path) for path in files + val_files],
            redaction=redactor.report.to_dict() if redactor is not None else None,
        )
        tokenizer.save(work)
        index.save(work)
    return index


# -- reading -----------------------------------------------------------------------------


def prepared_tokenizer(directory: Path | str, index: ShardIndex) -> Tokenizer:
    """The tokenizer a prepared directory holds, refused unless it is the one its index.json
    records (a tokenizer.json replaced by another, or a tool that re-hashed it)."""
    directory = Path(directory)
    tokenizer, path = Tokenizer.load(directory), directory / TOKENIZER_FILE
    if tokenizer.sha256 != index.tokenizer_sha256:
        raise DataError(
            f"{path}: tokenizer {tokenizer.sha256[:12]}, but {INDEX_FILE} records "
            f"{index.tokenizer_sha256[:12]}; the file was replaced; {_RERUN}"
        )
    if tokenizer.vocab_size != index.vocab_size:
        raise DataError(
            f"{path}: {tokenizer.vocab_size} tokens, but {INDEX_FILE} records a vocabulary of "
            f"{index.vocab_size}; the file was replaced; {_RERUN}"
        )
    return tokenizer


@dataclass(eq=False)
class TokenShards:
    """One split of a prepared directory, memory-mapped read-only as a 1-D array of ids."""

    directory: Path
    split: str
    index: ShardIndex
    tokens: np.memmap = field(repr=False)

    @classmethod
    def open(
        cls,
        directory: Path | str,
        split: str = "train",
        expected_tokenizer_sha256: str | None = None,
    ) -> TokenShards:
        directory = Path(directory)
        index = ShardIndex.load(directory)
        expected = expected_tokenizer_sha256
        if expected is not None and expected != index.tokenizer_sha256:
            raise TokenizerError(
                f"{directory / INDEX_FILE} was prepared with tokenizer "
                f"{index.tokenizer_sha256[:12]} but the run uses {expected[:12]}; "
                "re-run `graft data prepare` with this tokenizer"
            )
        if split not in index.splits:
            raise DataError(
                f"{directory / INDEX_FILE}: no split {split!r}; it has {', '.join(index.splits)}"
            )
        info = index.splits[split]
        path = directory / info.file
        if info.tokens == 0:
            raise DataError(f"{path}: the {split!r} split is empty; prepare more text")
        tokens = np.memmap(path, dtype=index.np_dtype, mode="r", shape=(info.tokens,))
        _check_ids(tokens, index.vocab_size, path, directory / INDEX_FILE)
        return cls(directory=directory, split=split, index=index, tokens=tokens)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def info(self) -> SplitInfo:
        return self.index.splits[self.split]

    @property
    def bytes_per_token(self) -> float:
        """Source UTF-8 bytes per token in this split; bits/byte = loss/ln 2 / this."""
        return self.info.bytes / self.info.tokens


def _check_ids(tokens: np.ndarray, vocab_size: int, path: Path, index_file: Path) -> None:
    """Refuse ids past the recorded vocabulary before training: a damaged or foreign shard would
    otherwise fail at the first batch that draws one (or, on a GPU, as a device-side assert).
    One pass over the file: measured on a 2 GB shard, 0.07 s from the page cache and 0.7 s
    read cold from disk (where it also warms the cache for training)."""
    # In pieces, so that finding a bad id's position never needs a mask of the whole shard.
    for start in range(0, len(tokens), _CHECK_TOKENS):
        piece = tokens[start : start + _CHECK_TOKENS]
        if int(piece.max()) >= vocab_size:
            at = start + int(np.argmax(piece >= vocab_size))
            raise DataError(
                f"{path}: token id {int(tokens[at])} at position {at} is outside the vocabulary "
                f"of {vocab_size} that {index_file.name} records; the file is damaged or "
                f"another's; {_RERUN}"
            )

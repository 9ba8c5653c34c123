"""`graft extract`: the entities a token tagger finds in collected documents, as JSONL.

A document's text is split into words with their character offsets (`split_words`), the words go
through the very path `graft finetune tokens` trained on and `graft eval --task tokens` scores
(`graft.data.tagged.tagged_inputs`, then `graft.evaluate.predict.word_tags`: each word's tag is the
model's choice at its first sub-token), and the tags are read as entities by seqeval's own
decoder, the one `graft eval` counts entities with. So on sentences given as text (tokens joined by
spaces) the entities extracted are exactly those `graft eval --task tokens` scores.

The word rule (`split_words`): words are runs of non-space characters, from which are split off
  - opening brackets and quotes at the start: ( [ { " “ ‘ «
  - closing brackets, quotes and , ; : ! ? at the end: ) ] } " ” ’ », and dashes — – at
    either end
  - a final ellipsis (... or …), unless one letter is left (a censored "f...")
  - the clitics 's 're 've 'll 'd 'm and n't at the end (John's -> John 's; don't -> do n't)
  - a final "." unless the rest holds another "." (U.S., 12.5.), is one letter (J.) or a number
    of at most two digits (a list's "3."), or is a known abbreviation (Mr., Inc., Nov., ...)
A run with no letter or digit ("--", "...") is one word. CoNLL-2003 tokens never meet these
rules, so its sentences joined by single spaces split back into exactly their tokens.

Windows: a document longer than the model's context is tagged in windows of whole sentences (a
sentence ends after a word of only . ! ?, with the closing quotes and brackets after it), as many
as fit; a sentence longer than the context is cut between words. A document that fits is read in
one pass, exactly as `graft eval` reads a sentence. A word with no token of its own (only
characters the tokenizer's normaliser drops) is not read and tagged "O".
"""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from graft.atomic_files import atomic_file
from graft.data.corpus import CorpusDoc, Problems, is_corpus_file, read_corpus, text_sha256
from graft.data.inputs import input_frame
from graft.data.tagged import TaggedInputs, tagged_inputs, word_token_counts
from graft.data.tokenizer import Tokenizer
from graft.errors import CheckpointError, ConfigError, DataError
from graft.evaluate.predict import scoring_context, word_tags
from graft.model.transformer import LanguageModel

__all__ = [
    "Entity",
    "ExtractOptions",
    "ExtractSummary",
    "Extractor",
    "Word",
    "entity_spans",
    "extract_entities",
    "read_documents",
    "split_words",
]

Echo = Callable[[str], None]

_OPEN = frozenset('([{"“‘«—–')
_CLOSE = frozenset(')]}"”’»,;:!?—–…')
_ELLIPSIS = re.compile(r"(?:\.{2,}|…+)$")
_CLITICS: tuple[str, ...] = (
    "n't",
    "N'T",
    "'s",
    "'S",
    "'re",
    "'RE",
    "'ve",
    "'VE",
    "'ll",
    "'LL",
    "'d",
    "'D",
    "'m",
)
_CLITICS += tuple(c.replace("'", "’") for c in _CLITICS)
# Abbreviations whose final "." stays on the word (case-insensitive): titles, company forms,
# months, US states as news writes them, and a few common Latin ones.
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof rev gen col lt sgt capt cpt maj cmdr adm gov sen rep st mt ft jr sr
    inc corp co ltd plc bros dept univ assn ave blvd rd no nos vol vols pp fig eq ed eds est approx
    vs etc cf al jan feb mar apr jun jul aug sep sept oct nov dec calif fla mass penn conn wash
    ariz colo ill ind kan mich minn mo neb nev okla ore tenn tex va wis wyo""".split()
)
_TEXT_SUFFIXES = (".txt", ".md")


class Word(NamedTuple):
    text: str
    start: int  # character offsets into the document: text[start:end] is the word
    end: int


def _keeps_its_period(rest: str) -> bool:
    """Whether `rest` + "." is one word (an abbreviation, an initial, a list number)."""
    return (
        "." in rest
        or (len(rest) == 1 and rest.isalpha())
        or (rest.isdigit() and len(rest) <= 2)
        or rest.lower() in _ABBREVIATIONS
    )


def _split_run(run: str) -> list[tuple[int, int]]:
    """(start, end) offsets within `run` (no whitespace) of its words."""
    if not any(c.isalnum() for c in run):
        return [(0, len(run))]
    start, end = 0, len(run)
    head: list[tuple[int, int]] = []
    tail: list[tuple[int, int]] = []
    while end - start > 1 and run[start] in _OPEN:
        head.append((start, start + 1))
        start += 1
    while end - start > 1:
        last = run[end - 1]
        dots = _ELLIPSIS.search(run, start, end)
        if dots and dots.start() - start > 1:  # "wait..." but not a censored "f..."
            tail.append((dots.start(), end))
            end = dots.start()
            continue
        if last in _CLOSE or (last == "." and not _keeps_its_period(run[start : end - 1])):
            tail.append((end - 1, end))
            end -= 1
            continue
        clitic = next((c for c in _CLITICS if run[start:end].endswith(c)), None)
        if (
            clitic is not None
            and end - start > len(clitic)
            and run[end - len(clitic) - 1].isalpha()
        ):
            tail.append((end - len(clitic), end))
            end -= len(clitic)
            continue
        break
    return [*head, (start, end), *reversed(tail)]


_RUN = re.compile(r"\S+")


def split_words(text: str) -> list[Word]:
    """The words of `text` with their offsets, by the rule in this module's docstring."""
    words = []
    for match in _RUN.finditer(text):
        base = match.start()
        for start, end in _split_run(match.group()):
            words.append(Word(text[base + start : base + end], base + start, base + end))
    return words


def _is_sentence_end(word: str) -> bool:
    return bool(word) and all(c in ".!?…" for c in word)


def _sentences(words: Sequence[str], keep: Sequence[int]) -> list[list[int]]:
    """The indices `keep` grouped into sentences: each ends after a word of only . ! ? and the
    closing quotes and brackets right after it."""
    sentences: list[list[int]] = []
    current: list[int] = []
    ended = False
    for i in keep:
        if ended and not all(c in _CLOSE for c in words[i]):
            sentences.append(current)
            current, ended = [], False
        current.append(i)
        ended = ended or _is_sentence_end(words[i])
    if current:
        sentences.append(current)
    return sentences


def _pack(sentences: list[list[int]], counts: Sequence[int], budget: int) -> list[list[int]]:
    """Whole sentences packed into windows of at most `budget` tokens; a longer sentence is cut
    between words (a single word longer than the budget is a window of its own)."""
    windows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for sentence in sentences:
        size = sum(counts[i] for i in sentence)
        if size > budget:  # cut into pieces, each a window
            if current:
                windows.append(current)
            current, used = [], 0
            for i in sentence:
                if current and used + counts[i] > budget:
                    windows.append(current)
                    current, used = [], 0
                current.append(i)
                used += counts[i]
            continue
        if current and used + size > budget:
            windows.append(current)
            current, used = [], 0
        current += sentence
        used += size
    if current:
        windows.append(current)
    return windows


@dataclass(frozen=True)
class Entity:
    """One entity: its surface text (document[start:end]), its type, character offsets and the
    mean probability the model gave its words' tags."""

    text: str
    label: str
    start: int
    end: int
    score: float


def entity_spans(
    text: str, words: Sequence[Word], tags: Sequence[str], scores: Sequence[float]
) -> list[Entity]:
    """The entities in a document's word tags, read by seqeval's decoder (the one `graft eval`
    counts entities with: an I- tag after O starts an entity, as conlleval reads them)."""
    from seqeval.metrics.sequence_labeling import get_entities

    entities = []
    for label, first, last in get_entities(list(tags)):
        start, end = words[first].start, words[last].end
        score = sum(scores[first : last + 1]) / (last - first + 1)
        entities.append(Entity(text[start:end], label, start, end, score))
    return entities


@dataclass
class _Pending:
    doc: CorpusDoc
    words: list[Word]
    windows: list[list[int]]
    inputs: list[TaggedInputs]


class Extractor:
    """Tags documents with a token-classification model, several documents' windows a forward
    pass (`batch_size` windows each)."""

    def __init__(
        self,
        model: LanguageModel,
        tokenizer: Tokenizer,
        *,
        max_len: int | None = None,
        batch_size: int = 8,
    ) -> None:
        if model.config.head != "token":
            raise CheckpointError(
                f"the model has head {model.config.head!r}; extraction needs a 'token' head "
                "(fine-tune one with graft finetune tokens)"
            )
        self.max_len = scoring_context(model, max_len, "the model")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.framed = model.config.is_encoder
        self.budget = input_frame(tokenizer, framed=self.framed).budget(self.max_len)
        self.windows = 0  # model inputs read
        self.truncated = 0  # of them cut to the context (their last words tagged "O")

    def _inputs(self, words: Sequence[str], where: str) -> list[tuple[list[int], TaggedInputs]]:
        """(word indices, inputs) of each window of a document's words."""
        counts = word_token_counts(self.tokenizer, words) if words else []
        keep = [i for i, n in enumerate(counts) if n > 0]
        out = []
        todo = deque(_pack(_sentences(words, keep), counts, self.budget))
        while todo:
            window = todo.popleft()
            inputs = tagged_inputs(
                self.tokenizer,
                [words[i] for i in window],
                framed=self.framed,
                max_len=self.max_len,
                source=where,
            )
            if inputs.truncated and len(window) > 1:
                # The counts came from the whole text; a window's own encoding can differ a little
                # at its edges. Halve it until it fits.
                half = len(window) // 2
                todo.extendleft([window[half:], window[:half]])
                continue
            self.truncated += inputs.truncated
            out.append((window, inputs))
        return out

    def _finish(self, pending: list[_Pending]) -> Iterator[tuple[CorpusDoc, list[Entity]]]:
        flat = [x for p in pending for x in p.inputs]
        read = iter(word_tags(self.model, flat, batch_size=self.batch_size))
        self.windows += len(flat)
        for p in pending:
            tags = ["O"] * len(p.words)
            scores = [0.0] * len(p.words)
            for window in p.windows:
                result = next(read)
                for i, tag, score in zip(window, result.tags, result.scores):
                    tags[i], scores[i] = tag, score
            yield p.doc, entity_spans(p.doc.text, p.words, tags, scores)

    def run(self, docs: Iterable[CorpusDoc]) -> Iterator[tuple[CorpusDoc, list[Entity]]]:
        """Each document with its entities, in order; documents are read as they are needed."""
        pending: list[_Pending] = []
        waiting = 0
        for doc in docs:
            words = split_words(doc.text)
            windows = self._inputs([w.text for w in words], doc.location)
            pending.append(_Pending(doc, words, [w for w, _ in windows], [x for _, x in windows]))
            waiting += len(windows)
            if waiting >= self.batch_size:
                yield from self._finish(pending)
                pending, waiting = [], 0
        if pending:
            yield from self._finish(pending)


def read_documents(paths: Sequence[Path], problems: Problems | None = None) -> Iterator[CorpusDoc]:
    """The documents of `paths`, one at a time: a corpus file (.jsonl, .jsonl.zst, as `graft data
    collect` writes) gives its documents; a .txt or .md file is one document; a folder gives
    those of its files, in name order."""
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and (is_corpus_file(p) or p.suffix.lower() in _TEXT_SUFFIXES)
            )
            if not inside:
                raise DataError(f"{path}: no .jsonl, .jsonl.zst, .txt or .md file in the folder")
            yield from read_documents(inside, problems)
        elif is_corpus_file(path):
            yield from read_corpus(path, problems)
        elif path.suffix.lower() in _TEXT_SUFFIXES:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from exc
            yield CorpusDoc(text=text, source=path.suffix.lower()[1:], location=str(path))
        elif not path.exists():
            raise DataError(f"{path}: no such file or folder")
        else:
            raise DataError(
                f"{path}: unknown kind of file; expected a corpus (.jsonl, .jsonl.zst), a .txt or "
                ".md document, or a folder of them"
            )


def entity_record(doc: CorpusDoc, entity: Entity) -> dict[str, object]:
    """One output line: the entity, where it is, and which document (by location and hash)."""
    return {
        "text": entity.text,
        "label": entity.label,
        "start": entity.start,
        "end": entity.end,
        "doc": doc.location,
        "source": doc.source,
        "doc_sha256": text_sha256(doc.text),
        "score": round(entity.score, 6),
    }


@dataclass(frozen=True)
class ExtractOptions:
    """What `graft extract` was asked; every default lives here."""

    checkpoint: Path
    docs: tuple[Path, ...]
    out: Path
    batch_size: int = 8
    seq_len: int | None = None  # None: the model's context
    device: str = "cpu"
    progress: bool = True


@dataclass(frozen=True)
class ExtractSummary:
    documents: int
    entities: int
    labels: dict[str, int]
    windows: int
    truncated: int
    problems: Problems


def extract_entities(options: ExtractOptions, echo: Echo = lambda _: None) -> ExtractSummary:
    """Tag every document of options.docs and write one JSON line per entity to options.out,
    atomically (a temporary sibling renamed into place once all documents are done)."""
    import json
    from collections import Counter

    from tqdm import tqdm

    from graft.checkpoint import load_model, trained_context
    from graft.device import resolve_device

    for path in options.docs:
        if not Path(path).exists():
            raise DataError(f"{path}: no such file or folder")
    model, tokenizer = load_model(
        options.checkpoint, device=resolve_device(options.device, what="--device")
    )
    max_len = options.seq_len or trained_context(options.checkpoint)  # as training read texts
    extractor = Extractor(model, tokenizer, max_len=max_len, batch_size=options.batch_size)
    problems = Problems(say=echo)
    out = Path(options.out)
    labels: Counter[str] = Counter()
    documents = 0
    with atomic_file(out) as temp:
        with temp.open("w", encoding="utf-8", newline="\n") as handle:
            bar = tqdm(desc="extract", unit=" docs", disable=not options.progress, file=sys.stderr)
            with bar:
                for doc, entities in extractor.run(read_documents(options.docs, problems)):
                    documents += 1
                    bar.update(1)
                    for entity in entities:
                        labels[entity.label] += 1
                        record = entity_record(doc, entity)
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return ExtractSummary(
        documents,
        sum(labels.values()),
        dict(labels.most_common()),
        extractor.windows,
        extractor.truncated,
        problems,
    )

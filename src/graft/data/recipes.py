"""Recipes for known public corpora: turn a local copy into clean documents (a JSONL file with
one {"text": ...} per document) that `graft data prepare` reads. Nothing is downloaded.

- `gutenberg`: Project Gutenberg books; each file becomes one document holding the text between
  the `*** START OF ...` and `*** END OF ...` markers, up to an `End of the Project Gutenberg
  EBook of ...` line where older releases have one (the licence boilerplate, identical in every
  book, is dropped: it would teach the model, and NSP negatives, nothing about the books).
- `wikitext`: WikiText's `*.tokens` files (space-separated tokens, ` @-@ ` for hyphens, headings
  as ` = Title = `); each article becomes one document, with the tokenisation undone so the text
  reads like the prose a tokenizer trained on ordinary text expects (`word , word` -> `word, word`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from graft.atomic_files import write_atomic
from graft.data.documents import iter_documents
from graft.errors import DataError

_GUTENBERG_START = re.compile(
    r"^\s*\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*\n", re.I | re.M
)
_GUTENBERG_END = re.compile(r"^\s*\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG EBOOK", re.I | re.M)
# Older releases put an "End of the Project Gutenberg EBook of X" (or "End of Project
# Gutenberg's X") line just before the END marker, inside the markers: it is no part of the book.
_GUTENBERG_TRAILER = re.compile(r"^End of (the )?Project Gutenberg", re.I | re.M)
# Level-1 headings; sections are " = = X = = ".
_WIKITEXT_ARTICLE = re.compile(r"^ = [^=].* = $", re.M)


def gutenberg_body(text: str, source: str) -> str:
    """The book between Project Gutenberg's START and END markers, cut before an
    "End of the Project Gutenberg EBook ..." line there."""
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    if start is None or end is None or end.start() <= start.end():
        raise DataError(
            f"{source}: no '*** START OF ... PROJECT GUTENBERG EBOOK' / "
            "'*** END OF ...' marker pair; is this a Project Gutenberg text?"
        )
    trailer = _GUTENBERG_TRAILER.search(text, start.end(), end.start())
    return text[start.end() : trailer.start() if trailer else end.start()].strip() + "\n"


# WikiText's tokenisation, undone: (pattern, replacement) applied in order.
_WIKITEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.M), r)
    for p, r in (
        # number and hyphen joiners: 1 @,@ 000 -> 1,000; well @-@ known -> well-known
        (r" @(.)@ ", r"\1"),
        (r" ([.,;:!?%)\]}])", r"\1"),  # no space before closing punctuation
        (r"([(\[{$]) ", r"\1"),  # nor after opening brackets
        (r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1"),  # contractions: do n't -> don't, it 's -> it's
        (r"(\w)s ' ", r"\1s' "),  # plural possessive: the dogs ' bowl -> the dogs' bowl
        (r'" ([^"\n]*?) "', r'"\1"'),  # double quotes hug what they quote
        (r"^ +| +$", ""),  # the leading and trailing space of every line
    )
)


def wikitext_detokenize(text: str) -> str:
    for pattern, replacement in _WIKITEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def wikitext_articles(text: str) -> Iterator[str]:
    """Each article of a WikiText file (from one level-1 heading to the next), detokenized."""
    starts = [m.start() for m in _WIKITEXT_ARTICLE.finditer(text)] or [0]
    for begin, end in zip(starts, [*starts[1:], len(text)]):
        article = wikitext_detokenize(text[begin:end]).strip()
        if article:
            yield article + "\n"


RECIPES: dict[str, Callable[[str, str], Iterator[str]]] = {
    "gutenberg": lambda text, source: iter([gutenberg_body(text, source)]),
    "wikitext": lambda text, source: wikitext_articles(text),
}


def run_recipe(name: str, sources: Sequence[Path], out: Path) -> tuple[int, int]:
    """Write the documents of `sources` cleaned by recipe `name` to the JSONL file `out`,
    atomically. Returns (documents, characters)."""
    if name not in RECIPES:
        raise DataError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    lines, chars = [], 0
    for doc in iter_documents(sources):
        for text in recipe(doc.read(), doc.source):
            # The corpus format's fields: source is the kind (the recipe), location the file.
            record = {"text": text, "source": name, "location": doc.source}
            lines.append(json.dumps(record, ensure_ascii=False))
            chars += len(text)
    write_atomic(out, "\n".join(lines) + "\n")
    return len(lines), chars

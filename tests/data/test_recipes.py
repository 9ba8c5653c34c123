"""Corpus recipes: Project Gutenberg bodies without the licence, WikiText articles detokenized."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from graft.data.recipes import gutenberg_body, run_recipe, wikitext_articles, wikitext_detokenize
from graft.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_wikitext_tokenisation_is_undone() -> None:
    text = (
        " The game 's well @-@ known ( and 1 @,@ 000 ) units , \" he said \" ; it do n't stop : "
        "the dogs ' bowl cost $ 3 @.@ 5 .\n"
    )
    assert wikitext_detokenize(text) == (
        "The game's well-known (and 1,000) units, \"he said\"; it don't stop: "
        "the dogs' bowl cost $3.5.\n"
    )


def test_wikitext_articles_split_on_level_one_headings_only() -> None:
    text = (
        " = First = \n \n Body one .\n \n = = Section = = \n \n More .\n"
        " = Second = \n \n Body two .\n"
    )
    articles = list(wikitext_articles(text))
    assert [a.splitlines()[0] for a in articles] == ["= First =", "= Second ="]
    assert "= = Section = =" in articles[0] and "More." in articles[0]


def test_gutenberg_body_drops_header_and_licence() -> None:
    text = (
        "The Project Gutenberg eBook of X\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n"
        "Chapter 1\nIt was.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence text\n"
    )
    assert gutenberg_body(text, "x.txt") == "Chapter 1\nIt was.\n"
    with pytest.raises(DataError, match="x.txt: no '\\*\\*\\* START OF"):
        gutenberg_body("no markers here", "x.txt")


def test_gutenberg_body_ends_before_an_end_of_the_ebook_line() -> None:
    # Older releases close the book with such a line inside the markers (PG's README: 9 of the
    # 21 shared books), in either wording, wrapped or not.
    for line in (
        "End of the Project Gutenberg EBook of X, by Y",
        "End of Project Gutenberg's X, by Y",
        "END OF THE PROJECT GUTENBERG EBOOK X\nwrapped on to a second line",
    ):
        text = (
            "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nChapter 1\nThe end of it.\n\n"
            f"{line}\n\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence text\n"
        )
        assert gutenberg_body(text, "x.txt") == "Chapter 1\nThe end of it.\n", line


def test_recipes_write_jsonl_documents(tmp_path: Path) -> None:
    (tmp_path / "wiki.txt").write_text(
        " = A = \n text , here .\n = B = \n more .\n", encoding="utf-8"
    )
    assert run_recipe("wikitext", [tmp_path / "wiki.txt"], tmp_path / "out.jsonl") == (
        2,
        len("= A =\ntext, here.\n") + len("= B =\nmore.\n"),
    )
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["= A =\ntext, here.\n", "= B =\nmore.\n"]
    # The corpus format: source is the kind of input (the recipe), location where it came from.
    assert {(r["source"], r["location"]) for r in rows} == {
        ("wikitext", str(tmp_path / "wiki.txt"))
    }
    with pytest.raises(DataError, match="unknown recipe 'wiki'"):
        run_recipe("wiki", [tmp_path / "wiki.txt"], tmp_path / "x.jsonl")


def test_real_corpora(tmp_path: Path) -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (the shared datasets are not on this machine)")
    assert run_recipe("gutenberg", [SHARED / "books"], tmp_path / "books.jsonl")[0] == 21
    books = (tmp_path / "books.jsonl").read_text(encoding="utf-8").splitlines()
    trailer = re.compile(r"^End of (the )?Project Gutenberg", re.I | re.M)
    assert not [b for b in books if trailer.search(json.loads(b)["text"])]
    documents, _ = run_recipe(
        "wikitext", [SHARED / "wikitext-2" / "valid.txt"], tmp_path / "wiki.jsonl"
    )
    assert documents == 60
    text = (tmp_path / "wiki.jsonl").read_text(encoding="utf-8")
    assert " @-@ " not in text and " , " not in text

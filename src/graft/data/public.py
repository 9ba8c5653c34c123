"""Known public datasets, fetched, verified and converted: `graft data get NAME --out DIR`.

Each `Dataset` names its files (a path relative to a base URL, the sha256 and size of the exact
bytes, and the file's canonical upstream URL: a raw GitHub URL pinned to a commit), its licence,
citation and homepage, and a `convert` function that writes graft's formats: the corpus JSONL
`graft data prepare` reads, labelled JSONL for `graft finetune classify`, Alpaca records for
`finetune instruct`, CoNLL for `finetune tokens`.

Where the bytes come from: the upstream URLs by default; with a base URL (`--base-url` or
`$GRAFT_DATA_URL`) each file's relative path under it, so a mirror laid out like the relative
paths (a plain HTTP server over a copy) stands in for GitHub; with `--from DIR`, a local folder
laid out the same way. Whatever the origin, every file is checked against its sha256 and size.
A download streams into a hidden temporary file in the cache folder, hashed as it is written; a
mismatch deletes it and raises a DataError naming the URL and both hashes, so no partial or
wrong file is ever left behind. A verified download is renamed into the cache (laid out like the
relative paths too, so a cache is itself a valid `--from` folder) and is not fetched again.

The converted files, and a DATASET.md saying where they came from, what each is and which graft
command reads it, replace `--out` in one step (`atomic_directory`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from graft.atomic_files import atomic_directory, fsync_path, temporary_sibling
from graft.data.corpus import CorpusDoc, CorpusWriter
from graft.data.recipes import wikitext_articles
from graft.data.records import (
    TextRecord,
    read_conversations,
    read_labelled,
    read_polarity,
    stratified_split,
)
from graft.data.tagged import read_tagged
from graft.errors import ConfigError, DataError, first_line

__all__ = [
    "DATASETS",
    "DEFAULT_CACHE",
    "ENV_BASE_URL",
    "Dataset",
    "Fetched",
    "GetResult",
    "Output",
    "RemoteFile",
    "fetch_files",
    "get_dataset",
    "list_datasets",
]

#: The environment variable naming a base URL (a mirror laid out like the relative paths).
ENV_BASE_URL = "GRAFT_DATA_URL"
#: Where verified downloads are kept unless `--cache` says otherwise.
DEFAULT_CACHE = Path("~/.cache/graft/datasets")
#: The file written into every output folder; its presence marks a folder `get` may replace.
DATASET_CARD = "DATASET.md"
_CHUNK = 1 << 16
_SPLIT_SEED = 0


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: `path` relative to a base URL (and to the cache and `--from`
    folders), the sha256 and size of its exact bytes, and where it lives upstream (a GitHub
    repository, the commit that holds this blob, the path in that repository)."""

    path: str
    sha256: str
    size: int
    repo: str
    commit: str
    repo_path: str

    @property
    def upstream(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.repo_path}"

    def url(self, base_url: str | None) -> str:
        """Where to fetch it: under `base_url` when one is given, else upstream."""
        if not base_url:
            return self.upstream
        return f"{base_url.rstrip('/')}/{self.path}"


@dataclass(frozen=True)
class Output:
    """One converted file: its name in the output folder, what it holds, and what reads it."""

    name: str
    what: str
    reader: str


# The verified local copy of each file of a dataset, by its relative path.
Sources = Mapping[str, Path]


@dataclass(frozen=True)
class Dataset:
    """A recipe: the files to fetch, their terms, and the conversion to graft's formats.

    `convert(sources, folder)` writes the converted files into `folder` and describes them;
    `next_steps` are commands to run next, with `{out}` standing for the output folder."""

    name: str
    title: str
    files: tuple[RemoteFile, ...]
    licence: str
    citation: str
    homepage: str
    convert: Callable[[Sources, Path], list[Output]]
    next_steps: tuple[str, ...]
    notes: str = ""

    def upstream(self, path: str) -> str:
        return next(f.upstream for f in self.files if f.path == path)


# ---------------------------------------------------------------------------------------------
# Conversions


def _text(path: Path, encoding: str = "utf-8") -> str:
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not {encoding} text ({exc.reason} at byte {exc.start})") from exc


def _write_corpus(path: Path, docs: Iterable[CorpusDoc]) -> int:
    with CorpusWriter(path) as writer:
        for doc in docs:
            writer.write(doc)
    return writer.count


def _line_of(record: TextRecord) -> str:
    """The line number (or array index) part of a record's `file:line` source."""
    return record.source.rsplit(":", 1)[-1]


def _write_records(path: Path, records: Sequence[TextRecord], origin: Mapping[str, str]) -> None:
    """Labelled JSONL: {"text", "label", "source"} per record; `origin` maps the file a record
    was read from (its local path) to the relative path its source names instead."""
    lines = []
    for record in records:
        local = record.source.rsplit(":", 1)[0]
        source = f"{origin.get(local, local)}:{_line_of(record)}"
        lines.append(
            json.dumps(
                {"text": record.text, "label": record.label, "source": source}, ensure_ascii=False
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _counts(records: Sequence[TextRecord]) -> str:
    labels: dict[str, int] = {}
    for record in records:
        labels[record.label] = labels.get(record.label, 0) + 1
    return ", ".join(f"{n:,} {label}" for label, n in sorted(labels.items()))


def _labelled_splits(
    records: Sequence[TextRecord], origin: Mapping[str, str], folder: Path, what: str
) -> list[Output]:
    """all.jsonl, and a stratified 80/10/10 train/val/test split of it (seeded, so every get
    writes the same split), as labelled JSONL."""
    rest, test = stratified_split(records, 0.1, _SPLIT_SEED)
    train, val = stratified_split(rest, 1 / 9, _SPLIT_SEED)
    classify = "graft finetune classify"
    parts = [
        ("all.jsonl", records, f"every {what} ({_counts(records)})", f"{classify} --train"),
        (
            "train.jsonl",
            train,
            f"training split, 80% of each label ({_counts(train)})",
            f"{classify} --train",
        ),
        (
            "val.jsonl",
            val,
            f"validation split, 10% of each label ({_counts(val)})",
            f"{classify} --val",
        ),
        (
            "test.jsonl",
            test,
            f"test split, 10% of each label ({_counts(test)})",
            "graft eval --task classify",
        ),
    ]
    outputs = []
    for name, part, description, reader in parts:
        _write_records(folder / name, part, origin)
        outputs.append(Output(name, f"labelled JSONL (text, label, source): {description}", reader))
    return outputs


def _convert_tinyshakespeare(sources: Sources, folder: Path) -> list[Output]:
    path = sources["tinyshakespeare/input.txt"]
    text = _text(path)
    # The customary split: the first 90% of the characters for training, the rest for
    # validation; cut at the speech boundary (blank line) that follows the 90% mark.
    cut = text.find("\n\n", int(len(text) * 0.9))
    if cut < 0:
        raise DataError(f"{path}: no blank line after the first 90% of the text to split at")
    train, val = text[: cut + 1], text[cut + 2 :]
    location = TINYSHAKESPEARE.upstream("tinyshakespeare/input.txt")
    licence = "public domain"
    outputs = []
    for name, part, line, share in (
        ("train.jsonl", train, 1, "first 90%"),
        ("val.jsonl", val, train.count("\n") + 2, "last 10%"),
    ):
        doc = CorpusDoc(
            text=part,
            source="tinyshakespeare",
            location=f"{location}:{line}",
            licence=licence,
            meta={"split": name.removesuffix(".jsonl")},
        )
        _write_corpus(folder / name, [doc])
        what = f"corpus JSONL, one document: the {share} of the text ({len(part):,} characters)"
        outputs.append(Output(name, what, "graft data prepare"))
    return outputs


def _convert_wikitext(sources: Sources, folder: Path) -> list[Output]:
    outputs = []
    for relative, name, split in (
        ("wikitext-2/valid.txt", "val.jsonl", "validation"),
        ("wikitext-2/test.txt", "test.jsonl", "test"),
    ):
        location = WIKITEXT_2.upstream(relative)
        docs = (
            CorpusDoc(
                text=article,
                source="wikitext-2",
                location=f"{location}#{index}",
                licence="CC BY-SA 3.0",
                meta={"split": split},
            )
            for index, article in enumerate(wikitext_articles(_text(sources[relative])))
        )
        count = _write_corpus(folder / name, docs)
        what = f"corpus JSONL: the {count:,} articles of the {split} split, detokenised"
        outputs.append(Output(name, what, "graft eval --task lm, graft data prepare"))
    return outputs


def _convert_sms_spam(sources: Sources, folder: Path) -> list[Output]:
    collection = "sms_spam/SMSSpamCollection"
    records, _ = read_labelled(sources[collection])
    outputs = _labelled_splits(
        records, {str(sources[collection]): collection}, folder, "message (ham or spam)"
    )
    # The original readme holds the licence terms; it is Latin-1, written here as UTF-8.
    (folder / "readme.txt").write_text(
        _text(sources["sms_spam/readme"], "latin-1"), encoding="utf-8"
    )
    outputs.append(
        Output("readme.txt", "the collection's own readme (licence terms), as UTF-8", "people")
    )
    return outputs


def _convert_movie_reviews(sources: Sources, folder: Path) -> list[Output]:
    pos, neg = (
        "sentiment/rt-polaritydata/rt-polarity.pos",
        "sentiment/rt-polaritydata/rt-polarity.neg",
    )
    # Said to be Latin-1, the bytes are Windows-1252: its 0x85, 0x91, 0x96 and 0x97 (an
    # ellipsis, a quote and dashes, in context) would be C1 control characters in Latin-1.
    records = read_polarity(sources[pos], sources[neg], encoding="cp1252")
    origin = {str(sources[pos]): pos, str(sources[neg]): neg}
    return _labelled_splits(records, origin, folder, "snippet (pos or neg)")


def _convert_instructions(sources: Sources, folder: Path) -> list[Output]:
    path = sources["instructions/instruction-data.json"]
    read_conversations(path)  # every record is a valid Alpaca record, or this raises naming it
    records = json.loads(_text(path))
    # The book's split, in file order: 85% train, then 10% test, then the rest (5%) validation.
    n_train, n_test = int(len(records) * 0.85), int(len(records) * 0.1)
    parts = (
        ("train.jsonl", records[:n_train], "training split (the book's first 85%)"),
        ("val.jsonl", records[n_train + n_test :], "validation split (the book's last 5%)"),
        ("test.jsonl", records[n_train : n_train + n_test], "test split (the book's 10%)"),
    )
    outputs = []
    for name, part, description in parts:
        lines = [json.dumps(record, ensure_ascii=False) for record in part]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        reader = "graft eval --task generate" if name == "test.jsonl" else "graft finetune instruct"
        what = f"Alpaca JSONL (instruction, input, output): {len(part):,} records, {description}"
        outputs.append(Output(name, what, reader))
    return outputs


def _convert_conll2003(sources: Sources, folder: Path) -> list[Output]:
    outputs = []
    for relative, name, split, reader in (
        (
            "conll2003/train.txt",
            "train.txt",
            "training (eng.train)",
            "graft finetune tokens --train",
        ),
        (
            "conll2003/dev.txt",
            "val.txt",
            "validation (dev, eng.testa)",
            "graft finetune tokens --val",
        ),
        ("conll2003/test.txt", "test.txt", "test (eng.testb)", "graft eval --task tokens"),
    ):
        # Read as graft will read it, so a file graft cannot use fails here, not in training.
        sentences, _ = read_tagged(sources[relative])
        tokens = sum(len(s.words) for s in sentences)
        shutil.copyfile(sources[relative], folder / name)
        what = (
            f"CoNLL columns (token POS chunk NER, BIO tags), as shipped: the {split} split, "
            f"{len(sentences):,} sentences, {tokens:,} tokens"
        )
        outputs.append(Output(name, what, reader))
    return outputs


# ---------------------------------------------------------------------------------------------
# The recipes

TINYSHAKESPEARE = Dataset(
    name="tinyshakespeare",
    title="Tiny Shakespeare (char-rnn)",
    files=(
        RemoteFile(
            "tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            1_115_394,
            "karpathy/char-rnn",
            "370cbcd448eb7daf32f21a6be560b70e0b33c4e3",
            "data/tinyshakespeare/input.txt",
        ),
    ),
    licence="Shakespeare's text: public domain (the char-rnn repository: MIT)",
    citation="Andrej Karpathy. char-rnn, 2015. https://github.com/karpathy/char-rnn",
    homepage="https://github.com/karpathy/char-rnn",
    convert=_convert_tinyshakespeare,
    next_steps=(
        "graft data prepare {out}/train.jsonl --val {out}/val.jsonl --tokenizer bytes "
        "--out runs/tinyshakespeare-data",
        "graft pretrain --data runs/tinyshakespeare-data --out runs/tinyshakespeare",
    ),
    notes="40,000 lines of plays, 65 distinct characters: the character-level language "
    "modelling set of char-rnn and nanoGPT. It ships unsplit; the usual split (first 90% / last "
    "10% of the characters) is made at a blank line.",
)

WIKITEXT_2 = Dataset(
    name="wikitext-2",
    title="WikiText-2 (v1, tokenised): validation and test",
    files=tuple(
        RemoteFile(
            f"wikitext-2/{split}.txt",
            sha,
            size,
            "pytorch/examples",
            "d5678bc8ac0cdd79dbd5e44d4130271018bcec4e",
            f"word_language_model/data/wikitext-2/{split}.txt",
        )
        for split, sha, size in (
            (
                "valid",
                "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                1_121_681,
            ),
            ("test", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", 1_256_449),
        )
    ),
    licence="CC BY-SA 3.0 (Merity et al., Salesforce); the pytorch/examples repository: "
    "BSD-3-Clause",
    citation="Stephen Merity, Caiming Xiong, James Bradbury, Richard Socher. Pointer Sentinel "
    "Mixture Models. arXiv:1609.07843, 2016.",
    homepage="https://arxiv.org/abs/1609.07843",
    convert=_convert_wikitext,
    next_steps=("graft eval CHECKPOINT --task lm --data {out}/test.jsonl",),
    notes="Wikipedia Good and Featured articles (wiki.valid.tokens and wiki.test.tokens). Each "
    "article (from one ` = Title = ` heading to the next) becomes a document, its tokenisation "
    "undone (`well @-@ known` -> `well-known`, `word ,` -> `word,`); rare words stay `<unk>`. "
    "The training split is not included: evaluate on these, train on other text.",
)

SMS_SPAM = Dataset(
    name="sms-spam",
    title="SMS Spam Collection v.1",
    files=(
        RemoteFile(
            "sms_spam/SMSSpamCollection",
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
            477_907,
            "PARKER-X/SpamClassifier",
            "5fa41eaf3ec0d21d3ffced673800d25b6b8ffc20",
            "smsspamcollection/SMSSpamCollection",
        ),
        RemoteFile(
            "sms_spam/readme",
            "656da9ff765ddeb69841ef429e3ad65f2207a9f410892a6f04f06542426fb75c",
            5_793,
            "PARKER-X/SpamClassifier",
            "5fa41eaf3ec0d21d3ffced673800d25b6b8ffc20",
            "smsspamcollection/readme",
        ),
    ),
    licence="free of charge, no warranty; copyright Tiago A. Almeida and José María Gómez "
    "Hidalgo, who ask to be cited (readme.txt, section 4; UCI lists it as CC BY 4.0)",
    citation="Tiago A. Almeida, José María Gómez Hidalgo, Akebo Yamakami. Contributions to the "
    "Study of SMS Spam Filtering: New Collection and Results. ACM DocEng 2011.",
    homepage="http://www.dt.fee.unicamp.br/~tiago/smsspamcollection/",
    convert=_convert_sms_spam,
    next_steps=(
        "graft finetune classify --init CHECKPOINT --train {out}/train.jsonl "
        "--val {out}/val.jsonl --out runs/sms-spam",
        "graft eval runs/sms-spam --task classify --data {out}/test.jsonl",
    ),
    notes="5,574 English text messages labelled ham (4,827) or spam (747).",
)

ALPACA_INSTRUCTIONS = Dataset(
    name="alpaca-instructions",
    title="Instruction data of Build a Large Language Model (From Scratch), chapter 7",
    files=(
        RemoteFile(
            "instructions/instruction-data.json",
            "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
            203_524,
            "rasbt/LLMs-from-scratch",
            "4ac480c9ae56ead3ba3bf71060ecbcd783bb8dc6",
            "ch07/01_main-chapter-code/instruction-data.json",
        ),
    ),
    licence="Apache-2.0 (the repository's licence; no separate data licence)",
    citation="Sebastian Raschka. Build a Large Language Model (From Scratch). Manning, 2024. "
    "https://github.com/rasbt/LLMs-from-scratch",
    homepage="https://github.com/rasbt/LLMs-from-scratch",
    convert=_convert_instructions,
    next_steps=(
        "graft finetune instruct --config configs/finetune/instruct.yaml --init CHECKPOINT "
        "--train {out}/train.jsonl --val {out}/val.jsonl --out runs/sft",
        "graft eval runs/sft --task generate --data {out}/test.jsonl",
    ),
    notes="1,100 Alpaca-format records (instruction, optional input, output), 775 of them "
    "without input; split as in the book, in file order: 935 train, 110 test, 55 validation.",
)

MOVIE_REVIEWS = Dataset(
    name="movie-reviews",
    title="Sentence polarity dataset v1.0 (MR, rt-polarity)",
    files=tuple(
        RemoteFile(
            f"sentiment/rt-polaritydata/rt-polarity.{label}",
            sha,
            size,
            "yoonkim/CNN_sentence",
            "4abc8df1de694999ff54826854d3ebc53e3e9c20",
            f"rt-polarity.{label}",
        )
        for label, sha, size in (
            ("pos", "2da124ec187a9d5a29c9f04e91c540e02baed5af8868f550a26bd6fd4dbf8bf0", 626_139),
            ("neg", "4ace77d558c3714723843f1d65b60c01e3417b208180f0728808d76ad0eeeaca", 612_256),
        )
    ),
    licence="no formal licence: a Cornell research release; cite Pang and Lee (2005)",
    citation="Bo Pang, Lillian Lee. Seeing stars: Exploiting class relationships for sentiment "
    "categorization with respect to rating scales. ACL 2005.",
    homepage="https://www.cs.cornell.edu/people/pabo/movie-review-data/",
    convert=_convert_movie_reviews,
    next_steps=(
        "graft finetune classify --init CHECKPOINT --train {out}/train.jsonl "
        "--val {out}/val.jsonl --out runs/movie-reviews",
        "graft eval runs/movie-reviews --task classify --data {out}/test.jsonl",
    ),
    notes="5,331 positive and 5,331 negative review snippets from Rotten Tomatoes, lower-cased "
    "and tokenised. The files are Windows-1252 (usually called Latin-1, but its 0x85, 0x91, "
    "0x96 and 0x97 are punctuation only in Windows-1252); the JSONL is UTF-8. There is no "
    "official split (10-fold cross-validation is usual); the split here is stratified and seeded.",
)

CONLL2003 = Dataset(
    name="conll2003",
    title="CoNLL-2003 English named-entity recognition",
    files=tuple(
        RemoteFile(
            f"conll2003/{split}.txt",
            sha,
            size,
            "kyzhouhzau/BERT-NER",
            "fae5424933953251be93a209b2a57c263fb5638a",
            f"old_version/NERdata/{split}.txt",
        )
        for split, sha, size in (
            (
                "train",
                "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423",
                3_283_420,
            ),
            ("dev", "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b", 827_443),
            ("test", "dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b", 748_095),
        )
    ),
    licence="NOT openly licensed: Reuters RCV1 text, for research use under the Reuters Corpus "
    "agreement; annotations by Tjong Kim Sang and De Meulder (the repository: MIT, code only)",
    citation="Erik F. Tjong Kim Sang, Fien De Meulder. Introduction to the CoNLL-2003 Shared "
    "Task: Language-Independent Named Entity Recognition. CoNLL 2003.",
    homepage="https://www.clips.uantwerpen.be/conll2003/ner/",
    convert=_convert_conll2003,
    next_steps=(
        "graft finetune tokens --config configs/finetune/tokens-ner.yaml --init CHECKPOINT "
        "--train {out}/train.txt --val {out}/val.txt --out runs/ner",
        "graft eval runs/ner --task tokens --data {out}/test.txt",
    ),
    notes="English news with PER, LOC, ORG and MISC entities, tags in IOB2 (BIO). graft reads "
    "the CoNLL files as they are (the tag is the last column; `-DOCSTART-` lines are skipped), "
    "so they are copied unchanged; dev is named val.txt.",
)

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        TINYSHAKESPEARE,
        WIKITEXT_2,
        SMS_SPAM,
        ALPACA_INSTRUCTIONS,
        MOVIE_REVIEWS,
        CONLL2003,
    )
}


def list_datasets() -> list[str]:
    """One line per recipe: its name, title and licence."""
    width = max(len(name) for name in DATASETS)
    return [f"{d.name:<{width}}  {d.title}. Licence: {d.licence}" for d in DATASETS.values()]


# ---------------------------------------------------------------------------------------------
# Fetching and verifying


@dataclass(frozen=True)
class Fetched:
    """A verified local copy of one file: where it is, where it came from, whether the cache
    already held it (then nothing was fetched)."""

    file: RemoteFile
    path: Path
    origin: str
    cached: bool


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _mismatch(where: str, file: RemoteFile, actual: str, size: int) -> str:
    sizes = "" if size == file.size else f" ({size:,} bytes, expected {file.size:,})"
    return f"{where}: sha256 mismatch: expected {file.sha256}, got {actual}{sizes}"


def _download(client: httpx.Client, url: str, dest: Path, file: RemoteFile, timeout: float) -> None:
    """Stream `url` into a temporary sibling of `dest`, hashing as it goes; rename it into place
    only when its sha256 and size are `file`'s. On any failure the temporary file is deleted,
    and so are the folders made for it (a failed download leaves no empty cache folders)."""
    made = [folder for folder in dest.parents if not folder.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _stream(client, url, dest, file, timeout)
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _stream(client: httpx.Client, url: str, dest: Path, file: RemoteFile, timeout: float) -> None:
    temp = temporary_sibling(dest)
    digest, size = hashlib.sha256(), 0
    try:
        with temp.open("xb") as handle, client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise DataError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
            for chunk in response.iter_bytes(_CHUNK):
                size += len(chunk)
                if size > file.size:
                    raise DataError(
                        f"{url}: more than the expected {file.size:,} bytes, so its sha256 "
                        f"cannot be {file.sha256}; the download was deleted"
                    )
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        actual = digest.hexdigest()
        if actual != file.sha256 or size != file.size:
            raise DataError(_mismatch(url, file, actual, size) + "; the download was deleted")
        os.replace(temp, dest)
        fsync_path(dest.parent)
    except httpx.TimeoutException:
        temp.unlink(missing_ok=True)
        raise DataError(f"{url}: timed out after {timeout:g} s") from None
    except httpx.HTTPError as exc:
        temp.unlink(missing_ok=True)
        raise DataError(f"{url}: cannot fetch ({first_line(exc)})") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def fetch_files(
    dataset: Dataset,
    *,
    cache: Path | None = None,
    base_url: str | None = None,
    from_dir: Path | None = None,
    timeout: float = 60.0,
    echo: Callable[[str], None] | None = None,
) -> list[Fetched]:
    """A verified local copy of every file of `dataset`.

    With `from_dir`, the files are read where they are (`from_dir/<relative path>`) and only
    checked. Otherwise a file already in `cache` with the right sha256 is used as it is; any
    other is downloaded (from `base_url/<relative path>`, else upstream) into the cache.
    """
    say = echo or (lambda _line: None)
    fetched: list[Fetched] = []
    if from_dir is not None:
        for file in dataset.files:
            path = Path(from_dir) / file.path
            if not path.is_file():
                raise DataError(
                    f"{path}: no such file; --from expects a folder holding {file.path}"
                )
            actual, size = _sha256(path)
            if actual != file.sha256 or size != file.size:
                raise DataError(_mismatch(str(path), file, actual, size))
            fetched.append(Fetched(file, path, str(path), cached=False))
        return fetched

    root = Path(cache if cache is not None else DEFAULT_CACHE).expanduser()
    with httpx.Client(
        timeout=timeout, follow_redirects=True, headers={"User-Agent": "graft-data-get"}
    ) as client:
        for file in dataset.files:
            dest = root / file.path
            url = file.url(base_url)
            if dest.is_file():
                actual, size = _sha256(dest)
                if actual == file.sha256 and size == file.size:
                    say(f"cached: {dest}")
                    fetched.append(Fetched(file, dest, url, cached=True))
                    continue
                say(f"{dest}: cached copy does not match its sha256; fetching it again")
                dest.unlink()
            say(f"fetching {url} ({file.size:,} bytes)")
            _download(client, url, dest, file, timeout)
            fetched.append(Fetched(file, dest, url, cached=False))
    return fetched


# ---------------------------------------------------------------------------------------------
# Getting a dataset


@dataclass
class GetResult:
    dataset: Dataset
    out: Path
    fetched: list[Fetched]
    outputs: list[Output] = field(default_factory=list)

    def next_steps(self) -> list[str]:
        return [step.format(out=self.out) for step in self.dataset.next_steps]


def _check_out(out: Path) -> None:
    """`out` may be replaced: it is missing, empty, or an earlier `graft data get` output."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a folder")
    if any(out.iterdir()) and not (out / DATASET_CARD).is_file():
        raise DataError(
            f"--out {out}: folder holds files that graft data get did not write (no "
            f"{DATASET_CARD}); it would be replaced as a whole, so choose a new or empty folder"
        )


def _card(result: GetResult, from_dir: Path | None, base_url: str | None) -> str:
    d = result.dataset
    if from_dir is not None:
        origin = f"the local folder `{from_dir}`"
    elif base_url:
        origin = f"the mirror `{base_url}`"
    else:
        origin = "the upstream URLs below"
    lines = [
        f"# {d.title}",
        "",
        f"Written by `graft data get {d.name}`. {d.notes}",
        "",
        f"- Licence: {d.licence}",
        f"- Cite: {d.citation}",
        f"- Homepage: {d.homepage}",
        "",
        "## Sources",
        "",
        f"Fetched from {origin}; every file matched its sha256 and size.",
        "",
        "| file | upstream URL | sha256 | bytes |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{f.path}` | {f.upstream} | `{f.sha256}` | {f.size:,} |" for f in d.files]
    lines += ["", "## Files", "", "| file | what it is | read by |", "|---|---|---|"]
    lines += [f"| `{o.name}` | {o.what} | {o.reader} |" for o in result.outputs]
    lines += ["", "## Next", "", "```sh", *result.next_steps(), "```", ""]
    return "\n".join(lines)


def get_dataset(
    name: str,
    out: Path,
    *,
    cache: Path | None = None,
    base_url: str | None = None,
    from_dir: Path | None = None,
    timeout: float = 60.0,
    echo: Callable[[str], None] | None = None,
) -> GetResult:
    """Fetch and verify recipe `name`'s files (see `fetch_files`), convert them and write the
    converted files and DATASET.md into `out`, replacing it in one step. `out` must be missing,
    empty or an earlier output of this function."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if not timeout > 0:
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout}")
    dataset = DATASETS[name]
    out = Path(out)
    _check_out(out)
    fetched = fetch_files(
        dataset, cache=cache, base_url=base_url, from_dir=from_dir, timeout=timeout, echo=echo
    )
    result = GetResult(dataset, out, fetched)
    sources = {f.file.path: f.path for f in fetched}
    with atomic_directory(out) as folder:
        result.outputs = dataset.convert(sources, folder)
        (folder / DATASET_CARD).write_text(_card(result, from_dir, base_url), encoding="utf-8")
    return result

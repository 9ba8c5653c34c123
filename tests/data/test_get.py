"""`graft data get`: every recipe fetched from a local mirror of shared/data (an HTTP server on
127.0.0.1), verified by sha256 and converted; a wrong file leaves nothing behind; the cache spares
a second download; the converted files are accepted by pre-training and fine-tuning."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from graft.cli import main
from graft.data.corpus import read_corpus
from graft.data.public import DATASETS, ENV_BASE_URL
from graft.data.records import read_conversations, read_labelled
from graft.data.tagged import read_tagged

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no copy of the data at {SHARED}")

PREFIX = "/mirror/"  # the server's files live under this path, to check URLs are joined


class Mirror:
    """What the test server serves and what it was asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.hits: Counter[str] = Counter()
        self.replace: dict[str, bytes] = {}  # relative path -> the bytes served instead
        self.delay: dict[str, float] = {}  # relative path -> seconds to wait before answering
        self.lock = threading.Lock()
        self.url = ""

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()
        self.replace.clear()
        self.delay.clear()

    def total(self) -> int:
        with self.lock:
            return sum(self.hits.values())


def _handler(mirror: Mirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            relative = path.removeprefix(PREFIX) if path.startswith(PREFIX) else None
            with mirror.lock:
                mirror.hits[relative or path] += 1
            if relative is not None and relative in mirror.delay:
                time.sleep(mirror.delay[relative])
            body = mirror.replace.get(relative or "")
            if body is None and relative is not None:
                file = (mirror.root / relative).resolve()
                if file.is_relative_to(mirror.root) and file.is_file():
                    body = file.read_bytes()
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture(scope="module")
def mirror() -> Iterator[Mirror]:
    served = Mirror(SHARED)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fresh(mirror: Mirror) -> Iterator[Mirror]:
    """The mirror with its counts cleared and nothing replaced or delayed."""
    mirror.reset()
    yield mirror
    mirror.reset()


def get(mirror: Mirror, name: str, out: Path, cache: Path, *extra: str) -> int:
    return main(
        ["data", "get", name, "--out", str(out), "--base-url", mirror.url, "--cache", str(cache)]
        + list(extra)
    )


@pytest.fixture(scope="module")
def gotten(tmp_path_factory: pytest.TempPathFactory, mirror: Mirror) -> Callable[[str], Path]:
    """`gotten(name)`: the output folder of one `graft data get name` from the mirror, run once
    per module (into one shared cache; the mirror's hits for its files are checked then)."""
    root = tmp_path_factory.mktemp("get")
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            before = Counter(mirror.hits)
            out = root / "out" / name
            assert get(mirror, name, out, root / "cache") == 0
            fetched = mirror.hits - before
            assert fetched == Counter({f.path: 1 for f in DATASETS[name].files})
            done[name] = out
        return done[name]

    return run


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# What each recipe's output must hold, read back with graft's own readers.
def _check_tinyshakespeare(out: Path) -> None:
    train, val = (list(read_corpus(out / f"{s}.jsonl")) for s in ("train", "val"))
    assert len(train) == len(val) == 1
    original = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert train[0].text + "\n" + val[0].text == original
    assert 0.89 < len(train[0].text) / len(original) < 0.91
    assert train[0].source == "tinyshakespeare" and train[0].licence == "public domain"


def _check_wikitext(out: Path) -> None:
    val, test = (list(read_corpus(out / f"{s}.jsonl")) for s in ("val", "test"))
    assert len(val) == 60 and len(test) == 62  # one per ` = Title = ` heading
    assert val[0].text.startswith("= Homarus gammarus =\n")
    assert not any(" @-@ " in d.text or " , " in d.text for d in val + test)
    assert all(d.licence == "CC BY-SA 3.0" for d in test)


def _sources(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["source"] for line in lines]


def _check_labelled(out: Path, total: int, labels: dict[str, int]) -> None:
    every, _ = read_labelled(out / "all.jsonl")
    assert len(every) == total and Counter(r.label for r in every) == labels
    # The splits partition all.jsonl, holding 80/10/10% of every label.
    parts = [_sources(out / f"{s}.jsonl") for s in ("train", "val", "test")]
    assert sorted(sum(parts, [])) == sorted(_sources(out / "all.jsonl"))
    assert len(set(_sources(out / "all.jsonl"))) == total
    for split, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        counts = Counter(r.label for r in read_labelled(out / f"{split}.jsonl")[0])
        for label, n in labels.items():
            assert abs(counts[label] - share * n) <= 1, (split, label)


def _check_sms_spam(out: Path) -> None:
    _check_labelled(out, 5574, {"ham": 4827, "spam": 747})
    first = json.loads((out / "all.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["source"] == "sms_spam/SMSSpamCollection:1"
    assert "LICENSE" in (out / "readme.txt").read_text(encoding="utf-8")


def _check_movie_reviews(out: Path) -> None:
    _check_labelled(out, 10662, {"pos": 5331, "neg": 5331})
    texts = (out / "all.jsonl").read_text(encoding="utf-8")
    # Windows-1252 decoded (0x85 is an ellipsis, not a C1 control), written as UTF-8.
    assert "é" in texts and "…" in texts and "\x85" not in texts


def _check_alpaca(out: Path) -> None:
    sizes = {s: len(read_conversations(out / f"{s}.jsonl")[0]) for s in ("train", "val", "test")}
    assert sizes == {"train": 935, "val": 55, "test": 110}
    original = json.loads((SHARED / "instructions" / "instruction-data.json").read_bytes())
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == original[:935]


def _check_conll(out: Path) -> None:
    for name, shipped, sentences in (
        ("train.txt", "train.txt", 14041),
        ("val.txt", "dev.txt", 3250),
        ("test.txt", "test.txt", 3453),
    ):
        assert (out / name).read_bytes() == (SHARED / "conll2003" / shipped).read_bytes()
        assert len(read_tagged(out / name)[0]) == sentences


CHECKS: dict[str, Callable[[Path], None]] = {
    "tinyshakespeare": _check_tinyshakespeare,
    "wikitext-2": _check_wikitext,
    "sms-spam": _check_sms_spam,
    "alpaca-instructions": _check_alpaca,
    "movie-reviews": _check_movie_reviews,
    "conll2003": _check_conll,
}


def test_every_recipe_has_a_check() -> None:
    assert set(CHECKS) == set(DATASETS)


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_recipe_is_fetched_verified_and_converted(
    gotten: Callable[[str], Path], name: str
) -> None:
    out = gotten(name)
    dataset = DATASETS[name]
    cache = out.parents[1] / "cache"
    for file in dataset.files:
        assert _sha256(cache / file.path) == file.sha256 == _sha256(SHARED / file.path)
        assert file.upstream.startswith("https://raw.githubusercontent.com/")
    card = (out / "DATASET.md").read_text(encoding="utf-8")
    for needle in (
        *(f.sha256 for f in dataset.files),
        *(f.upstream for f in dataset.files),
        dataset.licence,
        dataset.citation,
    ):
        assert needle in card
    written = {p.name for p in out.iterdir()}
    assert written >= {"DATASET.md"} and not any(n.startswith(".") for n in written)
    CHECKS[name](out)


def test_the_output_says_what_to_run_next(
    fresh: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert get(fresh, "sms-spam", out, tmp_path / "cache") == 0
    printed = capsys.readouterr().out
    assert f"--train {out}/train.jsonl --val {out}/val.jsonl" in printed
    assert "train.jsonl: labelled JSONL" in printed and "next:" in printed


@pytest.mark.parametrize(
    ("name", "corrupt", "bad"),
    [
        ("tinyshakespeare", "flip", "tinyshakespeare/input.txt"),
        ("tinyshakespeare", "truncate", "tinyshakespeare/input.txt"),
        ("tinyshakespeare", "extend", "tinyshakespeare/input.txt"),
        ("sms-spam", "flip", "sms_spam/readme"),  # the second file: the first stays cached
    ],
)
def test_a_checksum_mismatch_leaves_no_file(
    fresh: Mirror,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    corrupt: str,
    bad: str,
) -> None:
    good = (SHARED / bad).read_bytes()
    body = {
        "flip": good[:100] + bytes([good[100] ^ 1]) + good[101:],
        "truncate": good[:-10],
        "extend": good + b"more",
    }[corrupt]
    fresh.replace[bad] = body
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert get(fresh, name, out, cache) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    url = fresh.url + bad
    file = next(f for f in DATASETS[name].files if f.path == bad)
    assert f"{url}:" in err and file.sha256 in err
    if corrupt == "extend":
        assert "more than the expected" in err
    else:
        assert f"got {hashlib.sha256(body).hexdigest()}" in err and "sha256 mismatch" in err
    kept = [f.path for f in DATASETS[name].files if f.path != bad]
    # The verified files stay cached; folders made only for the bad one do not.
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == (["cache"] if kept else [])
    assert [p.relative_to(cache).as_posix() for p in _files(cache)] == kept


def test_a_second_get_makes_no_request(fresh: Mirror, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert get(fresh, "sms-spam", tmp_path / "a", cache) == 0
    assert fresh.total() == 2
    # Into the same folder (replacing the earlier output) and into another: no request.
    assert get(fresh, "sms-spam", tmp_path / "a", cache) == 0
    assert get(fresh, "sms-spam", tmp_path / "b", cache) == 0
    assert fresh.total() == 2
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (
        tmp_path / "b" / "train.jsonl"
    ).read_bytes()
    # A damaged cached copy is fetched again, the good one is not.
    cached = cache / "sms_spam" / "readme"
    cached.write_bytes(cached.read_bytes()[:-1])
    assert get(fresh, "sms-spam", tmp_path / "b", cache) == 0
    assert fresh.hits == Counter({"sms_spam/SMSSpamCollection": 1, "sms_spam/readme": 2})


def test_the_base_url_comes_from_the_environment(
    fresh: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_BASE_URL, fresh.url)
    out = tmp_path / "out"
    argv = ["data", "get", "alpaca-instructions", "--out", str(out), "--cache", str(tmp_path / "c")]
    assert main(argv) == 0
    assert fresh.hits == Counter({"instructions/instruction-data.json": 1})
    assert f"the mirror `{fresh.url}`" in (out / "DATASET.md").read_text(encoding="utf-8")


def test_from_a_local_folder_is_verified_too(
    fresh: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    argv = ["data", "get", "tinyshakespeare", "--cache", str(cache), "--from"]
    assert main([*argv, str(SHARED), "--out", str(tmp_path / "ok")]) == 0
    assert fresh.total() == 0 and not cache.exists()
    copy = tmp_path / "copy" / "tinyshakespeare" / "input.txt"
    copy.parent.mkdir(parents=True)
    copy.write_bytes((SHARED / "tinyshakespeare" / "input.txt").read_bytes().replace(b"A", b"a"))
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "copy"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert f"{copy}: sha256 mismatch: expected {DATASETS['tinyshakespeare'].files[0].sha256}" in err
    assert not (tmp_path / "bad").exists()
    assert main([*argv, str(tmp_path / "empty"), "--out", str(tmp_path / "bad")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_http_errors_and_timeouts_are_one_line_naming_the_url(
    fresh: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = fresh.url.replace(PREFIX, "/nowhere/")
    argv = ["data", "get", "tinyshakespeare", "--out", str(tmp_path / "out")]
    assert main([*argv, "--base-url", missing, "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"graft: error: {missing}tinyshakespeare/input.txt: HTTP 404 Not Found"
    fresh.delay["tinyshakespeare/input.txt"] = 2.0
    assert get(fresh, "tinyshakespeare", tmp_path / "out", tmp_path / "c", "--timeout", "0.3") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"graft: error: {fresh.url}tinyshakespeare/input.txt: timed out after 0.3 s"
    assert not (tmp_path / "out").exists() and _files(tmp_path / "c") == []


def test_a_folder_get_did_not_write_is_not_replaced(
    fresh: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    assert get(fresh, "tinyshakespeare", tmp_path / "mine", tmp_path / "c") == 2
    assert "did not write" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert fresh.total() == 0


def test_list_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "get", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(DATASETS)
    assert all(d.licence in line for d, line in zip(DATASETS.values(), listed))
    assert main(["data", "get", "imagenet", "--out", "x"]) == 2
    assert "unknown dataset 'imagenet'; choose one of: tinyshakespeare" in capsys.readouterr().err
    assert main(["data", "get", "sms-spam"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["data", "get", "sms-spam", "--out", "x", "--timeout", "0"]) == 2
    assert "timeout must be a positive number" in capsys.readouterr().err


# Accepted by training: tiny models, two steps each. The base is pre-trained on the Tiny
# Shakespeare output with a context long enough for the instruction records.
TINY = [
    "--model.preset=nano",
    "--model.max_seq_len=320",
    "--model.d_model=32",
    "--model.n_layers=2",
    "--model.n_heads=2",
    "--train.batch_size=8",
    "--train.max_steps=2",
    "--train.eval_every=2",
    "--train.eval_batches=1",
    "--train.progress=false",
    "--optim.warmup_steps=1",
]
# Record objectives evaluate the whole validation set, before and after training: large batches
# keep that quick (the instruction records, longer, stay at 8).
STEPS = [
    "--train.max_steps=2",
    "--train.eval_every=2",
    "--train.progress=false",
    "--optim.warmup_steps=1",
]


@pytest.fixture(scope="module")
def base(gotten: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`graft data prepare` + `graft pretrain` on the tinyshakespeare output."""
    out = gotten("tinyshakespeare")
    root = tmp_path_factory.mktemp("pretrain")
    data = root / "data"
    prepare = ["data", "prepare", str(out / "train.jsonl"), "--val", str(out / "val.jsonl")]
    assert main([*prepare, "--tokenizer", "bytes", "--out", str(data), "--no-progress"]) == 0
    run = root / "run"
    assert main(["pretrain", "--data", str(data), "--out", str(run), *TINY]) == 0
    return run / "checkpoints" / "last"


def test_tinyshakespeare_pretrains(base: Path) -> None:
    assert base.is_dir()


# Fine-tuning scores its whole validation file: CoNLL's (3,250 sentences) is read in full by the
# recipe test, and here its first sentences validate (val.head.txt), which keeps the test quick.
@pytest.mark.parametrize(
    ("task", "name", "extra"),
    [
        ("classify", "sms-spam", ["--train.batch_size=64"]),
        ("tokens", "conll2003", ["--train.batch_size=64"]),
        ("instruct", "alpaca-instructions", ["--train.batch_size=8"]),
    ],
)
def test_the_output_fine_tunes(
    base: Path,
    gotten: Callable[[str], Path],
    tmp_path: Path,
    task: str,
    name: str,
    extra: list[str],
) -> None:
    out = gotten(name)
    train, val = (
        (out / "train.txt", out / "val.txt")
        if task == "tokens"
        else (
            out / "train.jsonl",
            out / "val.jsonl",
        )
    )
    if task == "tokens":
        sentences = val.read_text(encoding="utf-8").split("\n\n")
        val = tmp_path / "val.head.txt"
        val.write_text("\n\n".join(sentences[:64]) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    argv = ["finetune", task, "--init", str(base), "--out", str(run)]
    argv += ["--train", str(train), "--val", str(val)]
    if task != "instruct":
        argv.append("--train.seq_len=64")  # the base's context (320) is for the instructions
    assert main([*argv, *STEPS, *extra]) == 0
    assert (run / "checkpoints" / "last").is_dir()


def test_the_cache_and_mirror_layouts_agree() -> None:
    """Every relative path is one in shared/data, so a server over a copy of it is a mirror."""
    for dataset in DATASETS.values():
        for file in dataset.files:
            assert (SHARED / file.path).stat().st_size == file.size, file.path

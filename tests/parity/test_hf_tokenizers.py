"""Reading a Hugging Face directory's tokenizer: graft's ids equal AutoTokenizer's for the same
directory (without special tokens), its special-token roles and chat template are read, and saving
keeps them. Every tokenizer is built here from hand-written or locally trained vocabularies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from graft.data.records import Message
from graft.data.tokenizer import Tokenizer
from graft.errors import TokenizerError

pytestmark = pytest.mark.parity

SAMPLE = (
    "Hello World! The naïve café serves crème brûlée; ÜBER straße. 東京都に住む。中文 한국어 "
    "🙂👍🏽 emoji\n"
    "def f(x):\n\treturn x**2  # ok\r\n"
    "  spaces   and\u00a0nbsp, ‘quotes’ — dashes… İstanbul ΟΔΟΣ\u200bzero-width [x] (y) {z}"
)
SAMPLES = [
    SAMPLE,
    "",
    " ",
    "a",
    "hello",
    "Hello World",
    "  leading and trailing  ",
    "東京都",
    "🙂👍🏽",
    "naïve café",
    "def f(x):\n\treturn x**2  # ok",
]

BERT_VOCAB = list(
    dict.fromkeys(
        [  # dict.fromkeys: drop repeats, keep the order
            "[PAD]",
            "[UNK]",
            "[CLS]",
            "[SEP]",
            "[MASK]",
            *"!#()*,-.0123456789:;?[]{}_'‘’—…。",
            *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
            *"東京都に住む中文éüïèßİΟΔΣ",
            "hello",
            "world",
            "the",
            "serve",
            "##s",
            "na",
            "##ive",
            "##ïve",
            "caf",
            "##e",
            "##é",
            "cre",
            "##me",
            "##è",
            "bru",
            "##lee",
            "über",
            "uber",
            "stra",
            "##ße",
            "##sse",
            "def",
            "return",
            "ok",
            "f",
            "x",
            "space",
            "and",
            "##b",
            "##sp",
            "quote",
            "dash",
            "##es",
            "is",
            "##tan",
            "##bul",
            "zero",
            "width",
            "Hello",
            "World",
            "The",
            "ÜBER",
            "##ü",
            "##ber",
            "emoji",
            "paris",
            "Paris",
            "of",
            "france",
            "France",
            "##ll",
            "##o",
            "##rld",
            "##ld",
            "lead",
            "##ing",
            "trail",
        ]
    )
)


def text_with(token: str | None) -> str:
    """SAMPLE with a special token inside, as users' texts may have one."""
    return SAMPLE + (f" Paris is the {token} of France. {token}x" if token else "")


def auto(directory: Path):  # unannotated: transformers' tokenizer classes vary
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def assert_same_ids(directory: Path, special: str | None = None) -> tuple[Tokenizer, object]:
    ours, theirs = Tokenizer.load(directory), auto(directory)
    for text in [*SAMPLES, text_with(special)]:
        want = theirs(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text) == want, (directory.name, text)
    return ours, theirs


def assert_same_roles(ours: Tokenizer, theirs: object) -> None:
    for role in ("mask", "sep", "cls", "pad", "unk", "bos"):
        assert getattr(ours, f"{role}_id") == getattr(theirs, f"{role}_token_id"), role
    eos = theirs.eos_token_id
    assert ours.eot_id == (eos if eos is not None else theirs.sep_token_id)
    assert ours.vocab_size == len(theirs)


# ---------------------------------------------------------------- BERT WordPiece


def write_vocab(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(token + "\n" for token in BERT_VOCAB), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


def slow_bert_class():
    # transformers 5 keeps the pure-Python BERT as BertTokenizerLegacy; in 4 it is BertTokenizer.
    return getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_bert_slow_files_vocab_txt(vocab_file: Path, tmp_path: Path, lower: bool) -> None:
    slow_bert_class()(vocab_file=str(vocab_file), do_lower_case=lower).save_pretrained(
        tmp_path / "bert"
    )
    assert not (tmp_path / "bert" / "tokenizer.json").exists()  # graft builds it from vocab.txt
    ours, theirs = assert_same_ids(tmp_path / "bert", "[MASK]")
    assert ours.kind == "wordpiece"
    assert_same_roles(ours, theirs)
    assert (ours.mask_id, ours.sep_id, ours.cls_id, ours.pad_id, ours.unk_id) == (4, 3, 2, 0, 1)
    assert ours.eot_id == ours.sep_id  # BERT has no eos: sep separates documents
    assert ours.special_tokens_map == {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    # Lower-casing and accent stripping are read from do_lower_case.
    assert (ours.encode("naïve") == [BERT_VOCAB.index("na"), BERT_VOCAB.index("##ive")]) is lower


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_bert_vocab_txt_built_by_transformers_5(
    vocab_file: Path, tmp_path: Path, lower: bool
) -> None:
    """An older save (vocab.txt, tokenizer_config.json, special_tokens_map.json) that AutoTokenizer
    turns into its fast BertTokenizer, with options and a renamed role read from the configs."""
    directory = tmp_path / "bert"
    write_vocab(directory / "vocab.txt")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": lower,
                "strip_accents": None,
                "tokenize_chinese_chars": True,
                "model_max_length": 512,
            }
        )
    )
    (directory / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "unk_token": "[UNK]",
                "sep_token": "[SEP]",
                "pad_token": {"content": "[PAD]", "special": True},
                "cls_token": "[CLS]",
                "mask_token": "[MASK]",
            }
        )
    )
    ours, theirs = assert_same_ids(directory, "[MASK]")
    assert_same_roles(ours, theirs)


@pytest.mark.parametrize("reader", ["slow", "fast"])
def test_bert_vocab_txt_with_added_tokens(vocab_file: Path, tmp_path: Path, reader: str) -> None:
    """Added tokens listed in tokenizer_config.json get their ids after vocab.txt's. ("slow": the
    Python BERT reads the directory; it is cased here because, lower-casing, it matches a
    normalised added token only in text already lower-case, unlike transformers' fast tokenizers
    and graft, which match it after lower-casing. "fast": the class renamed, AutoTokenizer builds
    its fast BertTokenizer from the same files.)"""
    slow = slow_bert_class()(vocab_file=str(vocab_file), do_lower_case=reader == "fast")
    slow.add_special_tokens({"additional_special_tokens": ["<ent>"]})
    slow.add_tokens(["Zebra", "qux"])
    slow.save_pretrained(tmp_path / "bert")
    if reader == "fast":
        config_file = tmp_path / "bert" / "tokenizer_config.json"
        config_file.write_text(
            json.dumps({**json.loads(config_file.read_text()), "tokenizer_class": "BertTokenizer"})
        )
    ours, theirs = assert_same_ids(tmp_path / "bert", "<ent> Zebra qux zebra QUX")
    assert ours.vocab_size == len(BERT_VOCAB) + 3 == len(theirs)
    assert ours.token_to_id("<ent>") == theirs.convert_tokens_to_ids("<ent>") == len(BERT_VOCAB)


def test_bert_fast_tokenizer_json(vocab_file: Path, tmp_path: Path) -> None:
    slow_bert_class()(vocab_file=str(vocab_file), do_lower_case=True).save_pretrained(
        tmp_path / "slow"
    )
    fast_class = getattr(transformers, "BertTokenizerFast", transformers.BertTokenizer)
    fast_class.from_pretrained(str(tmp_path / "slow")).save_pretrained(tmp_path / "fast")
    assert (tmp_path / "fast" / "tokenizer.json").is_file()
    ours, theirs = assert_same_ids(tmp_path / "fast", "[MASK]")
    assert_same_roles(ours, theirs)
    slow = Tokenizer.load(tmp_path / "slow")
    assert [slow.encode(t) for t in SAMPLES] == [ours.encode(t) for t in SAMPLES]


# ---------------------------------------------------------------- byte-level BPE


def training_lines() -> list[str]:
    """A few hundred lines of local text: this package's sources plus some mixed-script prose."""
    root = Path(__file__).resolve().parents[2] / "src" / "graft"
    lines = [
        line for file in sorted(root.rglob("*.py"))[:8] for line in file.read_text().splitlines()
    ]
    prose = [
        "The naïve café serves crème brûlée in Paris.",
        "東京都に住む人は多い。中文文本。",
        "Emoji 🙂👍🏽 and code: def f(x): return x**2  # ok",
        "Hello World! Hello world!",
    ]
    return lines[:400] + prose * 20


def train_byte_bpe(specials: list[str]) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(training_lines(), trainer=trainer)
    return backend


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = train_byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = transformers.RobertaTokenizer(vocab=model["vocab"], merges=merges)
    directory = tmp_path_factory.mktemp("roberta")
    tokenizer.save_pretrained(directory)
    return directory


def test_roberta_byte_level_bpe(roberta_dir: Path) -> None:
    ours, theirs = assert_same_ids(roberta_dir, "<mask>")
    assert ours.kind == "bpe"
    assert_same_roles(ours, theirs)
    assert [ours.id_to_token(i) for i in (ours.bos_id, ours.eot_id, ours.pad_id, ours.mask_id)] == [
        "<s>",
        "</s>",
        "<pad>",
        "<mask>",
    ]
    assert ours.decode(ours.encode(SAMPLE)) == SAMPLE


def test_roberta_as_transformers_4_saved_it(roberta_dir: Path, tmp_path: Path) -> None:
    """roberta-base's layout: <mask> swallows the space before it (lstrip), and the config gives
    roles as serialised AddedTokens."""
    tokenizer_json = json.loads((roberta_dir / "tokenizer.json").read_text())
    for added in tokenizer_json["added_tokens"]:
        added["lstrip"] = added["content"] == "<mask>"
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    role = {
        "__type": "AddedToken",
        "content": "<mask>",
        "lstrip": True,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "RobertaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "sep_token": "</s>",
                "cls_token": "<s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "mask_token": role,
                "add_prefix_space": False,
                "trim_offsets": True,
                "errors": "replace",
            }
        )
    )
    ours, theirs = assert_same_ids(tmp_path, "<mask>")
    assert_same_roles(ours, theirs)
    # The space went with <mask>: no lone "Ġ" between them.
    assert [ours.id_to_token(i) for i in ours.encode("is the <mask>")][-2:] == ["Ġthe", "<mask>"]


TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}<|endoftext|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2 style: eos only, saved as a plain PreTrainedTokenizerFast with a chat template."""
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(["<|endoftext|>"]),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = TEMPLATE
    directory = tmp_path_factory.mktemp("gpt2")
    tokenizer.save_pretrained(directory)
    return directory


def test_gpt2_byte_level_bpe_and_its_chat_template(gpt2_dir: Path) -> None:
    ours, theirs = assert_same_ids(gpt2_dir, "<|endoftext|>")
    assert_same_roles(ours, theirs)
    assert (
        ours.eot_id == ours.token_to_id("<|endoftext|>")
        and ours.mask_id is None
        and ours.pad_id is None
    )
    assert ours.chat_template == TEMPLATE == theirs.chat_template


def test_a_template_that_names_bos_gets_it_as_transformers_gives_it(tmp_path: Path) -> None:
    """Llama's templates open with {{ bos_token }}: graft rendered it empty, so a served or
    fine-tuned chat prompt lacked the BOS the model was trained with."""
    from graft.serve.prompts import chat_prompt_ids

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(["<s>", "</s>"]), bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    tokenizer.save_pretrained(tmp_path)
    ours, theirs = Tokenizer.load(tmp_path), auto(tmp_path)
    chat = [Message("system", "Be brief."), Message("user", "Hi there")]
    text = theirs.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in chat],
        add_generation_prompt=True,
        tokenize=False,
    )
    # apply_chat_template's own tokenizing: the text, no special tokens added around it
    expected = theirs(text, add_special_tokens=False)["input_ids"]
    assert text.startswith("<s><|system|>") and expected[0] == theirs.bos_token_id
    assert chat_prompt_ids(ours, chat) == list(expected)


@pytest.mark.parametrize("form", ["string", "list", "jinja-wins"])
def test_chat_template_read_verbatim(gpt2_dir: Path, tmp_path: Path, form: str) -> None:
    directory = tmp_path / "tok"
    directory.mkdir()
    (directory / "tokenizer.json").write_bytes((gpt2_dir / "tokenizer.json").read_bytes())
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    other = "{{ messages[0]['content'] }}\n  trailing spaces and a\ttab  \n"
    if form == "string":
        config["chat_template"] = other
    elif form == "list":
        config["chat_template"] = [
            {"name": "tool_use", "template": TEMPLATE},
            {"name": "default", "template": other},
        ]
    else:
        config["chat_template"] = TEMPLATE
        (directory / "chat_template.jinja").write_text(other)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    ours = Tokenizer.load(directory)
    assert ours.chat_template == other
    theirs = auto(directory).chat_template
    assert (theirs["default"] if isinstance(theirs, dict) else theirs) == other


# ---------------------------------------------------------------- saving back, refusing


@pytest.mark.parametrize("source", ["bert", "roberta", "gpt2"])
def test_saving_keeps_roles_and_template_for_graft_and_transformers(
    vocab_file: Path, roberta_dir: Path, gpt2_dir: Path, tmp_path: Path, source: str
) -> None:
    if source == "bert":
        slow_bert_class()(vocab_file=str(vocab_file), do_lower_case=True).save_pretrained(
            tmp_path / "bert"
        )
    directory = {"bert": tmp_path / "bert", "roberta": roberta_dir, "gpt2": gpt2_dir}[source]
    original = Tokenizer.load(directory)
    saved = original.save(tmp_path / "ckpt")
    assert sorted(p.name for p in saved.parent.iterdir()) == [
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for again in (
        Tokenizer.load(saved.parent),
        Tokenizer.load(saved),
    ):  # checkpoints load the file path
        assert again.special_tokens_map == original.special_tokens_map
        assert again.chat_template == original.chat_template
        assert again.sha256 == original.sha256
        assert (again.eot_id, again.mask_id, again.sep_id) == (
            original.eot_id,
            original.mask_id,
            original.sep_id,
        )
    # transformers reads graft's save as graft does.
    ours, theirs = assert_same_ids(
        saved.parent, original.id_to_token(original.mask_id or original.eot_id or 0)
    )
    assert_same_roles(ours, theirs)
    assert [ours.encode(t) for t in SAMPLES] == [
        auto(directory)(t, add_special_tokens=False)["input_ids"] for t in SAMPLES
    ]


def test_a_sentencepiece_only_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x00")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    with pytest.raises(TokenizerError) as caught:
        Tokenizer.load(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: has tokenizer.model but no tokenizer.json or vocab.txt")
    assert "save_pretrained" in message and len(message.splitlines()) == 1


# -- a Llama tokenizer's bos ----------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama 2 tokenizer as transformers saves one: SentencePiece BPE (Metaspace words, byte
    fallback) whose post-processor opens every text with <s>."""
    trained = tokenizers.SentencePieceBPETokenizer()
    trained.train_from_iterator(
        training_lines(), vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]
    )
    model = json.loads(trained._tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = transformers.LlamaTokenizer(vocab=model["vocab"], merges=merges, add_bos_token=True)
    directory = tmp_path_factory.mktemp("llama")
    tokenizer.save_pretrained(directory)
    return directory


def test_only_a_bos_alone_before_the_text_opens_every_text(
    llama_dir: Path, roberta_dir: Path, gpt2_dir: Path
) -> None:
    """Llama's post-processor puts <s> before a text; RoBERTa's frame (<s> ... </s>) is the
    encoders' own, and GPT-2's tokenizer adds nothing."""
    assert auto(llama_dir)("hello")["input_ids"][0] == auto(llama_dir).bos_token_id
    llama = Tokenizer.load(llama_dir)
    assert llama.opens_with_bos
    assert not Tokenizer.load(roberta_dir).opens_with_bos
    assert not Tokenizer.load(gpt2_dir).opens_with_bos
    # Opening texts with bos changes the ids a model reads: not the same tokenizer to graft.
    bare = Tokenizer.load(llama_dir)
    bare.backend.post_processor = None
    assert not bare.opens_with_bos and bare.encoding_sha256 != llama.encoding_sha256


@pytest.mark.parametrize("text", ["hello world", "The naïve café serves", "a\nb", " x"])
def test_a_decoder_reads_a_llama_text_as_transformers_tokenizes_it(
    llama_dir: Path, text: str
) -> None:
    """graft read every text of a Llama tokenizer without the <s> its model always saw first: in
    fine-tuning, `graft generate`, /v1/completions and eval alike."""
    from graft.data.inputs import model_inputs, prompt_ids

    ours, theirs = Tokenizer.load(llama_dir), auto(llama_dir)
    expected = theirs(text)["input_ids"]
    assert expected[0] == ours.bos_id
    assert prompt_ids(ours, text) == expected
    assert model_inputs(ours, [text], framed=False, max_len=None).ids == [expected]
    # Cut to a budget, the text keeps its bos.
    cut = model_inputs(ours, [text], framed=False, max_len=2).ids[0]
    assert cut == expected[:2]
    assert prompt_ids(ours, "") == [ours.bos_id]


def test_prepared_llama_documents_open_with_bos(llama_dir: Path, tmp_path: Path) -> None:
    """Pre-training shards hold `<s> document </s>` per document, as Llama was pre-trained: a
    continued pre-training used to read documents that no <s> opened."""
    import numpy as np

    from graft.data.shards import prepare_shards

    ours = Tokenizer.load(llama_dir)
    texts = ["hello world", "The naïve café serves", "def f(x): return x"]
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(text)
    index = prepare_shards(
        [tmp_path / f"{i}.txt" for i in range(3)],
        ours,
        tmp_path / "data",
        val_fraction=0.01,
        progress=False,
    )
    ids = np.fromfile(tmp_path / "data" / index.splits["train"].file, dtype=index.np_dtype)
    documents = np.split(ids, np.flatnonzero(ids == ours.eot_id) + 1)[:-1]
    theirs = auto(llama_dir)
    expected = [[*theirs(text)["input_ids"], ours.eot_id] for text in texts]
    assert documents and all(d.tolist() in expected for d in documents)  # <s> first
    assert index.splits["train"].tokens == ids.size


def test_eval_lm_reads_each_document_after_bos_as_lm_eval_does(
    llama_dir: Path, tmp_path: Path
) -> None:
    """lm-evaluation-harness reads a rolling document after its prefix token, the tokenizer's
    bos where it has one: graft read a Llama document after </s>."""
    import torch

    from graft.checkpoint import save_checkpoint
    from graft.evaluate.evaluate import EvalOptions, evaluate_checkpoint
    from graft.model.config import ModelConfig
    from graft.model.transformer import LanguageModel

    ours = Tokenizer.load(llama_dir)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=ours.vocab_size,
        max_seq_len=64,
        d_model=32,
        n_layers=1,
        n_heads=2,
        init_std=0.3,
    )
    model = LanguageModel(config).eval()
    save_checkpoint(tmp_path / "ckpt", model=model, tokenizer=ours, run_config_yaml="{}\n")
    text = "The naïve café serves crème brûlée"
    (tmp_path / "doc.txt").write_text(text)
    options = EvalOptions(
        tmp_path / "ckpt", "lm", (tmp_path / "doc.txt",), out_dir=tmp_path / "eval"
    )
    report = json.loads(evaluate_checkpoint(options).read_text())
    ids = torch.tensor([auto(llama_dir)(text)["input_ids"]])  # <s> first
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:]).item()
    assert report["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("fixture", ["llama_dir", "vocab_file"])
def test_a_stream_keeps_the_spaces_between_words(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    """Metaspace (Llama 2) and WordPiece tokens decoded alone lose the space that opens a word:
    the stream ran words together at the prompt's end and every 32 tokens after."""
    from graft.infer.stream import TextStream

    path = request.getfixturevalue(fixture)
    ours = Tokenizer.load(path if path.is_dir() else path.parent)
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)
    ids = ours.encode(text)
    assert len(ids) > 40  # past the stream's window
    prompt, generated = ids[:3], ids[3:]
    stream = TextStream(ours, context=prompt)
    streamed = "".join(stream.push(i) for i in generated) + stream.flush()
    whole, head = ours.decode(ids), ours.decode(prompt)
    assert whole.startswith(head) and streamed == whole[len(head) :]


def llama3_base_tokenizer(directory: Path):  # unannotated: transformers' classes vary
    """A Llama 3 base model's tokenizer, saved in `directory`: its chat template closes turns
    with <|eot_id|>, its eos is <|end_of_text|>."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(specials),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
    )
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def test_a_prompt_reads_turns_closed_by_another_token_than_eos(tmp_path: Path) -> None:
    """A Llama 3 base model's template closes turns with <|eot_id|>, its eos is <|end_of_text|>:
    a multi-turn prompt was refused ("the model could not learn to stop"), a rule for training
    only; transformers reads it."""
    from graft.serve.prompts import chat_prompt_ids

    llama3_base_tokenizer(tmp_path)
    ours, theirs = Tokenizer.load(tmp_path), auto(tmp_path)
    chat = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "And?")]
    text = theirs.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in chat],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert chat_prompt_ids(ours, chat) == theirs(text, add_special_tokens=False)["input_ids"]


def test_a_chat_fine_tune_stops_where_its_template_closes_turns(tmp_path: Path) -> None:
    """A Llama 3 base model's template closes turns with <|eot_id|>, its eos is <|end_of_text|>:
    `finetune instruct` refused it ("the model could not learn to stop"). That token is now the
    fine-tuned model's eos: trained on, saved as its eos, and where generation stops."""
    import torch

    from graft.checkpoint import load_model
    from graft.cli import main
    from graft.data.chat import DEFAULT_CHAT_TEMPLATE, turn_end
    from graft.data.tokenizer import bytes_tokenizer

    base = tmp_path / "base"
    tokenizer = llama3_base_tokenizer(base)
    ours = Tokenizer.load(base)
    assert turn_end(ours, ours.chat_template) == "<|eot_id|>"
    assert turn_end(bytes_tokenizer(), DEFAULT_CHAT_TEMPLATE) is None  # eos closes graft's turns
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(base)
    rows = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ["cat", "dog"] * 8]
    (tmp_path / "sft.json").write_text(json.dumps(rows))
    out = tmp_path / "run"
    args = ["finetune", "instruct", "--init", str(base), "--train", str(tmp_path / "sft.json")]
    steps = ["--train.max_steps=1", "--train.eval_every=1", "--train.progress=false"]
    assert main([*args, "--out", str(out), *steps, "--train.batch_size=2"]) == 0
    _, tuned = load_model(out / "checkpoints" / "last")
    assert tuned.special_tokens_map["eos_token"] == "<|eot_id|>"
    assert tuned.eot_id == tuned.token_to_id("<|eot_id|>")

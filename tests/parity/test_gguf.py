"""GGUF export against llama.cpp's own reader (the `gguf` package): tiny random Llama-style graft
models written with export_gguf and read back with gguf.GGUFReader, tensor by tensor and key by
key; the q/k RoPE permutation checked both for invertibility and for giving the same attention
scores under llama.cpp's adjacent-pair rotation; and the configs that must be refused, with
nothing written. llama.cpp itself (llama-cpp-python) is used when importable, else skipped."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from graft.data.tokenizer import SPECIAL_TOKENS, Tokenizer, bytes_tokenizer, train_tokenizer
from graft.errors import ConfigError
from graft.model.config import ModelConfig, RopeScaling
from graft.model.convert.gguf import export_gguf, interleave_rope_rows, uninterleave_rope_rows
from graft.model.transformer import LanguageModel, RotaryEmbedding, apply_rotary

pytestmark = pytest.mark.parity

TEXT = [
    "the cat sat on the mat. " * 20,
    "a dog ran in the fog, then sat. " * 20,
    "héllo wörld ✓ " * 10,
]


def _llama(vocab_size: int, **overrides: object) -> LanguageModel:
    # d_ff=80: down_proj rows (80) are not whole q8_0 blocks, exercising the f16 fallback.
    fields: dict[str, object] = dict(
        vocab_size=vocab_size,
        max_seq_len=64,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=80,
        norm="rmsnorm",
        norm_eps=1e-6,
        positions="rope",
        mlp="swiglu",
        bias=False,
        tie_embeddings=True,
    )
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(**{**fields, **overrides})).eval()


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(TEXT, "bpe", vocab_size=300, min_frequency=1)


def _expected(model: LanguageModel) -> dict[str, torch.Tensor]:
    """What export_gguf should store, built independently of its name map."""
    c = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {
        "token_embd.weight": sd["model.embed_tokens.weight"],
        "output_norm.weight": sd["model.norm.weight"],
    }
    if not c.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(c.n_layers):
        for graft_name, gguf_name in names.items():
            out[f"blk.{i}.{gguf_name}.weight"] = sd[f"model.layers.{i}.{graft_name}.weight"]
    return out


def _field(reader: gguf.GGUFReader, key: str) -> object:
    assert key in reader.fields, f"missing key {key}"
    return reader.fields[key].contents()


def _tensor(t: gguf.ReaderTensor) -> np.ndarray:
    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)


def _unpermute(name: str, value: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    if name.endswith("attn_q.weight"):
        return uninterleave_rope_rows(value, config.n_heads)
    if name.endswith("attn_k.weight"):
        return uninterleave_rope_rows(value, config.kv_heads)
    return value


@pytest.mark.parametrize("tied", [True, False])
def test_f32_export_holds_every_tensor_exactly(tmp_path: Path, bpe: Tokenizer, tied: bool) -> None:
    model = _llama(bpe.vocab_size, tie_embeddings=tied)
    path = export_gguf(model, bpe, tmp_path / "m.gguf", dtype="f32")
    assert path == tmp_path / "m.gguf" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    reader = gguf.GGUFReader(path)
    expected = _expected(model)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(expected)
    for name, want in expected.items():
        t = got[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
        assert tuple(int(n) for n in t.shape) == tuple(reversed(want.shape)), name
        stored = torch.from_numpy(_tensor(t))
        assert torch.equal(_unpermute(name, stored, model.config), want), name
    # The permutation really moved q/k rows (so the check above is not vacuous).
    assert not torch.equal(
        torch.from_numpy(_tensor(got["blk.0.attn_q.weight"])), expected["blk.0.attn_q.weight"]
    )


def test_metadata_and_bpe_tokenizer(tmp_path: Path, bpe: Tokenizer) -> None:
    model = _llama(bpe.vocab_size + 4)  # an embedding padded past the tokenizer
    c = model.config
    reader = gguf.GGUFReader(export_gguf(model, bpe, tmp_path / "m.gguf", dtype="f16", name="tiny"))
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.name") == "tiny"
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert _field(reader, "llama.context_length") == c.max_seq_len
    assert _field(reader, "llama.embedding_length") == c.d_model
    assert _field(reader, "llama.block_count") == c.n_layers
    assert _field(reader, "llama.feed_forward_length") == c.ff_dim
    assert _field(reader, "llama.attention.head_count") == c.n_heads
    assert _field(reader, "llama.attention.head_count_kv") == c.kv_heads
    assert _field(reader, "llama.rope.dimension_count") == c.head_dim
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(c.norm_eps)
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(c.rope_theta)
    assert _field(reader, "llama.vocab_size") == c.vocab_size

    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == c.vocab_size
    assert tokens[: bpe.vocab_size] == [bpe.id_to_token(i) for i in range(bpe.vocab_size)]
    for token in SPECIAL_TOKENS:
        assert types[bpe.token_to_id(token)] == gguf.TokenType.CONTROL
    assert types[bpe.token_to_id("Ġ")] == gguf.TokenType.NORMAL
    assert set(types[bpe.vocab_size :]) == {gguf.TokenType.UNUSED}
    merges = json.loads(bpe.backend.to_str())["model"]["merges"]
    assert _field(reader, "tokenizer.ggml.merges") == [
        m if isinstance(m, str) else " ".join(m) for m in merges
    ]
    assert len(merges) > 10
    assert _field(reader, "tokenizer.ggml.eos_token_id") == bpe.eot_id
    assert _field(reader, "tokenizer.ggml.bos_token_id") == bpe.eot_id
    assert _field(reader, "tokenizer.ggml.padding_token_id") == bpe.pad_id
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False

    # f16: matrices in f16 within rounding, norms kept in f32.
    expected = _expected(model)
    for t in reader.tensors:
        want = expected[t.name]
        assert t.tensor_type == (
            gguf.GGMLQuantizationType.F16 if want.dim() == 2 else gguf.GGMLQuantizationType.F32
        )
        stored = _unpermute(t.name, torch.from_numpy(_tensor(t)), c)
        torch.testing.assert_close(stored, want.half().float(), rtol=0, atol=0)


def test_bytes_tokenizer_needs_no_merges(tmp_path: Path) -> None:
    tokenizer = bytes_tokenizer()
    reader = gguf.GGUFReader(
        export_gguf(_llama(tokenizer.vocab_size), tokenizer, tmp_path / "b.gguf")
    )
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 262 and tokens[256] == "<|endoftext|>" and tokens[ord("a")] == "a"
    # llama.cpp requires the key and gguf cannot write an empty array: one inert placeholder.
    assert _field(reader, "tokenizer.ggml.merges") == ["<|endoftext|> <|endoftext|>"]
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 256


def test_q8_0_quantises_whole_blocks_and_falls_back_to_f16(tmp_path: Path, bpe: Tokenizer) -> None:
    model = _llama(bpe.vocab_size)
    reader = gguf.GGUFReader(export_gguf(model, bpe, tmp_path / "q.gguf", dtype="q8_0"))
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    expected = _expected(model)
    kinds = {}
    for t in reader.tensors:
        want = expected[t.name]
        kinds[t.name] = t.tensor_type
        stored = _unpermute(t.name, torch.from_numpy(_tensor(t)), model.config)
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            # Per 32-value block, q8_0 keeps values to half a step of max|x|/127, plus the
            # f16 rounding of the step itself (127 * 2**-11 of a step at most).
            step = want.reshape(-1, 32).abs().amax(dim=1, keepdim=True) / 127
            assert ((stored - want).reshape(-1, 32).abs() <= step * 0.6 + 1e-7).all(), t.name
        else:
            torch.testing.assert_close(stored, want.half().float(), rtol=0, atol=0)
    assert (
        kinds["blk.0.attn_q.weight"] == kinds["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    )
    assert (
        kinds["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    )  # 80 is not a multiple of 32
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_permutation_gives_the_same_attention_under_adjacent_pair_rope() -> None:
    """llama.cpp's llama arch rotates pairs (2i, 2i+1) by angle pos * inv_freq[i]; graft rotates
    halves (i, i + D/2). With permuted rows, q.k must be the same for every pair of positions."""
    config = ModelConfig(
        vocab_size=8,
        max_seq_len=16,
        d_model=32,
        n_heads=2,
        n_kv_heads=1,
        norm="rmsnorm",
        positions="rope",
        mlp="swiglu",
        bias=False,
    )
    H, K, D, T = config.n_heads, config.kv_heads, config.head_dim, config.max_seq_len
    gen = torch.Generator().manual_seed(0)
    wq, wk = torch.randn(H * D, 32, generator=gen), torch.randn(K * D, 32, generator=gen)
    x = torch.randn(T, 32, generator=gen)
    rope = RotaryEmbedding(config)
    cos, sin = rope(None, 0, T)
    q = apply_rotary((x @ wq.T).view(T, H, D).transpose(0, 1), cos[0], sin[0])
    k = apply_rotary((x @ wk.T).view(T, K, D).transpose(0, 1), cos[0], sin[0])
    graft_scores = q @ k.repeat_interleave(H // K, dim=0).transpose(1, 2)

    def pair_rope(v: torch.Tensor) -> torch.Tensor:  # (heads, T, D), adjacent pairs
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
        angle = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq  # (T, D/2)
        a, b = v[..., 0::2], v[..., 1::2]
        out = torch.empty_like(v)
        out[..., 0::2], out[..., 1::2] = (
            a * angle.cos() - b * angle.sin(),
            a * angle.sin() + b * angle.cos(),
        )
        return out

    q2 = pair_rope((x @ interleave_rope_rows(wq, H).T).view(T, H, D).transpose(0, 1))
    k2 = pair_rope((x @ interleave_rope_rows(wk, K).T).view(T, K, D).transpose(0, 1))
    torch.testing.assert_close(
        q2 @ k2.repeat_interleave(H // K, dim=0).transpose(1, 2), graft_scores, rtol=1e-4, atol=1e-3
    )
    assert torch.equal(uninterleave_rope_rows(interleave_rope_rows(wq, H), H), wq)


def test_llama3_rope_scaling_writes_rope_freqs(tmp_path: Path) -> None:
    tokenizer = bytes_tokenizer()
    scaling = RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )
    model = _llama(tokenizer.vocab_size, rope_scaling=scaling)
    reader = gguf.GGUFReader(export_gguf(model, tokenizer, tmp_path / "s.gguf", dtype="f32"))
    freqs = {t.name: _tensor(t) for t in reader.tensors}["rope_freqs.weight"]
    assert freqs.shape == (model.config.head_dim // 2,)
    # Divisors: 1 for the highest frequencies, `factor` for the lowest.
    assert freqs[0] == pytest.approx(1.0) and freqs[-1] == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            dict(norm="layernorm", positions="learned", mlp="gelu_tanh", bias=True),
            r"rope \+ rmsnorm \+ swiglu",
        ),
        (dict(bias=True), "biases"),
        (dict(attention_bias=True), "biases"),
    ],
    ids=["gpt2-style", "biases", "qkv-biases"],
)
def test_refuses_what_llama_cpp_cannot_run_and_writes_nothing(
    tmp_path: Path, overrides: dict, reason: str
) -> None:
    tokenizer = bytes_tokenizer()
    model = _llama(tokenizer.vocab_size, **overrides)
    with pytest.raises(ConfigError, match=reason) as err:
        export_gguf(model, tokenizer, tmp_path / "out" / "m.gguf")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_refuses_bad_dtype_and_wordpiece_and_small_embedding(
    tmp_path: Path, bpe: Tokenizer
) -> None:
    with pytest.raises(ConfigError, match="dtype"):
        export_gguf(_llama(bpe.vocab_size), bpe, tmp_path / "m.gguf", dtype="q4_0")  # type: ignore[arg-type]
    wordpiece = train_tokenizer(TEXT, "wordpiece", vocab_size=60)
    with pytest.raises(ConfigError, match="wordpiece"):
        export_gguf(_llama(wordpiece.vocab_size), wordpiece, tmp_path / "m.gguf")
    with pytest.raises(ConfigError, match="embedding matrix"):
        export_gguf(_llama(bpe.vocab_size - 1), bpe, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_sentencepiece_style_bpe_and_writes_nothing(tmp_path: Path) -> None:
    """A Llama-2/Mistral-style BPE (`▁` for spaces, byte fallback, no byte-level step) is a graft
    `bpe` too, but llama.cpp's "gpt2" model would split and merge its text otherwise."""
    from tokenizers import SentencePieceBPETokenizer
    from tokenizers import Tokenizer as Backend

    spm = SentencePieceBPETokenizer()
    spm.train_from_iterator(TEXT, vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"])
    roles = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer = Tokenizer(Backend.from_str(spm.to_str()), special_tokens_map=roles)
    assert tokenizer.kind == "bpe"
    with pytest.raises(ConfigError, match="byte-level pre-tokenizer") as err:
        export_gguf(_llama(tokenizer.vocab_size), tokenizer, tmp_path / "m.gguf")
    assert "\n" not in str(err.value) and "--format hf" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pipeline", ["llama3-split", "prefix-space", "normaliser"])
def test_refuses_a_byte_level_bpe_that_splits_otherwise_than_gpt2(
    tmp_path: Path, pipeline: str
) -> None:
    """llama.cpp's "gpt2" model splits words with GPT-2's regex and normalises nothing: a
    byte-level BPE with Llama 3's own split rule first, a prefix space or a normaliser would
    be read to other ids there (it was written as "gpt-2" all the same)."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    backend = Backend(models.BPE())
    backend.decoder = decoders.ByteLevel()
    if pipeline == "llama3-split":
        split = pre_tokenizers.Split(Regex(r"\p{N}{1,3}| ?\p{L}+|\s+"), behavior="isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        backend.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    else:
        prefix = pipeline == "prefix-space"
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True)
        if pipeline == "normaliser":
            backend.normalizer = normalizers.NFKC()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TEXT, trainer=trainer)
    tokenizer = Tokenizer(backend, special_tokens_map={"eos_token": "<|endoftext|>"})
    with pytest.raises(ConfigError, match="llama.cpp's 'gpt2' model would tokenize"):
        export_gguf(_llama(tokenizer.vocab_size), tokenizer, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_imported_special_tokens_are_control_and_bos_is_the_tokenizers(tmp_path: Path) -> None:
    """Token types follow the tokenizer's added-token flags, not graft's own six names: an
    imported tokenizer's special tokens are control, a non-special added token user defined;
    BOS is the tokenizer's bos token (Llama 3's <|begin_of_text|>), not EOT."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<s>", "</s>", "<unk>"]
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TEXT, trainer=trainer)
    backend.add_tokens([AddedToken("<tool>", special=False, normalized=False)])
    roles = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "unk_token": "<unk>"}
    tokenizer = Tokenizer(backend, special_tokens_map=roles)
    model = _llama(tokenizer.vocab_size)
    reader = gguf.GGUFReader(export_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32"))
    types = _field(reader, "tokenizer.ggml.token_type")
    for token in specials:
        assert types[tokenizer.token_to_id(token)] == gguf.TokenType.CONTROL, token
    assert types[tokenizer.token_to_id("<tool>")] == gguf.TokenType.USER_DEFINED
    assert types[tokenizer.token_to_id("Ġ")] == gguf.TokenType.NORMAL
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_id == 0
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eot_id == 1
    assert _field(reader, "tokenizer.ggml.unknown_token_id") == tokenizer.unk_id == 4
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False  # nothing frames its texts
    # With Llama 3's post-processor graft opens every text with <|begin_of_text|>: so does
    # llama.cpp, told by add_bos_token.
    from tokenizers import processors

    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    framed = Tokenizer(backend, special_tokens_map=roles)
    assert framed.opens_with_bos
    reader = gguf.GGUFReader(export_gguf(model, framed, tmp_path / "b.gguf", dtype="f32"))
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True


def test_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    tokenizer = bytes_tokenizer()
    target = tmp_path / "m.gguf"
    target.write_bytes(b"GGUF, an older export")
    export_gguf(_llama(tokenizer.vocab_size), tokenizer, target, dtype="f32", overwrite=True)
    assert gguf.GGUFReader(target).tensors and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_llama_cpp_runs_the_export(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed (no wheel on this machine's package index)",
    )
    tokenizer = bytes_tokenizer()
    path = export_gguf(_llama(tokenizer.vocab_size), tokenizer, tmp_path / "m.gguf", dtype="f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    assert llm.tokenize(b"hi", add_bos=False, special=False) == tokenizer.encode("hi")

"""GGUF export: a Llama-style graft model and its tokenizer as one llama.cpp `llama` file.

The file is built with llama.cpp's own Python package (`gguf`): tensor names come from its
name map for MODEL_ARCH.LLAMA (`token_embd`, `blk.N.attn_q`, `ffn_gate`, `output_norm`, ...), and
the hyperparameters go under its `llama.*` keys. Only what llama.cpp's `llama` architecture runs
exactly is exported: RoPE + RMSNorm + SwiGLU with no biases (Llama-3 RoPE scaling included, as
llama.cpp's `rope_freqs` tensor). Anything else is refused with the reason before a byte is written.

Two conversions happen on the way out:

- RoPE layout. graft (like Hugging Face) rotates the two *halves* of each head together
  (`rotate_half`); llama.cpp's `llama` architecture rotates *adjacent pairs* (2i, 2i+1), the
  layout of Meta's original checkpoints. Attention scores are unchanged if the rows of q_proj
  and k_proj are reordered within each head so that row i of the first half and row i of the
  second half become rows 2i and 2i+1: view the (heads * D, C) weight as (heads, 2, D/2, C),
  swap the middle axes and flatten back. `interleave_rope_rows` does this and
  `uninterleave_rope_rows` undoes it. k_proj is permuted with the kv-head count.
- Tokenizer. graft's `bpe` and `bytes` tokenizers are byte-level BPEs over GPT-2's byte alphabet,
  which is exactly llama.cpp's "gpt2" tokenizer model: the token strings, their types (an added
  token flagged special, as graft's own six, is "control"; another added token "user defined";
  as llama.cpp's convert_hf_to_gguf.py types them), the merges ("a b" strings; `bytes` has none,
  so it gets one inert placeholder, see `_tokenizer_metadata`) and the EOT, pad and unknown ids.
  A BPE without a byte-level pre-tokenizer and decoder (SentencePiece-style, as Llama 2's or
  Mistral's: `▁` for spaces, byte fallback) is not that model and is refused, nor is a byte-level
  BPE that splits or normalises otherwise (Llama 3's own split rule). BOS is the
  tokenizer's bos token where it has one (an imported Llama 3's), else EOT (as GPT-2 does);
  add_bos_token is true where graft opens every text with it (`Tokenizer.opens_with_bos`).
  Rows of an embedding padded past the tokenizer get placeholder "unused" tokens, because
  llama.cpp wants one token per row.

The file is written beside its destination, fsynced and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import torch

from graft.atomic_files import atomic_file
from graft.errors import CheckpointError, ConfigError
from graft.model.config import ModelConfig
from graft.model.convert.outputs import check_export_out
from graft.model.transformer import _llama3_scaled

if TYPE_CHECKING:
    from gguf import GGUFWriter

    from graft.data.tokenizer import Tokenizer
    from graft.model.transformer import LanguageModel

__all__ = ["GgufDtype", "export_gguf", "interleave_rope_rows", "uninterleave_rope_rows"]

GgufDtype = Literal["f32", "f16", "q8_0"]
_ARCH = "llama"


def _gguf() -> ModuleType:
    try:
        import gguf
    except ImportError:
        raise ConfigError(
            "cannot export to GGUF: the `gguf` package is not installed (pip install gguf)"
        ) from None
    return gguf


def interleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q_proj/k_proj rows from the rotate_half layout (HF, graft) to llama.cpp's adjacent-pair
    layout."""
    rows, *rest = weight.shape
    return (
        weight.reshape(n_heads, 2, rows // n_heads // 2, *rest)
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def uninterleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `interleave_rope_rows`."""
    rows, *rest = weight.shape
    return (
        weight.reshape(n_heads, rows // n_heads // 2, 2, *rest)
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def _check_exportable(config: ModelConfig, tokenizer: Tokenizer, dtype: str) -> None:
    def refuse(reason: str) -> ConfigError:
        return ConfigError(f"cannot export to GGUF: {reason}")

    if dtype not in get_args(GgufDtype):
        raise refuse(f"dtype {dtype!r} is not one of {', '.join(get_args(GgufDtype))}")
    if (config.positions, config.norm, config.mlp) != ("rope", "rmsnorm", "swiglu"):
        raise refuse(
            f"positions={config.positions}, norm={config.norm}, mlp={config.mlp} "
            "is not llama.cpp's llama architecture, which needs rope + rmsnorm + swiglu"
        )
    if config.bias or config.qkv_bias:
        raise refuse(
            "the llama architecture is exported without biases; "
            "this config has bias/attention_bias on"
        )
    if config.vocab_size is None:
        raise refuse("vocab_size is not set")
    if tokenizer.kind not in ("bpe", "bytes"):
        raise refuse(
            f"a {tokenizer.kind} tokenizer has no llama.cpp 'gpt2' (byte-level BPE) equivalent; "
            "use a bpe or bytes tokenizer"
        )
    mismatch = _not_gpt2(tokenizer)
    if mismatch is not None:
        raise refuse(
            f"the tokenizer is {mismatch}, which llama.cpp's 'gpt2' model would tokenize "
            "differently; export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if tokenizer.vocab_size > config.vocab_size:
        raise refuse(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the embedding matrix only "
            f"{config.vocab_size} rows"
        )
    if dtype == "q8_0":
        gguf = _gguf()
        try:
            gguf.quants.quantize(
                np.zeros((1, 32), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0
            )
        except (AttributeError, NotImplementedError):
            raise refuse(
                "the installed gguf package cannot write q8_0; use f16 or f32, or upgrade gguf"
            ) from None


def _not_gpt2(tokenizer: Tokenizer) -> str | None:
    """What in the tokenizer's pipeline llama.cpp's "gpt2" model would not reproduce (it is GPT-2's
    own: no normaliser, GPT-2's word-splitting regex, its byte alphabet in and out); None when
    nothing. The kind alone does not say: a SentencePiece BPE (`▁` for spaces, byte fallback) is
    a `bpe` too, and Llama 3's byte-level BPE splits words with its own regex first."""
    parts = json.loads(tokenizer.backend.to_str())
    pre, decoder = parts.get("pre_tokenizer") or {}, parts.get("decoder") or {}
    if pre.get("type") == "Sequence" and any(
        step.get("type") == "ByteLevel" for step in pre.get("pretokenizers", [])
    ):
        return "a byte-level BPE that splits words with its own rule first (as Llama 3's)"
    if pre.get("type") != "ByteLevel" or decoder.get("type") != "ByteLevel":
        return (
            "a BPE without a byte-level pre-tokenizer and decoder (SentencePiece-style, as "
            "Llama 2's)"
        )
    # graft's bytes tokenizer splits nothing, but with no merges every split gives its ids.
    splits_as_gpt2 = pre.get("use_regex", True) or tokenizer.kind == "bytes"
    if parts.get("normalizer") is not None or pre.get("add_prefix_space") or not splits_as_gpt2:
        return "a byte-level BPE that normalises or splits text otherwise than GPT-2's"
    return None


def _tensors(model: LanguageModel) -> dict[str, torch.Tensor]:
    """graft state dict -> llama.cpp names, float32, q/k rows permuted for llama.cpp's RoPE."""
    gguf = _gguf()
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.n_layers)
    weights = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        weights.pop("lm_head.weight")  # llama.cpp falls back to token_embd when output is absent
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        stem, _, leaf = key.rpartition(".")
        name = names.get_name(stem)
        if name is None:
            raise ConfigError(f"cannot export to GGUF: no llama.cpp name for tensor {key}")
        if stem.endswith("self_attn.q_proj"):
            value = interleave_rope_rows(value, config.n_heads)
        elif stem.endswith("self_attn.k_proj"):
            value = interleave_rope_rows(value, config.kv_heads)
        out[f"{name}.{leaf}"] = value.contiguous()
    if config.rope_scaling is not None:
        # llama.cpp applies Llama-3 scaling as per-frequency divisors read from this tensor.
        d = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]
        out[f"{name}.weight"] = inv_freq / _llama3_scaled(inv_freq, config.rope_scaling)
    return out


def _stored(array: np.ndarray, dtype: str) -> tuple[np.ndarray, object | None]:
    """The array as stored and its raw GGML type (None: inferred from the numpy dtype).
    Norms and other 1-D tensors stay f32, as llama.cpp's own converter keeps them."""
    gguf = _gguf()
    if array.ndim < 2 or dtype == "f32":
        return array.astype(np.float32), None
    if dtype == "q8_0":
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        if array.shape[-1] % block == 0:
            q8 = gguf.GGMLQuantizationType.Q8_0
            return gguf.quants.quantize(array.astype(np.float32), q8), q8
        # Rows not filling whole q8_0 blocks cannot be quantised; f16 is llama.cpp's fallback too.
    return array.astype(np.float16), None


def _tokenizer_metadata(writer: GGUFWriter, tokenizer: Tokenizer, n_vocab: int) -> None:
    gguf = _gguf()
    from graft.data.tokenizer import EOT

    # Typed by the tokenizer's own flags, as llama.cpp's converter does: a special added token
    # (graft's six, an imported <s> or <|eot_id|>) is control, so llama.cpp never builds it from
    # text and hides it when decoding; another added token is user defined, matched whole in the
    # text as `tokenizers` matches it.
    added = tokenizer.backend.get_added_tokens_decoder()
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        token = tokenizer.id_to_token(i) if i < tokenizer.vocab_size else None
        if token is None:
            token, kind = f"[PAD{i}]", gguf.TokenType.UNUSED
        elif i in added:
            kind = gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
        else:
            kind = gguf.TokenType.NORMAL
        tokens.append(token)
        types.append(kind)
    model = json.loads(tokenizer.backend.to_str())["model"]
    # tokenizers writes merges as "a b" strings (older) or [a, b] pairs (0.20+).
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's pre-split regex, as graft's ByteLevel pre-tokenizer
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if not merges:
        # llama.cpp refuses a "gpt2" vocabulary without a merges key, and gguf cannot write an
        # empty array. One merge of two control tokens is inert: llama.cpp's BPE starts from single
        # characters and only ever builds strings from earlier merges, so it never meets this pair.
        merges = [f"{EOT} {EOT}"]
    writer.add_token_merges(merges)
    # A tokenizer with no bos token (graft's own) names EOT as BOS, as GPT-2 does.
    bos_id = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eot_id
    if bos_id is not None:
        writer.add_bos_token_id(bos_id)
    if tokenizer.eot_id is not None:
        writer.add_eos_token_id(tokenizer.eot_id)
    if tokenizer.pad_id is not None:
        writer.add_pad_token_id(tokenizer.pad_id)
    if tokenizer.unk_id is not None:
        writer.add_unk_token_id(tokenizer.unk_id)
    # graft opens a decoder's every text with bos only where the tokenizer's own frame does.
    writer.add_add_bos_token(tokenizer.opens_with_bos)
    writer.add_add_eos_token(False)


def export_gguf(
    model: LanguageModel,
    tokenizer: Tokenizer,
    out_path: Path,
    *,
    dtype: GgufDtype = "f16",
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out_path` as a llama.cpp GGUF file (architecture `llama`) holding the model's weights
    in `dtype` (f32; f16; q8_0 with f16 for rows not a multiple of 32) and the tokenizer.
    `name` (general.name) defaults to the file's stem. A config llama.cpp's llama architecture
    cannot run exactly is refused with a ConfigError before anything is written, and so is an
    out_path that is a folder, or an existing file unless `overwrite` (check_export_out, the
    rule export_hf follows too). Returns out_path."""
    out_path = Path(out_path)
    config = model.config
    _check_exportable(config, tokenizer, dtype)
    check_export_out(out_path, folder=False, overwrite=overwrite)
    assert config.vocab_size is not None  # _check_exportable refuses a config without one
    gguf = _gguf()
    tensors = _tensors(model)
    file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}[dtype]

    with atomic_file(out_path) as temp:
        writer = gguf.GGUFWriter(temp, _ARCH)
        try:
            writer.add_name(name if name is not None else out_path.stem)
            writer.add_file_type(int(gguf.LlamaFileType[file_type]))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            writer.add_vocab_size(config.vocab_size)
            writer.add_context_length(config.max_seq_len)
            writer.add_embedding_length(config.d_model)
            writer.add_block_count(config.n_layers)
            writer.add_feed_forward_length(config.ff_dim)
            writer.add_head_count(config.n_heads)
            writer.add_head_count_kv(config.kv_heads)
            writer.add_rope_dimension_count(config.head_dim)
            writer.add_layer_norm_rms_eps(config.norm_eps)
            writer.add_rope_freq_base(config.rope_theta)
            _tokenizer_metadata(writer, tokenizer, config.vocab_size)
            for tensor_name, value in tensors.items():
                array, raw_dtype = _stored(value.numpy(), dtype)
                writer.add_tensor(tensor_name, array, raw_dtype=raw_dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return out_path


def read_back_summary(path: Path, model: LanguageModel) -> str:
    """Re-read a written file with gguf's own reader and check it holds exactly the tensors the
    model exports (names and shapes; values too where they are stored as f32). Raises a
    CheckpointError naming the first mismatch; returns a one-paragraph summary."""
    gguf = _gguf()
    expected = _tensors(model)
    reader = gguf.GGUFReader(path)
    found = {t.name: t for t in reader.tensors}
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise CheckpointError(
            f"{path}: tensors differ from the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    exact = 0
    for name, value in expected.items():
        tensor = found[name]
        # GGUF lists dimensions innermost first
        shape = tuple(int(n) for n in reversed(tensor.shape))
        if shape != tuple(value.shape):
            raise CheckpointError(
                f"{path}: tensor {name} has shape {shape}, the model's is {tuple(value.shape)}"
            )
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            if not np.array_equal(np.asarray(tensor.data).reshape(value.shape), value.numpy()):
                raise CheckpointError(f"{path}: tensor {name} holds other values than the model's")
            exact += 1
    return (
        f"verify: gguf reader found all {len(expected)} tensors "
        "with the model's names and shapes; "
        f"{exact} stored as f32 equal the model's values exactly. llama.cpp itself was not run "
        "(graft does not install it)."
    )

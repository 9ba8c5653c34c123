"""The tokenizer files of a directory in the transformers layout: reading them all, writing the
sidecar.

A tokenizer directory (a graft checkpoint, prepared data, a Hugging Face model) holds:

    tokenizer.json            the whole tokenizer: normaliser, pre-tokenizer, model, added tokens
    vocab.txt                 instead of tokenizer.json: a BERT WordPiece vocabulary, one token
                              a line
    tokenizer_config.json     the roles of special tokens (eos_token, mask_token...), the chat
                              template and, beside vocab.txt, BERT's options (do_lower_case...)
    special_tokens_map.json   the roles again (older transformers)
    chat_template.jinja       the chat template (newer transformers; wins over tokenizer_config's)
    added_tokens.json         tokens added to a vocab.txt (older transformers)

Reading follows transformers' AutoTokenizer, so that graft's ids equal its ids for the same
directory (always without special tokens added: graft's objectives add CLS/SEP themselves):
vocab.txt is built into the tokenizer transformers' BertTokenizer builds, and tokens the configs
name (roles, added_tokens_decoder, additional special tokens) that are not added tokens yet are
added, as special ones, the way transformers adds them. A directory with neither tokenizer.json
nor vocab.txt (a sentencepiece `tokenizer.model`, GPT-2's vocab.json + merges.txt) is refused:
transformers' fast tokenizer writes tokenizer.json for all of them.

Limits: transformers 5 classes with their own constructor (BertTokenizer, RobertaTokenizer,
LlamaTokenizer...) rebuild the normaliser and pre-tokenizer from tokenizer_config.json rather than
take tokenizer.json's; graft takes tokenizer.json's. The two agree for any directory transformers
saved itself. transformers' pure-Python tokenizers (BertTokenizerLegacy) match a lower-cased added
token only in text that is lower-case already; graft, like its fast ones, matches after
lower-casing.

graft saves roles and chat template as a small tokenizer_config.json beside tokenizer.json (with
`tokenizer_class: PreTrainedTokenizerFast`, so AutoTokenizer uses that tokenizer.json as it is, and
`added_tokens_decoder`, so that neither reads an older special_tokens_map.json or
added_tokens.json).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers

from graft.atomic_files import write_atomic
from graft.errors import TokenizerError, first_line

__all__ = [
    "CONFIG_FILES",
    "ROLES",
    "TokenizerFiles",
    "read_tokenizer_directory",
    "read_tokenizer_json",
    "write_tokenizer_config",
]

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ADDED_TOKENS_FILE = "added_tokens.json"
#: The files beside tokenizer.json / vocab.txt that change what a directory's tokenizer is.
CONFIG_FILES = (
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    CHAT_TEMPLATE_FILE,
    ADDED_TOKENS_FILE,
)
#: Slow-tokenizer files graft does not read; named when refusing a directory that has only these.
_SLOW_FILES = (
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "merges.txt",
)

#: transformers' special-token roles, in its order (the order it adds missing ones in).
ROLES: tuple[str, ...] = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
#: The roles transformers' BertTokenizer gives a vocab.txt when the configs name none.
_BERT_ROLES = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_EXTRA_KEYS = ("additional_special_tokens", "extra_special_tokens")
#: AddedToken's options, as added_tokens_decoder spells them (after "content").
_TOKEN_FLAGS = ("lstrip", "normalized", "rstrip", "single_word", "special")


@dataclass(frozen=True)
class TokenizerFiles:
    """What a tokenizer directory says. `special_tokens_map` is None when no file names a role."""

    backend: tokenizers.Tokenizer
    source: Path  # the tokenizer.json or vocab.txt the backend came from, for error messages
    special_tokens_map: dict[str, str] | None = None
    chat_template: str | None = None


def read_tokenizer_json(file: Path) -> tokenizers.Tokenizer:
    """The `tokenizers.Tokenizer` of one tokenizer.json file."""
    if not file.is_file():
        raise TokenizerError(
            f"{file}: no such file; train one with `graft tokenizer train` or fix the path"
        )
    try:
        return tokenizers.Tokenizer.from_str(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{file}: cannot read ({exc})") from exc
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise TokenizerError(f"{file}: not a valid tokenizer.json ({first_line(exc)})") from exc


def read_tokenizer_directory(directory: Path) -> TokenizerFiles:
    """The tokenizer of `directory`: tokenizer.json, or else a BERT vocab.txt, plus its configs."""
    config_file = directory / TOKENIZER_CONFIG_FILE
    config = _read_json_object(config_file)
    found = _named_roles(_role_configs(directory, config))
    if (directory / TOKENIZER_FILE).is_file():
        source = directory / TOKENIZER_FILE
        backend = read_tokenizer_json(source)
        # No file naming any role: graft's own defaults apply (see Tokenizer).
        roles = {k: v for k, v in found.items() if v is not None} if found else None
    elif (directory / VOCAB_FILE).is_file():
        source = directory / VOCAB_FILE
        roles = {k: v for k, v in {**_BERT_ROLES, **found}.items() if v is not None}
        backend = _bert_wordpiece(source, config, config_file, roles)
    else:
        slow = [name for name in _SLOW_FILES if (directory / name).is_file()]
        if slow:
            raise TokenizerError(
                f"{directory}: has {', '.join(slow)} but no {TOKENIZER_FILE} or {VOCAB_FILE}; "
                "slow-tokenizer files (sentencepiece models, vocab.json + merges.txt) are not "
                "supported: saving the tokenizer with transformers' fast tokenizer writes "
                "tokenizer.json (AutoTokenizer.from_pretrained(dir).save_pretrained(dir))"
            )
        raise TokenizerError(
            f"no {TOKENIZER_FILE} in {directory} (nor a BERT {VOCAB_FILE}); train one with "
            "`graft tokenizer train` or fix the path"
        )
    _add_named_tokens(backend, directory, config, roles or {})
    return TokenizerFiles(backend, source, roles, _chat_template(directory, config, config_file))


def write_tokenizer_config(
    directory: Path,
    backend: tokenizers.Tokenizer,
    special_tokens_map: Mapping[str, str],
    chat_template: str | None,
) -> None:
    """Write graft's tokenizer_config.json for `backend` (saved as tokenizer.json beside it): the
    roles and chat template, for graft and transformers.

    A chat_template.jinja already there is rewritten too (or removed when there is no template):
    it would otherwise win over this file's template when the directory is read back.
    """
    config: dict[str, Any] = {
        # tokenizer.json is the whole tokenizer; this class makes AutoTokenizer use it as it is.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens_map,
        # graft's decoders already give back the text; transformers' clean-up would alter it.
        "clean_up_tokenization_spaces": False,
        # The added tokens tokenizer.json holds; its presence also makes graft and transformers
        # ignore a special_tokens_map.json or added_tokens.json left from another tokenizer.
        "added_tokens_decoder": {
            str(token_id): {key: getattr(token, key) for key in ("content", *_TOKEN_FLAGS)}
            for token_id, token in sorted(backend.get_added_tokens_decoder().items())
        },
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    write_atomic(
        directory / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    )
    jinja = directory / CHAT_TEMPLATE_FILE
    if jinja.exists():
        if chat_template is None:
            jinja.unlink()
        else:
            write_atomic(jinja, chat_template)


# ---------------------------------------------------------------- configs


def _read_json_object(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TokenizerError(
            f"{file}: cannot read it as JSON ({first_line(exc)}); fix or delete it"
        ) from exc
    if not isinstance(value, dict):
        raise TokenizerError(
            f"{file}: expected a JSON object, got {type(value).__name__}; fix or delete it"
        )
    return value


def _token_text(value: object, file: Path, key: str) -> str:
    """A token given as a string or as a serialised AddedToken ({"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise TokenizerError(
            f'{file}: {key} must be a token string or an object with "content"; got {value!r}'
        )
    return value


def _role_configs(directory: Path, config: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """The files that name special tokens, each with its contents, the later overriding."""
    configs = [(directory / TOKENIZER_CONFIG_FILE, config)]
    # transformers reads special_tokens_map.json only for configs without added_tokens_decoder
    # (older saves), and lets it override tokenizer_config.json's roles.
    if "added_tokens_decoder" not in config:
        map_file = directory / SPECIAL_TOKENS_MAP_FILE
        configs.append((map_file, _read_json_object(map_file)))
    return configs


def _named_roles(configs: list[tuple[Path, dict[str, Any]]]) -> dict[str, str | None]:
    """role -> token as the configs name them; None where a role is explicitly null."""
    found: dict[str, tuple[object, Path]] = {}
    for file, values in configs:
        found.update({key: (values[key], file) for key in ROLES if key in values})
    return {
        key: None if value is None else _token_text(value, file, key)
        for key, (value, file) in found.items()
    }


def _extra_special_tokens(configs: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    tokens: list[str] = []
    for file, values in configs:
        for key in _EXTRA_KEYS:
            extra = values.get(key) or []
            if isinstance(extra, dict):  # transformers 5 also allows {name: token}
                extra = list(extra.values())
            if not isinstance(extra, list):
                raise TokenizerError(f"{file}: {key} must be a list of tokens; got {extra!r}")
            tokens += [_token_text(item, file, key) for item in extra]
    return tokens


def _flag(config: dict[str, Any], key: str, default: bool | None, file: Path) -> bool | None:
    value = config.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise TokenizerError(f"{file}: {key} must be true, false or null; got {value!r}")
    return value


def _chat_template(directory: Path, config: dict[str, Any], config_file: Path) -> str | None:
    """chat_template.jinja, else tokenizer_config's chat_template: a string, or a list of
    {name, template} of which graft takes the one named "default" (none if there is none)."""
    jinja = directory / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{jinja}: cannot read ({exc})") from exc
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(t, dict) and {"name", "template"} <= t.keys() for t in value
    ):
        return next((t["template"] for t in value if t["name"] == "default"), None)
    raise TokenizerError(
        f"{config_file}: chat_template must be a string or a list of {{name, template}}; "
        f"got {type(value).__name__}"
    )


# ---------------------------------------------------------------- building


def _bert_wordpiece(
    vocab_file: Path, config: dict[str, Any], config_file: Path, roles: dict[str, str]
) -> tokenizers.Tokenizer:
    """The tokenizer transformers' BertTokenizer builds from vocab.txt and tokenizer_config.json."""
    try:
        # The Rust reader transformers' BertTokenizer uses too: one token a line, line number = id.
        vocab = models.WordPiece.read_file(str(vocab_file))
    except Exception as exc:
        raise TokenizerError(
            f"{vocab_file}: cannot read the vocabulary ({first_line(exc)})"
        ) from exc
    if not vocab:
        raise TokenizerError(
            f"{vocab_file}: the vocabulary is empty; a BERT vocab.txt has one token a line"
        )
    unk = roles.get("unk_token")
    if unk is None:
        raise TokenizerError(
            f"{config_file}: unk_token is null, but a WordPiece vocab.txt needs one"
        )
    backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=unk))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(_flag(config, "tokenize_chinese_chars", True, config_file)),
        # None: strip accents exactly when lowercasing, as the original BERT does.
        strip_accents=_flag(config, "strip_accents", None, config_file),
        lowercase=bool(_flag(config, "do_lower_case", True, config_file)),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _listed_added_tokens(
    directory: Path, config: dict[str, Any], specials: set[str]
) -> list[AddedToken]:
    """added_tokens_decoder of tokenizer_config.json (else the older added_tokens.json), by id."""
    config_file = directory / TOKENIZER_CONFIG_FILE
    listed = config.get("added_tokens_decoder")
    if listed is not None:
        if not isinstance(listed, dict) or not all(str(index).isdigit() for index in listed):
            raise TokenizerError(f"{config_file}: added_tokens_decoder must map ids to tokens")
        tokens = []
        for index, spec in sorted(listed.items(), key=lambda item: int(item[0])):
            content = _token_text(spec, config_file, f"added_tokens_decoder[{index}]")
            given = {k: bool(spec[k]) for k in _TOKEN_FLAGS if isinstance(spec, dict) and k in spec}
            tokens.append(AddedToken(content, **given))
        return tokens
    legacy_file = directory / ADDED_TOKENS_FILE
    legacy = _read_json_object(legacy_file)
    if not all(isinstance(index, int) for index in legacy.values()):
        raise TokenizerError(f"{legacy_file}: must map tokens to integer ids")
    return [
        AddedToken(content, special=content in specials, normalized=content not in specials)
        for content, _ in sorted(legacy.items(), key=lambda item: item[1])
    ]


def _add_named_tokens(
    backend: tokenizers.Tokenizer, directory: Path, config: dict[str, Any], roles: dict[str, str]
) -> None:
    """Add the tokens the configs name that the backend has not added yet, as transformers does:
    listed added tokens by id, then role tokens in role order, then additional special tokens.
    A token already in the vocabulary keeps its id; a new one gets the next id."""
    extras = _extra_special_tokens(_role_configs(directory, config))
    listed = _listed_added_tokens(directory, config, {*roles.values(), *extras})
    named = [*(roles[key] for key in ROLES if key in roles), *extras]
    present = {token.content for token in backend.get_added_tokens_decoder().values()}
    to_add: list[AddedToken] = []
    # special=True also sets normalized=False: matched in the raw text, as transformers does.
    for token in [*listed, *(AddedToken(content, special=True) for content in named)]:
        if token.content not in present:
            to_add.append(token)
            present.add(token.content)
    if to_add:
        backend.add_tokens(to_add)

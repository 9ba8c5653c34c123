"""Using a model: `graft generate`, `export`, `serve` and `chat`, each a parser and its
runner."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from graft.cli.common import COMMON, add_shared, options_from
from graft.errors import GraftError

if TYPE_CHECKING:
    from graft.data.tokenizer import Tokenizer
    from graft.infer.beam import BeamParams
    from graft.infer.sampling import SamplingParams

# graft.infer.sampling.DEFAULT_TEMPERATURE, written out so that --help needs no torch import
# (tests/e2e/test_cli.py holds them equal).
TEMPERATURE_HELP = "0 = greedy (default: 0.8)"
_DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto (default: cpu)"


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", parents=[COMMON], help="Generate text from a checkpoint.")
    add_shared(p, "checkpoint")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="ask --prompt as a user turn in the checkpoint's chat template, as `graft finetune "
        "instruct|seq2seq` trained and `graft chat` asks, and print only the reply",
    )
    p.add_argument("--system", help="with --chat: a system turn before the user's")
    p.add_argument(
        "--max-new-tokens", type=int, default=200, help="longest continuation (default: 200)"
    )
    # None, not 0.8, so that --beams can tell a temperature that was asked for.
    p.add_argument("--temperature", type=float, help=TEMPERATURE_HELP)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--beams",
        type=int,
        help="beam search with N beams instead of sampling: the continuation with the best "
        "length-normalised log-probability (no --temperature > 0, --top-k, --top-p or --seed)",
    )
    p.add_argument(
        "--length-penalty",
        type=float,
        help="with --beams: scores are summed log-probability / length ** X; above 1 favours "
        "longer outputs, below it shorter ones (default: 1.0)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole sequence every step (slow; for checking)",
    )
    p.add_argument("--device", default="cpu", help=_DEVICE_HELP)


def _generate_params(args: argparse.Namespace) -> SamplingParams | BeamParams:
    """Beam search with --beams, else sampling, with no stop ids yet; refuses the flags that only
    the other one reads."""
    from graft.errors import ConfigError
    from graft.infer.beam import BeamParams
    from graft.infer.sampling import DEFAULT_TEMPERATURE, SamplingParams

    if args.beams is None:
        if args.length_penalty is not None:
            raise ConfigError("--length-penalty scores beam search hypotheses: give --beams N too")
        temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
        return SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    sampling = [
        flag
        for flag, given in (
            ("--temperature", args.temperature is not None and args.temperature > 0),
            ("--top-k", args.top_k is not None),
            ("--top-p", args.top_p is not None),
            ("--seed", args.seed is not None),
        )
        if given
    ]
    if sampling:
        raise ConfigError(
            f"--beams searches for the most likely text and draws nothing at random; leave out "
            f"{', '.join(sampling)}"
        )
    penalty = {} if args.length_penalty is None else {"length_penalty": args.length_penalty}
    return BeamParams(beams=args.beams, max_new_tokens=args.max_new_tokens, **penalty)


def run_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from graft.checkpoint import load_model, model_source
    from graft.data.inputs import prompt_ids as text_prompt_ids
    from graft.device import resolve_device
    from graft.infer.beam import BeamParams, beam_search
    from graft.infer.generate import generate
    from graft.infer.stream import TextStream
    from graft.model.convert.hf import stop_ids

    try:
        params = _generate_params(args)
    except ValueError as err:
        raise GraftError(f"generate: {err}") from None
    model, tokenizer = load_model(
        args.checkpoint, device=resolve_device(args.device, what="--device")
    )
    if not model.config.can_generate:
        raise GraftError(
            f"generate: {args.checkpoint} is not a causal language model (head "
            f"{model.config.head}, {model.config.attention} attention); it cannot generate text"
        )
    # The tokenizer's end-of-text and an HF directory's generation_config eos ids, as `graft
    # serve` and transformers stop.
    stops = stop_ids(tokenizer, model_source(args.checkpoint))
    params = replace(params, stop_ids=stops)
    if args.chat:
        prompt_ids: list[int] | None = _chat_prompt(args, tokenizer)
    else:
        _suggest_chat(args)
        prompt_ids = text_prompt_ids(tokenizer, args.prompt or "")
    if prompt_ids is None:
        raise GraftError(
            f"generate: {args.checkpoint}'s tokenizer has no end-of-text token to start from; "
            "give --prompt"
        )
    context = model.config.max_seq_len
    if len(prompt_ids) >= context:
        raise GraftError(
            f"generate: the prompt is {len(prompt_ids)} tokens; the model's context is {context}"
        )
    if not args.chat:  # only once it is known to fit: a refusal prints nothing
        sys.stdout.write(args.prompt)
    stream = TextStream(tokenizer, context=prompt_ids)
    tokens: Iterable[int]
    if isinstance(params, BeamParams):
        # The best hypothesis is known only at the end: it is printed at once, not streamed.
        tokens = beam_search(model, prompt_ids, params, use_cache=not args.no_cache).ids
    else:
        tokens = generate(model, prompt_ids, params, use_cache=not args.no_cache)
    for token in tokens:
        if token in stops:
            break
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
    return 0


def _chat_prompt(args: argparse.Namespace, tokenizer: Tokenizer) -> list[int]:
    """--prompt (after --system) as the next assistant turn's prompt: the ids `graft chat`, the
    server's chat completions and `graft eval --task generate` ask a chat model in."""
    from graft.data.records import Message
    from graft.serve.prompts import chat_prompt_ids

    system = [Message("system", args.system)] if args.system else []
    try:
        return chat_prompt_ids(tokenizer, [*system, Message("user", args.prompt)])
    except GraftError as err:
        raise GraftError(f"generate --chat: {err}") from None


def _suggest_chat(args: argparse.Namespace) -> None:
    """Refuse --system without --chat, and point a chat fine-tune's user to --chat: asked in plain
    text, such a model continues the text instead of answering it."""
    from graft.checkpoint import trained_objective
    from graft.config import OBJECTIVES
    from graft.errors import ConfigError
    from graft.objectives.base import RecordObjective

    if args.system is not None:
        raise ConfigError("--system is a turn of a chat prompt: give --chat too")
    name = trained_objective(args.checkpoint)
    objective = OBJECTIVES.get(name or "")
    # The record objectives with an LM head (instruct, seq2seq) train on chat turns.
    if objective and issubclass(objective, RecordObjective) and objective.head == "lm":
        print(
            f"note: {args.checkpoint} was fine-tuned on chat turns ({name}); --chat asks it "
            "the way it was trained",
            file=sys.stderr,
        )


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        parents=[COMMON],
        help="Export a checkpoint to Hugging Face (hf) or llama.cpp (gguf).",
        description="--format hf writes a Hugging Face transformers directory (config.json, "
        "model.safetensors, tokenizer files, generation_config.json, a model card README.md): "
        "GPT-2 style as GPT2LMHeadModel, Llama style as LlamaForCausalLM or Qwen2ForCausalLM. "
        "--format gguf writes one llama.cpp file for Llama-style models. A config the target "
        "cannot represent is refused before anything is written.",
    )
    add_shared(p, "checkpoint")
    p.add_argument(
        "--format",
        choices=["hf", "gguf"],
        default="hf",
        help="hf: a Hugging Face transformers directory; gguf: one llama.cpp file "
        "(Llama-style models)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="hf: directory to write (must not exist or be empty); gguf: the .gguf file "
        "(must not exist); --overwrite replaces either",
    )
    p.add_argument(
        "--dtype",
        choices=["f32", "f16", "q8_0"],
        default=None,
        help="gguf tensor type (default: f16); --format gguf only",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (hf: a folder; gguf: a file)",
    )
    p.add_argument(
        "--merge-lora",
        action="store_true",
        help="fold a LoRA fine-tune's adapter into the weights before exporting",
    )
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reload the export (in transformers when installed) and check logits, tokenizer "
        "ids, eos ids and vocabulary size against the checkpoint (default: on)",
    )


def run_export(args: argparse.Namespace) -> int:
    from graft.adapt import has_lora, merge_lora
    from graft.checkpoint import load_model, resolve_checkpoint
    from graft.errors import ConfigError
    from graft.model.convert.hf import is_hf_directory
    from graft.model.convert.hf_export import export_hf
    from graft.model.convert.outputs import check_export_out

    gguf = args.format == "gguf"
    # --dtype defaults to None so that a --dtype given to --format hf is seen, not ignored.
    if args.dtype is not None and not gguf:
        raise ConfigError(
            f"--dtype {args.dtype} sets the tensor type of a --format gguf file only; "
            "a Hugging Face export keeps the checkpoint's tensors as they are (drop --dtype)"
        )
    # Where the export goes is checked before the model loads: a refusal costs nothing.
    check_export_out(args.out, folder=not gguf, overwrite=args.overwrite, source=args.checkpoint)
    model, tokenizer = load_model(args.checkpoint)
    if has_lora(model):
        if not args.merge_lora:
            raise GraftError(
                f"{args.checkpoint} holds a LoRA adapter over its base weights; pass --merge-lora "
                "to fold it into the weights (the adapter itself is in the checkpoint, in PEFT's "
                "format)"
            )
        merge_lora(model)
    elif args.merge_lora:
        raise ConfigError(
            f"{args.checkpoint}: holds no LoRA adapter, so --merge-lora has nothing to merge "
            "(drop it)"
        )
    if gguf:
        from graft.model.convert.gguf import GgufDtype, export_gguf, read_back_summary

        dtype: GgufDtype = args.dtype if args.dtype is not None else "f16"
        out = export_gguf(model, tokenizer, args.out, dtype=dtype, overwrite=args.overwrite)
        print(f"exported (gguf, {dtype}): {out}")
        if args.verify:
            print(read_back_summary(out, model))
        return 0
    source = None if is_hf_directory(args.checkpoint) else resolve_checkpoint(args.checkpoint)
    out = export_hf(model, args.out, tokenizer=tokenizer, source=source, overwrite=args.overwrite)
    print(f"exported ({args.format}): {out}")
    if args.verify:
        from graft.model.convert.verify import format_table, raise_on_failure, verify_hf_export

        records = verify_hf_export(out, model, tokenizer)
        print(format_table(records))
        raise_on_failure(records, out)
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        parents=[COMMON],
        help="Serve a checkpoint over an OpenAI-compatible HTTP API, with a playground page.",
        description="Endpoints: /v1/models, /v1/completions, /v1/chat/completions (streaming as "
        "server-sent events), /v1/embeddings, /v1/classify (classifier checkpoints), /v1/qa "
        "(question-answering checkpoints), /v1/attention (attention maps), /health, /metrics "
        "(Prometheus), /openapi.json; the playground at /. Requests are decoded together "
        "(continuous batching). Binds 127.0.0.1 unless --host says otherwise.",
    )
    add_shared(p, "checkpoint")
    p.add_argument("--host", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, help="port (default: 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $GRAFT_API_KEY, "
        "else none)",
    )
    p.add_argument(
        "--model-name", help="the model id clients use (default: the checkpoint path as given)"
    )
    p.add_argument("--max-batch", type=int, help="requests decoded together (default: 8)")
    p.add_argument(
        "--max-queue",
        type=int,
        help="requests waiting for a slot before new ones get 429 (default: 64)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        help="cap on prompt + new tokens over the running batch (default: max-batch full contexts)",
    )
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        help="int8: dynamic int8 linear layers on CPU (default: none)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the decode step: faster decoding after a start-up compile of 10-30 s "
        "on a CPU",
    )
    add_shared(p, "--device")


def run_serve(args: argparse.Namespace) -> int:
    from graft.serve.app import ServeOptions, serve

    api_key = args.api_key if args.api_key is not None else os.environ.get("GRAFT_API_KEY") or None
    # Flushed at once: the address line is what a supervisor or a log reader waits for.
    serve(
        options_from(ServeOptions, args, api_key=api_key), echo=lambda line: print(line, flush=True)
    )
    return 0


def add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        parents=[COMMON],
        help="Chat with a checkpoint in the terminal.",
        description="Each line is a user turn; replies stream as they are written and the "
        "conversation is kept (oldest turns dropped when it outgrows the context). /reset clears "
        "it; /exit or end of input (Ctrl-D) leaves; Ctrl-C stops a reply.",
    )
    add_shared(p, "checkpoint")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--temperature", type=float, help=TEMPERATURE_HELP)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument(
        "--max-tokens", type=int, help="longest reply (default: the rest of the context)"
    )
    p.add_argument("--seed", type=int)
    add_shared(p, "--device")


def run_chat(args: argparse.Namespace) -> int:
    from graft.terminal_chat import ChatOptions, run_chat

    run_chat(options_from(ChatOptions, args))
    return 0

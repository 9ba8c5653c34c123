"""Decode speed of graft's generation engine against Hugging Face `generate`, on identical models.

Method. For each preset, graft's LanguageModel is built with random weights (seeded) and its
transformers twin (GPT2LMHeadModel or LlamaForCausalLM) is built from graft's own exporter
(`hf_config_dict`, `hf_state_dict`), so both hold the same weights; nothing is downloaded. Both run
in fp32 on the CPU under torch.inference_mode. A measurement is one whole request: a P-token
prompt (prefill) and N greedy new tokens, N forced on both sides (graft: no stop ids;
transformers: `min_new_tokens=N`, `use_cache=True`, `do_sample=False`), timed end to end with the
prompt short against N so that decoding dominates; tokens/s = new tokens / wall time. Each batch-1
graft variant also checks that it produced transformers' tokens.

Rows at batch 1: transformers `generate`; graft's plain `generate()` loop; the engine (fp32), the
engine with `compile=True` and with `quantize="int8"` (dynamic int8 nn.Linear; the engine refuses
int8 with compile, which cannot trace quantised linears). The last row is no decoder: the fp32
weight-read floor, N times a sum over every matmul weight. A batch-1 decoder reads each weight
once per token, so on a CPU whose memory bandwidth is the limit this estimates the best any fp32
decoder (graft's or transformers') can do, and shows how much of a step is overhead at all. The
ratio column divides each row by transformers' median. The throughput table runs B concurrent
requests (different seeds, temperature 0.8) through the fp32 engine: tokens/s = B*N / wall time.
Variants are interleaved within every repeat (hf, graft, engine, ... then again) so that drift in
the machine hits all of them; the tables give the median and range over repeats.

Memory per concurrent sequence: the KV cache reserves 2 * layers * kv_heads * max_len * head_dim *
4 bytes per slot (max_len = the model's context), committed when the engine is built. Measured
first, before other engines and transformers' generate have allocated and freed memory a new cache
could reuse unseen: RSS growth per slot when an engine is built, and per sequence after it has run
max_batch concurrent sequences of P+N tokens, each less the engine's fixed share (its decoding
copy's fused q/k/v weights, counted exactly and reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import transformers
from torch import nn

from graft.data.tokenizer import bytes_tokenizer
from graft.infer.engine import Engine, EngineConfig, Request
from graft.infer.generate import SamplingParams, generate
from graft.model.config import preset
from graft.model.convert.hf_export import hf_config_dict, hf_state_dict
from graft.model.transformer import LanguageModel

MiB = 1024 * 1024
FLOOR = (
    "fp32 weight-read floor"  # not a decoder: the time to read every matmul weight once per token
)


@dataclass
class Result:
    preset: str
    params: int
    prompt_tokens: int
    new_tokens: int
    tok_s: dict[str, list[float]] = field(
        default_factory=dict
    )  # batch-1 variant -> tokens/s per repeat
    same_tokens: dict[str, bool] = field(
        default_factory=dict
    )  # variant produced transformers' tokens
    throughput: dict[int, list[float]] = field(
        default_factory=dict
    )  # batch -> engine tokens/s per repeat
    kv_bytes_per_slot: int = 0
    rss_build_per_slot: float = 0.0
    rss_per_sequence: float = 0.0
    fixed_bytes: int = 0  # per engine, whatever its slots: the decoding copy's fused projections
    setup_s: dict[str, float] = field(
        default_factory=dict
    )  # engine build + warm-up (compile time shows here)

    def ratio(self, name: str) -> float:
        return statistics.median(self.tok_s[name]) / statistics.median(self.tok_s["hf generate"])


def build_models(name: str, vocab: int, seed: int = 0) -> tuple[LanguageModel, nn.Module]:
    """graft's model and its transformers twin with the same weights (via graft's exporter)."""
    torch.manual_seed(seed)
    graft = LanguageModel(preset(name, vocab_size=vocab)).eval()
    cfg = hf_config_dict(graft.config)
    kind = cfg.pop("model_type")
    for key in ("architectures", "torch_dtype"):
        cfg.pop(key, None)
    cfg.update(bos_token_id=None, eos_token_id=None, pad_token_id=0)
    if kind == "gpt2":
        hf: nn.Module = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg))
    elif kind == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    else:
        raise SystemExit(f"{name}: exports as {kind}; this benchmark builds gpt2 and llama twins")
    missing, unexpected = hf.load_state_dict(hf_state_dict(graft), strict=False)
    # The tied output layer is not stored: transformers ties lm_head to the embeddings itself.
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    return graft, hf.eval()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_preset(name: str, args: argparse.Namespace) -> Result:
    graft, hf = build_models(name, args.vocab)
    params = sum(p.numel() for p in graft.parameters())
    P, N = args.prompt_tokens, args.new_tokens
    prompt = torch.randint(0, args.vocab, (P,), generator=torch.Generator().manual_seed(1)).tolist()
    greedy = SamplingParams(max_new_tokens=N, temperature=0)
    tokenizer = (
        bytes_tokenizer()
    )  # text is decoded per token but never looked at: ids are what is timed
    print(
        f"{name}: {params:,} parameters; prompt {P}, new tokens {N}; transformers attention: "
        f"{hf.config._attn_implementation}; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    result = Result(name, params, P, N)

    # Memory first, before other engines and transformers' generate have used (and freed) memory
    # that a new cache could reuse unseen: RSS before the engine is built, after, and after it ran
    # max_batch concurrent sequences of P + N tokens.
    max_batch = max(args.batches)
    base = rss()
    engine = Engine(graft, tokenizer, EngineConfig(max_batch=max_batch))
    built = rss()
    _run(
        engine,
        [
            Request(prompt, SamplingParams(max_new_tokens=N, temperature=0.8, seed=i))
            for i in range(max_batch)
        ],
    )
    result.kv_bytes_per_slot = engine.stats.kv_cache_bytes_per_slot
    # Per engine, whatever its slots: its decoding copy's fused q/k/v projections
    # (Attention.fuse_qkv).
    result.fixed_bytes = sum(
        p.numel() * p.element_size()
        for name, p in engine.model.named_parameters()
        if ".qkv_proj." in name
    )
    result.rss_build_per_slot = (built - base - result.fixed_bytes) / max_batch
    result.rss_per_sequence = (rss() - base - result.fixed_bytes) / max_batch
    del engine

    ids = torch.tensor([prompt])

    def hf_generate() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=N,
                min_new_tokens=N,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
        return out[0, P:].tolist()

    variants: dict[str, Callable[[], list[int]]] = {
        "hf generate": hf_generate,
        "graft generate()": lambda: list(generate(graft, prompt, greedy)),
    }
    engines: dict[str, Engine] = {}
    configs = {"graft engine": EngineConfig(max_batch=max(args.batches))}
    if not args.skip_compile:
        configs["graft engine, compile"] = EngineConfig(max_batch=max(args.batches), compile=True)
    configs["graft engine, int8"] = EngineConfig(max_batch=max(args.batches), quantize="int8")
    for label, config in configs.items():
        seconds, engine = timed(lambda config=config: Engine(graft, tokenizer, config))
        # Warm-up at every batch size: compile traces its shapes here, not in the timed runs.
        for b in args.batches:
            seconds += timed(
                lambda engine=engine, b=b: engine.generate(
                    [
                        Request(prompt, SamplingParams(max_new_tokens=8, temperature=0))
                        for _ in range(b)
                    ]
                )
            )[0]
        result.setup_s[label] = seconds
        engines[label] = engine
        variants[label] = lambda engine=engine: _run(engine, [Request(prompt, greedy)])[0]

    # The floor: one step of a batch-1 decoder reads every matmul weight once, so no fp32 decoder
    # on this machine can beat the time of just reading them (a sum over each weight tensor).
    weights = list(
        {id(m.weight): m.weight for m in graft.modules() if isinstance(m, nn.Linear)}.values()
    )

    def read_weights() -> list[int]:
        with torch.inference_mode():
            for _ in range(N):
                for w in weights:
                    w.sum()
        return reference

    variants[FLOOR] = read_weights
    reference = hf_generate()  # also the warm-up of transformers
    variants["graft generate()"]()
    for label, run in variants.items():
        if label not in ("hf generate", FLOOR):
            result.same_tokens[label] = run() == reference
    fp32_engine = engines["graft engine"]
    for _ in range(args.repeats):
        for label, run in variants.items():
            seconds, _ = timed(run)
            result.tok_s.setdefault(label, []).append(N / seconds)
        for b in args.batches:
            requests = [
                Request(prompt, SamplingParams(max_new_tokens=N, temperature=0.8, seed=i))
                for i in range(b)
            ]
            seconds, _ = timed(lambda requests=requests: _run(fp32_engine, requests))
            result.throughput.setdefault(b, []).append(b * N / seconds)
        print(
            "  repeat done: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in result.tok_s.items()),
            flush=True,
        )

    return result


def _run(engine: Engine, requests: list[Request]) -> list[list[int]]:
    completions = engine.generate(requests)
    for c in completions:  # a run that failed must not be timed as a fast one
        assert (
            c.finish_reason == "length" and c.completion_tokens == requests[0].params.max_new_tokens
        ), c
    return [c.token_ids for c in completions]


def markdown(results: list[Result]) -> str:
    def cell(v: list[float]) -> str:
        return f"{statistics.median(v):,.1f} [{min(v):,.1f}–{max(v):,.1f}]"

    lines = []
    for r in results:
        lines += [
            f"### {r.preset} ({r.params / 1e6:.1f}M parameters), batch 1, "
            f"prompt {r.prompt_tokens}, {r.new_tokens} new tokens",
            "",
            "| variant | tokens/s (median [min–max]) | vs hf generate | same tokens as hf "
            "| setup s |",
            "|---|---:|---:|---|---:|",
        ]
        for name, v in r.tok_s.items():
            same = "yes" if r.same_tokens.get(name) else "no" if name in r.same_tokens else "—"
            setup = f"{r.setup_s[name]:.1f}" if name in r.setup_s else ""
            lines.append(f"| {name} | {cell(v)} | {r.ratio(name):.2f}x | {same} | {setup} |")
        lines += [
            "",
            "| engine batch | tokens/s (median [min–max]) | per sequence |",
            "|---:|---:|---:|",
        ]
        for b, v in r.throughput.items():
            lines.append(f"| {b} | {cell(v)} | {statistics.median(v) / b:,.1f} |")
        lines += [
            "",
            "Memory per concurrent sequence: KV cache slot (full context) "
            f"{r.kv_bytes_per_slot / MiB:.1f} MiB; "
            "measured RSS growth per slot when the engine is built "
            f"{r.rss_build_per_slot / MiB:.1f} MiB, and per "
            f"sequence after running {max(r.throughput)} sequences of "
            f"{r.prompt_tokens + r.new_tokens} tokens "
            f"{r.rss_per_sequence / MiB:.1f} MiB; and per engine, whatever its slots, "
            f"its fused q/k/v weights {r.fixed_bytes / MiB:.1f} MiB",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["small"])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (interleaved)")
    p.add_argument(
        "--batches", type=int, nargs="+", default=[1, 4, 8], help="engine throughput batch sizes"
    )
    p.add_argument(
        "--skip-compile", action="store_true", help="leave out the torch.compile variants"
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads; default: torch's own choice")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        flush=True,
    )
    results = [bench_preset(name, args) for name in args.presets]
    print()
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": [asdict(r) for r in results]}, f, indent=2)
    return results


if __name__ == "__main__":
    main()

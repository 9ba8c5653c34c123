"""Import speed and peak memory of graft's Hugging Face importer against transformers' own loader.

Method. A GPT-2 small directory (transformers' `GPT2LMHeadModel(GPT2Config())`: 124M parameters,
random init, fp32, tied head) is built locally and written with `save_pretrained` to a temporary
directory; building it is not timed and nothing is downloaded. Each measurement then runs in a
fresh Python subprocess, so that its peak RSS belongs to that one load and nothing else:

    import torch, graft (and, for the reference, transformers)   -> baseline RSS
    t0; graft.model.convert.hf.load_hf_model(dir); t1            -> wall time t1 - t0
    resource.getrusage(RUSAGE_SELF).ru_maxrss                     -> absolute peak RSS

and reports the wall time, the absolute peak and the peak above the baseline (what the load itself
cost). The reference is `GPT2LMHeadModel.from_pretrained(dir)` measured the same way in the same
run. Runs are interleaved (graft, transformers, graft, ...) so that drift in the machine hits
both; the table gives the median and range over repeats, and the ratio of the load's peak to the
size of the weights file. The weights file is in the page cache (it was just written): these are
warm-cache figures. The target from the issue: import under 5 s and under 2x the model's size in
peak RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
TARGET_SECONDS = 5.0
TARGET_RATIO = 2.0


def _rss_now() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    """This process's peak RSS in bytes as the kernel keeps it per address space (VmHWM); a check
    on ru_maxrss, which Linux carries over from the parent at fork."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _child(side: str, directory: str) -> None:
    import torch  # noqa: F401

    import graft.model.convert.hf as hf

    if side == "hf":
        from transformers import GPT2LMHeadModel
    base_rss = _rss_now()
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    t0 = time.perf_counter()
    if side == "graft":
        model = hf.load_hf_model(Path(directory))
    else:
        model = GPT2LMHeadModel.from_pretrained(directory)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    hwm = _hwm()
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            dict(
                side=side,
                seconds=seconds,
                base_rss=base_rss,
                base_peak=base_peak,
                peak=peak,
                hwm=hwm,
                end_rss=_rss_now(),
                params=params,
            )
        )
    )


def _measure(side: str, directory: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", side, str(directory)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _build(directory: Path) -> None:
    """In a subprocess, so that this parent stays small: Linux starts a child's ru_maxrss at its
    parent's peak, and a parent holding the 124M model would mask every child's own peak."""
    code = (
        "import sys, torch; from transformers import GPT2Config, GPT2LMHeadModel; "
        "torch.manual_seed(0); "
        "GPT2LMHeadModel(GPT2Config()).save_pretrained(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(directory)], check=True, capture_output=True)


def _fmt(values: list[float], spec: str) -> str:
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}–{max(values):{spec}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    from importlib.metadata import version

    # Versions from metadata, not imports: this parent stays small (see _build).
    print(
        f"torch {version('torch')}, transformers {version('transformers')}, "
        f"safetensors {version('safetensors')}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="graft-import-hf-") as tmp:
        directory = Path(tmp) / "gpt2"
        t0 = time.perf_counter()
        _build(directory)
        weights = directory / "model.safetensors"
        size = weights.stat().st_size
        print(
            f"built {directory.name}: GPT2LMHeadModel(GPT2Config()), "
            f"{weights.name} {size / MiB:,.1f} MiB "
            f"(not timed: {time.perf_counter() - t0:.1f} s)"
        )
        runs: dict[str, list[dict[str, float]]] = {"graft": [], "hf": []}
        for _ in range(args.repeats):
            for side in runs:
                runs[side].append(_measure(side, directory))
        parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        worst = max(abs(r["peak"] - r["hwm"]) for rs in runs.values() for r in rs) / MiB
        print(
            f"this parent's peak RSS {parent_peak / MiB:,.0f} MiB; "
            f"children's ru_maxrss vs VmHWM differ by at most {worst:.1f} MiB"
        )
        params = {r["params"] for rs in runs.values() for r in rs}
        print(
            f"parameters after load: {', '.join(f'{p:,}' for p in sorted(params))}; "
            f"{args.repeats} fresh subprocesses per side, interleaved; warm page cache"
        )
        print()
        print(
            "| loader | weights on disk (MiB) | import s (median [min–max]) "
            "| peak RSS above baseline (MiB) "
            "| ratio to size | absolute peak RSS (MiB) | baseline RSS after imports (MiB) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        names = {"graft": "graft load_hf_model", "hf": "transformers from_pretrained"}
        for side, rs in runs.items():
            seconds = [r["seconds"] for r in rs]
            delta = [(r["peak"] - r["base_rss"]) / MiB for r in rs]
            ratio = [(r["peak"] - r["base_rss"]) / size for r in rs]
            print(
                f"| {names[side]} | {size / MiB:,.1f} | {_fmt(seconds, '.2f')} "
                f"| {_fmt(delta, ',.0f')} "
                f"| {_fmt(ratio, '.2f')}x | {_fmt([r['peak'] / MiB for r in rs], ',.0f')} "
                f"| {_fmt([r['base_rss'] / MiB for r in rs], ',.0f')} |"
            )
        print()
        g = runs["graft"]
        sec = statistics.median(r["seconds"] for r in g)
        ratio = statistics.median((r["peak"] - r["base_rss"]) / size for r in g)
        print(
            f"target (import < {TARGET_SECONDS:g} s, peak < {TARGET_RATIO:g}x the model's size): "
            f"time {'met' if sec < TARGET_SECONDS else 'MISSED'} ({sec:.2f} s), "
            f"memory {'met' if ratio < TARGET_RATIO else 'MISSED'} ({ratio:.2f}x)"
        )


if __name__ == "__main__":
    main()

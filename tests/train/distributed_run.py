"""One pre-training run of the distributed tests, as torchrun (or a plain process) runs it:
python distributed_run.py DATA OUT PARALLEL MAX_STEPS STOP_AFTER RESUME.

The run is a tiny fp32 model on CPU with a global batch of 8 sequences; STOP_AFTER > 0 raises
Ctrl-C while drawing the batches of step STOP_AFTER + 1 (as a kill after that step's checkpoint
would leave it); RESUME 1 continues the run in OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

from graft.config import validate_run_config
from graft.objectives.clm import CausalLM
from graft.train.pretrain import pretrain


def config(data: Path, out: Path, parallel: str, max_steps: int) -> object:
    return validate_run_config(
        {
            "model": {
                "preset": "nano",
                "max_seq_len": 32,
                "d_model": 32,
                "n_layers": 2,
                "n_heads": 2,
                "dropout": 0.0,
            },
            "data": {"path": str(data)},
            "optim": {"lr": 3e-3, "warmup_steps": 5},
            "train": {
                "out_dir": str(out),
                "batch_size": 2,
                "global_batch": 8,
                "parallel": parallel,
                "max_steps": max_steps,
                "eval_every": 10,
                "eval_batches": 3,
                "log_every": 1,
                "progress": False,
                "device": "cpu",
            },
        }
    )


def main(argv: list[str]) -> None:
    data, out, parallel = Path(argv[0]), Path(argv[1]), argv[2]
    max_steps, stop_after, resume = int(argv[3]), int(argv[4]), argv[5] == "1"
    if stop_after:
        draw, calls = CausalLM.train_batch, {"n": 0}

        def interrupting(self: CausalLM, batch_size: int, generator: object) -> object:
            calls["n"] += 1
            if calls["n"] > stop_after * 4:  # 8 sequences of 2: 4 draws a step on every rank
                raise KeyboardInterrupt
            return draw(self, batch_size, generator)  # type: ignore[arg-type]

        CausalLM.train_batch = interrupting  # type: ignore[method-assign]
    result = pretrain(config(data, out, parallel, max_steps), resume=resume)  # type: ignore[arg-type]
    print(f"stopped: {result.stop_reason} at {result.step}")


if __name__ == "__main__":
    main(sys.argv[1:])

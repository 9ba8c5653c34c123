"""A fork server for the kill -9 trials: `python kill_child.py` runs graft commands on request.

Starting Python and importing torch costs seconds, and the suite starts about a hundred runs.
This server imports graft, torch and their lazy imports once; each request is run in a fork of
it, already warm. The server itself computes nothing, so no thread pool is copied half-way.

Protocol, one JSON object per line: the test writes {"argv": [...], "kill_at": "NAME:N" or null,
"fsize": BYTES or null, "log": PATH} to the server's stdin; the server answers {"code": N} on its
stdout once the run has ended: its exit status, or minus the signal that killed it (-9 for
SIGKILL).
"""

from __future__ import annotations

import json
import os
import resource
import sys

import matplotlib
import torch
import torch._dynamo  # noqa: F401  (what torch.optim imports on first use: most of a set-up)

import graft.cli
import graft.train.finetune
import graft.train.pretrain  # noqa: F401
from graft.crash_points import KILL_AT

matplotlib.use("Agg")  # the loss curve, as graft draws it
import matplotlib.pyplot  # noqa: E402,F401,I001

graft.cli.build_parser()  # its lazy imports (ftfy...), once


def run_graft(argv: list[str], kill_at: str | None, fsize: int | None, log: str) -> None:
    """In the forked child: `graft ARGV` with GRAFT_KILL_AT=`kill_at` and files limited to
    `fsize` bytes, output to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    if kill_at is not None:
        os.environ[KILL_AT] = kill_at
    if fsize is not None:  # a write past it fails with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))
    torch.set_num_threads(1)  # the same kernels, so the same bits, in every run
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        code = graft.cli.main(argv)
    except BaseException:  # a bug: its traceback goes to the log, like any crash's
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_graft(request["argv"], request["kill_at"], request["fsize"], request["log"])
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"code": code}), flush=True)


if __name__ == "__main__":
    serve()

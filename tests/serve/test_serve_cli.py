"""`graft serve` as a command: it prints its address, serves with the key from GRAFT_API_KEY, stops
cleanly on Ctrl-C, and a port in use is a one-line error."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_serve_prints_its_address_serves_and_stops_on_ctrl_c(checkpoint: Path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "graft",
            "serve",
            checkpoint,
            "--port",
            "0",
            "--model-name",
            "m",
            "--max-batch",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, "GRAFT_API_KEY": "sk-env"},
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        assert "'m' (causal LM" in line
        base = f"http://127.0.0.1:{match.group(1)}"
        assert httpx.get(f"{base}/health", timeout=30).json()["status"] == "ok"
        assert httpx.get(f"{base}/v1/models", timeout=30).status_code == 401
        auth = {"Authorization": "Bearer sk-env"}
        assert (
            httpx.get(f"{base}/v1/models", headers=auth, timeout=30).json()["data"][0]["id"] == "m"
        )
        done = httpx.post(
            f"{base}/v1/completions",
            headers=auth,
            timeout=60,
            json={"model": "m", "prompt": "the", "max_tokens": 4, "temperature": 0},
        )
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] >= 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_port_in_use_is_a_one_line_error(checkpoint: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "graft", "serve", checkpoint, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("graft: error: cannot listen on 127.0.0.1:")
        and str(port) in lines[0]
    )


def test_compile_with_int8_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from graft.cli import main

    assert main(["serve", str(tmp_path / "absent"), "--compile", "--quantize", "int8"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("graft: error: --compile and --quantize int8 do not combine")

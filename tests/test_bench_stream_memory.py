"""Smoke test of ``benches/stream_memory.py``: a few MiB each way on both wires, and the JSON has
the expected shape. The figures of so short a run mean little (the 1 GiB run is the measure)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.smoke
def test_stream_memory_bench_runs() -> None:
    command = [sys.executable, "benches/stream_memory.py", "--total", "4MiB", "--item", "64KiB"]
    command += ["--delay", "0", "--json"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"

    data = json.loads(result.stdout)
    assert data["benchmark"] == "stream_memory" and data["target_mb"] == 64
    runs = {(r["wire"], r["direction"]): r for r in data["runs"]}
    assert set(runs) == {("pb", "down"), ("pb", "up"), ("tub", "down"), ("tub", "up")}
    for run in runs.values():
        assert run["bytes"] == 4 << 20 and run["mb_per_s"] > 0
        assert run["client_growth_mb"] >= 0 and run["server_growth_mb"] >= 0

"""Smoke test of ``benches/loadgen.py``: every run of ``pbfast bench`` against ``pbfast serve``
completes and lands in the table and the JSON. Nothing is timed or compared here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.smoke
def test_loadgen_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "loadgen.json"
    command = [sys.executable, "benches/loadgen.py", "--seconds", "0.2", "--warmup", "0", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    rows = [
        line for line in result.stdout.splitlines() if line.startswith("| PB") or line.startswith("| Tub")
    ]
    assert len(rows) == 7
    runs = json.loads(out.read_text())
    assert [(r["wire"], r["model"]) for r in runs] == [
        ("pb", "closed"),
        ("pb", "closed"),
        ("pb", "closed"),
        ("pb", "open"),
        ("pb", "open"),
        ("tub", "closed"),
        ("tub", "open"),
    ]
    for run in runs:
        figures = run["result"]
        assert figures["completed"] > 0 and figures["failed"] == 0
        assert figures["generator_cpu_s"] > 0


@pytest.mark.smoke
def test_loadgen_floor_comparison_runs(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    command = [
        sys.executable, "benches/loadgen.py", "--floor", "--seconds", "0.2", "--warmup", "0.1",
        "--rounds", "1", "--concurrency", "16", "--json", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "median pbfast bench / callback floor" in result.stdout
    (figures,) = json.loads(out.read_text())["rounds"]
    for side in ("bench", "least", "floor"):
        assert figures[side]["calls_per_s"] > 0 and figures[side]["client_cpu_us"] > 0
    assert figures["ratio"] == figures["bench"]["calls_per_s"] / figures["floor"]["calls_per_s"]

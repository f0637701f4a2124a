"""Smoke test of ``benches/scaling.py``: `pbfast serve --workers` driven by `pbfast bench
--processes` completes for each pair and lands in the table and the JSON. Nothing is timed or
compared here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.smoke
@pytest.mark.parametrize("wire, top", [([], 2), (["--tub"], 1)], ids=["pb", "tub"])
def test_scaling_bench_runs(tmp_path: Path, wire: list[str], top: int) -> None:
    out = tmp_path / "scaling.json"
    command = [sys.executable, "benches/scaling.py", "--seconds", "0.2", "--warmup", "0", "--max", str(top)]
    command += [*wire, "--out", str(tmp_path), "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == top and all(line.count("(") == top for line in rows)
    runs = json.loads(out.read_text())["runs"]
    pairs = [(workers, processes) for workers in range(1, top + 1) for processes in range(1, top + 1)]
    assert [(r["workers"], r["processes"]) for r in runs] == pairs
    assert all(r["completed"] > 0 and r["failed"] == 0 for r in runs)

"""Smoke test of ``benches/cancel_latency.py``: a few trials of each kind on both wires complete
and land in the table and the JSON. Nothing is timed or compared here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.smoke
def test_cancel_latency_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    command = [sys.executable, "benches/cancel_latency.py", "--trials", "3", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| pb |", "| tub |"))]
    assert len(rows) == 2
    figures = json.loads(out.read_text())
    assert set(figures) == {"pb", "tub"}
    for wire in figures.values():
        assert wire["trials"] == 3 and wire["round_trip_median_ms"] > 0
        for kind in ("cancel", "deadline"):
            assert set(wire[kind]) == {"median_ms", "max_ms", "within_target"}

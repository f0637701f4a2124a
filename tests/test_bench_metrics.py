"""Smoke test of ``benches/metrics_cost.py``: each wire's runs with metrics off and on complete, the
clients with metrics on counted their calls, and both tables land in the report and the JSON.
Nothing is timed or compared here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.smoke
def test_metrics_cost_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    command = [
        sys.executable, "benches/metrics_cost.py", "--seconds", "0.2", "--rounds", "1", "--warmup", "0",
        "--inprocess-calls", "300", "--inprocess-rounds", "2", "--json", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert len([line for line in result.stdout.splitlines() if line.startswith(("| PB", "| Tub"))]) == 4
    data = json.loads(out.read_text())
    for wire in ("pb", "tub"):
        (figures,) = data["results"][wire]["rounds"]
        for way in ("off", "on"):
            assert figures[way]["calls_per_second"] > 0 and figures[way]["client_cpu_us_per_call"] > 0
        assert figures["ratio"] == figures["on"]["calls_per_second"] / figures["off"]["calls_per_second"]
        assert len(data["in_process"][wire]["rounds"]) == 2
        assert data["in_process"][wire]["on_cpu_us_per_call"] > 0

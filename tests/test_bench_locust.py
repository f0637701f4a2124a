"""Smoke test of ``benches/locust_rate.py``: a Locust row and its ``pbfast bench`` peer run
against ``pbfast serve`` and land in the table and the JSON. Nothing is timed or compared here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.smoke
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="Locust is in the test extra")
def test_locust_rate_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "locust.json"
    command = [sys.executable, "benches/locust_rate.py", "--seconds", "1", "--users", "2"]
    command += ["--rows", "tub,bench-tub", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    rows = [line.split("|")[1].strip() for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows == ["row", "tub", "bench-tub"], result.stdout
    runs = json.loads(out.read_text())
    assert list(runs) == ["tub", "bench-tub"]
    for figures in runs.values():
        assert figures["calls"] > 0 and figures["failures"] == 0
        assert figures["cpu_us_per_call"] > 0

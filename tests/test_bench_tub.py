"""Smoke test of ``benches/tub.py``: each system runs for a moment and the JSON has the expected
shape. Nothing is timed or compared here; the figures of so short a run mean nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.smoke
@pytest.mark.parametrize("system", ["pbfast", pytest.param("foolscap", marks=pytest.mark.interop)])
def test_tub_bench_runs(system: str) -> None:
    if system == "foolscap":
        pytest.importorskip("foolscap")
    command = [sys.executable, "benches/tub.py", "--only", system, "--json"]
    command += ["--seconds", "0.2", "--rounds", "1", "--warmup", "0.05", "--connections", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"

    data = json.loads(result.stdout)
    assert data["benchmark"] == "tub"
    assert set(data["systems"]) == {system}
    figures = data["systems"][system]
    assert figures["sequential"]["median_us"] > 0
    assert figures["sequential"]["p99_us"] >= figures["sequential"]["median_us"]
    assert figures["pipelined"]["calls_per_second_median"] > 0
    assert figures["setup"]["connections"] == 2
    assert len(figures["setup"]["samples_ms"]) == 2
    assert figures["setup"]["median_ms"] > 0
    assert figures["tls"].startswith("TLS")  # e.g. "TLSv1.3 ..." (OpenSSL), "TLSv1_3 ..." (rustls)
    # With one system there is nothing to compare: every ratio is there, without a value.
    assert set(data["ratios"]) == {
        "pbfast/foolscap throughput",
        "pbfast/foolscap median latency",
        "pbfast/foolscap connection setup",
    }
    assert all(r["ratio"] is None for r in data["ratios"].values())


@pytest.mark.smoke
def test_tub_bench_dicts() -> None:
    command = [sys.executable, "benches/tub.py", "--dicts", "--json"]
    command += ["--seconds", "0.2", "--rounds", "1", "--warmup", "0.05"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"

    data = json.loads(result.stdout)
    assert data["call"] == "echo(1,000 dicts)"
    assert data["settings"]["outstanding"] == 8 and data["settings"]["connections"] == 0
    figures = data["systems"]["pbfast"]
    assert figures["pipelined"]["calls_per_second_median"] > 0
    assert figures["sequential"]["calls"] == 0 and figures["setup"] is None
    if "foolscap" in data["systems"]:
        assert data["systems"]["foolscap"]["unavailable"] in ("not installed", "not measured with --dicts")

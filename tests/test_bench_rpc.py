"""Smoke test of ``benches/rpc.py``: the systems that need neither Twisted nor foolscap run for a
moment, and the JSON has the expected shape. Nothing is timed or compared here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*options: str) -> dict:
    command = [sys.executable, "benches/rpc.py", "--json", "--seconds", "0.2", "--rounds", "1"]
    command += ["--warmup", "0.05", *options]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.mark.smoke
def test_rpc_bench_raw_clients() -> None:
    data = run("--only", "pbfast,raw,floor")
    assert set(data["systems"]) == {"pbfast", "raw", "floor"}
    for figures in data["systems"].values():
        assert figures["sequential"]["median_us"] > 0
        assert figures["sequential"]["p99_us"] >= figures["sequential"]["median_us"]
        assert figures["pipelined"]["calls_per_second_median"] > 0
    assert data["settings"]["outstanding"] == 100
    for key in ("pbfast/raw throughput", "pbfast/floor median latency", "pbfast/floor throughput"):
        assert data["ratios"][key]["ratio"] > 0
    assert data["ratios"]["pbfast/twisted throughput"]["ratio"] is None


@pytest.mark.smoke
def test_rpc_bench_dicts() -> None:
    data = run("--dicts", "--only", "pbfast,raw")
    assert data["call"] == "echo(1,000 dicts)"
    assert data["settings"]["dicts"] and data["settings"]["outstanding"] == 8
    figures = data["systems"]["pbfast"]
    assert figures["pipelined"]["calls_per_second_median"] > 0
    assert figures["sequential"]["median_us"] is None and figures["sequential"]["calls"] == 0
    assert data["systems"]["raw"] == {"unavailable": "not measured with --dicts"}

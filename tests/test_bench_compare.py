"""Smoke test of ``benches/compare.py``: every system runs for a moment, and the Markdown, the chart
and the JSON are written. Nothing is timed or compared here; the figures of so short a run mean
nothing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TITLES = ("pbfast", "Twisted PB", "pbfast Tub", "foolscap Tub", "raw uvloop echo")


@pytest.mark.smoke
@pytest.mark.interop
def test_compare_bench_runs(tmp_path: Path) -> None:
    dump = tmp_path / "c.json"
    command = [sys.executable, "benches/compare.py", "--out", str(tmp_path), "--json", str(dump)]
    command += ["--seconds", "0.1", "--rounds", "1", "--warmup", "0.05", "--connections", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90)
    have_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert result.returncode == (0 if have_matplotlib else 1), (
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )

    table = (tmp_path / "comparison.md").read_text(encoding="utf-8")
    assert result.stdout == table
    rows = [line for line in table.splitlines() if line.startswith("| ") and " over " in line]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(TITLES)
    for title, row in zip(TITLES, rows, strict=True):
        # A stock system that is not installed is reported, not measured.
        assert "not run" in row or row.split(" | ")[-1].rstrip(" |").replace(",", "").isdigit(), (title, row)
    assert "pbfast / Twisted, pipelined calls/s" in table
    assert "pbfast / foolscap, pipelined calls/s" in table
    assert "`pbfast._core.build_profile`" in table

    data = json.loads(dump.read_text(encoding="utf-8"))
    assert [row["title"] for row in data["rows"]] == list(TITLES)
    assert data["rows"][0]["calls_per_second"] > 0  # pbfast itself always runs

    chart = tmp_path / "comparison.png"
    if have_matplotlib:
        assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert not chart.exists()
        assert "pip install -e '.[bench]'" in result.stderr

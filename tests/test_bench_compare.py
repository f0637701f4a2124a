"""Smoke test of ``benches/compare.py``: every system, the 1,000-dict echo and the codec run for a
moment, and the Markdown, the chart and the JSON are written. Nothing is timed or compared here; the
figures of so short a run mean nothing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TITLES = (
    "pbfast PB",
    "pbfast Tub",
    "Twisted PB",
    "foolscap Tub",
    "raw uvloop, futures",
    "raw uvloop, callback floor",
    "raw uvloop over TLS, futures",
)
# The rows with a 1 MiB echo figure.
BULK = ("pbfast PB", "pbfast Tub", "raw uvloop, futures", "raw uvloop over TLS, futures")
CODECS = ("pbfast (`pbfast.dumps` + `pbfast.loads`)", "pickle (protocol 5)")


def load_targets():
    """benches/targets.py, the list of the project's targets."""
    spec = importlib.util.spec_from_file_location("targets", ROOT / "benches" / "targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.smoke
@pytest.mark.interop
def test_compare_bench_runs(tmp_path: Path) -> None:
    dump = tmp_path / "c.json"
    command = [sys.executable, "benches/compare.py", "--out", str(tmp_path), "--json", str(dump)]
    command += ["--seconds", "0.1", "--rounds", "1", "--warmup", "0.05", "--connections", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"

    table = (tmp_path / "comparison.md").read_text(encoding="utf-8")
    assert result.stdout == table
    # The systems' rows: their second cell is the wire ("PB over TCP", ...).
    rows = [line for line in table.splitlines() if line.startswith("| ") and " over " in line.split(" | ")[1]]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(TITLES)
    for title, row in zip(TITLES, rows, strict=True):
        cells = [c.replace(",", "") for c in row.rstrip(" |").split(" | ")]
        # A stock system that is not installed is reported, not measured; the TLS echo only with
        # the 1 MiB.
        calls, dicts, bulk = cells[-3:]
        assert "not run" in row or calls.isdigit() or title in BULK[-1:], (title, row)
        assert dicts.isdigit() if title.startswith("pbfast") else dicts == "–", (title, row)
        assert bulk.isdigit() if title in BULK else bulk == "–", (title, row)
    for codec in CODECS:
        assert f"| {codec} | " in table

    targets = load_targets()
    for target in targets.TARGETS:
        assert f"| {target.label} | " in table
    assert "`pbfast._core.build_profile`" in table

    data = json.loads(dump.read_text(encoding="utf-8"))
    assert [row["title"] for row in data["rows"]] == list(TITLES)
    assert [row["title"] for row in data["codec_rows"]] == list(CODECS)
    assert set(data["benches"]) == {
        "rpc",
        "tub",
        "rpc_dicts",
        "tub_dicts",
        "rpc_bulk",
        "tub_bulk",
        "serialization",
    }
    assert [r["key"] for r in data["ratios"]] == [t.key for t in targets.TARGETS]
    pb, tub = data["rows"][0], data["rows"][1]  # pbfast itself always runs
    assert pb["calls_per_second"] > 0 and pb["dicts_calls_per_second"] > 0
    assert tub["calls_per_second"] > 0 and tub["dicts_calls_per_second"] > 0
    assert data["rows"][-2]["calls_per_second"] > 0  # the callback floor needs only uvloop
    assert all(row["bulk_mb_per_second"] > 0 for row in data["rows"] if row["title"] in BULK)
    assert all(row["round_trips_per_second"] > 0 for row in data["codec_rows"])
    keys = ("tub/pb throughput", "tub/pb dicts throughput", "codec/pickle round trip", "pbfast/raw bulk")
    for key in keys:
        (ratio,) = [r for r in data["ratios"] if r["key"] == key]
        assert ratio["ratio"] > 0 and ratio["verdict"] in ("PASS", "MISS")

    for bench, system in (("rpc_bulk", "raw"), ("tub_bulk", "pbfast")):
        figures = data["benches"][bench]["systems"][system]["pipelined"]
        for side in ("client", "server"):
            assert figures[f"{side}_kernel_us_per_call"] >= 0, (bench, side, figures)
    if "TLS's cipher alone" in table:
        assert "are the kernel's" in table and "the pbfast Tub's busier process spends" in table

    chart = tmp_path / "comparison.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert not chart.exists()
        assert "pip install matplotlib" in result.stderr


@pytest.mark.smoke
def test_compare_without_matplotlib(tmp_path: Path) -> None:
    """Without matplotlib there is no chart, and one line says how to get it (no error)."""
    script = (
        "import sys; sys.modules['matplotlib'] = None; sys.path.insert(0, 'benches'); import compare; "
        "print(compare.write_chart({}, sys.argv[1]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no chart") and result.stdout.count("\n") == 1
    assert "pip install matplotlib" in result.stdout and "pip install -e '.[bench]'" in result.stdout
    assert not (tmp_path / "comparison.png").exists()


def test_cipher_note_splits_the_busier_processes() -> None:
    """The note on TLS's cipher takes each bulk echo's busier process and the kernel's part of it."""
    sys.path.insert(0, str(ROOT / "benches"))
    try:
        import compare
    finally:
        sys.path.remove(str(ROOT / "benches"))

    def pipelined(client: tuple, server: tuple) -> dict:
        keys = ("client_cpu_us_per_call", "client_kernel_us_per_call", "server_cpu_us_per_call")
        return {"pipelined": dict(zip((*keys, "server_kernel_us_per_call"), (*client, *server), strict=True))}

    benches = {
        "rpc_bulk": {"systems": {"raw": pipelined((400, 300), (500, 400))}},
        "tub_bulk": {"systems": {"pbfast": pipelined((900, 450), (800, 500))}},
    }
    note = compare.cipher_note({"seal_us": 50, "open_us": 50}, benches)
    assert note is not None
    assert "the 500 µs of CPU per call the raw echo's busier process" in note
    assert "at most 0.83×" in note  # 500 / (500 + 100)
    assert "Of those 500 µs, 400 are the kernel's" in note and "would reach 1.00×" in note
    assert "the pbfast Tub's busier process spends 900 µs per call, 450 in the kernel" in note
    assert "echoes 0.56× the raw echo's MB per CPU-second" in note  # 500 / 900
    # Without the kernel's part (an older run, or no /proc), only the first bound.
    benches["rpc_bulk"]["systems"]["raw"]["pipelined"]["server_kernel_us_per_call"] = None
    assert compare.cipher_note({"seal_us": 50, "open_us": 50}, benches).endswith("0.83× the raw echo's MB/s")
    assert compare.cipher_note({"error": "cryptography is not installed"}, benches) is None

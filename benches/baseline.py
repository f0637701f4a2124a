"""pbfast against another build of itself, side by side in one run.

rpc.py's PB echo server and client (pipelined calls/s with 100 outstanding, sequential
latency), alternating between this checkout's build and a baseline build, round after round,
and the ratios of the two: what a change did to speed, measured on the same machine at the
same time. The baseline is a git revision (built once, in release mode, into its own virtual
environment under ``target/baseline/``; needs a Rust toolchain) or any interpreter that has
pbfast installed.

    python benches/baseline.py --rev 2559e95
    python benches/baseline.py --python /path/to/venv/bin/python --rounds 6 --pin split
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import rpc

ROOT = Path(__file__).resolve().parent.parent
CURRENT, BASELINE = rpc.PBFAST, "baseline"


def build(rev: str) -> str:
    """An interpreter with pbfast built at git revision `rev` (made once, then reused)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    home = ROOT / "target" / "baseline" / sha
    python = home / "venv" / "bin" / "python"
    if python.exists():
        return str(python)
    source = home / "src"
    source.mkdir(parents=True, exist_ok=True)
    print(f"building pbfast at {rev} ({sha[:12]}) into {home.relative_to(ROOT)} ...", file=sys.stderr)
    archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(source)], check=True)
    return str(python)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--rev", help="the baseline: a git revision to build")
    which.add_argument("--python", help="the baseline: an interpreter with pbfast installed")
    rpc.add_timing_options(parser)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    rpc.check_timing_options(parser, args)
    other = build(args.rev) if args.rev else args.python
    described = subprocess.run(
        [other, "-c", "import pbfast, pbfast._core as c; print(pbfast.__file__, c.build_profile)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()

    env = rpc.environment()
    rpc.preflight(env)
    size = rpc.request_size()
    results = [rpc.Result(CURRENT, "this checkout"), rpc.Result(BASELINE, args.rev or other)]

    def launch(system: str) -> tuple[str, str]:
        return (other if system == BASELINE else sys.executable), rpc.PBFAST

    rpc.measure(results, args, size, launch)
    current, baseline = results
    rows = [
        ("pipelined calls/s", current.throughput(), baseline.throughput(), ">= 0.95"),
        ("sequential median µs", current.median_us(), baseline.median_us(), "<= 1.05"),
        ("sequential p99 µs", current.p99_us(), baseline.p99_us(), None),
    ]
    lines = [
        f"pbfast (this checkout, {env['pbfast_build_profile']} build) against the baseline "
        f"{args.rev or other} ({described[0]}, {described[1]} build); "
        f"{args.rounds} rounds of {args.seconds:g} s, --pin {args.pin}",
        "",
        "| figure | this build | baseline | this / baseline | aim |",
        "|---|--:|--:|--:|---|",
    ]
    data: dict[str, Any] = {
        "benchmark": "baseline",
        "baseline": args.rev or other,
        "environment": env,
        "figures": {},
    }
    for label, mine, theirs, aim in rows:
        ratio = mine / theirs if mine is not None and theirs else None
        fmt = rpc.fmt_rate if "calls" in label else rpc.fmt_us
        lines.append(f"| {label} | {fmt(mine)} | {fmt(theirs)} | {rpc.fmt_ratio(ratio)} | {aim or ''} |")
        data["figures"][label] = {"this": mine, "baseline": theirs, "ratio": ratio}
    data["rounds"] = {"this": current.rates, "baseline": baseline.rates}
    lines.append("")
    lines.append(
        "pipelined rounds, calls/s: this "
        + ", ".join(rpc.fmt_rate(r) for r in current.rates)
        + "; baseline "
        + ", ".join(rpc.fmt_rate(r) for r in baseline.rates)
    )
    print("\n".join(lines))
    if args.json:
        rpc.write_json(args.json, data)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())

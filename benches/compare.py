"""All five systems in one run: a Markdown table and a PNG chart of their RPC latency and throughput.

    python benches/compare.py [--seconds 2] [--rounds 3] [--connections 20] [--pin same|split|none]
                              [--out DIR] [--json PATH]

Runs ``rpc.py``'s measurement (pbfast on the PB wire, stock Twisted PB, the raw uvloop echo) and
then ``tub.py``'s (pbfast Tub and stock foolscap Tub over TLS), with the same settings, through
their ``run`` functions. Writes ``DIR/comparison.md`` (one table: sequential median and p99
latency and pipelined calls/s per system, the ratios that matter, the machine, the command and the
date) and ``DIR/comparison.png`` (throughput and latency, one bar per system), and prints the
Markdown. DIR defaults to ``benches/results``. A system that is not installed, or whose benchmark
fails, is reported as not run. The chart needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import traceback
from typing import Any

# `python benches/compare.py` puts benches/ on sys.path already; importing this file from elsewhere
# needs it too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rpc  # noqa: E402
import tub  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# (key, title, wire, benchmark module, that module's system name), in the table's order.
SYSTEMS = (
    ("pbfast", "pbfast", "PB over TCP", rpc, rpc.PBFAST),
    ("twisted", "Twisted PB", "PB over TCP", rpc, rpc.TWISTED),
    ("pbfast-tub", "pbfast Tub", "foolscap over TLS", tub, tub.PBFAST),
    ("foolscap", "foolscap Tub", "foolscap over TLS", tub, tub.FOOLSCAP),
    ("raw", "raw uvloop echo", "length-prefixed frames over TCP", rpc, rpc.RAW),
)
PBFAST_KEYS = {"pbfast", "pbfast-tub"}


# ============================================================================================
# Running the two benchmarks


def run_bench(module: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One benchmark's `results_json` and its ratios with their labels; on failure, the error
    instead, so that the other benchmark still runs and the table still says what happened."""
    name = module.__name__
    print(f"{name}.py:", file=sys.stderr)
    try:
        if module is rpc:
            results, env, size = rpc.run(args, list(rpc.SYSTEMS))
            data = rpc.results_json(results, env, args, size)
        else:
            results, env = tub.run(args, list(tub.SYSTEMS))
            data = tub.results_json(results, env, args)
    except Exception as e:
        traceback.print_exc()
        print(f"{name}.py failed; its systems are reported as not run", file=sys.stderr)
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    data["ratio_rows"] = module.ratios(results)
    return data


def rows(benches: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per system, in the table's order: its figures, or why it did not run."""
    out = []
    for key, title, wire, module, system in SYSTEMS:
        row: dict[str, Any] = {"key": key, "title": title, "wire": wire}
        data = benches[module.__name__]
        figures = data.get("systems", {}).get(system)
        if "error" in data:
            row["not_run"] = f"not run: {module.__name__}.py failed"
        elif figures is None or "unavailable" in figures:
            row["not_run"] = f"not run: {figures['unavailable'] if figures else 'not measured'}"
        else:
            row["version"] = figures["version"]
            row["median_us"] = figures["sequential"]["median_us"]
            row["p99_us"] = figures["sequential"]["p99_us"]
            row["calls_per_second"] = figures["pipelined"]["calls_per_second_median"]
            if "setup" in figures:
                row["setup_median_ms"] = figures["setup"]["median_ms"]
        out.append(row)
    return out


def machine() -> dict[str, Any]:
    import pbfast
    import pbfast._core

    libraries = tub.library_versions()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "pbfast_version": pbfast.__version__,
        "pbfast_build_profile": pbfast._core.build_profile,
        "uvloop_version": libraries["uvloop"],
        "twisted_version": libraries["twisted"],
        "foolscap_version": tub.versions()[tub.FOOLSCAP],
    }


# ============================================================================================
# The Markdown


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def settings_text(args: argparse.Namespace) -> str:
    connections = sum(tub.split_connections(args.connections, args.rounds))
    return (
        f"{args.seconds:g} s per system per measurement in {plural(args.rounds, 'alternating round')}, "
        f"warm-up {args.warmup:g} s, {args.outstanding} calls outstanding, "
        f"{plural(connections, 'fresh client Tub')} per Tub system; "
        f"CPU placement `--pin {args.pin}`: {rpc.describe_pin(args.pin)}"
    )


def markdown(data: dict[str, Any]) -> str:
    env, args = data["machine"], data["args"]
    lines = ["# pbfast against Twisted PB, foolscap and a raw echo", ""]
    if env["pbfast_build_profile"] != "release":
        lines += [rpc.debug_warning(), ""]
    lines += [
        "| system | wire | version | seq median µs | seq p99 µs | pipelined calls/s |",
        "|---|---|---|--:|--:|--:|",
    ]
    for row in data["rows"]:
        if "not_run" in row:
            lines.append(f"| {row['title']} | {row['wire']} | {row['not_run']} | – | – | – |")
            continue
        lines.append(
            f"| {row['title']} | {row['wire']} | {row['version']} | {rpc.fmt_us(row['median_us'])} | "
            f"{rpc.fmt_us(row['p99_us'])} | {rpc.fmt_rate(row['calls_per_second'])} |"
        )
    lines += ["", "| ratio | value | target | result |", "|---|--:|--:|---|"]
    for ratio in data["ratios"]:
        lines.append(
            f"| {ratio['label']} | {rpc.fmt_ratio(ratio['ratio'])} | "
            f"{tub.fmt_target(ratio['comparison'], ratio['target'])} | {ratio['verdict'] or '–'} |"
        )
    setups = [r for r in data["rows"] if r.get("setup_median_ms") is not None]
    if setups:
        figures = ", ".join(f"{r['title']} {tub.fmt_ms(r['setup_median_ms'])} ms" for r in setups)
        lines += ["", f"Connection setup (a fresh client Tub to its first answer, median): {figures}."]

    cpus = f"{env['cpu_count']}" + (
        f" ({env['cpus_usable']} usable)" if env["cpus_usable"] not in (None, env["cpu_count"]) else ""
    )
    busy = ""
    for name, bench in data["benches"].items():
        percent = bench.get("environment", {}).get("cpu_busy_before_percent")
        if percent is not None and percent > rpc.BUSY_WARNING:
            busy += f"; **{percent:.0f}% busy with other work just before {name}.py: expect noisy numbers**"
    lines += [
        "",
        "- Call: `echo(1)` on 127.0.0.1, each system's server and client in their own processes; "
        f"sequential: one call at a time, each timed; pipelined: {args.outstanding} calls outstanding",
        f"- Machine: {cpus} CPUs, {env['machine']}, {env['platform']}{busy}",
        f"- Python {env['python']} ({env['python_implementation']}); pbfast {env['pbfast_version']}, "
        f"`pbfast._core.build_profile` = `{env['pbfast_build_profile']}`; "
        f"uvloop {env['uvloop_version'] or 'not installed'}; "
        f"Twisted {env['twisted_version'] or 'not installed'}; "
        f"foolscap {env['foolscap_version'] or 'not installed'}",
        f"- Command: `{data['command']}` ({settings_text(args)})",
        f"- Date: {data['date']}",
    ]
    return "\n".join(lines) + "\n"


# ============================================================================================
# The chart

PBFAST_COLOUR, STOCK_COLOUR, RAW_COLOUR = "#1f6fb4", "#a0a0a0", "#5f5f5f"


def si(value: float) -> str:
    """10000 -> "10k", 1000000 -> "1M": log-axis ticks without exponents."""
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def chart(data: dict[str, Any], path: str) -> None:
    """Two panels, one bar per system: pipelined calls/s, and sequential median and p99 latency.
    Both on a log scale: the systems are 30× apart, and a linear axis hides the slow ones' bars or
    the fast ones' differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows_ = data["rows"]
    labels = [f"{r['title']}\n{r['wire']}" for r in rows_]
    colours = [
        PBFAST_COLOUR if r["key"] in PBFAST_KEYS else RAW_COLOUR if r["key"] == "raw" else STOCK_COLOUR
        for r in rows_
    ]
    ys = range(len(rows_))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.6), sharey=True, layout="constrained")

    def values(name: str) -> list[float]:
        return [r.get(name) or 0 for r in rows_]

    def not_run(ax: Any, y: int, lowest: float) -> None:
        ax.text(lowest, y, " not run", va="center", fontsize=9, color="#b00000")

    rates = values("calls_per_second")
    left.barh(ys, rates, color=colours, height=0.6)
    measured = [v for v in rates if v] or [1.0]
    left.set_xscale("log")
    left.set_xlim(min(measured) / 3, max(measured) * 6)
    for y, rate in enumerate(rates):
        if rate:
            left.text(rate * 1.1, y, f"{rate:,.0f}", va="center", fontsize=9)
        else:
            not_run(left, y, min(measured) / 3)
    left.set_title("Pipelined throughput, calls/s (higher is better)", fontsize=10)
    left.set_yticks(list(ys), labels, fontsize=9)
    left.invert_yaxis()

    medians, p99s = values("median_us"), values("p99_us")
    half = 0.3
    right.barh([y - half / 2 for y in ys], medians, height=half, color=colours, label="median")
    right.barh(
        [y + half / 2 for y in ys], p99s, height=half, color=colours, alpha=0.45, hatch="///", label="p99"
    )
    measured = [v for v in medians + p99s if v] or [1.0]
    right.set_xscale("log")
    right.set_xlim(min(measured) / 2, max(measured) * 4)
    for y, (median, p99) in enumerate(zip(medians, p99s, strict=True)):
        if median:
            right.text(median * 1.08, y - half / 2, f"{rpc.fmt_us(median)}", va="center", fontsize=8.5)
            right.text(p99 * 1.08, y + half / 2, f"p99 {rpc.fmt_us(p99)}", va="center", fontsize=8.5)
        else:
            not_run(right, y, min(measured) / 2)
    right.set_title("Sequential latency, µs (lower is better)", fontsize=10)
    right.legend(
        handles=[
            plt.Rectangle((0, 0), 1, 1, color="#444444", label="median"),
            plt.Rectangle((0, 0), 1, 1, color="#444444", alpha=0.45, hatch="///", label="p99"),
        ],
        fontsize=9,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.07),  # below the axis: inside, it would cover some bar's label
        ncol=2,
        frameon=False,
    )
    left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
    right.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    for ax in (left, right):
        lo, hi = ax.get_xlim()
        # Powers of ten alone leave a narrow axis (a run without the slow systems) with one tick.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if hi / lo >= 100 else (1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelsize=9)
        ax.grid(axis="x", which="major", color="#e4e4e4")
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)

    env = data["machine"]
    profile = "" if env["pbfast_build_profile"] == "release" else f", {env['pbfast_build_profile']} build!"
    fig.suptitle(
        f"echo(1) on 127.0.0.1, server and client in separate processes ({env['cpu_count']} CPUs, "
        f"Python {env['python']}, {data['date'][:10]}{profile})",
        fontsize=10,
    )
    fig.savefig(path, dpi=150)
    plt.close(fig)


# ============================================================================================


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    rpc.add_timing_options(parser)
    parser.add_argument(
        "--connections",
        type=int,
        default=tub.CONNECTIONS,
        help=f"fresh client Tubs per Tub system for tub.py's connection setup (default: {tub.CONNECTIONS})",
    )
    parser.add_argument(
        "--out", default=RESULTS, metavar="DIR", help="where comparison.md and comparison.png go"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON to PATH")
    args = parser.parse_args(argv)
    rpc.check_timing_options(parser, args)
    if args.connections < 1:
        parser.error("--connections must be >= 1")

    benches = {"rpc": run_bench(rpc, args), "tub": run_bench(tub, args)}
    data: dict[str, Any] = {
        "benchmark": "compare",
        "command": shlex.join(["python", "benches/compare.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "args": args,
        "rows": rows(benches),
        "ratios": [r for bench in benches.values() for r in bench.pop("ratio_rows", [])],
        "benches": benches,
    }

    os.makedirs(args.out, exist_ok=True)
    text = markdown(data)
    md_path = os.path.join(args.out, "comparison.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(text)
    print(text, end="")
    print(f"table written to {md_path}", file=sys.stderr)
    if args.json:
        data["args"] = vars(args)
        rpc.write_json(args.json, data)

    status = 1 if any("error" in bench for bench in benches.values()) else 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: no chart: matplotlib is not installed; pip install -e '.[bench]'", file=sys.stderr)
        return 1
    png_path = os.path.join(args.out, "comparison.png")
    chart(data, png_path)
    print(f"chart written to {png_path}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""pbfast's speed in one report: its RPC against stock Twisted PB, stock foolscap and two raw uvloop
echoes, its codec against pickle, and the project's targets. A Markdown table and a PNG chart.

    python benches/compare.py [--seconds 2] [--rounds 3] [--connections 20] [--pin same|split|none]
                              [--out DIR] [--json PATH]

Measures, with the same settings and through the other scripts' own functions:

* ``serialization.py``'s round trip of the 1,000 small dicts, ``pbfast.dumps`` + ``pbfast.loads``
  and pickle's (in this process, first);
* ``rpc.py``'s ``echo(1)``: pbfast on the PB wire, stock Twisted PB, the raw uvloop client with
  futures and batched writes, and the raw callback floor;
* ``tub.py``'s ``echo(1)`` and connection setup: a pbfast Tub and a stock foolscap Tub over TLS;
* ``rpc.py --dicts`` and ``tub.py --dicts``: pbfast PB and the pbfast Tub echoing the 1,000 dicts;
* ``rpc.py --bulk`` and ``tub.py --bulk``: pbfast PB, the pbfast Tub and the raw uvloop echo (over
  TCP, and over TLS with the ``ssl`` module) echoing a 1 MiB byte string, in MB/s.

The six RPC measurements take their rounds in turn (round 1 of each, then round 2 of each, ...),
so that figures compared with each other are measured close together in time. Writes
``DIR/comparison.md`` (the systems' figures, the ratios of ``targets.py`` with PASS or MISS, the
machine, the command and the date) and ``DIR/comparison.png`` (throughput and latency, one bar per
system), and prints the Markdown. DIR defaults to ``benches/results``. A system that is not
installed, or whose benchmark fails, is reported as not run. The chart needs matplotlib; without
it, the table is still written.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

# `python benches/compare.py` puts benches/ on sys.path already; importing this file from elsewhere
# needs it too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rpc  # noqa: E402
import serialization  # noqa: E402
import tub  # noqa: E402
from targets import TARGETS, fmt_target, verdict  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CHART_HINT = "pip install matplotlib (or pip install -e '.[bench]')"

# The RPC measurements: (name in the JSON, as named in the report, script, the call echoed:
# "one" is echo(1), "dicts" the 1,000 dicts, "bulk" the 1 MiB byte string).
PARTS = (
    ("rpc", "rpc.py", rpc, "one"),
    ("tub", "tub.py", tub, "one"),
    ("rpc_dicts", "rpc.py --dicts", rpc, "dicts"),
    ("tub_dicts", "tub.py --dicts", tub, "dicts"),
    ("rpc_bulk", "rpc.py --bulk", rpc, "bulk"),
    ("tub_bulk", "tub.py --bulk", tub, "bulk"),
)
# The systems' rows, in the table's order: (key in targets.py, title, wire, measurement, its name
# of the system). The pbfast rows also take their 1,000-dict figure from DICTS.
SYSTEMS = (
    ("pb", "pbfast PB", "PB over TCP", "rpc", rpc.PBFAST),
    ("tub", "pbfast Tub", "foolscap over TLS", "tub", tub.PBFAST),
    ("twisted", "Twisted PB", "PB over TCP", "rpc", rpc.TWISTED),
    ("foolscap", "foolscap Tub", "foolscap over TLS", "tub", tub.FOOLSCAP),
    ("raw", "raw uvloop, futures", "length-prefixed frames over TCP", "rpc", rpc.RAW),
    ("floor", "raw uvloop, callback floor", "length-prefixed frames over TCP", "rpc", rpc.FLOOR),
    ("raw_tls", "raw uvloop over TLS, futures", "length-prefixed frames over TLS", "rpc_bulk", rpc.RAW_TLS),
)
PART_TITLES = {name: title for name, title, _, _ in PARTS}
DICTS = {"pb": ("rpc_dicts", rpc.PBFAST), "tub": ("tub_dicts", tub.PBFAST)}
# The rows with a 1 MiB echo figure: where it is measured.
BULK = {
    "pb": ("rpc_bulk", rpc.PBFAST),
    "tub": ("tub_bulk", tub.PBFAST),
    "raw": ("rpc_bulk", rpc.RAW),
    "raw_tls": ("rpc_bulk", rpc.RAW_TLS),
}
# The codec rows: (key in targets.py, title, serialization.py's system).
CODECS = (
    ("codec", "pbfast (`pbfast.dumps` + `pbfast.loads`)", serialization.PBFAST),
    ("pickle", "pickle (protocol 5)", serialization.PICKLE),
)
PBFAST_KEYS = {"pb", "tub"}
RAW_KEYS = {"raw", "floor", "raw_tls"}
# Rows measured only with the 1 MiB echo (not in the echo(1) chart).
BULK_ONLY = {"raw_tls"}


# ============================================================================================
# Measuring


@dataclass
class Part:
    """One of the RPC measurements: a script's results, filled in round by round."""

    name: str
    title: str
    module: Any
    args: argparse.Namespace
    results: list[Any] = field(default_factory=list)
    error: str | None = None

    def failed(self, e: BaseException) -> None:
        traceback.print_exc()
        print(f"{self.title} failed; its systems are reported as not run", file=sys.stderr)
        self.error = f"{type(e).__name__}: {e}".splitlines()[0]

    def prepare(self) -> None:
        try:
            self.results = self.module.prepare(self.args, list(self.module.SYSTEMS))
        except Exception as e:
            self.failed(e)

    def measure_round(self, rnd: int, size: int) -> None:
        if self.error is not None:
            return
        print(f"{self.title}:", file=sys.stderr)
        try:
            if self.module is rpc:
                rpc.measure(self.results, self.args, size, rounds=[rnd])
            else:
                tub.measure(self.results, self.args, rounds=[rnd])
        except Exception as e:
            self.failed(e)

    def json(self, env: dict[str, Any], size: int) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        if self.module is rpc:
            return rpc.results_json(self.results, env, self.args, size)
        return tub.results_json(self.results, env, self.args)


def measure_codec(args: argparse.Namespace) -> dict[str, Any]:
    """serialization.py's round trip of its 1,000 dicts, pbfast's codec and pickle: its JSON, or
    the error."""
    print("serialization.py (round trip only):", file=sys.stderr)
    try:
        data = serialization.make_data()
        systems = [serialization.pbfast_system(), serialization.pickle_system()]
        for system in systems:
            serialization.check(system, data)
        serialization.measure(systems, data, args.seconds, args.rounds, args.warmup, modes=("roundtrip",))
        settings = argparse.Namespace(
            seconds=args.seconds, rounds=args.rounds, warmup=args.warmup, no_gc=False
        )
        return serialization.results_json(systems, serialization.environment(), settings)
    except Exception as e:
        traceback.print_exc()
        print("serialization.py failed; the codec rows are reported as not run", file=sys.stderr)
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}


def measure_cipher(rounds: int = 50) -> dict[str, Any]:
    """What AES-128-GCM alone costs (the cipher two pbfast Tubs negotiate, TLS13_AES_128_GCM_SHA256):
    the fastest of `rounds` seals, and opens, of 1 MiB with OpenSSL's (through ``cryptography``),
    in this process; or why it was not measured. A 1 MiB echo seals and opens 1 MiB in each
    process, so an echo over TLS spends at least that much more CPU per call than one without."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return {"error": "cryptography is not installed"}
    import time

    cipher, nonce, data = AESGCM(AESGCM.generate_key(bit_length=128)), bytes(12), rpc.bulk_payload()
    sealed = cipher.encrypt(nonce, data, None)
    seal = open_ = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        cipher.encrypt(nonce, data, None)
        seal = min(seal, time.perf_counter() - started)
        started = time.perf_counter()
        cipher.decrypt(nonce, sealed, None)
        open_ = min(open_, time.perf_counter() - started)
    return {"seal_us": seal * 1e6, "open_us": open_ * 1e6, "bytes": len(data)}


def cipher_note(cipher: dict[str, Any], benches: dict[str, dict[str, Any]]) -> str | None:
    """What TLS's cipher alone leaves of the raw echo's MB/s, from its CPU per call (and, where
    the kernel's part is known, how the raw echo's and the pbfast Tub's busier processes split)."""
    raw = busier_process(benches, "rpc_bulk", rpc.RAW)
    if "error" in cipher or raw is None:
        return None
    (busier, kernel), crypto = raw, cipher["seal_us"] + cipher["open_us"]
    note = (
        f"- TLS's cipher alone: AES-128-GCM (what two pbfast Tubs negotiate) seals 1 MiB in "
        f"{cipher['seal_us']:,.0f} µs and opens it in "
        f"{cipher['open_us']:,.0f} µs (OpenSSL, in this process, fastest of 50). Each process of a 1 MiB "
        f"echo over TLS does both per call, on top of the {busier:,.0f} µs of CPU per call the raw "
        f"echo's busier process spends here: an echo that did nothing but the raw echo's work and "
        f"the cipher's would reach at most {busier / (busier + crypto):.2f}× the raw echo's MB/s"
    )
    if kernel is None:
        return note
    note += (
        f". Of those {busier:,.0f} µs, {kernel:,.0f} are the kernel's (sending and receiving over TCP, "
        f"the same for any echo): one whose work outside the kernel were the cipher's and nothing "
        f"else would reach {busier / (kernel + crypto):.2f}×"
    )
    tub_busier = busier_process(benches, "tub_bulk", tub.PBFAST)
    if tub_busier is not None and tub_busier[1] is not None:
        total, tub_kernel = tub_busier
        # CPU per call is steadier than MB/s on a machine whose speed swings from run to run.
        note += (
            f"; the pbfast Tub's busier process spends {total:,.0f} µs per call, {tub_kernel:,.0f} in "
            f"the kernel, and so echoes {busier / total:.2f}× the raw echo's MB per CPU-second (its "
            f"AES-GCM is its own, named below, not OpenSSL's: {crypto:,.0f} µs at OpenSSL's speed)"
        )
    return note


def busier_process(
    benches: dict[str, dict[str, Any]], bench: str, system: str
) -> tuple[float, float | None] | None:
    """The CPU per call of a bulk echo's busier process, pipelined, and the kernel's part of it
    (None if not known); None if the system did not run."""
    figures = benches.get(bench, {}).get("systems", {}).get(system, {}).get("pipelined", {})
    sides = [
        (figures.get(f"{side}_cpu_us_per_call"), figures.get(f"{side}_kernel_us_per_call"))
        for side in ("client", "server")
    ]
    known = [(cpu, kernel) for cpu, kernel in sides if cpu is not None]
    return max(known, key=lambda side: side[0]) if known else None


def rows(benches: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per system, in the table's order: its figures, or why it did not run."""
    out = []
    for key, title, wire, part, system in SYSTEMS:
        row: dict[str, Any] = {"key": key, "title": title, "wire": wire}
        data = benches[part]
        figures = data.get("systems", {}).get(system)
        if "error" in data:
            row["not_run"] = f"not run: {PART_TITLES[part]} failed"
        elif figures is None or "unavailable" in figures:
            row["not_run"] = f"not run: {figures['unavailable'] if figures else 'not measured'}"
        else:
            row["version"] = figures["version"]
            if key not in BULK_ONLY:
                row["median_us"] = figures["sequential"]["median_us"]
                row["p99_us"] = figures["sequential"]["p99_us"]
                row["calls_per_second"] = figures["pipelined"]["calls_per_second_median"]
            if figures.get("setup"):
                row["setup_median_ms"] = figures["setup"]["median_ms"]
        if key in DICTS:
            part, system = DICTS[key]
            figures = benches[part].get("systems", {}).get(system) or {}
            row["dicts_calls_per_second"] = figures.get("pipelined", {}).get("calls_per_second_median")
        if key in BULK:
            part, system = BULK[key]
            figures = benches[part].get("systems", {}).get(system) or {}
            row["bulk_mb_per_second"] = figures.get("pipelined", {}).get("mb_per_second_median")
        out.append(row)
    return out


def codec_rows(codec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, title, system in CODECS:
        row: dict[str, Any] = {"key": key, "title": title}
        figures = codec.get("systems", {}).get(system)
        if "error" in codec:
            row["not_run"] = "not run: serialization.py failed"
        elif figures is None or "unavailable" in figures:
            row["not_run"] = f"not run: {figures['unavailable'] if figures else 'not measured'}"
        else:
            row["version"] = figures["version"]
            row["round_trips_per_second"] = figures["roundtrip"]["ops_per_second_median"]
            row["payload_bytes"] = figures["payload_bytes"]
        out.append(row)
    return out


def ratios(all_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target of targets.py: its ratio (None where a side did not run) and verdict."""
    by_key = {row["key"]: row for row in all_rows}
    out = []
    for t in TARGETS:
        x = by_key.get(t.numerator, {}).get(t.figure)
        y = by_key.get(t.denominator, {}).get(t.figure)
        ratio = x / y if x is not None and y else None
        out.append(
            {
                "label": t.label,
                "key": t.key,
                "ratio": ratio,
                "comparison": t.comparison,
                "target": t.target,
                "verdict": verdict(ratio, t.comparison, t.target),
            }
        )
    return out


def machine(rpc_env: dict[str, Any], tub_env: dict[str, Any]) -> dict[str, Any]:
    return {
        "cpu_count": rpc_env["cpu_count"],
        "cpus_usable": rpc_env["cpus_usable"],
        "machine": rpc_env["machine"],
        "platform": rpc_env["platform"],
        "python": rpc_env["python"],
        "python_implementation": rpc_env["python_implementation"],
        "pbfast_version": rpc_env["pbfast_version"],
        "pbfast_build_profile": rpc_env["pbfast_build_profile"],
        "pbfast_tls_aes_gcm": rpc_env.get("pbfast_tls_aes_gcm"),
        "uvloop_version": rpc_env["uvloop_version"],
        "twisted_version": rpc_env["twisted_version"],
        "foolscap_version": tub_env["foolscap_version"],
        "cpu_busy_before_percent": rpc_env.get("cpu_busy_before_percent"),
    }


# ============================================================================================
# The Markdown


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def settings_text(args: argparse.Namespace) -> str:
    connections = sum(tub.split_connections(args.connections, args.rounds))
    return (
        f"{args.seconds:g} s per system per measurement in {plural(args.rounds, 'alternating round')}, "
        f"warm-up {args.warmup:g} s, {args.outstanding} calls outstanding "
        f"({rpc.DICT_OUTSTANDING} with the 1,000 dicts, {rpc.BULK_OUTSTANDING} with the 1 MiB echo), "
        f"{plural(connections, 'fresh client Tub')} per Tub system; "
        f"CPU placement `--pin {args.pin}`: {rpc.describe_pin(args.pin)}"
    )


def cell(row: dict[str, Any], name: str, fmt: Any) -> str:
    value = row.get(name)
    return "–" if value is None else fmt(value)


def markdown(data: dict[str, Any]) -> str:
    env, args = data["machine"], data["args"]
    lines = ["# pbfast against Twisted PB, foolscap, raw uvloop and pickle", ""]
    if env["pbfast_build_profile"] != "release":
        lines += [rpc.debug_warning(), ""]
    lines += [
        "| system | wire | version | seq median µs | seq p99 µs | pipelined calls/s "
        "| 1,000-dict echo calls/s | 1 MiB echo MB/s |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in data["rows"]:
        dicts = cell(row, "dicts_calls_per_second", rpc.fmt_rate)
        bulk = cell(row, "bulk_mb_per_second", rpc.fmt_mb)
        if "not_run" in row:
            not_run = f"| {row['title']} | {row['wire']} | {row['not_run']} | – | – | –"
            lines.append(f"{not_run} | {dicts} | {bulk} |")
            continue
        lines.append(
            f"| {row['title']} | {row['wire']} | {row['version']} | {cell(row, 'median_us', rpc.fmt_us)} | "
            f"{cell(row, 'p99_us', rpc.fmt_us)} | {cell(row, 'calls_per_second', rpc.fmt_rate)} | {dicts} "
            f"| {bulk} |"
        )
    lines += ["", "| codec | version | dumps+loads/s, 1,000 dicts | payload bytes |", "|---|---|--:|--:|"]
    for row in data["codec_rows"]:
        if "not_run" in row:
            lines.append(f"| {row['title']} | {row['not_run']} | – | – |")
            continue
        lines.append(
            f"| {row['title']} | {row['version']} | "
            f"{serialization.fmt_rate(row['round_trips_per_second'])} | {row['payload_bytes']:,} |"
        )
    lines += ["", "| ratio | value | target | result |", "|---|--:|--:|---|"]
    for ratio in data["ratios"]:
        lines.append(
            f"| {ratio['label']} | {rpc.fmt_ratio(ratio['ratio'])} | "
            f"{fmt_target(ratio['comparison'], ratio['target'])} | {ratio['verdict'] or '–'} |"
        )
    setups = [r for r in data["rows"] if r.get("setup_median_ms") is not None]
    if setups:
        figures = ", ".join(f"{r['title']} {tub.fmt_ms(r['setup_median_ms'])} ms" for r in setups)
        lines += ["", f"Connection setup (a fresh client Tub to its first answer, median): {figures}."]

    cpus = f"{env['cpu_count']}" + (
        f" ({env['cpus_usable']} usable)" if env["cpus_usable"] not in (None, env["cpu_count"]) else ""
    )
    lines += [
        "",
        "- RPC: each system's server and client in their own processes on 127.0.0.1, a fresh pair per "
        "round; sequential: `echo(1)`, one call at a time, each timed; pipelined: `echo(1)`, "
        f"{args.outstanding} calls outstanding, each completion starting the next call",
        "- raw uvloop: one echo server of length-prefixed frames as long as pbfast's `echo(1)` request. "
        "*futures*: a request id and a future per call, the writes of one loop iteration batched (what "
        "pbfast's client does, without serialization); *callback floor*: no futures, each read's replies "
        "answered by as many requests in one write",
        "- 1,000-dict echo: `echo(data)`, `data` the 1,000 small dicts below (jelly on PB, foolscap "
        f"values on the Tub), {rpc.DICT_OUTSTANDING} calls outstanding, every reply compared with `data`",
        f"- 1 MiB echo: `echo(data)`, `data` a {rpc.BULK_SIZE:,}-byte string, {rpc.BULK_OUTSTANDING} calls "
        "outstanding, every reply compared with `data`; MB/s: MB (10^6 bytes) of payload per second each "
        "way. The raw echoes: frames of a 4-byte length, a 4-byte request id and the 1 MiB, each long frame "
        "gathered chunk by chunk and joined once, the reply's body the value its future gets; *over TLS*: "
        "the same through uvloop's TLS with the `ssl` module (OpenSSL)",
        *([data["cipher_note"]] if data.get("cipher_note") else []),
        f"- Codec: `{serialization.DATA_SOURCE}`, dumps then loads, in process, garbage collector on",
        f"- Machine: {cpus} CPUs, {env['machine']}, {env['platform']}"
        f"{rpc.busy_note(env.get('cpu_busy_before_percent'))}",
        f"- Python {env['python']} ({env['python_implementation']}); pbfast {env['pbfast_version']}, "
        f"`pbfast._core.build_profile` = `{env['pbfast_build_profile']}`, "
        f"AES-GCM for a Tub's TLS 1.3 records: {env.get('pbfast_tls_aes_gcm') or 'not recorded'}; "
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

    rows_ = [r for r in data["rows"] if r["key"] not in BULK_ONLY]
    labels = [f"{r['title']}\n{r['wire']}" for r in rows_]
    colours = [
        PBFAST_COLOUR if r["key"] in PBFAST_KEYS else RAW_COLOUR if r["key"] in RAW_KEYS else STOCK_COLOUR
        for r in rows_
    ]
    ys = range(len(rows_))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 5.2), sharey=True, layout="constrained")

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
        f"echo(1) on 127.0.0.1, server and client in separate processes, --pin {data['args'].pin} "
        f"({env['cpu_count']} CPUs, Python {env['python']}, {data['date'][:10]}{profile})",
        fontsize=10,
    )
    fig.savefig(path, dpi=150)
    plt.close(fig)


def write_chart(data: dict[str, Any], out: str) -> str:
    """Draw the chart into `out` if matplotlib is there: one line saying where it went, or how to
    get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"no chart: matplotlib is not installed; for the chart, {CHART_HINT}"
    path = os.path.join(out, "comparison.png")
    chart(data, path)
    return f"chart written to {path}"


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

    rpc_env = rpc.environment()
    rpc.preflight(rpc_env)  # one sample of how busy the machine is, before anything runs
    tub_env = {**tub.environment(), "cpu_busy_before_percent": rpc_env["cpu_busy_before_percent"]}
    size = rpc.request_size()

    codec = measure_codec(args)
    settings = {
        "one": args,
        "dicts": argparse.Namespace(**{**vars(args), "dicts": True, "outstanding": rpc.DICT_OUTSTANDING}),
        "bulk": argparse.Namespace(**{**vars(args), "bulk": True, "outstanding": rpc.BULK_OUTSTANDING}),
    }
    parts = [Part(name, title, module, settings[call]) for name, title, module, call in PARTS]
    for part in parts:
        part.prepare()
    for rnd in range(args.rounds):
        for part in parts[rnd % len(parts) :] + parts[: rnd % len(parts)]:
            part.measure_round(rnd, size)

    benches: dict[str, dict[str, Any]] = {
        part.name: part.json(rpc_env if part.module is rpc else tub_env, size) for part in parts
    }
    benches["serialization"] = codec
    cipher = measure_cipher()
    system_rows, codec_rows_ = rows(benches), codec_rows(codec)
    data: dict[str, Any] = {
        "benchmark": "compare",
        "command": shlex.join(["python", "benches/compare.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(rpc_env, tub_env),
        "args": args,
        "rows": system_rows,
        "codec_rows": codec_rows_,
        "ratios": ratios(system_rows + codec_rows_),
        "benches": benches,
        "cipher": cipher,
        "cipher_note": cipher_note(cipher, benches),
    }

    os.makedirs(args.out, exist_ok=True)
    text = markdown(data)
    md_path = os.path.join(args.out, "comparison.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(text)
    print(text, end="")
    print(f"table written to {md_path}", file=sys.stderr)
    if args.json:
        rpc.write_json(args.json, {**data, "args": vars(args)})
    print(write_chart(data, args.out), file=sys.stderr)
    return 1 if any("error" in bench for bench in benches.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Pages made at build time (run by mkdocs-gen-files, see mkdocs.yml).

- ``cli.md``: the command line reference, read from the argparse parser that ``pbfast`` runs;
- ``changelog.md``: CHANGELOG.md;
- ``benchmark-report.md``: benches/results/comparison.md;
- ``benchmarks.md``: benches/README.md, its links to files of the repository shown as their
  paths (they are not pages of the site);
- ``images/comparison.png``: the chart from benches/results/.
"""

from __future__ import annotations

import argparse
import html
import os
import re
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- the command line


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "&#124;")


def _flags(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{name}`" for name in action.option_strings)
        if action.nargs != 0:
            metavar = action.metavar or action.dest.upper()
            if isinstance(metavar, tuple):
                metavar = " ".join(metavar)
            names += f" `{metavar}`"
        return names
    metavar = action.metavar or action.dest
    return f"`{metavar}`"


def _default(action: argparse.Action) -> str:
    if action.option_strings and action.nargs == 0:
        return ""
    if action.default in (None, argparse.SUPPRESS) or action.required:
        return ""
    if isinstance(action.default, list) and not action.default:
        return ""
    return f"`{action.default}`"


def _arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        help_text = formatter._expand_help(action) if action.help else ""
        if action.choices and not action.option_strings or (action.choices and action.metavar is None):
            help_text = f"one of {', '.join(map(str, action.choices))}. {help_text}"
        default = "" if "default" in help_text.lower() else _default(action)
        rows.append(f"| {_flags(action)} | {default} | {_cell(help_text)} |")
    return rows


def cli_page() -> str:
    from pbfast._cli import build_parser

    os.environ["COLUMNS"] = "80"  # argparse wraps usage lines to this width
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {choice.dest: choice.help for choice in sub._choices_actions}
    lines = [
        "# Command line",
        "",
        "<!-- generated from pbfast's argparse parser when the site is built -->",
        "",
        f"`{parser.prog}` (also `python -m pbfast`): {html.escape(parser.description or '')}",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        "Expected failures (a bad argument, an unreachable server, a remote error) are printed as "
        "one line on standard error: exit status 1, or 2 for a malformed command line, or 3 for a "
        "crossed `bench --fail-if` threshold.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for name in sub.choices:
        lines.append(f"| [`{parser.prog} {name}`](#{name}) | {_cell(summaries.get(name) or '')} |")
    for name, command in sub.choices.items():
        lines += [
            "",
            f"## {parser.prog} {name} {{#{name}}}",
            "",
            _cell(command.description or summaries.get(name) or ""),
            "",
            "```text",
            command.format_usage().strip(),
            "```",
            "",
            *_arguments_table(command),
        ]
        if command.epilog:
            epilog = command._get_formatter()._format_text(command.epilog).rstrip()
            lines += ["", "```text", epilog, "```"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- included files

_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def _local_links_as_text(markdown: str, source_dir: str) -> str:
    """Links to files of the repository (not pages of this site) become their text, with the
    path in code, so that nothing points outside the built site."""

    def replace(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        if target.startswith(("#", "http://", "https://", "mailto:")):
            return match.group(0)
        path = os.path.normpath(os.path.join(source_dir, target.split("#")[0]))
        if text.strip("`") == target or text.strip("`") == os.path.basename(target):
            return f"`{path}`"
        return f"{text} (`{path}`)"

    return _LINK.sub(replace, markdown)


def benchmarks_page() -> str:
    text = (ROOT / "benches" / "README.md").read_text(encoding="utf-8")
    text = _local_links_as_text(text, "benches")
    return "<!-- benches/README.md, included when the site is built -->\n\n" + text


def report_page() -> str:
    text = (ROOT / "benches" / "results" / "comparison.md").read_text(encoding="utf-8")
    title, _, body = text.partition("\n")
    return (
        "<!-- benches/results/comparison.md, included when the site is built -->\n\n"
        "# The latest comparison report\n\n"
        f"{title.lstrip('# ').strip()}: the report that `python benches/compare.py` wrote, as "
        "committed in `benches/results/comparison.md` (the command, machine and date are at the "
        "end).\n\n"
        "![The chart of this report](images/comparison.png)\n" + _local_links_as_text(body, "benches/results")
    )


def changelog_page() -> str:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    return "<!-- CHANGELOG.md, included when the site is built -->\n\n" + _local_links_as_text(text, ".")


with mkdocs_gen_files.open("cli.md", "w") as f:
    f.write(cli_page())
mkdocs_gen_files.set_edit_path("cli.md", "../python/pbfast/_cli/__init__.py")

with mkdocs_gen_files.open("benchmarks.md", "w") as f:
    f.write(benchmarks_page())
mkdocs_gen_files.set_edit_path("benchmarks.md", "../benches/README.md")

with mkdocs_gen_files.open("benchmark-report.md", "w") as f:
    f.write(report_page())
mkdocs_gen_files.set_edit_path("benchmark-report.md", "../benches/results/comparison.md")

with mkdocs_gen_files.open("changelog.md", "w") as f:
    f.write(changelog_page())
mkdocs_gen_files.set_edit_path("changelog.md", "../CHANGELOG.md")

with mkdocs_gen_files.open("images/comparison.png", "wb") as f:
    f.write((ROOT / "benches" / "results" / "comparison.png").read_bytes())

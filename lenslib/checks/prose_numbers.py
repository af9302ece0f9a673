"""``python -m lenslib.checks.prose_numbers NB...``: list what a notebook's prose states but its outputs do not show.

A tutorial sentence such as "the answer emerges at layer 13 for 104 of 247 prompts" is only
true of one run. This checker reads every markdown cell and finds:

* **numbers** (``13``, ``0.78``, ``81.5%``, ``10,000``) in the prose, outside ``code spans``,
  ``$math$``, link targets, headings and HTML comments. Each must appear in a **text output of
  an earlier cell** (printed text, ``text/plain``, a table's HTML or a ``Markdown`` display),
  exactly or as that output rounded to the prose's precision (``0.776`` supports ``0.78``;
  ``0.815`` supports ``81.5%``). Plot data and images do not count: a reader cannot read a
  number off them.
* **tokens** quoted in code spans (`` `" Paris"` ``, `` `'·lighthouse'` ``): the quoted text must
  appear in an earlier cell's output or source.

Numbers and tokens that come from outside the notebook (a paper's year, a vocabulary size) are
listed in an HTML comment in the same markdown cell, which renders as nothing:
``<!-- outside: 2020, 262144, " the" -->``.

>>> cells = [{"cell_type": "code", "source": "print(13)", "outputs": [{"output_type": "stream", "text": "13\\n"}]},
...          {"cell_type": "markdown", "source": "The answer emerges at layer 13, in 104 of 247 prompts."}]
>>> [problem.claim for problem in unsupported_claims(cells)]
['104', '247']
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

NUMBER = re.compile(r"(?<![\w.\-])-?\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?%?(?![A-Za-z\d])")
QUOTED_TOKEN = re.compile(r"""`(["'])(.+?)\1`""")
OUTSIDE = re.compile(r"<!--\s*outside:(.*?)-->", re.S)
NOT_PROSE = re.compile(
    r"`[^`]*`"  # code spans
    r"|\$[^$]*\$"  # inline math
    r"|\]\([^)]*\)"  # link targets
    r"|^#+ [^\n]*$"  # headings
    r"|<!--.*?-->"  # comments
    r"|^\s*\d+[.)]\s"  # numbered-list markers
    r"|<[^>]+>",  # HTML tags
    re.M | re.S,
)
TEXT_MIMES = ("text/plain", "text/markdown", "text/latex")


@dataclass(frozen=True)
class Unsupported:
    """One claim in the prose that no earlier output shows."""

    cell: int  # index of the markdown cell
    claim: str  # the number or token as written
    context: str  # the prose around it

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.claim!r} in \"…{self.context}…\""


def output_text(cell: dict) -> str:
    """The text a reader sees in a code cell's outputs (no plot data, no scripts)."""
    parts = []
    for output in cell.get("outputs", []):
        if "text" in output:
            parts.append(_join(output["text"]))
        data = output.get("data", {})
        for mime in TEXT_MIMES:
            if mime in data:
                parts.append(_join(data[mime]))
        html = _join(data.get("text/html", ""))
        if html and "<script" not in html:
            parts.append(html)
    return "\n".join(parts)


def unsupported_claims(cells: list[dict]) -> list[Unsupported]:
    """Numbers and quoted tokens in markdown cells that no earlier cell supports (see module doc)."""
    shown_numbers: set[str] = set()
    shown_text: list[str] = []
    problems = []
    for index, cell in enumerate(cells):
        source = _join(cell.get("source", ""))
        if cell.get("cell_type") != "markdown":
            text = output_text(cell)
            shown_numbers |= {_plain(n) for n in NUMBER.findall(text)}
            shown_text += [text, source]
            continue
        outside = " ".join(OUTSIDE.findall(source))
        outside_numbers = {_plain(n) for n in NUMBER.findall(outside)}
        prose = NOT_PROSE.sub(" ", source)
        for match in NUMBER.finditer(prose):
            claim = match.group()
            if _plain(claim) in outside_numbers or _supported(claim, shown_numbers):
                continue
            context = prose[max(0, match.start() - 50): match.end() + 30]
            problems.append(Unsupported(index, claim, " ".join(context.split())))
        seen = "\n".join(shown_text)
        for match in QUOTED_TOKEN.finditer(source):
            token = match.group(2)
            if token in seen or f"{match.group(1)}{token}{match.group(1)}" in outside:
                continue
            context = source[max(0, match.start() - 50): match.end() + 30]
            problems.append(Unsupported(index, match.group(0), " ".join(context.split())))
    return problems


def check_notebooks(paths: Iterable[Path]) -> dict[Path, list[Unsupported]]:
    """``{path: unsupported claims}`` for each notebook that has any."""
    report = {}
    for path in paths:
        problems = unsupported_claims(json.loads(Path(path).read_text())["cells"])
        if problems:
            report[Path(path)] = problems
    return report


def _supported(claim: str, shown: set[str]) -> bool:
    value = _plain(claim)
    if value in shown:
        return True
    decimals = len(value.split(".")[1]) if "." in value else 0
    target = float(value)
    for number in shown:
        try:
            seen = float(number)
        except ValueError:
            continue
        if decimals == 0 and not claim.endswith("%"):
            if seen == target:  # "13" is supported by 13 or 13.0, not by 12.6
                return True
        elif round(seen, decimals) == target:
            return True
        if claim.endswith("%") and abs(seen) <= 1 and round(seen * 100, decimals) == target:
            return True
    return False


def _plain(number: str) -> str:
    return number.replace(",", "").rstrip("%")


def _join(text) -> str:
    return "".join(text) if isinstance(text, list) else str(text)


def main(paths: list[str]) -> int:
    report = check_notebooks(Path(p) for p in paths)
    for path, problems in report.items():
        print(f"{path}: {len(problems)} claim(s) in the prose that no earlier output shows:")
        for problem in problems:
            print(f"  {problem}")
    return 1 if report else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

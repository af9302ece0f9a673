"""``python -m lenslib.checks.hygiene NB...``: strip noisy metadata from executed notebooks.

Keeps outputs (readers see every figure without a kernel) but drops what changes on every run
and says nothing: per-cell execution timestamps, widget state, and the kernel's Python patch
version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def clean(path: Path) -> None:
    notebook = json.loads(path.read_text())
    notebook.get("metadata", {}).pop("widgets", None)
    language = notebook.get("metadata", {}).get("language_info", {})
    language.pop("version", None)
    for cell in notebook["cells"]:
        cell.get("metadata", {}).pop("execution", None)
        cell.get("metadata", {}).pop("ExecuteTime", None)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def main(paths: list[str]) -> int:
    for name in paths:
        clean(Path(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

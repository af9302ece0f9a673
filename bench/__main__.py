"""``python -m bench SUITE [options]`` runs a suite; ``python -m bench --list`` lists them.

``python -m bench SUITE --help`` shows a suite's options (see ``bench/README.md``).
"""

from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    from bench.harness import run_suite
    from bench.suites import all_suites

    argv = list(sys.argv[1:] if argv is None else argv)
    suites = all_suites()
    if not argv or argv[0] in ("-h", "--help", "--list"):
        if not argv or argv[0] != "--list":
            print(__doc__.strip().splitlines()[0] + "\n")
        for name, suite in suites.items():
            print(f"{name}: {suite.title}\n    {suite.about} Writes {suite.stem}.json and {suite.stem}.md.")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in suites:
        print(f"no suite named {name!r}; choose one of {', '.join(suites)} (python -m bench --list)", file=sys.stderr)
        return 2
    run_suite(suites[name], rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The modules scripts/mutation.sh mutates, and the per-module table of mutmut's results.

    python scripts/mutation_table.py patterns [MODULE ...]   # mutant-name patterns to run
    python scripts/mutation_table.py table [--out FILE]      # the table (and survivors)

Run from the repository root, after ``mutmut run`` (results: ``mutants/**/*.py.meta``).
Kill rate = (killed + timeout) / mutants: a mutant whose tests time out was detected; one
with no test covering it, or not run yet, counts as not killed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

# Module -> (source file, mutant-name patterns). mutmut names a mutant
# ``<module>.x_<function>__mutmut_<n>``, or ``<module>.xǁ<Class>ǁ<method>__mutmut_<n>``
# (``?`` stands for the ``ǁ``). Of lungs.py only the per-side volumes and the QC record.
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "geometry": ("volseg/geometry.py", ("volseg.geometry.*",)),
    "quantify": ("volseg/quantify.py", ("volseg.quantify.*",)),
    "metrics": ("volseg/evaluation/metrics.py", ("volseg.evaluation.metrics.*",)),
    "stats": ("volseg/evaluation/stats.py", ("volseg.evaluation.stats.*",)),
    "postprocess": ("volseg/inference/postprocess.py", ("volseg.inference.postprocess.*",)),
    "lungs": (
        "volseg/data/lungs.py",
        (
            "volseg.data.lungs.x?_CoarseView?with_qc*",
            "volseg.data.lungs.x?LungMask?side_shares*",
            "volseg.data.lungs.x?LungMask?qc*",
            "volseg.data.lungs.x__qc_warnings*",
            "volseg.data.lungs.x__cut_faces*",
        ),
    ),
}

COLUMNS = (
    "mutants",
    "killed",
    "survived",
    "timeout",
    "no tests",
    "not checked",
    "other",
    "kill rate",
)
KEPT = ("killed", "survived", "timeout", "no tests", "not checked")


def _status(exit_code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    status = status_by_exit_code[exit_code]
    if status == "caught by type check":
        return "killed"
    return status if status in KEPT else "other"  # suspicious, segfault, skipped


def _results(module: str) -> dict[str, int | None]:
    source, patterns = MODULES[module]
    meta = Path("mutants") / f"{source}.meta"
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return {k: v for k, v in codes.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def table() -> tuple[str, list[str]]:
    """Markdown table per module (and in total), and the names of the surviving mutants."""
    lines = [
        "| module | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    survivors: list[str] = []
    total: Counter[str] = Counter()
    for module in MODULES:
        results = _results(module)
        counts = Counter(_status(code) for code in results.values())
        counts["mutants"] = len(results)
        total.update(counts)
        alive = [k for k, v in results.items() if _status(v) in ("survived", "no tests", "other")]
        survivors += sorted(alive, key=_natural)
        lines.append(_row(f"{module} ({MODULES[module][0]})", counts))
    lines.append(_row("**total**", total))
    return "\n".join(lines) + "\n", survivors


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else -1


def _row(name: str, c: Counter[str]) -> str:
    rate = f"{100.0 * (c['killed'] + c['timeout']) / c['mutants']:.1f} %" if c["mutants"] else "-"
    cells = [str(c[k]) for k in COLUMNS[:-1]] + [rate]
    return f"| {name} | " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pat = sub.add_parser("patterns", help="mutant-name patterns of the modules (default all)")
    pat.add_argument("modules", nargs="*", metavar="MODULE")
    tab = sub.add_parser("table", help="per-module table of the results under mutants/")
    tab.add_argument("--out", type=Path, help="also write the table and survivors here")
    args = parser.parse_args(argv)

    if args.command == "patterns":
        unknown = [m for m in args.modules if m not in MODULES]
        if unknown:
            parser.error(f"unknown module {unknown[0]!r}; choose from {', '.join(MODULES)}")
        for module in args.modules or MODULES:
            print("\n".join(MODULES[module][1]))
        return 0

    text, survivors = table()
    text += "\nSurvived, no tests or other (`python -m mutmut show NAME` shows the change):\n\n"
    text += "".join(f"- `{name}`\n" for name in survivors) or "- none\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

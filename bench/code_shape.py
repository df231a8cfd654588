"""Shape of the code: non-blank Python lines per package and the longest functions.

Printed as text to compare before and after a change (the duplicated blocks come from the tool
library's ``duplicates`` command).

    python bench/code_shape.py [--top 15]
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGES = ("core", "serving", "probes", "detectors", "policies", "lifecycle", "optimizers",
            "daemon")
REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    total = 0
    functions: list[tuple[int, str]] = []
    print("lines per package (non-blank, Python):")
    for package in PACKAGES:
        lines = 0
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text()
            lines += sum(1 for line in text.splitlines() if line.strip())
            tree = ast.parse(text)
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    functions.append((length, f"{path.relative_to(REPO)}:{node.lineno} {node.name}"))
        total += lines
        print(f"  {package:<11} {lines:6d}")
    print(f"  {'total':<11} {total:6d}")
    print("longest functions (lines):")
    for length, where in sorted(functions, reverse=True)[:args.top]:
        print(f"  {length:4d}  {where}")
    print(f"functions over 50 lines: {sum(1 for n, _ in functions if n > 50)}")


if __name__ == "__main__":
    main()

"""The README's conformance table from a JUnit XML report of tests/hf/conformance:
    python -m pytest -m conformance tests/hf/conformance --junitxml=conformance.xml
    python tests/hf/conformance/summary.py conformance.xml"""
import sys
import xml.etree.ElementTree as ET
from collections import Counter


def outcomes(junit_path: str) -> dict:
    """{(family, "Plain" | "Optimized"): Counter(passed=, failed=, skipped=)}."""
    table = {}
    for case in ET.parse(junit_path).iter("testcase"):
        name = case.get("classname").rsplit(".", 1)[-1].removeprefix("Test")  # e.g. BertOptimized
        variant = "Optimized" if name.endswith("Optimized") else "Plain"
        family = name.removesuffix(variant)
        outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
                   else "skipped" if case.find("skipped") is not None else "passed")
        table.setdefault((family, variant), Counter())[outcome] += 1
    return table


def markdown(table: dict) -> str:
    rows = ["| family | passed without fastformer | passed with | failed without | failed with | skipped with |",
            "|---|---|---|---|---|---|"]
    for family in sorted({f for f, _ in table}):
        plain, optimized = table.get((family, "Plain"), Counter()), table.get((family, "Optimized"), Counter())
        rows.append(f"| {family} | {plain['passed']} | {optimized['passed']} | {plain['failed']} | "
                    f"{optimized['failed']} | {optimized['skipped']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown(outcomes(sys.argv[1])))

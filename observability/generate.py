"""Regenerate the committed artefacts: dashboards JSON, the Prometheus rule file, the reference doc.

    python -m observability.generate          # rewrite them
    python -m observability.generate --check  # exit 1 if any is out of date (what the tests check)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from observability import reference_doc
from observability.alert_rules import render_rules
from observability.dashboards import GENERATED_DIR, dashboards_for, render_dashboard

PROJECT_DIR = Path(__file__).resolve().parent.parent
RULES_FILE = PROJECT_DIR / "observability" / "rules" / "alerts.yml"
REFERENCE_DOC = PROJECT_DIR / "docs" / "observability-reference.md"


def expected_files() -> dict[Path, str]:
    files = {RULES_FILE: render_rules(), REFERENCE_DOC: reference_doc.render()}
    for uid, document in dashboards_for().items():
        files[GENERATED_DIR / f"{uid}.json"] = render_dashboard(document)
    return files


def stale_files() -> list[Path]:
    """Committed files that differ from what the definitions generate, and generated leftovers."""
    expected = expected_files()
    stale = [path for path, text in expected.items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    stale += [path for path in GENERATED_DIR.glob("*.json") if path not in expected]
    return sorted(stale)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m observability.generate",
        description="Write the generated dashboards, alert rules and reference doc from the metric catalog.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 and list stale files")
    if parser.parse_args(argv).check:
        stale = stale_files()
        for path in stale:
            print(f"out of date: {path.relative_to(PROJECT_DIR)}", file=sys.stderr)
        if stale:
            print("run: python -m observability.generate", file=sys.stderr)
        return 1 if stale else 0
    expected = expected_files()
    for path in GENERATED_DIR.glob("*.json"):
        if path not in expected:
            path.unlink()
    for path, text in expected.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path.relative_to(PROJECT_DIR))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

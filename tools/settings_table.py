"""Render the README's "Settings" tables from the declaration in `sidecar/config.py`.

The tables sit between two markers in README.md; this rewrites what is between them, so a
setting's flag, variable, file key, default and meaning are written in one place only.
`--check` changes nothing and exits 1 when README.md differs (tests/test_config.py checks the
same).

Usage: python tools/settings_table.py [--check] [--readme FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sidecar.config import with_markdown_table

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md would change")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    try:
        rendered = with_markdown_table(current)
    except ValueError:
        print(f"{args.readme}: the settings-table markers are missing", file=sys.stderr)
        return 2
    if rendered == current:
        return 0
    if args.check:
        print(f"{args.readme}: the settings table is out of date: run {__file__}", file=sys.stderr)
        return 1
    args.readme.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Write (or check) edgeship/models/variant_counts.json: params and multiply-adds of every registry variant.

The counts come from building each variant with keras.applications and counting it (edgeship.models.counting), the
same code `edgeship models <file>` runs on a user's model; `edgeship models` reads the table instead of building
86 models (about a minute). Re-run after changing the registry or the counting rules:

    .venv/bin/python scripts/variant_counts.py          # rewrite the table
    .venv/bin/python scripts/variant_counts.py --check  # exit 1 if any entry differs from a fresh count

tests/models/test_catalog.py checks that the table covers every variant and that one variant of each family, built
in the test, counts as the table says.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeship.models.catalog import TABLE_PATH, count_variant  # noqa: E402
from edgeship.models.registry import VARIANTS  # noqa: E402
from edgeship.progress import progress  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with a fresh count instead of writing")
    args = ap.parse_args()
    table = {name: count_variant(v) for name, v in progress(list(VARIANTS.items()), desc="counting", unit="model")}
    if args.check:
        old = json.loads(TABLE_PATH.read_text())
        bad = sorted(n for n in set(old) | set(table) if old.get(n) != table.get(n))
        print(f"{len(bad)} of {len(table)} entries differ" + (f": {', '.join(bad)}" if bad else ""))
        return 1 if bad else 0
    TABLE_PATH.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {TABLE_PATH} ({len(table)} variants)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

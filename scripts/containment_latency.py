"""Latency with each artifact's runtime in its own process (the default) against all in this one (--in-process):
one interleaved run (issue 29: a healthy release's latency figures must stay within noise).

    .venv/bin/python scripts/containment_latency.py RELEASE_DIR [--rounds 3] [--iterations 200]

RELEASE_DIR: an `edgeship run --out` directory (its files and manifest). Prints, per artifact, the median over the
rounds of each mode's p50 (ms), their ratio, and each mode's peak RSS while timed (the child's own in the contained
mode; the whole validator's in process)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from edgeship._tf import quiet_environment
    from edgeship.validate import validate

    quiet_environment()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("release", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=200)
    args = ap.parse_args()
    p50: dict[tuple[str, bool], list[float]] = {}
    rss: dict[tuple[str, bool], int] = {}
    walls: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        for contain in ((True, False) if r % 2 == 0 else (False, True)):  # interleaved, order alternating
            t = time.perf_counter()
            report = validate([args.release], iterations=args.iterations, warmup=20, kernel_path_samples=0,
                              progress=False, contain=contain)
            walls[contain].append(time.perf_counter() - t)
            for a in report.artifacts:
                key = (f"{a.format} {a.precision}", contain)
                if a.latency_ms.p50 is not None:
                    p50.setdefault(key, []).append(a.latency_ms.p50)
                    rss[key] = max(rss.get(key, 0), a.peak_rss_bytes or 0)
            print(f"round {r + 1} {'contained' if contain else 'in process'}: {walls[contain][-1]:.1f} s",
                  file=sys.stderr)
    names = sorted({k for k, _ in p50}, key=lambda k: list(p50).index((k, True)))
    print("| artifact | contained p50 ms | in-process p50 ms | ratio | contained peak RSS MB | in-process peak RSS MB |")
    print("|---|--:|--:|--:|--:|--:|")
    for name in names:
        c, i = statistics.median(p50[(name, True)]), statistics.median(p50[(name, False)])
        print(f"| {name} | {c:.3f} | {i:.3f} | {c / i:.2f}x | {rss[(name, True)] / 2**20:.0f} | "
              f"{rss[(name, False)] / 2**20:.0f} |")
    print(f"\nvalidate() wall, median of {args.rounds}: contained {statistics.median(walls[True]):.1f} s, "
          f"in process {statistics.median(walls[False]):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

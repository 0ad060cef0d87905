"""Byte-identical in one process too (issue 29, item 7): ``export()`` twice in one Python process, with other
Core ML work between (another model converted, a package loaded into the ML Program executor, functions traced),
gives the same files. Before, the second ``model.mlmodel`` numbered its consts from where coremltools' MIL builder
counter had been left (``const_72_to_fp16`` -> ``const_73_to_fp16``): edgeship.export.reproducible.fresh_mil_names."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgeship.export import export


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def _other_work(tmp_path: Path, package: Path) -> None:
    from edgeship._tf import keras, tf
    from edgeship.runtimes.mlprogram import MLProgram

    k, t = keras(), tf()
    inp = k.Input((16, 16, 3))
    x = k.layers.Conv2D(4, 3)(inp)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    other = k.Model(inp, k.layers.Dense(3, activation="softmax")(x))
    export(model=other, formats=["coreml"], out=tmp_path / "other", progress=False)
    MLProgram(package)  # what validation does with a Core ML file: load the program with coremltools' builder
    t.function(lambda v: other(v, training=False))(t.zeros((1, 16, 16, 3)))


def test_export_twice_in_one_process_is_byte_identical(tmp_path):
    from coremltools.converters.mil.mil import Builder

    first = export(formats=["onnx", "coreml"], out=tmp_path / "a", progress=False)
    package = next(p for p in first.paths if p.suffix == ".mlpackage")
    _other_work(tmp_path, package)
    assert Builder.name_count, "the other work should have left coremltools' name counter non-empty"
    export(formats=["onnx", "coreml"], out=tmp_path / "b", progress=False)
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert any(f.endswith("model.mlmodel") for f in ha)
    assert ha == hb, sorted(f for f in ha if ha[f] != hb.get(f))

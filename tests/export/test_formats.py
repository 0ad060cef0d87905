"""Each format on the demo model and on a small V1, V2 and V3 variant: the files run in their runtimes and
answer like Keras, carry their ecosystem's metadata, and are recorded in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeship.export import export
from edgeship.metadata.coreml import classifier_labels
from edgeship.fileio import sha256_path
from edgeship.manifest import Manifest
from edgeship.models.loading import load_model
from edgeship.types import Format, Precision
from tests.conftest import make_input_sensitive, resize_batch

MODELS = ["demo", "mobilenet_v1_0.25_128", "mobilenet_v2_0.35_96", "mobilenet_v3_small_0.75_224"]


@pytest.fixture(scope="session", params=MODELS)
def exported(request, tmp_path_factory, demo_heldout, demo_export):
    images, _, _ = demo_heldout
    name = request.param
    loaded = load_model(None if name == "demo" else name)
    images = resize_batch(images, loaded.spec.resolution)
    if name == "demo":  # the session's one export of the demo (conftest.py), as export() writes it
        result = demo_export(formats=list(Format))
    else:
        make_input_sensitive(loaded.keras_model, images, loaded.spec.preprocessing)
        result = export(loaded=loaded, out=tmp_path_factory.mktemp(name), formats=list(Format), progress=False)
    reference = np.asarray(loaded.keras_model(loaded.spec.preprocessing.apply(images), training=False))
    return loaded, result, images, reference


def _artifact(result, fmt):
    (rec,) = [a for a in result.manifest.artifacts if a.format is fmt]
    return result.out_dir / rec.path, rec


def _close_to_reference(got: np.ndarray, reference: np.ndarray, rel: float) -> None:
    scale = float(np.max(np.abs(reference)))
    assert np.max(np.abs(got - reference)) <= rel * scale, (np.max(np.abs(got - reference)), scale)
    assert np.array_equal(got.argmax(1), reference.argmax(1))


def test_reference_depends_on_input(exported):
    """Guard for the tests below: a reference whose answer ignores the input would make parity meaningless."""
    _, _, _, reference = exported
    assert len(set(reference.argmax(1).tolist())) >= 3
    assert float(np.std(reference, axis=0).mean()) > 1e-3 * float(np.max(np.abs(reference)))


def test_tflite_matches_keras(exported):
    from ai_edge_litert.interpreter import Interpreter

    loaded, result, images, reference = exported
    path, rec = _artifact(result, Format.TFLITE)
    assert rec.precision is Precision.FP32
    interp = Interpreter(model_path=str(path))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.float32 and list(inp["shape"]) == [1, *loaded.spec.input_shape]
    x = loaded.spec.preprocessing.apply(images)
    got = []
    interp.allocate_tensors()
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        got.append(interp.get_tensor(out["index"])[0].copy())
    _close_to_reference(np.stack(got), reference, 1e-4)


def test_onnx_matches_keras_and_is_checker_clean(exported):
    import onnx
    import onnxruntime as ort

    loaded, result, images, reference = exported
    path, rec = _artifact(result, Format.ONNX)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["labels"]) == list(loaded.spec.labels)
    assert json.loads(props["preprocessing"]) == loaded.spec.preprocessing.to_dict()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].dim_value and [d.dim_value for d in dims[1:]] == list(loaded.spec.input_shape)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"image": loaded.spec.preprocessing.apply(images)})  # whole batch: dynamic
    _close_to_reference(got, reference, 1e-4)


def test_coreml_spec_has_image_input_labels_and_card(exported):
    import coremltools as ct

    loaded, result, _, _ = exported
    path, rec = _artifact(result, Format.COREML)
    assert rec.precision is Precision.FP16 and path.suffix == ".mlpackage"
    spec = ct.utils.load_spec(str(path))
    assert spec.WhichOneof("Type") == "mlProgram"
    (inp,) = spec.description.input
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
    h, w, _ = loaded.spec.input_shape
    assert (inp.type.imageType.height, inp.type.imageType.width) == (h, w)
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    labels = classifier_labels(spec)
    assert labels == list(loaded.spec.labels)
    assert spec.description.predictedFeatureName == "classLabel"
    meta = spec.description.metadata
    assert meta.shortDescription and meta.versionString == "1.0"
    assert json.loads(meta.userDefined["edgeship.preprocessing"]) == loaded.spec.preprocessing.to_dict()
    assert spec.specificationVersion >= 7  # iOS 16


def test_coreml_image_scale_and_bias_follow_preprocessing(exported):
    """coremltools turns ImageType(scale, bias) into the program's first ops, x * scale + bias; their constants
    must make that equal to (x - mean) / std. Models that rescale inside (V3) get neither op."""
    import coremltools as ct

    loaded, result, _, _ = exported
    path, _ = _artifact(result, Format.COREML)
    consts = _named_consts(ct.utils.load_spec(str(path)))
    pre = loaded.spec.preprocessing
    scale, bias = pre.scale_bias()
    if scale == 1.0 and not any(bias):
        assert "image__scaled___y_0" not in consts and "image__biased___y_0" not in consts
        return
    assert np.allclose(consts["image__scaled___y_0"], scale, rtol=1e-6)
    assert np.allclose(consts["image__biased___y_0"].ravel(), bias, rtol=1e-6)
    x = np.array([0.0, 100.0, 255.0])
    assert np.allclose(x * consts["image__scaled___y_0"] + bias[0], (x - pre.mean[0]) / pre.std[0], atol=1e-6)


def _named_consts(spec) -> dict:
    out = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                val = op.attributes["val"] if op.type == "const" else None
                if val is not None and val.HasField("immediateValue"):
                    floats = val.immediateValue.tensor.floats.values
                    if len(floats):
                        out[op.outputs[0].name] = np.asarray(floats, dtype=np.float64)
    return out


def test_manifest_records_every_artifact(exported):
    loaded, result, _, _ = exported
    manifest = Manifest.load(result.out_dir)
    assert {a.format for a in manifest.artifacts} == set(Format)
    for rec in manifest.artifacts:
        assert not rec.path.startswith("/") and (result.out_dir / rec.path).exists()
        assert rec.sha256 == sha256_path(result.out_dir / rec.path)
    assert manifest.labels == list(loaded.spec.labels)
    assert manifest.preprocessing == loaded.spec.preprocessing.to_dict()
    assert manifest.versions["tensorflow"].startswith("2.21") and "coremltools" in manifest.versions
    raw = json.loads((result.out_dir / "manifest.json").read_text())
    assert raw["source"]["path"] == loaded.source_path
    assert not list(result.out_dir.glob(".*partial*"))

"""The preprocessing contract infers the convention from the model's behaviour (issue 23, item 2): a release whose
files all carry a wrong declaration agrees with a reference fed the same wrong values, so every comparison passes;
only the reference's own answers under the common conventions show it. Planted on the demo ([0, 1] instead of
[-1, 1], raw pixels, BGR): each fails the contract naming the right declaration; the right one passes."""

from __future__ import annotations

import pytest

from edgeship.export.common import ModelInfo
from edgeship.metadata.tflite import add_metadata
from edgeship.models.loading import load_model
from edgeship.models.spec import Preprocessing
from edgeship.validate.pipeline import validate
from edgeship.validate.results import Status

FAST = dict(iterations=2, warmup=1, progress=False, kernel_path_samples=0)


@pytest.fixture(scope="module")
def fp32_tflite(demo_export):
    return demo_export(formats=["tflite"]).out_dir / "edgeship_demo_fp32.tflite"


@pytest.mark.parametrize("wrong, name, agrees", [
    (Preprocessing(mean=(0.0,) * 3, std=(255.0,) * 3), "[0, 1]", True),
    # raw pixels drive the activations far out of their trained range, where the fp32 file and Keras part by more
    # than the fp32 gate allows: the artifact may fail on its own; the contract must fail regardless
    (Preprocessing(mean=(0.0,) * 3, std=(1.0,) * 3), "raw pixels", False),
    (Preprocessing(color="bgr"), "BGR", True),
])
def test_a_release_declared_wrong_everywhere_fails_the_contract(fp32_tflite, tmp_path, wrong, name, agrees):
    loaded = load_model()
    loaded.spec = loaded.spec.replace(preprocessing=wrong)
    loaded.preprocessing_source = "declared (--mean/--std/--bgr)"
    bad = tmp_path / "wrong.tflite"  # the file tells its client the same wrong preprocessing
    bad.write_bytes(add_metadata(fp32_tflite.read_bytes(), loaded.spec, ModelInfo("demo")))
    report = validate([bad], reference=loaded, **FAST)
    (a,) = report.artifacts
    if agrees:
        assert a.status is Status.PASSED, a.reason  # the file agrees with the wrongly fed reference...
    contract = report.contract
    assert contract is not None and contract.status is Status.FAILED, (name, contract.describe())
    assert contract.inference["verdict"] == "wrong"
    assert "(x - 127.5) / 127.5" in contract.reason and "declare" in contract.reason, contract.reason
    assert not report.passed and report.exit_code == 1  # ...and the release fails all the same


def test_the_right_declaration_holds(fp32_tflite):
    report = validate([fp32_tflite], reference=load_model(), **FAST)
    contract = report.contract
    assert contract.status is Status.PASSED and contract.inference["verdict"] == "ok", contract.describe()
    assert report.passed

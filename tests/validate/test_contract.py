"""The preprocessing contract (edgeship.validate.contract): the tutorial model that calls preprocess_input on its
input is detected and its files are right for raw pixels; the same model exported with the default normalisation
declared on top (what edgeship did before issue 13) has files that agree with the doubly fed reference, and the
contract check fails the run (exit 1) instead of passing it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgeship.cli import main
from edgeship.models.loading import DEMO_DIR, load_model
from edgeship.models.spec import Preprocessing
from edgeship.validate.contract import ContractCheck
from edgeship.validate.policy import load_policy
from edgeship.validate.results import Status

FAST = ["--iterations", "2", "--kernel-path-samples", "0"]


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory, demo_heldout):
    """The trained demo behind keras.applications.mobilenet_v2.preprocess_input (the transfer-learning tutorial's
    pattern: Subtract/Divide ops on the input, no Rescaling layer), saved as .keras with labels.txt beside it, and
    60 labelled held-out images as an .npz."""
    from edgeship._tf import keras

    k = keras()
    images, truth, _ = demo_heldout
    demo = load_model()
    inp = k.Input((96, 96, 3))
    model = k.Model(inp, demo.keras_model(k.applications.mobilenet_v2.preprocess_input(inp)), name="tutorial")
    out = tmp_path_factory.mktemp("tutorial")
    model.save(out / "tutorial.keras")
    shutil.copy(DEMO_DIR / "labels.txt", out / "labels.txt")
    data = out / "heldout.npz"
    pick = np.arange(0, len(images), max(1, len(images) // 60))[:60]
    np.savez(data, images=images[pick], labels=truth[pick])
    np.save(out / "unlabelled.npy", images[pick])
    return out, data


def _validate(capsys, *argv):
    code = main(["validate", *argv, *FAST])
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def tutorial_export(tutorial, tmp_path_factory):
    from edgeship.export import export

    out, _ = tutorial
    notes = []
    loaded = load_model(out / "tutorial.keras", echo=notes.append)
    exported = tmp_path_factory.mktemp("tutorial_export")
    export(loaded=loaded, formats=["tflite"], out=exported, progress=False)
    return loaded, notes, exported


def test_in_graph_preprocess_input_files_are_right_for_raw_pixels(tutorial, tutorial_export, capsys):
    _, data = tutorial
    loaded, notes, tmp_path = tutorial_export
    assert loaded.spec.preprocessing == Preprocessing.identity() and "TrueDivide/Subtract" in notes[0]
    code, io = _validate(capsys, "--artifacts", str(tmp_path), "--data", str(data), "--expect-accuracy", "0.9")
    assert code == 0, io.out
    assert "preprocessing contract passed" in io.out
    from edgeship.runtimes.litert import LiteRTRunner

    runner = LiteRTRunner(next(tmp_path.glob("*.tflite")), loaded.spec.preprocessing).open()
    assert runner.preprocessing == Preprocessing.identity()  # the file's own metadata: raw 0-255 pixels
    runner.close()


def test_declared_double_normalisation_fails_the_contract(tutorial, tutorial_export, capsys, tmp_path):
    """What edgeship wrote before issue 13: the same graph with (x - 127.5) / 127.5 declared on top, in the
    file's metadata and in the manifest (the reference is then fed that too, so the file agrees with it)."""
    from edgeship.export.common import ModelInfo
    from edgeship.metadata.tflite import add_metadata
    from edgeship.manifest import Manifest

    _, data = tutorial
    loaded, _, exported = tutorial_export
    old = loaded.spec.replace(preprocessing=Preprocessing())
    manifest = Manifest.load(exported)
    (record,) = manifest.artifacts
    (tmp_path / record.path).write_bytes(add_metadata((exported / record.path).read_bytes(), old, ModelInfo("t")))
    manifest.preprocessing = old.preprocessing.to_dict()
    from edgeship.fileio import sha256_path, size_on_disk

    record.sha256, record.size_bytes = sha256_path(tmp_path / record.path), size_on_disk(tmp_path / record.path)
    manifest.save(tmp_path)
    code, io = _validate(capsys, "--artifacts", str(tmp_path), "--data", str(data))
    assert code == 1, io.out
    assert "tflite  fp32" in io.out and "passed" in io.out.split("\n")[2]  # the file agrees with its reference...
    assert "preprocessing contract FAILED" in io.out and "top1_share 1 misses <= 0.9" in io.out  # ...the contract not
    assert "(preprocessing contract failed)" in io.out.strip().splitlines()[-1]


def test_expect_accuracy_needs_labels_and_a_fraction(tutorial, tutorial_export, capsys):
    out, _ = tutorial
    exported = tutorial_export[2]
    code, io = _validate(capsys, "--artifacts", str(exported), "--data", str(out / "unlabelled.npy"),
                         "--expect-accuracy", "0.9")
    assert code == 2 and "needs labelled data" in io.err and len(io.err.strip().splitlines()) == 1
    code, io = _validate(capsys, "--artifacts", str(exported), "--expect-accuracy", "90")
    assert code == 2 and "fraction" in io.err


@pytest.fixture(scope="module")
def demo_model():
    return load_model()


@pytest.mark.parametrize("declared, expect, status, gate", [
    (Preprocessing(), 0.9, Status.PASSED, None),
    # (x - 127.5) / 127.5 applied twice, as one declaration
    (Preprocessing(mean=(127.5 + 127.5**2,) * 3, std=(127.5**2,) * 3), None, Status.FAILED, "top1_share"),
    (Preprocessing(color="bgr"), 0.9, Status.FAILED, "accuracy_top1"),  # a channel swap: only accuracy sees it
    (Preprocessing(color="bgr"), None, Status.PASSED, None),
])
def test_contract_check_on_the_demo(demo_heldout, demo_model, declared, expect, status, gate):
    images, truth, _ = demo_heldout
    demo = demo_model
    check = ContractCheck(load_policy().contract, demo.spec.outputs_probabilities, expect)
    for i in range(0, len(images), 16):
        check.update(np.asarray(demo.keras_model(declared.apply(images[i:i + 16]))), truth[i:i + 16])
    result = check.result()
    assert result.status is status, result.describe()
    if gate:
        assert [g.name for g in result.gates if not g.passed] == [gate]


def test_contract_is_skipped_for_random_weights_and_few_samples():
    check = ContractCheck(load_policy().contract, False, skip="random weights")
    check.update(np.zeros((30, 4)), None)
    assert check.result().status is Status.SKIPPED
    few = ContractCheck(load_policy().contract, False)
    few.update(np.eye(4)[[0] * 5], None)
    assert few.result().status is Status.SKIPPED and "min_samples" in few.result().reason


def test_run_config_preprocessing_keys(tmp_path):
    """`edgeship run` takes [model] mean, std, bgr, bake_preprocessing and [validate] expect_accuracy."""
    from edgeship.errors import UserError
    from edgeship.pipeline import load_config

    (tmp_path / "edgeship.toml").write_text('[model]\nmean = [123.675, 116.28, 103.53]\nstd = 58\nbgr = true\n'
                                            'bake_preprocessing = true\n[validate]\nexpect_accuracy = 0.9\n')
    cfg = load_config(tmp_path / "edgeship.toml")
    assert cfg.mean == (123.675, 116.28, 103.53) and cfg.std == (58.0, 58.0, 58.0)
    assert cfg.bgr and cfg.bake_preprocessing and cfg.expect_accuracy == 0.9
    default = load_config(None)
    assert default.mean is None and not default.bake_preprocessing and default.expect_accuracy is None
    (tmp_path / "bad.toml").write_text('[model]\nmean = [1, 2]\n')
    with pytest.raises(UserError, match=r"\[model\] mean must be a number or a list of three"):
        load_config(tmp_path / "bad.toml")

"""An assumed preprocessing is settled before any file is made (issue 23, item 2): a model with nothing declared and
no normalisation in its graph is run on the user's images under the common conventions; a clear winner is used and
said, no clear winner asks for the declaration (exit 2, nothing written). The models are the demo's trained weights
with the stem rescaled so the model expects [0, 1] or raw 0-255 pixels instead of [-1, 1] (no op in the graph says
so), and an untrained model that no convention can settle."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgeship.errors import UserError
from edgeship.models.loading import DEMO_DIR
from edgeship.models.prepare import ModelOptions, prepare_model

LABELS = str(DEMO_DIR / "labels.txt")


def _rescaled_demo(path, scale: float, offset: float):
    """The demo with its first convolution fed ``scale * x + offset`` folded into the weights: the saved model
    expects ``x`` where the demo expected ``scale * x + offset`` (the stem conv has no bias; the constant goes to
    its BatchNorm's moving mean). ``(2, -1)``: [0, 1] inputs; ``(1 / 127.5, -1)``: raw 0-255 pixels."""
    from edgeship.models.loading import load_model

    km = load_model().keras_model
    conv, bn = km.get_layer("Conv1"), km.get_layer("bn_Conv1")
    (w,) = conv.get_weights()
    gamma, beta, mean, var = bn.get_weights()
    conv.set_weights([w * scale])
    bn.set_weights([gamma, beta, mean - offset * w.sum(axis=(0, 1, 2)), var])
    km.save(path)
    return path


def _heldout(loaded):
    from edgeship.data import open_data

    return open_data(DEMO_DIR / "heldout", loaded.spec.input_shape[:2], loaded.spec.labels)


@pytest.mark.parametrize("scale, offset, mean, std", [(2.0, -1.0, 0.0, 255.0), (1 / 127.5, -1.0, 0.0, 1.0)],
                         ids=["[0, 1]", "raw 0-255"])
def test_a_clear_winner_is_used_and_said(tmp_path, scale, offset, mean, std):
    path = _rescaled_demo(tmp_path / "m.keras", scale, offset)
    said: list[str] = []
    plain = prepare_model(ModelOptions(model=str(path), labels=LABELS), echo=said.append)
    assert plain.preprocessing_source.startswith("assumed")  # nothing in the graph says it: (x - 127.5) / 127.5
    loaded = prepare_model(ModelOptions(model=str(path), labels=LABELS), echo=said.append, settle_on=_heldout)
    pre = loaded.spec.preprocessing
    assert pre.mean == (mean,) * 3 and pre.std == (std,) * 3 and str(pre.color) == "rgb", pre
    assert loaded.preprocessing_source.startswith("inferred from the model's behaviour"), loaded.preprocessing_source
    assert any("inferred" in s for s in said), said


def test_the_right_assumption_is_kept_as_inferred(tmp_path):
    """The demo's own weights saved alone: assumed (x - 127.5) / 127.5, which its behaviour confirms."""
    path = tmp_path / "demo.keras"
    shutil.copy(DEMO_DIR / "model.keras", path)
    loaded = prepare_model(ModelOptions(model=str(path), labels=LABELS), echo=lambda s: None, settle_on=_heldout)
    assert loaded.spec.preprocessing.mean == (127.5,) * 3 and loaded.spec.preprocessing.std == (127.5,) * 3
    assert loaded.preprocessing_source.startswith("inferred")


def test_a_declaration_is_not_second_guessed_here(tmp_path):
    """Declared (even wrongly) is the user's call at this step; ``edgeship validate`` judges it (contract)."""
    path = _rescaled_demo(tmp_path / "m.keras", 2.0, -1.0)
    loaded = prepare_model(ModelOptions(model=str(path), labels=LABELS, mean=(127.5,) * 3, std=(127.5,) * 3), echo=lambda s: None,
                           settle_on=_heldout)
    assert loaded.spec.preprocessing.std == (127.5,) * 3 and loaded.preprocessing_source.startswith("declared")


def _untrained(path):
    from edgeship._tf import keras

    k = keras()
    k.utils.set_random_seed(0)
    x = k.Input((96, 96, 3))
    y = k.layers.Conv2D(4, 3, strides=4)(x)
    y = k.layers.GlobalAveragePooling2D()(y)
    k.Model(x, k.layers.Dense(10)(y)).save(path)
    return path


def test_no_clear_winner_asks_for_the_declaration_before_anything_is_written(tmp_path, capsys):
    from edgeship.cli import main

    path = _untrained(tmp_path / "untrained.keras")
    with pytest.raises(UserError, match=r"no convention wins clearly.*declare"):
        prepare_model(ModelOptions(model=str(path), labels=LABELS), echo=lambda s: None, settle_on=_heldout)
    out = tmp_path / "q"
    code = main(["quantize", "--model", str(path), "--calibration", str(DEMO_DIR / "heldout"), "--formats", "tflite", "--labels", LABELS,
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no convention wins clearly" in err[-1] and "--mean" in err[-1], err
    assert not out.exists() or not any(out.iterdir())  # nothing made for a feed nobody chose
    np.testing.assert_equal(code, 2)

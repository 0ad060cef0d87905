"""A layer a converter cannot handle is named, with the format, and nothing is left half-written."""

from __future__ import annotations

import pytest

from edgeship._tf import keras, tf
from edgeship.errors import ConversionError
from edgeship.export import export
from edgeship.types import Format


@pytest.fixture(scope="module")
def model_with_python_op():
    k, t = keras(), tf()

    class PyOp(k.layers.Layer):
        """Calls back into Python: no converter can put that in a file."""

        def call(self, x):
            y = t.numpy_function(lambda a: a * 2, [x], t.float32)
            y.set_shape(x.shape)
            return y

    inp = k.Input((16, 16, 3))
    x = k.layers.Conv2D(4, 3, name="fine_conv")(inp)
    x = PyOp(name="python_callback")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, k.layers.Dense(3)(x))


@pytest.mark.parametrize("fmt", list(Format))
def test_unconvertible_layer_is_named_and_nothing_is_left(model_with_python_op, tmp_path, fmt):
    with pytest.raises(ConversionError) as info:
        export(model=model_with_python_op, formats=[fmt], out=tmp_path, progress=False)
    message = str(info.value)
    assert message.startswith(f"{fmt} converter cannot handle layer 'python_callback' (PyOp)")
    assert "PyFunc" in message and "\n" not in message
    assert info.value.exit_code == 2
    assert [p.name for p in tmp_path.iterdir()] == []  # no artifact, no partial file, no manifest

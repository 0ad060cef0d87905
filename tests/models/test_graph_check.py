"""The trust boundary for SavedModels: a graph op is code too. Without --trust-model, a SavedModel whose serving
graph writes a file (or prints, or calls Python) is refused before anything runs; with it, it runs."""

from __future__ import annotations

import numpy as np
import pytest

from edgeship.errors import UserError
from edgeship.models.loading import load_model


def _save(tmp, name, side_effect):
    from edgeship._tf import tf

    t = tf()

    class Served(t.Module):
        def __init__(self):
            self.w = t.Variable(t.random.stateless_normal((3, 10), seed=(1, 2)))

        @t.function(input_signature=[t.TensorSpec((None, 32, 32, 3), t.float32)])
        def serve(self, x):
            side_effect(t)
            return {"logits": t.matmul(t.reduce_mean(x, axis=[1, 2]), self.w)}

    m = Served()
    t.saved_model.save(m, str(tmp / name), signatures={"serving_default": m.serve})
    return tmp / name


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sm")
    marker = tmp / "MARKER"
    return dict(
        marker=marker,
        writes=_save(tmp, "writes", lambda t: t.io.write_file(str(marker), "written by the model")),
        prints=_save(tmp, "prints", lambda t: t.print("hello from the model")),
        clean=_save(tmp, "clean", lambda t: None),
    )


def test_a_file_writing_graph_is_refused_without_trust_and_runs_with_it(saved_models):
    marker = saved_models["marker"]
    with pytest.raises(UserError, match=r"WriteFile.*--trust-model"):
        load_model(saved_models["writes"])
    assert not marker.exists()
    # the user vouches for it: it loads and runs (loading itself may run it: the output-kind probe and the search
    # for in-graph normalisation call a SavedModel's serving function)
    loaded = load_model(saved_models["writes"], trust_model=True)
    loaded.keras_model(np.zeros((1, 32, 32, 3), np.float32))
    assert marker.read_text() == "written by the model"  # the op is real: this is what the check kept from running


def test_print_is_refused_and_a_pure_graph_loads(saved_models):
    with pytest.raises(UserError, match="PrintV2"):
        load_model(saved_models["prints"])
    loaded = load_model(saved_models["clean"])  # checkpoint saver ops (SaveV2, RestoreV2) are the saver's own
    assert loaded.spec.num_classes == 10 and loaded.spec.input_shape == (32, 32, 3)


def test_a_keras_export_passes_the_allow_list(tmp_path):
    from edgeship._tf import keras
    from edgeship.models.graph_check import check_saved_model_graph

    k = keras()
    model = k.Sequential([k.Input((32, 32, 3)), k.layers.Conv2D(4, 3), k.layers.BatchNormalization(),
                          k.layers.ReLU(6.0), k.layers.DepthwiseConv2D(3), k.layers.GlobalAveragePooling2D(),
                          k.layers.Dense(10, activation="softmax")])
    model.export(str(tmp_path / "sm"), verbose=False)
    check_saved_model_graph(tmp_path / "sm")  # raises if any of Keras' ops were refused


def test_the_saver_cannot_lend_its_ops_to_the_serving_function(saved_models, tmp_path):
    """SaveV2 is allowed only in functions that nothing but the checkpoint saver calls."""
    import shutil

    from tensorflow.core.protobuf import saved_model_pb2

    from edgeship.models.graph_check import check_saved_model_graph

    shutil.copytree(saved_models["clean"], tmp_path / "sm")
    pb = tmp_path / "sm" / "saved_model.pb"
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(pb.read_bytes())
    lib = sm.meta_graphs[0].graph_def.library
    save = next(f.signature.name for f in lib.function if "traced_save" in f.signature.name)
    serve = next(f for f in lib.function if f.signature.name.startswith("__inference_serve"))
    call = serve.node_def.add(name="sneaky", op="StatefulPartitionedCall")
    call.attr["f"].func.name = save
    pb.write_bytes(sm.SerializeToString())
    with pytest.raises(UserError, match="SaveV2"):
        check_saved_model_graph(tmp_path / "sm")

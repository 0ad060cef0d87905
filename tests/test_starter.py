"""``edgeship init``: the starter edgeship.toml loads with ``edgeship run`` as written (parsed into a RunConfig; the
pipeline itself is not run here), names every table and key the config accepts, and every commented key is valid
once uncommented; an existing file is kept unless --force; a model holding code is refused (safe loading)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeship.cli import main
from edgeship.pipeline import ConfigFile, load_config
from edgeship.starter import KEYS, TABLES

KEY_LINE = re.compile(r"^(# )?([a-z_0-9]+) = ")


def _keys(text: str) -> dict[str, list[tuple[str, bool]]]:
    """Per table, its (key, commented) lines."""
    tables: dict[str, list[tuple[str, bool]]] = {}
    table = None
    for line in text.splitlines():
        if line.startswith("["):
            table = line.strip("[]")
            tables[table] = []
        elif (m := KEY_LINE.match(line)) and table is not None:
            tables[table].append((m.group(2), bool(m.group(1))))
    return tables


def test_every_table_and_key_of_the_config_is_in_the_starter():
    assert tuple(ConfigFile.model_fields) == TABLES
    for table in TABLES:
        fields = ConfigFile.model_fields[table].annotation.model_fields  # type: ignore[union-attr]
        assert set(KEYS[table]) == set(fields), (table, set(fields) ^ set(KEYS[table]))


@pytest.fixture(scope="module")
def demo_starter(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("init") / "edgeship.toml"
    assert main(["init", "--out", str(out)]) == 0
    return out


def test_demo_starter_loads_as_run_config(demo_starter, capsys):
    text = demo_starter.read_text("utf-8")
    assert {t: [k for k, _ in keys] for t, keys in _keys(text).items()} == {t: list(KEYS[t]) for t in TABLES}
    config = load_config(demo_starter)
    assert config.model is None  # the demo: path stays commented
    assert config.mean == (127.5, 127.5, 127.5) and config.std == (127.5, 127.5, 127.5) and config.bgr is False
    assert config.output_kind == "logits" and config.trust_model is False
    assert config.out == demo_starter.parent / "edgeship-out"
    assert config.quantize.ptq == "thorough" and config.quantize.num_samples == 200
    assert [str(f) for f in config.export.formats] == ["tflite", "onnx", "coreml"]
    assert not list(demo_starter.parent.glob(".*partial*"))


def test_every_commented_key_is_valid_uncommented(demo_starter, tmp_path):
    text = demo_starter.read_text("utf-8")
    opened = "\n".join(line[2:] if KEY_LINE.match(line) and line.startswith("# ") else line
                       for line in text.splitlines())
    assert all(not commented for keys in _keys(opened).values() for _, commented in keys)
    path = tmp_path / "all.toml"
    path.write_text(opened, "utf-8")
    config = load_config(path)
    assert config.model == str(tmp_path / "models/classifier.keras") and config.input_size == (224, 224)
    assert str(config.validate.executor) == "local" and config.validate.workers == 4
    assert config.quantize.keep_float == "auto" and config.validate.expect_accuracy == 0.9


def test_existing_file_is_kept_without_force(tmp_path, capsys):
    out = tmp_path / "edgeship.toml"
    out.write_text("# mine\n", "utf-8")
    assert main(["init", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exists" in err and "--force" in err, err
    assert out.read_text("utf-8") == "# mine\n"
    assert main(["init", "--out", str(tmp_path)]) == 2  # a directory
    assert "is a directory" in capsys.readouterr().err


def test_force_overwrites(tmp_path):
    out = tmp_path / "edgeship.toml"
    out.write_text("# mine\n", "utf-8")
    assert main(["init", "--out", str(out), "--force"]) == 0
    assert out.read_text("utf-8").startswith("# edgeship.toml: the starter")


def test_own_model_paths_relative_to_the_file(tmp_path, capsys):
    """A model of one's own with labels.txt beside it: path and labels written relative to the starter, found again
    by load_config; preprocessing left to the user (nothing found in the graph) and said so."""
    from edgeship._tf import keras

    k = keras()
    inp = k.Input((32, 32, 3))
    x = k.layers.Conv2D(4, 3, strides=2)(inp)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inp, k.layers.Dense(3, activation="softmax")(x))
    (tmp_path / "models").mkdir()
    model.save(tmp_path / "models" / "mine.keras")
    (tmp_path / "models" / "labels.txt").write_text("cat\ndog\nfox\n", "utf-8")
    out = tmp_path / "conf" / "edgeship.toml"
    assert main(["init", "--model", str(tmp_path / "models" / "mine.keras"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "[validate] data" in said and f"edgeship run {out}" in said
    text = out.read_text("utf-8")
    assert 'path = "../models/mine.keras"' in text and 'labels = "../models/labels.txt"' in text
    assert "# mean = " in text and "infers it from your images" in text
    assert "assumed" not in text.split("[model]")[0]  # run infers or stops: the header does not claim a preprocessing
    # the data sets are required for one's own model: written as values to point at the images, not commented out
    assert '\ncalibration = "data/calibration"' in text and '\ndata = "data/heldout"' in text
    config = load_config(out)
    assert Path(config.model).resolve() == (tmp_path / "models" / "mine.keras").resolve()
    assert Path(config.labels).resolve() == (tmp_path / "models" / "labels.txt").resolve()
    assert config.output_kind == "probabilities" and config.mean is None
    far = tmp_path / "a" / "b" / "edgeship.toml"  # a model far from the config (a cache): its absolute path
    assert main(["init", "--model", str(tmp_path / "models" / "mine.keras"), "--out", str(far)]) == 0
    assert f'path = "{(tmp_path / "models" / "mine.keras").resolve().as_posix()}"' in far.read_text("utf-8")
    assert Path(load_config(far).model).resolve() == (tmp_path / "models" / "mine.keras").resolve()


def test_model_holding_code_is_refused_and_nothing_written(tmp_path, capsys):
    from edgeship._tf import keras

    k = keras()
    inp = k.Input((32, 32, 3))
    x = k.layers.Lambda(lambda t: t * 2.0)(inp)
    model = k.Model(inp, k.layers.Dense(3)(k.layers.GlobalAveragePooling2D()(x)))
    model.save(tmp_path / "lambda.keras")
    out = tmp_path / "edgeship.toml"
    assert main(["init", "--model", str(tmp_path / "lambda.keras"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Lambda" in err and "safe mode" in err, err
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_dynamic_input_size_is_fixed_and_written(tmp_path, capsys):
    from edgeship._tf import keras

    k = keras()
    inp = k.Input((None, None, 3))
    x = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(4, 3)(inp))
    model = k.Model(inp, k.layers.Dense(3, activation="softmax")(x))
    model.save(tmp_path / "dynamic.keras")
    out = tmp_path / "edgeship.toml"
    assert main(["init", "--model", str(tmp_path / "dynamic.keras"), "--out", str(out)]) == 2
    assert "--input-size" in capsys.readouterr().err and not out.exists()
    assert main(["init", "--model", str(tmp_path / "dynamic.keras"), "--out", str(out), "--input-size", "64x48"]) == 0
    assert 'input_size = "64x48"' in out.read_text("utf-8")
    assert load_config(out).input_size == (64, 48)

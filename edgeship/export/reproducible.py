"""Byte-identical reruns: the same model and options give the same ``.onnx`` and ``.mlpackage`` bytes.

What differed between two runs of the same export (measured on the demo, tf2onnx 1.17, coremltools 8):

* **ONNX**: tf2onnx's constant folding and de-duplication walk Python sets and dicts keyed by strings, whose order
  changes with each process' hash seed (``PYTHONHASHSEED``). The graph computes the same thing, but which of two
  identical constants is kept (``.../Relu6_max__69`` or ``.../Relu6_min__155``), the numbers of generated names
  (``const_fold_opt__601``, ``Mean_Squeeze__653``, the batch dimension's ``unk__654``) and the initializers' order
  differ. :func:`canonical_onnx` renames every generated name (tf2onnx's ``<base>__<n>`` suffix) by order of first
  use in the node list and orders the initializers the same way; names from the source model, the graph's inputs
  and outputs are kept. The graph's ``doc_string`` ("converted from b'__inference_<lambda>_25831'") carries
  TensorFlow's process-wide function counter, so it depends on what the process traced before (an export after
  other work in the same process differed): the counter is dropped.
* **Core ML** ``Manifest.json``: coremltools' model-package writer gives each item a random UUID (``uuid4``);
  :func:`canonical_mlpackage` replaces them with UUIDs derived from the item's path (``uuid5``), and rewrites the
  manifest in the writer's own layout (sorted keys, 4-space indent).
* **Core ML** ``model.mlmodel``: protobuf serialises ``map`` fields (``userDefined`` metadata, the ML Program's
  functions and attributes) in hash order; it is re-serialised with ``deterministic=True`` (map keys sorted).

* **Core ML in one process** ``model.mlmodel``: the MIL builder names unnamed ops from a class-level counter
  (``Builder.name_count``: ``const_72_to_fp16``). ``coremltools.convert`` clears it only *after* converting, and
  loading a saved program (``milproto.load``, as edgeship's ML Program executor does to validate or check a Core ML
  file) fills it again without clearing it: the next export in that process numbered its consts from where the
  load stopped (``const_73_to_fp16``...). :func:`fresh_mil_names` clears it before each conversion and after each
  load, so every export starts from the state of a fresh process.

The ``.tflite`` needed nothing (the converter's output was identical). The manifest's and reports' ``created``
timestamps are the run's, by design.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

# tf2onnx's generated names: "<base>__<counter>", optionally a tensor's ":<output index>"
_GENERATED = re.compile(r"^(?P<base>.*?)__(?P<n>\d+)(?P<port>:\d+)?$")
# uuid5 namespace for Core ML package items (a fixed, arbitrary UUID: only its constancy matters)
_PACKAGE_NAMESPACE = uuid.UUID("6d1f3a0e-5b7c-4f53-9a43-0c8e2d6f7a11")


def canonical_onnx(proto: Any) -> Any:
    """Rename ``proto``'s generated names deterministically, in place, and return it (see the module docstring).

    Initializers with a generated name become ``const__<k>`` (two runs may keep different ones of identical
    constants, whose own names differ); other generated names keep their base (``Conv__<k>``). ``k`` counts first
    uses over the nodes in order (inputs, then outputs, then the node's name). Subgraphs (If/Loop bodies) are left
    as they are: MobileNets have none."""
    graph = proto.graph
    graph.doc_string = re.sub(r"_\d+(?='?$)", "", graph.doc_string)  # "..._<lambda>_25831'" -> "..._<lambda>'"
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    initializers = {t.name for t in graph.initializer}
    mapping: dict[str, str] = {}
    order: dict[str, int] = {}
    counter = 0

    def rename(name: str) -> str:
        nonlocal counter
        if not name or name in keep:
            return name
        if name in initializers:
            order.setdefault(name, len(order))
        m = _GENERATED.match(name)
        if m is None:
            return name
        stem = name[: len(name) - len(m.group("port") or "")]
        if stem not in mapping:
            base = "const" if name in initializers else m.group("base")
            mapping[stem] = f"{base}__{counter}"
            counter += 1
        return mapping[stem] + (m.group("port") or "")

    for node in graph.node:
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
        node.name = rename(node.name)
    ranked = [_copy(t) for t in sorted(graph.initializer, key=lambda t: (order.get(t.name, len(order)), t.name))]
    for t in ranked:
        t.name = rename(t.name)
    del graph.initializer[:]
    graph.initializer.extend(ranked)
    for vi in graph.value_info:
        vi.name = rename(vi.name)
    infos = sorted((_copy(v) for v in graph.value_info), key=lambda v: v.name)
    del graph.value_info[:]
    graph.value_info.extend(infos)
    # symbolic dimensions (the dynamic batch: "unk__654"), numbered by first appearance
    dims: dict[str, str] = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            m = _GENERATED.match(dim.dim_param) if dim.HasField("dim_param") else None
            if m is not None:
                dim.dim_param = dims.setdefault(dim.dim_param, f"{m.group('base')}__{len(dims)}")
    return proto


def _copy(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def canonical_mlpackage(path: Path) -> None:
    """Make a saved ``.mlpackage`` byte-reproducible, in place (see the module docstring)."""
    path = Path(path)
    manifest_path = path / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    entries = manifest.get("itemInfoEntries", {})
    ids = {old: str(uuid.uuid5(_PACKAGE_NAMESPACE, f"{item.get('author', '')}/{item.get('path', '')}"))
           for old, item in entries.items()}
    manifest["itemInfoEntries"] = {ids[old]: item for old, item in entries.items()}
    if manifest.get("rootModelIdentifier") in ids:
        manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n", encoding="utf-8")

    from coremltools.proto import Model_pb2

    for spec_path in path.glob("Data/*/*.mlmodel"):
        spec = Model_pb2.Model()
        spec.ParseFromString(spec_path.read_bytes())
        spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def fresh_mil_names() -> None:
    """Clear coremltools' process-wide naming state (see the module docstring): what ``coremltools.convert`` itself
    does when it finishes (``_reset_conversion_state``), done before a conversion and after loading a program."""
    try:
        from coremltools.converters.mil.converter import _reset_conversion_state
    except ImportError:  # a coremltools without it: the counter it clears
        from coremltools.converters.mil.mil import Builder

        Builder.name_count.clear()
        return
    _reset_conversion_state()

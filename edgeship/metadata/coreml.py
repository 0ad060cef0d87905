"""Core ML metadata read back from a model spec: what a Core ML client sees of the classifier (below both
``edgeship.export``, which writes it, and ``edgeship.runtimes``, which reads it)."""

from __future__ import annotations

from typing import Any


def classifier_labels(spec: Any) -> list[str]:
    """The class labels a Core ML client sees: ML Programs keep them as the inline list value of the
    ``classify`` op's ``classes`` input."""
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                if op.type == "classify":
                    values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                    return [v.immediateValue.tensor.strings.values[0] for v in values]
    return []

"""A NumPy reference executor for saved Core ML ML Programs (``.mlpackage``), for where Core ML cannot run
(``MLModel.predict`` needs macOS).

It reads the package from disk (the model spec and its weight blobs) into coremltools' own program
representation (``milproto.load``), then runs the main function's ops in program order with NumPy. Constants
(``const``, ``constexpr_*`` weight decompression) take the values the op's own ``value_inference`` gives; every
computed op has a kernel in :mod:`edgeship.runtimes.mlprogram.kernels`. An op without a kernel refuses the
program with :class:`UnsupportedOp` naming the op type and name (when the program is opened, before any answer).

Precision follows the program's types, as Core ML's fp16 path computes: an op whose tensors are typed fp16 gets
its inputs as fp16 values, computes (in float32 internally) and has its result rounded to fp16, so fp16 rounding
and overflow show op by op. It is a reference execution of the program's semantics, not Apple's kernels: results
agree with Core ML to within the kernels' own accumulation order, not bit for bit.

The image input takes what a client hands Core ML: pixels, (N, H, W, 3) RGB (uint8), put in the colour order
the model description states (BGR reverses them) and laid out as the program's (N, C, H, W) tensor; the
ImageType's scale and bias are ops inside the program (``image__scaled__``/``image__biased__``) and run as such.
A classifier's ``classify`` op gives the predicted label and the ``{label: probability}`` dict, as Core ML does.

API::

    from edgeship.runtimes.mlprogram import MLProgram

    program = MLProgram("model.mlpackage")           # load + plan; UnsupportedOp / MLProgramError here
    out = program.execute({"image": rgb_uint8_1hw3})
    out["classLabel"], out["classLabel_probs"]       # the function's outputs by name
    program.output_array(out)                         # the classifier's values in label order, (1, classes)

Calibration (e.g. Core ML W8A8 activation ranges)::

    values = program.execute(feed, keep_intermediates=True)
    # -> {var name: value} for the function's inputs (as fed to the program) and for every output of every
    #    computed op, in program order (constants, i.e. const/constexpr outputs, are not included; they are in
    #    ``program.constants``). fp16 programs give fp16 arrays, as the next op would read them.
    for op in program.ops:                            # OpRecord(type, name, inputs, outputs), program order
        if op.type == "conv":
            activation = values[op.inputs["x"][0]]    # the tensor a conv reads; op.outputs[0] what it writes

Without ``keep_intermediates`` the values are freed after their last use and only the outputs are returned.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from edgeship.runtimes.mlprogram.kernels import KERNELS
from edgeship.runtimes.mlprogram.program import (
    ImageInput,
    InputDesc,
    MLProgramError,
    OpRecord,
    UnsupportedOp,
    check_tensor,
    declared,
    describe_inputs,
    finish,
    image_tensor,
    load_program,
    plan,
    resolve,
)

__all__ = ["MLProgram", "MLProgramError", "UnsupportedOp", "OpRecord", "InputDesc", "ImageInput",
           "SUPPORTED_OPS"]

SUPPORTED_OPS = tuple(sorted({*KERNELS, "const", "classify", "constexpr_*"}))


class MLProgram:
    """A saved ``.mlpackage``, loaded and planned for NumPy execution.

    Attributes: ``path``, ``spec`` (the Model proto), ``inputs`` (:class:`InputDesc` per function input),
    ``outputs`` (the function's output names), ``ops`` (:class:`OpRecord` per computed op), ``constants``
    ({var name: value} of const/constexpr outputs, fp16 ones widened to float32), ``labels`` (the classify op's
    classes, or None), ``probabilities`` (the var the classify op reads, or None), ``precision`` ("fp16" when
    any computed op has an fp16 output, else "fp32").
    """

    def __init__(self, path: str | Path, function: str | None = None) -> None:
        self.path = Path(path)
        self.spec, self.program = load_program(self.path)
        name = function or self.spec.description.defaultFunctionName or "main"
        if name not in self.program.functions:
            raise MLProgramError(f"{self.path.name} has no function '{name}' "
                                 f"(it has {', '.join(self.program.functions)})")
        fn = self.program.functions[name]
        self.inputs: list[InputDesc] = describe_inputs(self.spec, fn)
        self.outputs: list[str] = [v.name for v in fn.outputs]
        self.constants, self._steps, classifiers = plan(fn, self.path)
        self.ops: list[OpRecord] = [s.record for s in self._steps]
        self.labels: list[Any] | None = list(classifiers[0].consts["classes"]) if classifiers else None
        self.probabilities: str | None = classifiers[0].dynamic["probabilities"] if classifiers else None
        self.precision = "fp16" if any(d == np.float16 for s in self._steps for d in s.out_dtypes) else "fp32"
        self._dtypes = {d.name: d.dtype for d in self.inputs}
        self._dtypes.update({n: t for s in self._steps for n, t in zip(s.record.outputs, s.out_dtypes)})
        self._plan_frees()
        self._batchable: bool | None = None  # whether a chunk of images runs as one batch (execute_many)

    def _plan_frees(self) -> None:
        last: dict[str, int] = {}
        for i, step in enumerate(self._steps):
            for src in step.dynamic.values():
                for name in ([n for kind, n in src if kind == "var"] if isinstance(src, list) else [src]):
                    last[name] = i
        keep = set(self.outputs)
        for name, i in last.items():
            if name not in keep:
                self._steps[i].frees.append(name)

    def feed_values(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The client's inputs as the program's input tensors (images: pixels -> (N, C, H, W) floats)."""
        names = {d.name for d in self.inputs}
        if set(inputs) != names:
            raise MLProgramError(f"{self.path.name}: inputs {sorted(inputs)} given, the program takes {sorted(names)}")
        return {d.name: image_tensor(d, inputs[d.name]) if d.image is not None else check_tensor(d, inputs[d.name])
                for d in self.inputs}

    def execute(self, inputs: Mapping[str, Any], keep_intermediates: bool = False) -> dict[str, Any]:
        """Run the function on ``inputs`` ({input name: array}); returns the function's outputs by name, or with
        ``keep_intermediates`` every input and computed value by var name, in program order."""
        env: dict[str, Any] = dict(self.feed_values(inputs))
        with np.errstate(all="ignore"):  # fp16 overflow to inf is the semantics here, not a warning
            for step in self._steps:
                try:
                    values = finish(step, step.run(resolve(step, env)))
                except NotImplementedError as e:
                    raise UnsupportedOp(step.record.type, step.record.name, self.path, str(e)) from None
                env.update(zip(step.record.outputs, values))
                if not keep_intermediates:
                    for name in step.frees:
                        env.pop(name, None)
        names = env if keep_intermediates else self.outputs
        return {name: declared(env[name], self._dtypes.get(name)) for name in names}

    @cached_property
    def readers(self) -> dict[str, list[OpRecord]]:
        """{var name: the ops reading it, once per reading input, in program order}."""
        readers: dict[str, list[OpRecord]] = {}
        for op in self.ops:
            for names in op.inputs.values():
                for name in names:
                    readers.setdefault(name, []).append(op)
        return readers

    @cached_property
    def producers(self) -> dict[str, OpRecord]:
        """{var name: the op computing it} (constants are not ops here: see ``constants``)."""
        return {out: op for op in self.ops for out in op.outputs}

    def output_array(self, outputs: Mapping[str, Any]) -> np.ndarray:
        """The classifier's ``{label: value}`` output as float32 (N, classes) in label order (N = 1, or the chunk
        of :meth:`execute_many`); for a program without a classifier, its first output as float32."""
        if self.labels is not None:
            def rows_of(value: Any) -> list[dict] | None:  # one image: a dict; a batch: a list of dicts
                rows = [value] if isinstance(value, dict) else value
                return rows if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows) else None

            rows = next((r for r in (rows_of(outputs.get(n)) for n in self.outputs) if r is not None), None)
            if rows is None:
                raise MLProgramError(f"{self.path.name}: the classifier's dictionary output is missing")
            return np.asarray([[r[label] for label in self.labels] for r in rows], dtype=np.float32)
        return np.asarray(outputs[self.outputs[0]], dtype=np.float32)

    def execute_many(self, pixels: np.ndarray, batch: int = 16,
                     keep_intermediates: bool = False) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Run an image program on many images (N, H, W, 3), ``batch`` at a time: yields (start, stop, values)
        per chunk, the values as :meth:`execute` gives them with a leading batch dimension (a classifier's label
        and dict outputs become lists). Core ML feeds one image at a time; executing a chunk at once only
        amortises the executor's per-op overhead. A program written for batch 1 (a reshape to (1, ...)) cannot
        run a chunk: the first chunk's failure, or its first image disagreeing with that image run alone, turns
        batching off for this program, and everything runs image by image."""
        images = [d for d in self.inputs if d.image is not None]
        if len(images) != 1 or len(self.inputs) != 1:
            raise MLProgramError(f"{self.path.name}: execute_many runs programs with one image input")
        image = images[0]
        for start in range(0, len(pixels), max(1, batch)):
            stop = min(start + max(1, batch), len(pixels))
            chunk = pixels[start:stop]
            if len(chunk) > 1 and self._batchable is None:
                self._batchable = self._batch_agrees(image.name, chunk)
            if len(chunk) > 1 and not self._batchable:
                for i in range(start, stop):
                    yield i, i + 1, self.execute({image.name: pixels[i:i + 1]}, keep_intermediates)
                continue
            yield start, stop, self.execute({image.name: chunk}, keep_intermediates)

    def _batch_agrees(self, name: str, chunk: np.ndarray) -> bool:
        try:
            together = self.execute({name: chunk})
        except Exception:  # noqa: BLE001 - any failure means: this program runs one image at a time
            return False
        alone = self.execute({name: chunk[:1]})
        for out in self.outputs:
            a, b = together[out], alone[out]
            if isinstance(b, (dict, str)):
                if not isinstance(a, list) or len(a) != len(chunk) or (isinstance(b, str) and a[0] != b):
                    return False
                if isinstance(b, dict) and not np.allclose([a[0][k] for k in b], list(b.values()), rtol=1e-2,
                                                           atol=1e-3):
                    return False
            elif np.shape(a)[0] != len(chunk) or not np.allclose(np.asarray(a[:1], np.float32),
                                                                  np.asarray(b, np.float32), rtol=1e-2, atol=1e-3):
                return False
        return True

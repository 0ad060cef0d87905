"""Activation ranges chosen per tensor from the calibration set's distribution, not its raw min/max.

The TFLite calibration records each activation's min and max over the calibration set; the MLIR quantiser turns
[min, max] into an int8 scale and zero point (``scale = (max - min) / 255``, the zero point nudged to an integer so
that 0 is exact: ``FakeQuantSupport.cpp``, ``getNudgedScaleAndZeroPoint``). One outlier value widens the step for
every other value of the tensor. For the tensors whose range is not fixed by the op (ReLU6 outputs are [0, 6]; see
:mod:`edgeship.quantize.formats.tflite`), this module measures each tensor's distribution on the calibration set and picks
a narrower range:

- ``mse``: the [lo, hi] among shrunken versions of the observed range (``lo = f_lo · min``, ``hi = f_hi · max``
  over a grid of clip fractions, both ends independently) that minimises the tensor's int8 mean squared
  quantisation error (rounding inside the range plus clipping outside it), with the quantiser's own scale and
  zero-point rule. The MSE criterion is the one of Banner et al. (2019, "Post-training 4-bit quantization of
  convolution networks for rapid-deployment", ACIQ) and of NNCF's/TensorRT's MSE calibrators.
- ``percentile``: [p-th lowest, p-th highest] percentile of the values (ONNX Runtime's ``percentile``
  calibrator does the same on |x|; its default 99.999).
- ``minmax``: the observed min/max (the converter's behaviour; nothing is changed).

How the distribution is measured: the calibrated float flatbuffer runs in LiteRT with every intermediate tensor
preserved (as :mod:`edgeship.quantize.layers` does), one image at a time; each tensor's values go into a fixed
histogram over its observed [min, max] (:data:`BINS` bins, with each bin's count and sum, so a bin stands for
its values' mean, and exact zeros counted apart because the nudged zero point represents 0 exactly). Memory is
``BINS`` x 3 numbers per tensor, whatever the number of images. The error of a range is computed from the
histogram, so the search costs nothing next to the pass.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from edgeship.quantize.options import ActivationRanges

BINS = 4096
#: Clip fractions of the observed min (and, independently, max) the MSE search tries: 1.0 (no clip) down to 0.1.
CLIP_FRACTIONS = np.round(np.linspace(1.0, 0.1, 46), 4)
PERCENTILE = 99.99  # ``percentile``: keep [0.01 %, 99.99 %] of a tensor's values
QMIN, QMAX = -128, 127  # TFLite int8 activations (the uint8 I/O copies are the same grid shifted by 128)


@dataclass
class Histogram:
    """One tensor's values over the calibration set: ``counts``/``sums`` (float64 (BINS,)) of the non-zero values
    in BINS equal bins over [lo, hi] (the observed min/max), and ``zeros``, the count of exact zeros."""

    lo: float
    hi: float
    counts: np.ndarray
    sums: np.ndarray
    zeros: float = 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).ravel()
        nonzero = x[x != 0]
        self.zeros += x.size - nonzero.size
        width = (self.hi - self.lo) / BINS
        idx = np.clip(((nonzero - self.lo) / width).astype(np.int64), 0, BINS - 1) if width > 0 else \
            np.zeros(nonzero.size, np.int64)
        self.counts += np.bincount(idx, minlength=BINS)
        self.sums += np.bincount(idx, weights=nonzero, minlength=BINS)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, weights): each non-empty bin's mean value, and 0, with their counts."""
        full = self.counts > 0
        values = np.concatenate([self.sums[full] / self.counts[full], [0.0]])
        return values, np.concatenate([self.counts[full], [self.zeros]])


def quantisation_grid(lo: np.ndarray | float, hi: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of int8 ranges [lo, hi] as the MLIR quantiser makes them: the range stretched to hold
    0, ``scale = (hi - lo) / 255``, zero point ``round(-128 - lo / scale)`` clamped to [-128, 127]
    (``getNudgedScaleAndZeroPoint``, which picks the zero point from the end with the smaller error; both agree to
    rounding). Arrays broadcast."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    scale = np.maximum(hi - lo, 1e-12) / (QMAX - QMIN)
    zero_point = np.clip(np.round(QMIN - lo / scale), QMIN, QMAX)
    return scale, zero_point


def quantisation_mse(values: np.ndarray, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Weighted mean squared error of int8 quantise-dequantise of ``values`` (1-D, float64) for each candidate range
    ``lo``/``hi`` (equal-shaped arrays): rounding error inside the range, clipping error outside. Returns
    ``lo``'s shape."""
    scale, zp = quantisation_grid(lo, hi)
    s, z = scale[..., None], zp[..., None]
    deq = (np.clip(np.round(values / s) + z, QMIN, QMAX) - z) * s
    return ((deq - values) ** 2 * weights).sum(axis=-1) / max(float(weights.sum()), 1.0)


def search_mse(hist: Histogram, fractions: np.ndarray = CLIP_FRACTIONS) -> tuple[float, float]:
    """The [lo, hi] of least quantisation MSE among ``(f_lo · min, f_hi · max)`` for every pair of ``fractions``;
    on a tie the wider range (the first met, as ``fractions`` runs from 1 down)."""
    values, weights = hist.points()
    lo = np.minimum(hist.lo, 0.0) * fractions[:, None] + 0.0 * fractions[None, :]
    hi = 0.0 * fractions[:, None] + np.maximum(hist.hi, 0.0) * fractions[None, :]
    mse = np.stack([quantisation_mse(values, weights, lo[i], hi[i]) for i in range(len(fractions))])
    i, j = np.unravel_index(int(np.argmin(mse)), mse.shape)
    return float(lo[i, j]), float(hi[i, j])


def search_percentile(hist: Histogram, percentile: float = PERCENTILE) -> tuple[float, float]:
    """[value at (100 - percentile) %, value at percentile %] of the histogram's values (0 included); each end
    stays within the observed range."""
    values, weights = hist.points()
    order = np.argsort(values)
    cdf = np.cumsum(weights[order]) / max(float(weights.sum()), 1.0)
    tail = (100.0 - percentile) / 100.0
    lo = values[order][min(int(np.searchsorted(cdf, tail)), len(cdf) - 1)]
    hi = values[order][min(int(np.searchsorted(cdf, 1.0 - tail)), len(cdf) - 1)]
    return float(min(lo, 0.0) if hist.lo <= 0 else lo), float(max(hi, 0.0) if hist.hi >= 0 else hi)


def calibrated_ranges(calibrated: bytes) -> dict[str, tuple[float, float]]:
    """{tensor name: (min, max)} of every activation the calibration recorded in the float flatbuffer."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    out = {}
    for tensor in model.subgraphs[0].tensors:
        q = tensor.quantization
        if q is None or q.min is None or q.max is None or len(q.min) != 1:
            continue
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        out[name] = (float(q.min[0]), float(q.max[0]))
    return out


def collect_histograms(calibrated: bytes, inputs: np.ndarray, names: Iterable[str]) -> dict[str, Histogram]:
    """{name: Histogram} of the named activations of the calibrated float flatbuffer over ``inputs`` (the
    preprocessed float32 calibration batch (N, H, W, C)), each over the min/max the calibration recorded."""
    from edgeship.runtimes.probe import LiteRTProbe

    observed = calibrated_ranges(calibrated)
    probe = LiteRTProbe(calibrated)
    index = probe.index
    hists = {n: Histogram(*observed[n], np.zeros(BINS), np.zeros(BINS)) for n in names if n in index and n in observed}
    for x in inputs:
        probe.run(x[None].astype(np.float32))
        for name, hist in hists.items():
            hist.add(probe.tensor(index[name]))
    return hists


def choose_ranges(calibrated: bytes, inputs: np.ndarray, method: str, skip: Iterable[str] = (),
                  percentile: float = PERCENTILE) -> dict[str, dict[str, Any]]:
    """{tensor name: {"range": [lo, hi], "observed": [min, max], "method": method}} for every calibrated
    activation of ``calibrated`` but the graph input and ``skip`` (the tensors whose range is fixed), chosen by
    ``method`` ("mse" or "percentile") on ``inputs``; "minmax" returns {}. Raises UserError for another method."""
    method = ActivationRanges.parse(str(method), "activation range method").value
    if method == "minmax":
        return {}
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    sg = model.subgraphs[0]
    graph_inputs = {sg.tensors[i].name.decode() if isinstance(sg.tensors[i].name, bytes) else sg.tensors[i].name
                    for i in sg.inputs}
    skip = set(skip) | graph_inputs
    names = [n for n in calibrated_ranges(calibrated) if n not in skip]
    out = {}
    for name, hist in collect_histograms(calibrated, inputs, names).items():
        lo, hi = search_mse(hist) if method == "mse" else search_percentile(hist, percentile)
        out[name] = {"range": [lo, hi], "observed": [hist.lo, hist.hi], "method": method}
    return out


def apply_ranges(model: Any, ranges: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Write each ``ranges[name]["range"]`` into the min/max of that tensor of the flatbuffer object ``model``
    (``flatbuffer_utils`` form); returns the names changed."""
    changed = []
    for tensor in model.subgraphs[0].tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        q = tensor.quantization
        if name in ranges and q is not None and q.min is not None:
            lo, hi = ranges[name]["range"]
            q.min, q.max = np.array([lo], np.float32), np.array([hi], np.float32)
            changed.append(name)
    return changed

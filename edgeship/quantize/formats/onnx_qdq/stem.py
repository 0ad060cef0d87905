"""The stem rewrite: MobileNet's first convolution (stride 2 over the 3 RGB channels) as SpaceToDepth(2) + a
stride-1 convolution over 12 channels, bit-identical and faster in ONNX Runtime."""

from __future__ import annotations

import numpy as np

from edgeship.quantize.formats.onnx_qdq.graph import Graph, _Act

#: A stride-2 conv over at most this many input channels (the RGB stem) runs as SpaceToDepth + a stride-1 conv.
S2D_MAX_CHANNELS = 4


def space_to_depth(g: Graph, x: _Act, weight: np.ndarray, pads: list[int], in_hw: tuple[int, int],
                   out_hw: tuple[int, int]) -> tuple[_Act, np.ndarray, list[int]]:
    """A stride-2 convolution of a few channels rewritten as a stride-1 convolution of 4x as many (``x``:
    the 8-bit input, NCHW).

    MLAS runs a 3-channel QLinearConv through im2col with a 27-long reduction, which left MobileNet's stem at
    13 % of ORT's time on MobileNetV2-1.0-224 (XNNPACK has a kernel for it). Padded with the input's zero
    point (what QLinearConv pads with) to an even size and folded by SpaceToDepth(2), the same products become
    a kernel of ceil(k/2) x ceil(k/2) over 4C channels, stride 1: tap (2i + a, 2j + b) of channel c is tap
    (i, j) of channel (2a + b)·C + c, and the taps beyond k are zero weights. Every int32 sum holds the same
    products, so the output is bit-identical; measured 1.4-1.9x faster for that conv alone (ORT 1.31, 1 thread).
    """
    o, c, kh, kw = weight.shape
    kh2, kw2 = -(-kh // 2), -(-kw // 2)
    folded = np.zeros((o, 4 * c, kh2, kw2), weight.dtype)
    for a in range(2):
        for b in range(2):
            taps = weight[:, :, a::2, b::2]  # (o, c, <= kh2, <= kw2)
            folded[:, (2 * a + b) * c:(2 * a + b + 1) * c, :taps.shape[2], :taps.shape[3]] = taps
    top, left = pads[0], pads[1]
    bottom = 2 * (out_hw[0] + kh2 - 1) - top - in_hw[0]
    right = 2 * (out_hw[1] + kw2 - 1) - left - in_hw[1]
    if bottom < 0 or right < 0:  # an input larger than the conv reads: keep the plain conv
        return x, weight, pads
    zp = np.array(x.zero_point, np.int8 if x.onnx_type == 3 else np.uint8)
    pad_value = g.const("s2d_pad_value", zp)
    pads4 = [0, 0, top, left, 0, 0, bottom, right]
    padded = g.node("Pad", [x.name, g.const("s2d_pads", np.array(pads4, np.int64)), pad_value],
                       [g.fresh(x.name + "_pad")], mode="constant")
    folded_x = g.node("SpaceToDepth", padded, [g.fresh(x.name + "_s2d")], blocksize=2)[0]
    return _Act(folded_x, True, x.scale, x.zero_point, x.onnx_type), folded, [0, 0, 0, 0]

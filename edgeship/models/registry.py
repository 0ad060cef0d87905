"""The MobileNet variants edgeship knows by name, built with ``keras.applications`` (random init: no weights can
be downloaded here; random init is fine for latency and for exercising converters, useless for parity).

Names follow ``mobilenet_v2_1.0_224``: family, width multiplier alpha, input resolution.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from edgeship.errors import UserError
from edgeship.models.spec import ModelSpec, Preprocessing

# The grids the MobileNet papers tabulate (and keras.applications ships weights for).
V1_ALPHAS = (0.25, 0.5, 0.75, 1.0)
V1_RESOLUTIONS = (128, 160, 192, 224)
V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
V2_RESOLUTIONS = (96, 128, 160, 192, 224)
V3_ALPHAS = (0.75, 1.0)
# keras.applications ships V3 weights at 224 only, but the architecture takes any size (random init here); the
# MobileNetV3 paper's resolution study (Howard et al. 2019, Fig. 7: 96-256) covers the V2 grid, so V3 has it too
V3_RESOLUTIONS = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class Variant:
    family: str  # mobilenet_v1 | mobilenet_v2 | mobilenet_v3_small | mobilenet_v3_large
    alpha: float
    resolution: int
    minimalistic: bool = False

    @property
    def name(self) -> str:
        return f"{self.full_family}_{self.alpha:g}_{self.resolution}".replace("_1_", "_1.0_")

    @property
    def full_family(self) -> str:
        """The family as listed: 'mobilenet_v3_small_minimalistic' for the minimalistic forms."""
        return self.family + ("_minimalistic" if self.minimalistic else "")

    @property
    def is_v3(self) -> bool:
        return self.family.startswith("mobilenet_v3")

    def preprocessing(self) -> Preprocessing:
        # V1/V2 expect [-1, 1]; keras' V3 rescales inside the model (include_preprocessing=True).
        return Preprocessing.identity() if self.is_v3 else Preprocessing()

    def spec(self, classes: int = 1000) -> ModelSpec:
        return ModelSpec(
            name=self.name,
            family=self.full_family,
            alpha=self.alpha,
            input_shape=(self.resolution, self.resolution, 3),
            num_classes=classes,
            preprocessing=self.preprocessing(),
            in_graph_normalisation=("MobileNetV3's include_preprocessing (a Rescaling layer): (x - 127.5) / 127.5"
                                    if self.is_v3 else None),
        )

    def build(self, classes: int = 1000, seed: int = 0) -> Any:
        """A keras.applications model with random weights (seeded, so two builds are identical)."""
        from edgeship._tf import keras

        k = keras()
        k.utils.set_random_seed(seed)
        shape = (self.resolution, self.resolution, 3)
        common: dict[str, Any] = dict(input_shape=shape, alpha=self.alpha, weights=None, classes=classes,
                                      classifier_activation=None)
        if self.family == "mobilenet_v1":
            return k.applications.MobileNet(**common)
        if self.family == "mobilenet_v2":
            return k.applications.MobileNetV2(**common)
        builder = k.applications.MobileNetV3Small if self.family == "mobilenet_v3_small" else k.applications.MobileNetV3Large
        return builder(**common, minimalistic=self.minimalistic, include_preprocessing=True)


def _all_variants() -> dict[str, Variant]:
    variants = [Variant("mobilenet_v1", a, r) for a in V1_ALPHAS for r in V1_RESOLUTIONS]
    variants += [Variant("mobilenet_v2", a, r) for a in V2_ALPHAS for r in V2_RESOLUTIONS]
    variants += [Variant(f, a, r, m) for f in ("mobilenet_v3_small", "mobilenet_v3_large")
                 for m in (False, True) for a in V3_ALPHAS for r in V3_RESOLUTIONS]
    return {v.name: v for v in variants}


VARIANTS: dict[str, Variant] = _all_variants()


def looks_like_variant_name(text: str) -> bool:
    return text.startswith("mobilenet") and "/" not in text and "." not in text.rsplit("_", 1)[-1]


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        close = difflib.get_close_matches(name, VARIANTS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown model variant '{name}'; 'edgeship models' lists them.{hint}") from None

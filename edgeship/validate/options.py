"""The validate stage's options: one typed, frozen object shared by the Python API (:func:`validate`'s keywords
build it), the CLI's validation and executor argument groups (their choices and defaults are read from it) and the
``[validate]`` table of ``edgeship.toml`` (it *is* that table: strict types, unknown keys refused, one
:class:`UserError` line naming the key; :mod:`edgeship.schema`).

Paths stay strings here (a config file's are made relative to it by :func:`edgeship.pipeline.load_config`);
``input_range`` is read by :func:`edgeship.data.parse_input_range` ("LO,HI" or [LO, HI]).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from edgeship.schema import Fraction, NonNegativeInt, PositiveInt, Table
from edgeship.types import Format, _StrEnum


class ExecutorName(_StrEnum):
    """Where the comparison runs (:mod:`edgeship.validate.executors`)."""

    LOCAL = "local"  # this process
    RAY = "ray"  # shards over a Ray cluster (pip install 'edgeship[ray]')


def _choice(enum: Any) -> Any:
    """An enum field that a TOML string (its value) sets: strict elsewhere, so a wrong value lists the choices."""
    return Annotated[enum, Field(strict=False)]


class ValidateOptions(Table):
    """What :func:`edgeship.validate.validate` is asked to do, beyond the artifacts, the reference and where the
    reports go. Also ``[validate]`` in ``edgeship.toml``.

    ``kernel_path_samples``: how many samples (the first ones) each int8 file's second kernel path runs on; 0 turns
    the portability comparison off. LiteRT's reference kernels are slow (measured: 90 ms an image on a
    MobileNetV2-1.0 at 160x160, XNNPACK 6 ms), hence the cap. ``input_range``: how an .npy/.npz's values map to
    pixels 0-255 (:func:`edgeship.data.open_data`); the decoder's conversions are in ``report.data``.

    The preprocessing contract (:mod:`edgeship.validate.contract`) is checked on the reference's own answers;
    ``expect_accuracy`` (a fraction) adds its top-1 accuracy on labelled data to it; ``report.contract``.

    Integrity: an artifact recorded in a manifest is validated only if it is the file recorded (size and sha256);
    otherwise it fails with what differs, unless ``allow_modified`` (then its ``integrity`` and reason say so).
    Manifest paths outside their directory, and listed files that are missing or of the wrong kind, are
    :class:`UserError`.

    ``baseline``: a previous report.json (or a directory holding one): each artifact is also checked against the
    same format and precision there under the policy's ``[baseline]`` budgets (:mod:`edgeship.validate.baseline`).
    ``latency_from``: LiteRT ``benchmark_model`` logs from a real device named ``device``; each joins the artifact
    whose file it ran, gated by ``[device_latency.FORMAT.PRECISION]`` (:mod:`edgeship.validate.device_latency`).
    Both are read before anything runs, so a bad path fails at once.

    ``executor``: local (default: this process) or ray (shards over a Ray cluster at ``address``, ``workers``
    shard tasks in flight; :mod:`edgeship.validate.ray_executor`). Both give the same figures (latency aside).
    ``skip_bad_images``: an image that cannot be read is failed alone and listed in
    ``report.data["failed_samples"]`` with its reason (True; the Ray executor's default: one bad file in tens of
    thousands should not cost the cluster run), or stops the run with one :class:`UserError` line (False; the local
    executor's default, so a release is never judged on fewer images than its data set without being told).

    ``contain``: each artifact's runtime runs in a child process (:mod:`edgeship.validate.contained`), so a file that
    crashes its runtime, exhausts memory or hangs (the policy's ``[limits]``) fails alone; False runs them all in
    this process (for debugging a runtime; then such a file ends the whole validation)."""

    data: str | None = None  # images (class folders give labels) or .npy/.npz; None: the demo's (demo only)
    policy: str | None = None  # a TOML policy merged over the shipped one
    require: list[_choice(Format)] = []  # type: ignore[valid-type]  # formats that must run here
    threads: PositiveInt = 1  # per runtime
    iterations: PositiveInt = 50  # timed inferences per artifact
    warmup: NonNegativeInt = 5  # untimed inferences before them
    batch_size: PositiveInt = 32
    kernel_path_samples: NonNegativeInt = 500  # int8 files also through a second kernel path (0: off)
    allow_modified: bool = False  # validate files that differ from their manifest record (recorded)
    baseline: str | None = None  # a previous report.json (or its directory)
    latency_from: str | list[str] = []  # LiteRT benchmark_model logs from a real device
    device: str | None = None  # the device those logs come from
    input_range: str | list[float] | tuple[float, float] | None = None  # .npy/.npz values meaning pixel 0 and 255
    executor: _choice(ExecutorName) = ExecutorName.LOCAL  # type: ignore[valid-type]
    address: str | None = None  # executor ray: the cluster (None: a local Ray for the run)
    workers: PositiveInt | None = None  # executor ray: shard tasks in flight (None: CPUs / threads)
    skip_bad_images: bool | None = None  # None: the executor's default (local: stop; ray: fail the image alone)
    expect_accuracy: Fraction | None = None  # the contract check: the reference's top-1 accuracy on labelled data
    contain: bool = True  # each artifact's runtime in a process of its own (policy [limits]); False: in this one

    @property
    def logs(self) -> list[str]:
        """``latency_from`` as a list (TOML allows one string)."""
        return [self.latency_from] if isinstance(self.latency_from, str) else list(self.latency_from)


def default(name: str) -> Any:
    """The default of the option ``name`` (for the CLI's arguments)."""
    return ValidateOptions.model_fields[name].default

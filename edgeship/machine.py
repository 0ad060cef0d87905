"""Where a measurement was made: CPU model, the instruction-set features that select int8 kernels, OS, Python.

A latency figure means little without its machine: the same int8 model can run through four different 8-bit
multiply instructions depending on the CPU, and which one decides whether int8 is faster than float at all.
:func:`describe_machine` reads what it can, never raises, and says ``"unknown"`` for what it cannot.

Sources:

- Linux: ``/proc/cpuinfo``: ``model name`` and the ``flags`` line on x86; ``Features`` on arm64, whose model
  comes from ``CPU implementer``/``CPU part`` when the kernel prints no ``model name``.
- macOS: ``sysctl`` (a subprocess, with a timeout): ``machdep.cpu.brand_string``; ``machdep.cpu.features`` and
  ``machdep.cpu.leaf7_features`` on Intel; ``hw.optional.neon``, ``hw.optional.arm.FEAT_DotProd`` and
  ``hw.optional.arm.FEAT_I8MM`` on Apple silicon.
- Elsewhere (Windows): ``platform.processor()`` for the model, no features, so the kernel family is "unknown".

Only the int8-relevant features are kept (:data:`INT8_FEATURES`, in this order):

- x86: ``sse4_1``, ``avx2``, ``avx512f``, ``avx512bw``, ``avx512_vnni``, ``avx_vnni``, ``amx_int8``,
  ``amx_tile``, ``avx512_bf16`` (the last is recorded for the reader; it selects bf16, not int8, kernels).
- arm64: ``asimd`` (NEON; ``neon`` is read as ``asimd``), ``asimddp`` (dot product), ``i8mm``, ``sve`` (recorded;
  it does not change the family).

:func:`kernel_family` maps them to one :class:`KernelFamily`: the best 8-bit multiply the CPU offers, which is
what ONNX Runtime's MLAS and LiteRT's XNNPACK dispatch on.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
SYSCTL_TIMEOUT_S = 5.0
UNKNOWN = "unknown"
_WHITESPACE = re.compile(r"\s+")

INT8_FEATURES: dict[str, tuple[str, ...]] = {
    "x86": ("sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile",
            "avx512_bf16"),
    "arm64": ("asimd", "asimddp", "i8mm", "sve"),
}

_ARCH_FAMILIES = {"x86_64": "x86", "amd64": "x86", "x64": "x86", "i386": "x86", "i686": "x86", "x86": "x86",
                  "aarch64": "arm64", "arm64": "arm64", "armv8": "arm64"}
# Spellings of the same feature elsewhere (macOS sysctl, 32-bit ARM kernels) -> the Linux name.
_ALIASES = {"neon": "asimd", "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "avx512bf16": "avx512_bf16",
            "amxint8": "amx_int8", "amxtile": "amx_tile"}
# CPU implementer and part codes (Arm ARM, MIDR_EL1) of common arm64 hosts, for kernels that print no model name.
_ARM_IMPLEMENTERS = {0x41: "ARM", 0x42: "Broadcom", 0x48: "HiSilicon", 0x4E: "NVIDIA", 0x51: "Qualcomm",
                     0x61: "Apple", 0xC0: "Ampere"}
_ARM_PARTS = {0xD08: "Cortex-A72", 0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1", 0xD40: "Neoverse-V1",
              0xD49: "Neoverse-N2", 0xD4F: "Neoverse-V2", 0xD8E: "Neoverse-N3", 0xD84: "Neoverse-V3"}


class KernelFamily(str, Enum):
    """The int8 kernel family a CPU selects; each member's ``__doc__`` names the 8-bit multiply it implies."""

    def __new__(cls, value: str, doc: str) -> "KernelFamily":
        member = str.__new__(cls, value)
        member._value_ = value
        member.__doc__ = doc
        return member

    X86_AMX = "x86 AMX", "TDPBUSD/TDPBSSD: 8-bit tile matrix multiply, groups of four products summed into int32 tiles."
    X86_AVX512_VNNI = "x86 AVX-512 VNNI", "VPDPBUSD on 512-bit registers: u8×s8, four products summed into int32."
    X86_AVX_VNNI = "x86 AVX-VNNI", "VEX VPDPBUSD on 256-bit registers: u8×s8, four products summed into int32."
    X86_AVX512 = ("x86 AVX-512 (no VNNI)", "VPMADDUBSW on 512-bit registers: u8×s8 pair sums saturate in 16 bits, "
                  "then VPMADDWD to int32.")
    X86_AVX2 = ("x86 AVX2 (no VNNI)", "VPMADDUBSW on 256-bit registers: u8×s8 pair sums saturate in 16 bits "
                "(hence ONNX Runtime's 7-bit reduce_range), then VPMADDWD to int32.")
    X86_SSE41 = "x86 SSE4.1", "PMADDUBSW on 128-bit registers: u8×s8 pair sums saturate in 16 bits."
    ARM64_I8MM = "arm64 i8mm", "SMMLA/UMMLA/USMMLA: a 2×8 by 8×2 int8 matrix multiply into four int32 lanes."
    ARM64_DOTPROD = "arm64 dot-product", "SDOT/UDOT: four 8-bit products summed into each int32 lane."
    ARM64_NEON = "arm64 NEON", "SMULL/SMLAL: 8-bit products widened to int16, pairwise-added into int32 (SADALP)."
    UNKNOWN = "unknown", "The features could not be read, or edgeship knows no int8 SIMD path for this architecture."

    def __str__(self) -> str:
        return self.value


def arch_family(arch: str) -> str:
    """``platform.machine()`` (``x86_64``, ``AMD64``, ``aarch64``, ``arm64``) -> ``"x86"``, ``"arm64"`` or ``""``."""
    return _ARCH_FAMILIES.get(arch.strip().lower(), "")


def normalise_flags(flags: set[str] | list[str] | tuple[str, ...]) -> set[str]:
    """Lower case, ``.`` as ``_`` (macOS ``SSE4.1``), and macOS/32-bit ARM spellings as Linux's."""
    out = set()
    for f in flags:
        name = f.strip().lower().replace(".", "_")
        out.add(_ALIASES.get(name, name))
    return out


def int8_features(arch: str, flags: set[str]) -> tuple[str, ...]:
    """The :data:`INT8_FEATURES` of ``arch`` that ``flags`` holds, in the list's order."""
    present = normalise_flags(flags)
    return tuple(f for f in INT8_FEATURES.get(arch_family(arch), ()) if f in present)


def kernel_family(arch: str, flags: set[str]) -> KernelFamily:
    """The best int8 multiply ``flags`` (Linux spellings, any superset) offers on ``arch``.

    x86: AMX needs ``amx_int8`` and ``amx_tile``; AVX-512 without VNNI needs ``avx512bw`` (byte instructions; an
    ``avx512f``-only CPU runs the AVX2 kernels). arm64: i8mm, then dot product, then plain NEON (``asimd``)."""
    f, family = normalise_flags(flags), arch_family(arch)
    return next((k for a, need, k in _FAMILY_RULES if a == family and need <= f), KernelFamily.UNKNOWN)


#: Best first: the first row whose features the CPU has names its family (policy as data).
_FAMILY_RULES: tuple[tuple[str, frozenset[str], KernelFamily], ...] = tuple(
    (arch, frozenset(need), family) for arch, need, family in (
        ("x86", {"amx_int8", "amx_tile"}, KernelFamily.X86_AMX),
        ("x86", {"avx512_vnni"}, KernelFamily.X86_AVX512_VNNI),
        ("x86", {"avx_vnni"}, KernelFamily.X86_AVX_VNNI),
        ("x86", {"avx512bw"}, KernelFamily.X86_AVX512),
        ("x86", {"avx2"}, KernelFamily.X86_AVX2),
        ("x86", {"sse4_1"}, KernelFamily.X86_SSE41),
        ("arm64", {"i8mm"}, KernelFamily.ARM64_I8MM),
        ("arm64", {"asimddp"}, KernelFamily.ARM64_DOTPROD),
        ("arm64", {"asimd"}, KernelFamily.ARM64_NEON),
    ))


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """``/proc/cpuinfo`` text -> (CPU model, feature flags), from the first processor that lists them.

    The model is ``model name`` (x86, some arm64 kernels), else the arm64 implementer and part decoded (for
    example "ARM Neoverse-N1"), else ``Hardware``, else "unknown"; flags are the ``flags`` (x86) or ``Features``
    (arm64) line, normalised (:func:`normalise_flags`)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    model = fields.get("model name") or _arm_model(fields.get("cpu implementer"), fields.get("cpu part")) \
        or fields.get("hardware") or UNKNOWN
    flags = fields.get("flags") or fields.get("features") or ""
    return _WHITESPACE.sub(" ", model), normalise_flags(flags.split())


def _arm_model(implementer: str | None, part: str | None) -> str:
    """MIDR codes -> "ARM Neoverse-N1"; unknown codes in hex ("Ampere part 0xac3"); "" without both."""
    try:
        imp, prt = int(implementer or "", 0), int(part or "", 0)
    except ValueError:
        return ""
    known = _ARM_PARTS.get(prt) if imp == 0x41 else None  # part numbers are per implementer
    return f"{_ARM_IMPLEMENTERS.get(imp, f'implementer {imp:#x}')} {known or f'part {prt:#x}'}"


def parse_sysctl(text: str) -> dict[str, str]:
    """``sysctl key ...`` output (``key: value`` lines) -> {key: value}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def sysctl_cpu(values: dict[str, str]) -> tuple[str, set[str]]:
    """macOS sysctl values -> (CPU model, feature flags in Linux spelling)."""
    flags = set((values.get("machdep.cpu.features", "") + " " + values.get("machdep.cpu.leaf7_features", "")).split())
    for key, name in (("hw.optional.neon", "asimd"), ("hw.optional.arm.FEAT_DotProd", "asimddp"),
                      ("hw.optional.arm.FEAT_I8MM", "i8mm")):
        if values.get(key) == "1":
            flags.add(name)
    return values.get("machdep.cpu.brand_string") or UNKNOWN, normalise_flags(flags)


_SYSCTL_KEYS = ("machdep.cpu.brand_string", "machdep.cpu.features", "machdep.cpu.leaf7_features",
                "hw.optional.neon", "hw.optional.arm.FEAT_DotProd", "hw.optional.arm.FEAT_I8MM")


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    architecture: str  # platform.machine(): "x86_64", "aarch64", "arm64", "AMD64"
    cores: int | None  # logical CPUs (os.cpu_count()); None if unknown
    isa: tuple[str, ...]  # the INT8_FEATURES present, in that list's order
    os: str  # platform.platform()
    python: str  # platform.python_version()

    @property
    def int8_kernel_family(self) -> str:
        return kernel_family(self.architecture, set(self.isa)).value

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_model": self.cpu_model, "architecture": self.architecture, "cores": self.cores,
                "isa": list(self.isa), "int8_kernel_family": self.int8_kernel_family, "os": self.os,
                "python": self.python}

    def summary(self) -> str:
        """``"AMD EPYC, x86_64, 2 cores, x86 AVX2 (no VNNI)"``."""
        cores = f"{self.cores} cores" if self.cores else "? cores"
        return f"{self.cpu_model}, {self.architecture}, {cores}, {self.int8_kernel_family}"


@functools.cache
def describe_machine() -> Machine:
    """This machine, read once per process (see the module docstring); never raises."""
    return probe()


def probe(system: str | None = None, cpuinfo: Path = CPUINFO) -> Machine:
    """:func:`describe_machine` without the cache; ``system`` (``platform.system()``) and ``cpuinfo`` for tests."""
    system = platform.system() if system is None else system
    arch = _safe(platform.machine) or UNKNOWN
    model, flags = UNKNOWN, set[str]()
    try:
        if system == "Linux":
            model, flags = parse_cpuinfo(cpuinfo.read_text(encoding="utf-8", errors="replace"))
        elif system == "Darwin":
            model, flags = sysctl_cpu(_sysctl(_SYSCTL_KEYS))
        else:  # Windows: "Intel64 Family 6 Model 85 Stepping 7, GenuineIntel" (elsewhere it is the arch)
            model = _safe(platform.processor) or UNKNOWN
    except Exception:  # an odd /proc or sysctl must not cost the report its results
        model, flags = UNKNOWN, set()
    return Machine(cpu_model=model, architecture=arch, cores=os.cpu_count(), isa=int8_features(arch, flags),
                   os=_safe(platform.platform) or UNKNOWN, python=platform.python_version())


def _sysctl(keys: tuple[str, ...]) -> dict[str, str]:
    """Values of the keys that exist (an unknown key is an error line on stderr, the others still print)."""
    import subprocess

    try:
        done = subprocess.run(["sysctl", *keys], capture_output=True, text=True, timeout=SYSCTL_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_sysctl(done.stdout)


def _safe(fn: Any) -> str:
    try:
        return str(fn()).strip()
    except Exception:
        return ""

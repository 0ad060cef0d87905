"""edgeship.machine on made-up CPUs (every kernel family, /proc/cpuinfo and sysctl text), and on this machine
without asserting which ISA it has."""

from __future__ import annotations

import json
import subprocess

import pytest

from edgeship import machine as m
from edgeship.machine import INT8_FEATURES, KernelFamily, Machine, describe_machine, kernel_family

# The flags a real CPU of each generation reports (abridged): each family is chosen by its best feature.
_X86_BASE = {"fpu", "sse", "sse2", "ssse3", "sse4_1", "sse4_2", "popcnt", "avx", "fma"}
_X86_AVX2 = _X86_BASE | {"avx2", "bmi2"}
_X86_SKYLAKE_X = _X86_AVX2 | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}
_X86_CASCADE_LAKE = _X86_SKYLAKE_X | {"avx512_vnni"}
_X86_SAPPHIRE_RAPIDS = _X86_CASCADE_LAKE | {"avx_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
_ARM_A72 = {"fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"}
_ARM_N1 = _ARM_A72 | {"atomics", "fphp", "asimdhp", "asimdrdm", "lrcpc", "dcpop", "asimddp"}
_ARM_V1 = _ARM_N1 | {"sve", "i8mm", "bf16", "svei8mm"}

FAMILY_CASES = [
    ("x86_64", _X86_SAPPHIRE_RAPIDS, KernelFamily.X86_AMX),
    ("x86_64", _X86_CASCADE_LAKE, KernelFamily.X86_AVX512_VNNI),
    ("x86_64", _X86_AVX2 | {"avx_vnni"}, KernelFamily.X86_AVX_VNNI),  # Alder Lake: VNNI without AVX-512
    ("x86_64", _X86_SKYLAKE_X, KernelFamily.X86_AVX512),
    ("AMD64", _X86_AVX2, KernelFamily.X86_AVX2),  # Windows spells the architecture AMD64
    ("x86_64", _X86_AVX2 | {"avx512f"}, KernelFamily.X86_AVX2),  # AVX-512F without BW has no byte multiply
    ("x86_64", _X86_BASE, KernelFamily.X86_SSE41),
    ("x86_64", {"fpu", "sse", "sse2"}, KernelFamily.UNKNOWN),
    ("aarch64", _ARM_V1, KernelFamily.ARM64_I8MM),
    ("arm64", _ARM_N1, KernelFamily.ARM64_DOTPROD),
    ("aarch64", _ARM_A72, KernelFamily.ARM64_NEON),
    ("aarch64", set(), KernelFamily.UNKNOWN),  # features unreadable
    ("riscv64", {"avx2", "asimddp"}, KernelFamily.UNKNOWN),  # flags of another architecture do not count
]


@pytest.mark.parametrize("arch, flags, family", FAMILY_CASES, ids=[str(c[2]) + "-" + c[0] for c in FAMILY_CASES])
def test_kernel_family(arch, flags, family):
    assert kernel_family(arch, flags) is family


def test_every_family_is_tested_and_names_its_instruction():
    assert {c[2] for c in FAMILY_CASES} == set(KernelFamily)
    for f in KernelFamily:
        assert f.__doc__ and f.__doc__ != KernelFamily.__doc__ and "\n" not in f.__doc__, f
    assert "VPMADDUBSW" in KernelFamily.X86_AVX2.__doc__ and "16 bits" in KernelFamily.X86_AVX2.__doc__
    assert "VPDPBUSD" in KernelFamily.X86_AVX512_VNNI.__doc__ and "int32" in KernelFamily.X86_AVX512_VNNI.__doc__
    assert "SDOT" in KernelFamily.ARM64_DOTPROD.__doc__ and "SMMLA" in KernelFamily.ARM64_I8MM.__doc__
    assert KernelFamily("x86 AVX2 (no VNNI)") is KernelFamily.X86_AVX2 and str(KernelFamily.X86_AMX) == "x86 AMX"


def test_isa_keeps_only_the_int8_features_in_list_order():
    assert m.int8_features("x86_64", _X86_SAPPHIRE_RAPIDS) == (
        "sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "avx512_bf16")
    assert m.int8_features("aarch64", _ARM_V1) == ("asimd", "asimddp", "i8mm", "sve")
    assert m.int8_features("aarch64", {"neon"}) == ("asimd",)  # 32-bit kernels' spelling
    assert m.int8_features("x86_64", _ARM_V1) == () and m.int8_features("sparc", _X86_AVX2) == ()


_CPUINFO_X86 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2 sha_ni
bugs\t\t: sysret_ss_attrs

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2 sha_ni
"""

_CPUINFO_GRAVITON3 = """\
processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm bf16
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


def test_parse_cpuinfo_x86():
    model, flags = m.parse_cpuinfo(_CPUINFO_X86)
    assert model == "AMD EPYC 7B13 64-Core Processor"
    assert {"sse4_1", "avx2", "sha_ni"} <= flags and "sysret_ss_attrs" not in flags
    assert kernel_family("x86_64", flags) is KernelFamily.X86_AVX2


def test_parse_cpuinfo_arm64_decodes_the_part_when_there_is_no_model_name():
    model, flags = m.parse_cpuinfo(_CPUINFO_GRAVITON3)
    assert model == "ARM Neoverse-V1"
    assert m.int8_features("aarch64", flags) == ("asimd", "asimddp", "i8mm", "sve")
    assert kernel_family("aarch64", flags) is KernelFamily.ARM64_I8MM
    unknown_part = _CPUINFO_GRAVITON3.replace("0x41", "0xc0").replace("0xd40", "0xac3")
    assert m.parse_cpuinfo(unknown_part)[0] == "Ampere part 0xac3"


@pytest.mark.parametrize("text", ["", "garbage\n\x00\xff", "model name\t:\nflags\t:\n", "CPU part\t: zz\n"])
def test_parse_cpuinfo_never_raises(text):
    model, flags = m.parse_cpuinfo(text)
    assert model == "unknown" and flags == set()


def test_sysctl_apple_silicon_and_intel_mac():
    arm = m.parse_sysctl("machdep.cpu.brand_string: Apple M2\nhw.optional.neon: 1\n"
                         "hw.optional.arm.FEAT_DotProd: 1\nhw.optional.arm.FEAT_I8MM: 1\n")
    model, flags = m.sysctl_cpu(arm)
    assert model == "Apple M2" and kernel_family("arm64", flags) is KernelFamily.ARM64_I8MM
    assert kernel_family("arm64", m.sysctl_cpu({**arm, "hw.optional.arm.FEAT_I8MM": "0"})[1]) \
        is KernelFamily.ARM64_DOTPROD
    intel = m.parse_sysctl("machdep.cpu.brand_string: Intel(R) Core(TM) i7-1068NG7 CPU @ 2.30GHz\n"
                           "machdep.cpu.features: FPU SSE SSE2 SSSE3 SSE4.1 SSE4.2 AVX1.0\n"
                           "machdep.cpu.leaf7_features: AVX2 AVX512F AVX512BW AVX512VNNI\n")
    model, flags = m.sysctl_cpu(intel)
    assert model.startswith("Intel(R) Core(TM) i7")
    assert m.int8_features("x86_64", flags) == ("sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni")
    assert kernel_family("x86_64", flags) is KernelFamily.X86_AVX512_VNNI


def test_probe_falls_back_to_unknown_without_raising(tmp_path, monkeypatch):
    linux = m.probe(system="Linux", cpuinfo=tmp_path / "no-cpuinfo")
    assert linux.cpu_model == "unknown" and linux.isa == () and linux.int8_kernel_family == "unknown"

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], m.SYSCTL_TIMEOUT_S)

    monkeypatch.setattr(subprocess, "run", hang)
    mac = m.probe(system="Darwin")
    assert mac.cpu_model == "unknown" and mac.isa == () and mac.int8_kernel_family == "unknown"


def test_machine_summary_and_dict():
    machine = Machine(cpu_model="AMD EPYC", architecture="x86_64", cores=2, isa=("sse4_1", "avx2"),
                      os="Linux-6.18-x86_64", python="3.11.7")
    assert machine.summary() == "AMD EPYC, x86_64, 2 cores, x86 AVX2 (no VNNI)"
    assert machine.to_dict() == {"cpu_model": "AMD EPYC", "architecture": "x86_64", "cores": 2,
                                 "isa": ["sse4_1", "avx2"], "int8_kernel_family": "x86 AVX2 (no VNNI)",
                                 "os": "Linux-6.18-x86_64", "python": "3.11.7"}
    with pytest.raises(AttributeError):
        machine.cores = 4  # frozen


def test_describe_machine_on_this_machine():
    """Sane types whatever this CPU is: nothing here may assert its ISA."""
    import os
    import platform

    here = describe_machine()
    assert describe_machine() is here  # read once per process
    assert isinstance(here.cpu_model, str) and here.cpu_model
    assert here.architecture == platform.machine() and here.cores == os.cpu_count()
    assert here.python == platform.python_version() and here.os == platform.platform()
    assert isinstance(here.isa, tuple)
    assert set(here.isa) <= set(INT8_FEATURES.get(m.arch_family(here.architecture), ()))
    assert here.int8_kernel_family in {f.value for f in KernelFamily}
    d = json.loads(json.dumps(here.to_dict()))
    assert d == here.to_dict() and list(d) == ["cpu_model", "architecture", "cores", "isa", "int8_kernel_family",
                                               "os", "python"]
    assert here.summary().startswith(here.cpu_model) and here.summary().endswith(here.int8_kernel_family)

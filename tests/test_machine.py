"""The machine report `make` prints: what it says follows the CPU and the forced choices."""

from __future__ import annotations

import os
import subprocess
import sys

from lenslib.core import machine, native_kernel


def test_cpu_features_read_the_flags_line():
    text = "processor : 0\nmodel name : Some CPU\nflags : fpu sse4_2 avx avx2 fma\nflags : avx512f\n"
    got = machine.cpu_features(text)
    assert got["avx2"] and got["fma"] and not got["avx512f"]  # the first flags line only
    assert set(got) == set(machine.FEATURES)
    assert not any(machine.cpu_features("").values())


def test_the_report_follows_forced_choices(monkeypatch):
    monkeypatch.setenv("LENSLIB_MATMUL", "torch")
    monkeypatch.setenv("LENSLIB_KERNEL", "torch")
    report = machine.describe()
    assert (report.matmul, report.matmul_why, report.kernel, report.kernel_why) == ("torch.mm", "asked for", "torch", "asked for")
    assert "LENSLIB_MATMUL=torch" in str(report) and "LENSLIB_KERNEL=torch" in str(report)
    monkeypatch.setenv("LENSLIB_KERNEL", "auto")
    monkeypatch.setenv("LENSLIB_KERNEL_ISA", "avx2" if native_kernel.X86 else "native")
    report = machine.describe()
    assert report.kernel == "C kernel" and report.kernel_flags[:2] == tuple(native_kernel.build_flags()[:2])
    assert report.to_dict()["kernel_isa"] == report.kernel_isa


def test_python_m_prints_one_report(monkeypatch):
    for name in machine.LIMITS:
        monkeypatch.delenv(name, raising=False)
    # timeout: a hang guard (the report may compile the C kernel once, seconds), not a target
    out = subprocess.run([sys.executable, "-m", "lenslib.core.machine"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "lenslib on this machine" and len(lines) == 6  # no limits set here
    assert lines[1].lstrip().startswith("CPU") and "matmul" in out.stdout and "lens kernel" in out.stdout


def test_limits_are_reported_and_reach_torch():
    env = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = "from lenslib.core import machine; r = machine.describe(build_kernel=False); print(r.torch_capability, r.limits)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,  # hang guard
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "DEFAULT" and "'ONEDNN_MAX_CPU_ISA': 'AVX2'" in out.stdout

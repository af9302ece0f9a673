"""What lenslib found on this machine: the CPU, the matmul library and the lens kernel it chose.

``make`` prints this once (``python -m lenslib.core.machine``) before it provisions the models, so
that a slow or failing set-up can be diagnosed from its log: the CPU's vector extensions decide
which kernels run (torch's vectorised ops, oneDNN's matmuls, the C kernel's build), and with them
how fast the lens is and how its float32 results round.

>>> report = describe(build_kernel=False)
>>> report.matmul in ("onednn", "torch.mm"), report.kernel_isa in ("native", "avx2", "baseline")
(True, True)
>>> cpu_features("flags : fpu sse2 avx avx2 fma")["avx2"], cpu_features("flags : fpu sse2")["avx512f"]
(True, False)
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from lenslib.core import native_kernel, onednn
from lenslib.errors import KernelBuildError

# Environment variables that hold a library below what the CPU offers (make test-kernels sets them
# to run as a CPU without AVX-512 would): torch's own kernels, oneDNN, MKL.
LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile")


@dataclass(frozen=True)
class MachineReport:
    """The machine as the lens sees it.

    Attributes:
        cpu: the CPU's model name (``/proc/cpuinfo``), or the platform's processor string.
        logical_cpus: ``os.cpu_count()``; ``torch_threads``: ``torch.get_num_threads()``.
        features: which of :data:`FEATURES` the CPU reports (x86 flags; empty elsewhere).
        torch_capability: the vector width torch's own CPU kernels dispatch to
            (``torch.backends.cpu.get_cpu_capability()``: ``AVX512``, ``AVX2``, ``DEFAULT``...).
        matmul: the library for the lens's float32 tiles and its forward's linear layers,
            ``"onednn"`` or ``"torch.mm"`` (MKL's sgemm in torch's CPU build);
            ``matmul_why``: why not oneDNN, when not.
        matmul_mode: ``LENSLIB_MATMUL`` (``auto``, ``onednn``, ``torch``).
        kernel: ``"C kernel"`` or ``"torch"`` for the tile statistics; ``kernel_why``: why not
            the C kernel, when not; ``kernel_mode``: ``LENSLIB_KERNEL``.
        kernel_isa: ``LENSLIB_KERNEL_ISA``; ``kernel_flags``: the compiler flags of its build
            (empty when it was not built); ``kernel_openmp``: whether it splits positions over
            OpenMP threads.
    """

    cpu: str
    logical_cpus: int
    torch_threads: int
    features: dict[str, bool]
    torch_capability: str
    matmul: str
    matmul_why: Optional[str]
    matmul_mode: str
    kernel: str
    kernel_why: Optional[str]
    kernel_mode: str
    kernel_isa: str
    kernel_flags: tuple[str, ...]
    kernel_openmp: Optional[bool]
    limits: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        have = [name for name, on in self.features.items() if on]
        lacking = [name for name, on in self.features.items() if not on]
        matmul = self.matmul + (f" ({self.matmul_why})" if self.matmul_why else "")
        if self.kernel == "C kernel":
            threads = "OpenMP threads" if self.kernel_openmp else "Python threads"
            kernel = f"C kernel, {self.kernel_isa} build over {threads}: {' '.join(self.kernel_flags)}"
        else:
            kernel = f"torch ({self.kernel_why})"
        return "\n".join([
            "lenslib on this machine",
            f"  CPU          {self.cpu}; {self.logical_cpus} logical CPUs, torch uses {self.torch_threads} threads",
            f"  features     {' '.join(have) or '(none of the x86 vector extensions listed)'}"
            + (f"; lacks {' '.join(lacking)}" if lacking else ""),
            f"  torch        {torch.__version__}, CPU kernels at {self.torch_capability}",
            f"  matmul       {matmul}  [LENSLIB_MATMUL={self.matmul_mode}]",
            f"  lens kernel  {kernel}  [LENSLIB_KERNEL={self.kernel_mode}, LENSLIB_KERNEL_ISA={self.kernel_isa}]",
        ] + ([f"  held to      {' '.join(f'{k}={v}' for k, v in self.limits.items())}"] if self.limits else []))


def cpu_features(cpuinfo: Optional[str] = None) -> dict[str, bool]:
    """Which of :data:`FEATURES` the first ``flags`` line of ``cpuinfo`` (default: this
    machine's ``/proc/cpuinfo``) lists; all False where there is none (not Linux, not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    return {name: name in flags for name in FEATURES}


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe(build_kernel: bool = True) -> MachineReport:
    """What :class:`MachineReport` says, found now.

    Args:
        build_kernel: build the C kernel if it is not in the cache yet (about a second), so its
            flags can be shown; False reports it unbuilt (``kernel_flags`` empty).
    """
    sample_rows, sample_W_U = torch.empty(2, 8), torch.empty(16, 8).T  # float32, lm_head layout
    matmul_why = None
    if onednn.mode() == "torch":
        matmul_why = "asked for"
    else:
        matmul_why = onednn.onednn_unavailable_reason(sample_rows, sample_W_U)
    matmul = "torch.mm" if matmul_why else "onednn"
    kernel, kernel_why, flags, openmp = "torch", None, (), None
    if native_kernel.mode() == "torch":
        kernel_why = "asked for"
    elif build_kernel:
        try:
            info = native_kernel.built()
            kernel, flags, openmp = "C kernel", tuple(info["flags"]), info["openmp"]
        except KernelBuildError as error:
            kernel_why = f"the C kernel could not be built: {str(error).splitlines()[0]}"
    else:
        kernel, flags = "C kernel", tuple(native_kernel.build_flags())
    return MachineReport(
        cpu=cpu_model(),
        logical_cpus=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        features=cpu_features(),
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        matmul=matmul,
        matmul_why=matmul_why,
        matmul_mode=onednn.mode(),
        kernel=kernel,
        kernel_why=kernel_why,
        kernel_mode=native_kernel.mode(),
        kernel_isa=native_kernel.isa(),
        kernel_flags=flags,
        kernel_openmp=openmp,
        limits={name: os.environ[name] for name in LIMITS if os.environ.get(name)},
    )


if __name__ == "__main__":
    print(describe())

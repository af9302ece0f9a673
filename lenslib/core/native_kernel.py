"""The fused CPU tile update (``kernels/lens_tile.c``): built once per machine, loaded with ctypes.

The plain-torch update (:func:`lenslib.core.tile_update.torch_tile_update`) makes about ten passes
over each tile, with temporaries, and costs more than the unembedding matmul itself. The C kernel
does the same update in one pass over each row where the row's running max holds (a second pass
only where a tile holds a larger logit), so it reads each logit about once; ``python -m bench
lens`` measures both on the machine at hand.

The first use compiles it with the system C compiler (``$CC``, else ``cc``) into
``<cache>/kernels/``, named by a hash of the source, the flags, the compiler and the CPU, and
renamed into place atomically. Without a compiler, or with ``LENSLIB_KERNEL=torch``, the lens
uses the torch update and says so once. ``LENSLIB_KERNEL=native`` makes a failed build an error.

``LENSLIB_KERNEL_ISA`` picks the instruction set the kernel is compiled for: ``native`` (the
default: ``-march=native``, 512-bit vectors where the CPU has AVX-512), or, on x86-64 only,
``avx2`` (``-march=x86-64-v3``: AVX2 and FMA, no AVX-512, as on many laptops and cloud VMs) or
``baseline`` (``-march=x86-64``: SSE2). Each is its own file in the cache. The last two run the
kernel as a CPU without AVX-512 would, so the tests can be run that way on any x86 machine
(``make test-kernels``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslib.core.files import cache_root
from lenslib.core.tile_update import RunningStats, merge_topk
from lenslib.errors import InputError, KernelBuildError

COMMON_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
ISA_FLAGS = {  # LENSLIB_KERNEL_ISA -> the -march flags it compiles with
    # On x86, gcc keeps to 256-bit vectors even where -march=native offers AVX-512; the kernel's
    # loops measured faster at 512 bits on an AVX-512 CPU (bench/). A no-op on
    # CPUs without AVX-512; other architectures do not know the flag.
    "native": ["-march=native"] + (["-mprefer-vector-width=512"] if X86 else []),
    "avx2": ["-march=x86-64-v3"],  # AVX, AVX2, FMA, BMI: no AVX-512
    "baseline": ["-march=x86-64"],  # SSE2 only
}
FLAGS = COMMON_FLAGS[:1] + ISA_FLAGS["native"] + COMMON_FLAGS[1:]  # the default build's flags
OPENMP_FLAGS = ["-fopenmp"]  # tried first; a compiler without OpenMP builds the plain kernel
MAX_K = 64  # the kernel keeps top-k by insertion; larger k goes through torch.topk
_SOURCE = "lens_tile.c"



def mode() -> str:
    """``LENSLIB_KERNEL``: ``auto`` (default), ``native`` or ``torch``."""
    value = os.environ.get("LENSLIB_KERNEL", "auto").strip().lower() or "auto"
    if value not in ("auto", "native", "torch"):
        raise InputError(f"LENSLIB_KERNEL must be auto, native or torch; got {value!r}")
    return value


def isa() -> str:
    """``LENSLIB_KERNEL_ISA``: ``native`` (default), ``avx2`` or ``baseline`` (the last two on
    x86-64 only)."""
    value = os.environ.get("LENSLIB_KERNEL_ISA", "native").strip().lower() or "native"
    if value not in ISA_FLAGS:
        raise InputError(f"LENSLIB_KERNEL_ISA must be one of {', '.join(ISA_FLAGS)}; got {value!r}")
    if value != "native" and not X86:
        raise InputError(
            f"LENSLIB_KERNEL_ISA={value} names an x86-64 instruction set, but this machine is "
            f"{platform.machine()}: leave it unset (native)"
        )
    return value


def build_flags(isa_name: Optional[str] = None) -> list[str]:
    """The compiler flags for the kernel for ``isa_name`` (default: the current
    ``LENSLIB_KERNEL_ISA``); OpenMP is added on top where the compiler has it."""
    return COMMON_FLAGS[:1] + ISA_FLAGS[isa_name or isa()] + COMMON_FLAGS[1:]


def native_tile_update(
    z: Float[Tensor, "pos layer cols"],
    col0: int,
    target_id: Int[Tensor, "pos"],
    target_logit: Float[Tensor, "pos layer"],
    state: RunningStats,
) -> None:
    """:func:`~lenslib.core.tile_update.torch_tile_update`, fused in C; CPU float32, contiguous.

    Positions are split over torch's OpenMP threads when the kernel was built with OpenMP
    (torch's wheels bundle ``libgomp.so.1``, so the kernel shares torch's thread pool), else
    over ``torch.get_num_threads()`` Python threads (ctypes releases the GIL).
    """
    library = load()
    n_pos, n_layer, cols = z.shape
    k = state.top_val.shape[-1]
    if k > MAX_K:  # top-k by torch, everything else by the kernel
        merge_topk(z, col0, state)
        k_kernel = 0
    else:
        k_kernel = k
    tensors = (z, target_id, target_logit, state.top_val, state.top_id, state.row_max,
               state.sum_w, state.sum_wz, state.sum_fz, state.above, state.target_val)
    for tensor in tensors:
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise InputError("native_tile_update needs contiguous CPU tensors")
    if z.dtype != torch.float32 or target_logit.dtype != torch.float32:
        raise InputError("native_tile_update needs float32 logits")

    def at(tensor: Tensor, offset: int) -> int:  # address of element `offset`
        return tensor.data_ptr() + offset * tensor.element_size()

    def run(lo: int, hi: int, scratch: Tensor) -> None:
        row = lo * n_layer
        library.lens_tile_update(
            at(z, row * cols), hi - lo, n_layer, cols, col0,
            at(target_id, lo), at(target_logit, row), k_kernel,
            at(state.top_val, row * k), at(state.top_id, row * k), at(state.row_max, row),
            at(state.sum_w, row), at(state.sum_wz, row), at(state.sum_fz, row),
            at(state.above, row), at(state.target_val, row), at(scratch, 0),
        )

    if library.lens_tile_openmp():  # the kernel splits positions over torch's OpenMP threads
        run(0, n_pos, torch.empty(library.lens_tile_max_threads(), cols))
        return
    n_threads = max(1, min(torch.get_num_threads(), n_pos))
    bounds = [n_pos * i // n_threads for i in range(n_threads + 1)]
    scratch = torch.empty(n_threads, cols)
    jobs = [(bounds[i], bounds[i + 1], scratch[i]) for i in range(n_threads)]
    if n_threads == 1:
        run(*jobs[0])
    else:
        list(_pool(n_threads).map(lambda job: run(*job), jobs))


@lru_cache(maxsize=None)
def _pool(n_threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n_threads, thread_name_prefix="lenslib-kernel")


def load() -> ctypes.CDLL:
    """The compiled kernel for the current ``LENSLIB_KERNEL_ISA``, built on first use (one per
    instruction set). Raises KernelBuildError if it cannot be built."""
    return _load(isa())


load.cache_clear = lambda: _load.cache_clear()  # forget the built libraries (tests change $CC)


def built() -> dict:
    """What :func:`load` built: ``{"isa", "flags", "path", "openmp"}`` (building it if needed).

    Raises:
        KernelBuildError: it cannot be built.
    """
    library = load()
    return {"isa": isa(), "flags": library.lenslib_flags, "path": library._name,
            "openmp": bool(library.lens_tile_openmp())}


@lru_cache(maxsize=None)
def _load(isa_name: str) -> ctypes.CDLL:  # one library per instruction set
    errors = []
    flags = build_flags(isa_name)
    for extra in (OPENMP_FLAGS, []):
        try:
            library = ctypes.CDLL(str(_build(flags + extra)))
            library.lenslib_flags = flags + extra
            break
        except (KernelBuildError, OSError) as error:
            errors.append(str(error))
    else:
        raise KernelBuildError("\n".join(errors))
    library.lens_tile_openmp.restype = ctypes.c_int
    library.lens_tile_max_threads.restype = ctypes.c_int
    function = library.lens_tile_update
    function.restype = None
    function.argtypes = (
        [ctypes.c_void_p] + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 2 + [ctypes.c_int64]
        + [ctypes.c_void_p] * 9
    )
    return library


def available() -> bool:
    """Whether the lens should use the C kernel: asks for it to be built (once) unless
    ``LENSLIB_KERNEL=torch``; warns once and returns False if it cannot be built."""
    if mode() == "torch":
        return False
    try:
        load()
        return True
    except KernelBuildError as error:
        if mode() == "native":
            raise
        _warn_once(str(error))
        return False


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(
        f"{message}\nlenslib falls back to plain torch for the lens statistics: the same "
        "numbers, about 2.3x slower on two CPU cores. Install a C compiler (e.g. `apt install gcc`) to get "
        "the fused kernel; set LENSLIB_KERNEL=torch to silence this.",
        RuntimeWarning,
        stacklevel=4,
    )


def _compiler() -> Optional[str]:
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(flags: list[str]) -> Path:
    source = resources.files("lenslib.core").joinpath("kernels", _SOURCE).read_bytes()
    compiler = _compiler()
    if compiler is None:
        where = f"$CC is {os.environ['CC']!r}" if os.environ.get("CC") else "tried cc, gcc, clang"
        raise KernelBuildError(f"no C compiler found ({where})")
    key = hashlib.sha256()
    for part in (source, " ".join(flags).encode(), _compiler_version(compiler), _cpu_signature()):
        key.update(part)
    target = cache_root() / "kernels" / f"lens_tile-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        src = Path(work) / _SOURCE
        src.write_bytes(source)
        out = Path(work) / target.name
        done = subprocess.run(
            [compiler, *flags, str(src), "-o", str(out), "-lm"],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise KernelBuildError(
                f"compiling lenslib's C kernel with {compiler} failed:\n{done.stderr.strip()[-2000:]}"
            )
        os.replace(out, target)  # atomic: a concurrent build writes the same bytes
    return target


def _compiler_version(compiler: str) -> bytes:
    done = subprocess.run([compiler, "--version"], capture_output=True)
    return done.stdout


def _cpu_signature() -> bytes:
    """The CPU's model and feature flags: a build for one CPU may not run on another."""
    parts = [platform.machine(), platform.processor()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name", "Features")):
                parts.append(line)
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return "\n".join(parts).encode()

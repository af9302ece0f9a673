"""How the bench measures: wall time and peak extra memory of one call, cases interleaved over
repetitions, and the machine it ran on (CPU model, load average: the machine may be shared).

Peak memory is measured here and nowhere else (:class:`PeakMemory`): on CUDA the allocator's
peak; on Linux the process's peak resident set (``VmHWM``), reset just before the call; elsewhere
the resident set sampled every 2 ms.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import platform
import re
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch


def load_average() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages (runnable processes), or None where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: str, dtype: torch.dtype) -> dict:
    """CPU, cores, threads, RAM, library versions and which paths the lens takes on this machine."""
    from importlib import metadata

    import psutil

    cpu = platform.processor() or "unknown"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    info = {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average_at_start": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformer_lens": metadata.version("transformer-lens"),
        "transformers": metadata.version("transformers"),
        "memory_method": memory_method(device),
        "lens_statistics": _statistics_path(device),
        "lens_matmul": _matmul_path(device, dtype),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    return info


def _statistics_path(device: str) -> str:
    """Which tile update the lens used: the fused C kernel or plain torch."""
    from lenslib.core import native_kernel

    if device == "cpu" and native_kernel.available():
        openmp = "OpenMP" if native_kernel.load().lens_tile_openmp() else "Python threads"
        return f"fused C kernel (lenslib/core/kernels/lens_tile.c, {openmp})"
    return "plain torch (lenslib.core.tile_update.torch_tile_update)"


def _matmul_path(device: str, dtype: torch.dtype) -> str:
    """Which library the lens's tile matmuls use for a bridge's W_U (a view of lm_head's weight)."""
    from lenslib.core.onednn import matmul_backend

    rows = torch.empty(1, 8, device=device, dtype=dtype)
    W_U = torch.empty(16, 8, device=device, dtype=dtype).T
    backend = matmul_backend(rows, W_U) if dtype == torch.float32 else "torch (rows @ W_U)"
    names = {
        "onednn": "oneDNN (torch.ops.mkldnn._linear_pointwise), also for the SDPA forward's linear layers",
        "torch.mm": "torch.mm (MKL on CPU)",
    }
    return names.get(backend, backend)


def status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``RssFile``...) in bytes."""
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if not found:
        raise OSError(f"/proc/self/status has no {field} field")
    return int(found.group(1)) * 1024


@functools.lru_cache(maxsize=None)
def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return status_bytes("VmHWM") > 0
    except (OSError, AttributeError):
        return False


def memory_method(device: str) -> str:
    """What :class:`PeakMemory` measures on ``device`` on this machine, in words."""
    if device == "cuda":
        return "torch.cuda.max_memory_allocated minus memory_allocated before the case"
    if _can_reset_hwm():
        return "VmHWM (peak RSS, reset via /proc/self/clear_refs) minus VmRSS before the case"
    return "psutil RSS sampled every 2 ms, peak minus RSS before the case"


def release_memory(device: str) -> None:
    """Collect garbage and hand freed memory back (CUDA cache, or the C heap via ``malloc_trim``)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    else:
        try:  # hand freed heap back to the OS, so the next case's growth shows in its RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakMemory:
    """Peak memory during the block, in bytes.

    After the block: ``base`` (memory at entry), ``peak`` (the highest seen) and ``extra``
    (``peak - base``, at least 0). On CPU these are the process's resident set, so they include
    the weights and everything else alive; on CUDA, what torch's allocator holds.

    >>> release_memory("cpu")  # as run_once does: else malloc may reuse freed, still-resident heap
    >>> with PeakMemory("cpu") as memory:  # bytes written, so resident (calloc'd zeros may not be)
    ...     block = b"x" * (64 * 2**20)
    >>> memory.extra > 32 * 2**20
    True
    """

    def __init__(self, device: str):
        self.device = device
        self.base = self.peak = self.extra = 0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif _can_reset_hwm():
            Path("/proc/self/clear_refs").write_text("5")
            self.base = status_bytes("VmRSS")
        else:
            import psutil

            process = psutil.Process()
            self.base = self._sampled = process.memory_info().rss
            self._done = threading.Event()

            def sample():
                while not self._done.wait(0.002):
                    self._sampled = max(self._sampled, process.memory_info().rss)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif _can_reset_hwm():  # the resident set now is a floor of the peak, whatever VmHWM says
            self.peak = max(status_bytes("VmHWM"), status_bytes("VmRSS"))
        else:
            import psutil

            self._done.set()
            self._sampler.join()
            self.peak = max(self._sampled, psutil.Process().memory_info().rss)
        self.extra = max(0, self.peak - self.base)
        return False


@dataclass
class Run:
    """One timed call: wall seconds, peak memory (see :class:`PeakMemory`) and its result if kept."""

    seconds: float
    extra_bytes: int
    peak_bytes: int
    result: object = None


def run_once(fn: Callable[[], object], device: str, keep: bool = False) -> Run:
    """Free what can be freed, then time ``fn()`` under ``torch.no_grad()`` and watch its memory."""
    release_memory(device)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        with torch.no_grad():
            result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if not keep:
            del result
            result = None
    return Run(seconds, memory.extra, memory.peak, result)


def summarise(runs: list[Run], loads: list) -> dict:
    """The fields of a measured entry: median and min seconds, each run's time and peaks."""
    times = [r.seconds for r in runs]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_extra_bytes": max(r.extra_bytes for r in runs),
        "peak_extra_bytes_each": [r.extra_bytes for r in runs],
        "peak_bytes": max(r.peak_bytes for r in runs),
        "load_average_1m_each": loads,
    }


@dataclass
class Timed:
    """How one case of a row is run by :func:`measure_row`."""

    fn: Callable[[], object]
    reps: int
    warm_up: bool = False  # one untimed call just before its first timed one
    keep: bool = False  # return the last repetition's result
    read: Optional[Callable[[object], dict]] = None  # figures read off the last result at once
    after: Optional[Callable[[], None]] = None  # untimed, after each run


def measure_row(runs: dict[str, Timed], device: str) -> tuple[dict[str, dict], dict[str, object]]:
    """Run the cases interleaved: repetition ``i`` runs, in order, every case with more than ``i``
    repetitions, so a slow spell on a shared machine falls on every case alike.

    Returns each case's entry fields (:func:`summarise`, plus what ``read`` found on its last
    result, read right after that run) and the last result of each case with ``keep``.
    """
    done: dict[str, list[Run]] = {key: [] for key in runs}
    loads: dict[str, list] = {key: [] for key in runs}
    figures: dict[str, dict] = {}
    kept: dict[str, object] = {}
    for rep in range(max((t.reps for t in runs.values()), default=0)):
        for key, timed in runs.items():
            if rep >= timed.reps:
                continue
            if rep == 0 and timed.warm_up:
                with torch.no_grad():
                    timed.fn()
            last = rep == timed.reps - 1
            loads[key].append((load_average() or [None])[0])
            run = run_once(timed.fn, device, keep=last and (timed.keep or timed.read is not None))
            if last and timed.read is not None:
                figures[key] = timed.read(run.result)
            if last and timed.keep:
                kept[key] = run.result
            run.result = None
            done[key].append(run)
            if timed.after is not None:
                timed.after()
    return {key: {**summarise(done[key], loads[key]), **figures.get(key, {})} for key in runs}, kept

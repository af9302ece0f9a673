"""How the benchmark measures: wall time and peak extra memory, interleaved over cases, and the
machine it ran on (CPU model, load average: the machine may be shared)."""

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


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


@functools.lru_cache(maxsize=None)
def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return _status_kb("VmHWM") > 0
    except (OSError, AttributeError):
        return False


def memory_method(device: str) -> str:
    if device == "cuda":
        return "torch.cuda.max_memory_allocated minus memory_allocated before the case"
    if _can_reset_hwm():
        return "VmHWM (peak RSS, reset via /proc/self/clear_refs) minus VmRSS before the case"
    return "psutil RSS sampled every 2 ms, peak minus RSS before the case"


def release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    else:
        try:  # hand freed heap back to the OS, so the next case's growth shows in its RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakMemory:
    """Peak memory above the level at entry, in bytes (``.extra`` after the block)."""

    def __init__(self, device: str):
        self.device = device
        self.extra = 0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif _can_reset_hwm():
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _status_kb("VmRSS") * 1024
        else:
            import psutil

            process = psutil.Process()
            self.base = self.peak = process.memory_info().rss
            self.done = threading.Event()

            def sample():
                while not self.done.wait(0.002):
                    self.peak = max(self.peak, process.memory_info().rss)

            self.sampler = threading.Thread(target=sample, daemon=True)
            self.sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif _can_reset_hwm():
            peak = _status_kb("VmHWM") * 1024
        else:
            self.done.set()
            self.sampler.join()
            peak = max(self.peak, __import__("psutil").Process().memory_info().rss)
        self.extra = max(0, peak - self.base)
        return False


def run_once(fn: Callable[[], object], device: str, keep: bool = False) -> tuple[float, int, object]:
    """One timed run: wall seconds, peak extra bytes, and the result if ``keep`` (else None)."""
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
    return seconds, memory.extra, result


def summarise(times: list[float], peaks: list[int], loads: list) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_extra_bytes": max(peaks),
        "peak_extra_bytes_each": peaks,
        "load_average_1m_each": loads,
    }


def measure(fn: Callable[[], object], reps: int, device: str) -> dict:
    """Run ``fn`` ``reps`` times in a row; wall seconds and peak extra bytes of each run."""
    times, peaks, loads = [], [], []
    for _ in range(reps):
        loads.append((load_average() or [None])[0])
        seconds, extra, _ = run_once(fn, device)
        times.append(seconds)
        peaks.append(extra)
    return summarise(times, peaks, loads)


def measure_interleaved(
    runs: dict[str, Callable[[], object]], reps: int, device: str,
    after: Optional[dict[str, Callable[[], None]]] = None, keep: tuple[str, ...] = (),
) -> tuple[dict[str, dict], dict[str, object]]:
    """Each repetition runs every case once, in order, so slow spells on a shared machine fall on
    all cases alike. ``after[case]`` runs (untimed) after that case; the last result of each case
    in ``keep`` is returned as well."""
    times = {c: [] for c in runs}
    peaks = {c: [] for c in runs}
    loads = {c: [] for c in runs}
    kept: dict[str, object] = {}
    for _ in range(reps):
        for case, fn in runs.items():
            loads[case].append((load_average() or [None])[0])
            seconds, extra, result = run_once(fn, device, keep=case in keep)
            times[case].append(seconds)
            peaks[case].append(extra)
            if case in keep:
                kept[case] = result
            del result
            if after and case in after:
                after[case]()
    return {c: summarise(times[c], peaks[c], loads[c]) for c in runs}, kept


def naive_limit_bytes(device: str, limit_gb: Optional[float]) -> tuple[int, str]:
    if limit_gb is not None:
        return int(limit_gb * 1e9), f"--naive-mem-limit-gb {limit_gb}"
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(0.8 * free), "80% of the GPU memory free at start"
    import psutil

    available = psutil.virtual_memory().available
    margin = max(2e9, 0.2 * available)
    return int(available - margin), "RAM available at start minus max(2 GB, 20%)"

"""``python -m lenslib.provision``: make sure every bundled model is de-quantised and cached,
the lens's C kernel is compiled, and each model's tuned lens is fitted and cached.

Idempotent: a cached model is only checked, in full (size and SHA-256 of every file, about a
second per GB; ordinary loads re-hash only files whose size or modification time changed).
The Makefile runs this before the notebooks and tests so the first real load is not inside
a test's time.
"""

from __future__ import annotations

import sys
import time

from lenslib.core import native_kernel
from lenslib.models.loading import BUNDLED, ModelNotAvailableError, hf_model_dir


def main() -> int:
    for name in BUNDLED:
        started = time.perf_counter()
        try:
            directory = hf_model_dir(name, full_check=True)
        except ModelNotAvailableError as error:
            print(f"lenslib: {error}", file=sys.stderr)
            return 1
        print(f"lenslib: {name} ready in {directory} ({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    if native_kernel.available():  # warns, and the lens uses torch, where it cannot be built
        print(f"lenslib: fused lens kernel ready ({time.perf_counter() - started:.1f} s)")
    return _tuned_lenses()


def _tuned_lenses() -> int:
    """Fit (first time) or check (cached) every bundled model's tuned lens."""
    from lenslib.tuned.cache import tuned_lens
    from lenslib.errors import CorpusNotAvailableError

    for name in BUNDLED:
        started = time.perf_counter()
        try:
            lens = tuned_lens(name)
        except CorpusNotAvailableError as error:
            print(f"lenslib: {error}", file=sys.stderr)
            return 1
        means = lens.record.get("heldout_mean_kl_nats_but_last", {})
        print(f"lenslib: tuned lens of {name} ready ({time.perf_counter() - started:.1f} s); held-out "
              "mean KL (nats, all layers but the last): "
              + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

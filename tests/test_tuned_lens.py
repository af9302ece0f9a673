"""The tuned lens: translators, the lens API, fitting, scoring, files, cache and interop."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

import lenslib
from lenslib.tuned.corpus import NotEnoughTextError
from lenslib.tuned.recipe import FitRecipe
from lenslib.tuned.translators import LensMismatchError, TunedLens

TEXTS = [
    "The cat sat on the mat and looked at the door.",
    "A stitch in time saves nine, said the old tailor.",
    "Rain fell on the quiet town all night long.",
    "She opened the window and the birds flew in.",
    "Numbers like 12, 34 and 56 are easy to add.",
    "He who laughs last laughs best, or so they say.",
] * 8
HELD = [
    "The dog ran over the hill and into the woods.",
    "Time flies like an arrow; fruit flies like a banana.",
    "A penny saved is a penny earned.",
] * 4


def random_lens(model, seed=0, scale=0.05, incl_mid=False):
    lens = TunedLens.identity(model, incl_mid=incl_mid)
    g = torch.Generator().manual_seed(seed)
    lens.A = torch.randn(lens.A.shape, generator=g) * scale
    lens.b = torch.randn(lens.b.shape, generator=g) * scale
    return lens


def same_result(a, b, exact=True):
    fields = ["top_ids", "top_probs", "entropy", "kl_to_final", "target_prob", "target_logprob", "target_rank"]
    for name in fields:
        x, y = getattr(a, name), getattr(b, name)
        if exact:
            assert torch.equal(x.nan_to_num(-7.0), y.nan_to_num(-7.0)), name
        else:
            torch.testing.assert_close(x, y, equal_nan=True)


@pytest.mark.parametrize("incl_mid", [False, True])
def test_identity_translators_reproduce_the_logit_lens_exactly(tiny, incl_mid):
    prompts = ["Hello there, world", "abc", "The quick brown fox"]
    lens = TunedLens.identity(tiny, incl_mid=incl_mid)
    for positions in (None, "last", [1, -1]):
        plain = lenslib.logit_lens(tiny, prompts, positions=positions, incl_mid=incl_mid, batch_size=2, target=5)
        tuned = lenslib.logit_lens(tiny, prompts, positions=positions, incl_mid=incl_mid, batch_size=2, target=5, lens=lens)
        for a, b in zip(plain, tuned):
            assert a.layer_labels == b.layer_labels
            same_result(a, b)


def test_translators_change_every_layer_but_the_last(tiny):
    lens = random_lens(tiny, scale=0.3)
    plain = lenslib.logit_lens(tiny, "Hello there")
    tuned = lenslib.logit_lens(tiny, "Hello there", lens=lens)
    assert not torch.allclose(plain.entropy[:-1], tuned.entropy[:-1])
    assert torch.equal(plain.entropy[-1], tuned.entropy[-1])
    assert torch.equal(tuned.kl_to_final[-1], torch.zeros_like(tuned.kl_to_final[-1]))


def test_tuned_lens_matches_a_dense_float64_computation(tiny, tiny_hf):
    """Hugging Face hidden states -> translator -> final norm -> lm_head, in float64."""
    lens = random_lens(tiny, scale=0.2)
    prompt = "Hello there, world"
    result = lenslib.logit_lens(tiny, prompt, lens=lens, k=3)
    ids = result.input_ids.unsqueeze(0)
    hf = tiny_hf.double()
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        hidden = out.hidden_states  # n_layers + 1; the last one is already normalised
        final = torch.log_softmax(out.logits, -1)[0]
        for i in range(len(hidden) - 1):
            h = hidden[i] + hidden[i] @ lens.A[i].double() + lens.b[i].double()
            logp = torch.log_softmax(hf.lm_head(hf.model.norm(h)), -1)[0]
            kl = (final.exp() * (final - logp)).sum(-1)
            entropy = -(logp.exp() * logp).sum(-1)
            torch.testing.assert_close(result.kl_to_final[i].double(), kl, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(result.entropy[i].double(), entropy, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(result.top_probs[i].double(), logp.exp().topk(3).values, rtol=1e-4, atol=1e-6)
    hf.float()


def test_evaluate_lens_matches_dense_float64(tiny, tiny_hf):
    from lenslib.tuned.evaluate import evaluate_lens

    lens = random_lens(tiny, scale=0.2)
    texts = ["Hello there, world", "abc def"]
    scores = evaluate_lens(tiny, {"logit": None, "tuned": lens}, texts, progress=False)
    hf = tiny_hf.double()
    kl = {"logit": [], "tuned": []}
    agree = {"logit": [], "tuned": []}
    ce = {"logit": [], "tuned": []}
    with torch.no_grad():
        for text in texts:
            ids = tiny.to_tokens(text)
            out = hf(ids, output_hidden_states=True)
            hidden = out.hidden_states  # the last one is already normalised
            final = torch.log_softmax(out.logits, -1)[0, 1:]
            nxt = ids[0, 2:]
            for name in kl:
                rows_kl, rows_agree, rows_ce = [], [], []
                for i in range(len(hidden)):
                    h = hidden[i]
                    if name == "tuned" and i < len(hidden) - 1:
                        h = h + h @ lens.A[i].double() + lens.b[i].double()
                    logits = out.logits if i == len(hidden) - 1 else hf.lm_head(hf.model.norm(h))
                    logp = torch.log_softmax(logits, -1)[0, 1:]
                    rows_kl.append((final.exp() * (final - logp)).sum(-1))
                    rows_agree.append((logp.argmax(-1) == final.argmax(-1)).double())
                    rows_ce.append(-logp[:-1].gather(-1, nxt.unsqueeze(-1))[:, 0])
                kl[name].append(torch.stack(rows_kl))
                agree[name].append(torch.stack(rows_agree))
                ce[name].append(torch.stack(rows_ce))
    hf.float()
    for name in kl:
        torch.testing.assert_close(torch.tensor(scores.column(name, "kl_nats"), dtype=torch.float64),
                                   torch.cat(kl[name], 1).mean(1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(scores.column(name, "top1_agreement"), dtype=torch.float64),
                                   torch.cat(agree[name], 1).mean(1))
        torch.testing.assert_close(torch.tensor(scores.column(name, "cross_entropy_nats"), dtype=torch.float64),
                                   torch.cat(ce[name], 1).mean(1), rtol=1e-4, atol=1e-6)
        bits = torch.tensor(scores.column(name, "kl_bits"))
        torch.testing.assert_close(bits, torch.tensor(scores.column(name, "kl_nats")) / math.log(2))
    assert scores.n_tokens == sum(tiny.to_tokens(t).shape[1] - 1 for t in texts)


def test_save_load_gives_identical_results(tiny, tmp_path):
    lens = random_lens(tiny)
    lens.record = {"note": "test"}
    lens.save(tmp_path / "lens")
    back = TunedLens.load(tmp_path / "lens", tiny)
    assert torch.equal(back.A, lens.A) and torch.equal(back.b, lens.b)
    assert back.labels == lens.labels and back.record == {"note": "test"}
    record = json.loads((tmp_path / "lens" / "record.json").read_text())
    assert record["signature"]["d_model"] == 32
    same_result(lenslib.logit_lens(tiny, "Hello", lens=lens), lenslib.logit_lens(tiny, "Hello", lens=back))


def test_lens_for_another_model_names_both(tiny):
    lens = TunedLens.identity(tiny)
    other = dict(lens.signature, d_model=64, model_name="other-model")
    wrong = TunedLens(lens.labels, torch.zeros(2, 64, 64), torch.zeros(2, 64), other)
    with pytest.raises(LensMismatchError, match="other-model") as error:
        lenslib.logit_lens(tiny, "Hello", lens=wrong)
    assert str(tiny.cfg.model_name) in str(error.value) and "d_model" in str(error.value)
    with pytest.raises(LensMismatchError, match=r"\(2, 32, 32\)"):
        TunedLens(lens.labels, torch.zeros(2, 64, 64), torch.zeros(2, 32), lens.signature)


def test_incl_mid_needs_mid_translators(tiny):
    with pytest.raises(LensMismatchError, match="0_mid"):
        lenslib.logit_lens(tiny, "Hello", incl_mid=True, lens=TunedLens.identity(tiny))


def test_fit_lowers_heldout_kl_on_the_tiny_model(tiny):
    from lenslib.tuned.evaluate import evaluate_lens
    from lenslib.tuned.fit import fit_tuned_lens

    fitted = fit_tuned_lens(tiny, TEXTS, recipe={"steps": 40, "batch_tokens": 64, "sample": 16, "top_k": 4, "lr": 3e-3}, progress=False)
    tuned, start = fitted.tuned, fitted.least_squares
    scores = evaluate_lens(tiny, {"logit": None, "least_squares": start, "tuned": tuned}, HELD, progress=False)
    logit, ls, fit = (scores.mean_kl(n) for n in ("logit", "least_squares", "tuned"))
    assert fit < logit, (logit, ls, fit)
    assert scores.column("tuned", "kl_nats")[-1] == 0.0
    assert tuned.record["fit"]["fit_tokens"] > 256


def test_per_layer_selection_keeps_each_layers_best_translator(tiny):
    from lenslib.tuned.evaluate import evaluate_lens
    from lenslib.tuned.fit import collect_residuals, select_per_layer

    good, bad = random_lens(tiny, seed=1, scale=0.01), random_lens(tiny, seed=2, scale=3.0)
    bad.A[0] = good.A[0]  # layer 0: "bad" equals "good" there, elsewhere it is far off
    bad.b[0] = good.b[0]
    held = collect_residuals(tiny, HELD, progress=False)
    candidates = {"identity": None, "good": good, "bad": bad}
    lens, choice, kl = select_per_layer(tiny, candidates, held, progress=False)
    assert len(choice) == len(lens.labels) == 2
    assert "bad" not in choice[1:]
    for i, name in enumerate(choice):
        assert kl[name][i] == min(kl[n][i] for n in candidates)
        want = torch.zeros_like(lens.A[i]) if name == "identity" else candidates[name].A[i]
        assert torch.equal(lens.A[i], want)
    scores = evaluate_lens(tiny, {"picked": lens, **candidates}, held, progress=False)
    for layer in range(2):
        picked = scores.column("picked", "kl_nats")[layer]
        assert picked == pytest.approx(min(scores.column(n, "kl_nats")[layer] for n in candidates), rel=1e-6)


def test_late_layers_take_their_own_learning_rate(tiny):
    from lenslib.tuned.fit import collect_residuals, least_squares_lens, refine

    resid = collect_residuals(tiny, TEXTS, progress=False)
    start = least_squares_lens(tiny, resid, progress=False)
    common = dict(steps=5, batch_tokens=32, lr=1e-2, top_k=4, sample=16, seed=0, progress=False)
    frozen, _ = refine(tiny, start, resid, late_lr=0.0, late_from=0.5, **common)
    assert torch.equal(frozen.A[1], start.A[1]) and torch.equal(frozen.b[1], start.b[1])  # depth 1/2 >= 0.5
    assert not torch.equal(frozen.A[0], start.A[0])
    moving, _ = refine(tiny, start, resid, **common)  # no late_lr: every layer moves
    assert not torch.equal(moving.A[1], start.A[1])


def test_fit_with_validation_text_records_its_choice(tiny):
    from lenslib.tuned.fit import fit_tuned_lens

    recipe = {"steps": 10, "batch_tokens": 32, "sample": 16, "top_k": 4, "refine_tokens": 200}
    fitted = fit_tuned_lens(tiny, TEXTS, recipe=recipe, progress=False, select_texts=HELD)
    tuned, start = fitted.tuned, fitted.least_squares
    fit = tuned.record["fit"]
    assert fitted.choice == fit["choice"] and fitted.layer_labels == tuned.labels
    assert len(fit["choice"]) == len(tuned.labels)
    assert set(fit["choice"]) <= {"identity", "least_squares", "refined"}
    assert fit["refine_tokens"] == 200 and fit["select_tokens"] > 0
    assert "selection" in fit["seconds"] and fit["stage"].endswith("per-layer selection")
    for i, name in enumerate(fit["choice"]):
        kl = fit["selection_kl_nats"]
        assert kl[name][i] == min(kl[n][i] for n in kl)


def test_too_little_text_says_how_much_is_needed(tiny):
    from lenslib.tuned.fit import fit_tuned_lens

    with pytest.raises(NotEnoughTextError, match="at least 256"):
        fit_tuned_lens(tiny, ["a few words"], progress=False)


def test_cache_is_atomic_and_rebuilds_a_damaged_entry(tiny, tmp_path, monkeypatch):
    from lenslib.models.cache import DamagedCacheWarning
    from lenslib.tuned import cache as tuned_cache
    from lenslib.tuned import corpus

    monkeypatch.setenv("LENSLIB_CACHE", str(tmp_path))
    try:
        corpus.fortune_documents()
    except corpus.CorpusNotAvailableError:
        pytest.skip("Debian's fortunes is not installed (make setup installs it)")
    recipe = {"fit_tokens": 2000, "heldout_tokens": 500, "seq_len": 64, "score_tokens": 100, "steps": 5, "batch_tokens": 32, "sample": 16, "top_k": 4}
    lens = tuned_cache.tuned_lens(tiny, recipe=recipe, progress=False)
    entry = tmp_path / tuned_cache.entry_name("tiny-llama", FitRecipe.of(recipe))
    assert entry.is_dir() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert set(lens.record["heldout_mean_kl_nats_but_last"]) == {"logit", "least_squares", "tuned"}
    assert lens.record["corpus"]["heldout_tokens_scored"] >= 100
    again = tuned_cache.tuned_lens(tiny, recipe=recipe, progress=False)
    assert torch.equal(again.A, lens.A)
    weights = entry / "translators.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.warns(DamagedCacheWarning, match="rebuilding"):
        rebuilt = tuned_cache.tuned_lens(tiny, recipe=recipe, progress=False)
    assert torch.equal(rebuilt.A, lens.A)  # the fit is seeded: the same lens comes back


def test_interrupted_cache_build_leaves_nothing(tiny, tmp_path, monkeypatch):
    from lenslib.tuned import cache as tuned_cache

    monkeypatch.setenv("LENSLIB_CACHE", str(tmp_path))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tuned_cache, "_build", interrupted)
    monkeypatch.setattr(tuned_cache, "entry_name", lambda name, recipe: "tuned-test")
    with pytest.raises(KeyboardInterrupt):
        tuned_cache.tuned_lens(tiny, progress=False)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_tuned_lens_package_artifact_import(tiny, tmp_path):
    d = 32
    g = torch.Generator().manual_seed(1)
    state = {}
    for i in range(2):
        state[f"{i}.weight"] = torch.randn(d, d, generator=g) * 0.1
        state[f"{i}.bias"] = torch.randn(d, generator=g) * 0.1
    torch.save(state, tmp_path / "params.pt")
    config = {"base_model_name_or_path": "tiny", "d_model": d, "num_hidden_layers": 2, "bias": True,
              "lens_type": "linear_tuned_lens"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    lens = TunedLens.from_tuned_lens_package(tmp_path, tiny)
    h = torch.randn(5, d, generator=g)
    torch.testing.assert_close(lens.translate(h.unsqueeze(0), ["1_pre"])[0],
                               h + torch.nn.functional.linear(h, state["1.weight"], state["1.bias"]))
    config["d_model"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LensMismatchError, match="width 48.*width 32"):
        TunedLens.from_tuned_lens_package(tmp_path, tiny)


def test_transformer_lens_callable(tiny):
    from transformer_lens.tools.analysis.logit_lens import logit_lens as tl_logit_lens

    tiny.eval()  # TransformerLens's logit_lens refuses a model in training mode (no dropout here)
    lens = random_lens(tiny, scale=0.2)
    prompt = "Hello there"
    ours = lenslib.logit_lens(tiny, prompt, lens=lens, positions="last", k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = tl_logit_lens(tiny, prompt, lens=lens.as_transformer_lens(), return_type="log_probs")
    logp = theirs.readout.values if hasattr(theirs, "readout") else theirs.values
    logp = logp.reshape(len(ours.layer_labels), -1)
    torch.testing.assert_close(logp.exp().topk(3, -1).values, ours.top_probs[:, 0], rtol=1e-4, atol=1e-6)


def test_cli_tune_and_lens_tuned(tiny, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from lenslib.models import cache as model_cache
    from lenslib.tuned import cache as tuned_cache
    from lenslib.tuned import corpus

    try:
        corpus.fortune_documents()
    except corpus.CorpusNotAvailableError:
        pytest.skip("Debian's fortunes is not installed (make setup installs it)")
    # A short fit stored under the default recipe's entry, so the command finds it cached.
    monkeypatch.setenv("LENSLIB_CACHE", str(tmp_path / "cache"))
    short = FitRecipe().replace(fit_tokens=1000, heldout_tokens=300, score_tokens=100, seq_len=64, steps=3,
                                batch_tokens=32, sample=16, top_k=4)
    model_cache.ensure_entry(tuned_cache.entry_name("tiny-llama", FitRecipe()),
                             lambda out: tuned_cache._build("tiny-llama", tiny, short, out, False))
    env = {**os.environ, "LENSLIB_CACHE": str(tmp_path / "cache")}
    exe = str(Path(sys.executable).with_name("lenslib"))
    out = subprocess.run([exe, "tune", "--model", "tiny-llama", "--html", str(tmp_path / "t.html")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    assert "KL tuned" in out.stdout and "least-squares start" in out.stdout
    assert "<h1>Tuned lens of tiny-llama</h1>" in (tmp_path / "t.html").read_text()
    out = subprocess.run([exe, "lens", "Hello", "--model", "tiny-llama", "--lens", "tuned"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    assert "final_post" in out.stdout


@pytest.mark.real_model
def test_real_model_tuned_lens_matches_hugging_face_float64(smollm2, smollm2_hf):
    """SmolLM2: identity = logit lens exactly; random translators = an HF float64 computation."""
    prompt = "The Eiffel Tower is located in the city of"
    same_result(lenslib.logit_lens(smollm2, prompt), lenslib.logit_lens(smollm2, prompt, lens=TunedLens.identity(smollm2)))
    lens = random_lens(smollm2, scale=0.02)
    result = lenslib.logit_lens(smollm2, prompt, lens=lens, k=3)
    hf = smollm2_hf
    with torch.no_grad():
        out = hf(result.input_ids.unsqueeze(0), output_hidden_states=True)
        final = out.logits.double().log_softmax(-1)[0]
        norm, head = hf.model.norm, hf.lm_head
        for i in range(len(out.hidden_states) - 1):
            h = out.hidden_states[i].double()
            h = h + h @ lens.A[i].double() + lens.b[i].double()
            logp = head.double()(norm.double()(h)).log_softmax(-1)[0]
            head.float(), norm.float()
            kl = (final.exp() * (final - logp)).sum(-1)
            torch.testing.assert_close(result.kl_to_final[i].double(), kl, atol=1e-3, rtol=1e-4)
            torch.testing.assert_close(result.top_probs[i].double(), logp.exp().topk(3).values, atol=1e-4, rtol=0)

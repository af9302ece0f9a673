"""The tuned lens: translators, the lens API, fitting, scoring, files, cache and interop."""

from __future__ import annotations

import json
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from numerics import (
    SUBNORMAL32, U32, assert_within, decoded, gamma, lens_tolerances, logit_shift, matmul_error,
    sum_error, tile_columns,
)

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


def same_result(a, b):
    """Bit for bit: the same rows through the same computation (identity translators add zeros)."""
    fields = ["top_ids", "top_probs", "entropy", "kl_to_final", "target_prob", "target_logprob", "target_rank"]
    for name in fields:
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x.nan_to_num(-7.0), y.nan_to_num(-7.0)), name


def _float64_rows(hf, hidden, lens):
    """Hugging Face float64 hidden states -> translator -> final norm: ``[layer, pos, d_model]``
    (the last hidden state is already normalised and has no translator)."""
    rows = []
    for i in range(len(hidden) - 1):
        h = hidden[i].double()
        h = h + h @ lens.A[i].double() + lens.b[i].double()
        rows.append(hf.model.norm.double()(h)[0])
    rows.append(hidden[-1][0].double())
    return torch.stack(rows)


def _check_sorted_probs(got, want_logp, delta, eps):
    """The k largest probabilities, place by place: order statistics move no more than the values
    (``|sorted(a) - sorted(b)| <= max|a - b|``), so each log-probability is within numerics'
    ``2 delta + eps`` whatever the ties; ``[layer, pos, k]``."""
    k = got.shape[-1]
    want = want_logp.topk(k, dim=-1).values.exp()
    rtol = torch.expm1(2 * delta + eps).unsqueeze(-1) + 2 * U32
    assert_within(got, want, torch.maximum(got.double(), want) * rtol + 2 * SUBNORMAL32, "top probabilities")


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
    # differ beyond rounding in every cell: more than tests/numerics.py's bound for two float32
    # computations of the same rows (seen: at least 0.066 nats against a bound of at most 6.2e-4)
    rows = decoded(tiny, [plain], "sdpa")[0]
    rounding = lens_tolerances(logit_shift(rows, None, tiny.W_U), plain, tuned, columns=tile_columns(tiny))
    assert ((plain.entropy - tuned.entropy).abs() > rounding["entropy"])[:-1].all()
    assert torch.equal(plain.entropy[-1], tuned.entropy[-1])
    assert torch.equal(tuned.kl_to_final[-1], torch.zeros_like(tuned.kl_to_final[-1]))


def test_tuned_lens_matches_a_dense_float64_computation(tiny, tiny_hf64):
    """Hugging Face hidden states -> translator -> final norm -> lm_head, in float64; bounds from
    tests/numerics.py (the lens's rows against exact ones, one float32 unembedding, one tiled fold)."""
    lens = random_lens(tiny, scale=0.2)
    prompt = "Hello there, world"
    result = lenslib.logit_lens(tiny, prompt, lens=lens, k=3)
    ids = result.input_ids.unsqueeze(0)
    hf = tiny_hf64
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        exact_rows = _float64_rows(hf, out.hidden_states, lens)
        logp = hf.lm_head(exact_rows).log_softmax(-1)  # [layer, pos, vocab]
    exact = SimpleNamespace(entropy=-(logp.exp() * logp).sum(-1), kl_to_final=(logp[-1].exp() * (logp[-1] - logp)).sum(-1))
    delta = logit_shift(decoded(tiny, [result], "sdpa", lens=lens)[0], exact_rows, tiny.W_U, rounded=1)
    tol = lens_tolerances(delta, result, exact, columns=tile_columns(tiny), tiled=1)
    assert_within(result.kl_to_final, exact.kl_to_final, tol["kl_to_final"], "kl_to_final")
    assert_within(result.entropy, exact.entropy, tol["entropy"], "entropy")
    _check_sorted_probs(result.top_probs, logp, delta, sum_error(tile_columns(tiny)))


def test_evaluate_lens_matches_dense_float64(tiny, tiny_hf64):
    """Per-layer means over the held-out tokens against float64; each bound is the mean of the
    per-token bounds of tests/numerics.py (the lens's rows against exact ones); top-1 agreement
    may differ only by the share of tokens whose layer or final top-1 is a near-tie."""
    from lenslib.tuned.evaluate import evaluate_lens, lens_rows
    from lenslib.tuned.residuals import collect_residuals

    lens = random_lens(tiny, scale=0.2)
    texts = ["Hello there, world", "abc def"]
    scores = evaluate_lens(tiny, {"logit": None, "tuned": lens}, texts, progress=False)
    resid = collect_residuals(tiny, texts, progress=False)
    hf = tiny_hf64
    identity = TunedLens.identity(tiny)
    with torch.no_grad():
        runs = [hf(tiny.to_tokens(text), output_hidden_states=True).hidden_states for text in texts]
        nxt = torch.cat([torch.cat([tiny.to_tokens(t)[0, 2:], torch.tensor([-1])]) for t in texts])
        for name, tuned in (("logit", identity), ("tuned", lens)):
            exact_rows = torch.cat([_float64_rows(hf, hidden, tuned)[:, 1:] for hidden in runs], 1)
            ours = lens_rows(tiny, resid, None if name == "logit" else lens, slice(None))
            logits = hf.lm_head(exact_rows)
            logp = logits.log_softmax(-1)  # [layer, token, vocab]
            final = logp[-1]
            exact = SimpleNamespace(entropy=-(logp.exp() * logp).sum(-1), kl_to_final=(final.exp() * (final - logp)).sum(-1))
            delta = logit_shift(ours, exact_rows, tiny.W_U, rounded=1)
            tol = lens_tolerances(delta, exact, exact, columns=tile_columns(tiny), tiled=1)
            got = lambda column: torch.tensor(scores.column(name, column), dtype=torch.float64)  # noqa: E731
            assert_within(got("kl_nats"), exact.kl_to_final.mean(1), tol["kl_to_final"].mean(1), f"{name} KL")
            has = nxt >= 0
            ce = -logp[:, has].gather(-1, nxt[has].view(1, -1, 1).expand(logp.shape[0], -1, 1)).squeeze(-1)
            assert_within(got("cross_entropy_nats"), ce.mean(1), tol["logprob"][:, has].mean(1), f"{name} CE")
            top2 = logits.topk(2, dim=-1).values
            tie = (top2[..., 0] - top2[..., 1]) <= 2 * delta + 4 * U32 * top2[..., 0].abs()
            undecided = (tie | tie[-1:]).double().mean(1)  # the layer's or the final top-1 may swap
            agree = (logp.argmax(-1) == final.argmax(-1)).double().mean(1)
            assert_within(got("top1_agreement"), agree, undecided, f"{name} top-1 agreement")
            assert float(undecided[:-1].max()) < 0.5  # most tokens are decided
            # kl_bits: nats over a float32 ln 2 (1 rounding), against float32 nats over ln 2 (2 more)
            bits, nats = got("kl_bits"), torch.tensor(scores.column(name, "kl_nats"))
            assert_within(bits, nats / math.log(2), 4 * U32 * bits.abs(), "bits")
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
    # the claim itself, empirical: a seeded fit on a random tiny model (mean KL 2.99 nats against
    # the logit lens's 4.08 here, least squares 3.10); a fit that learned nothing would tie
    assert fit < logit, (logit, ls, fit)
    assert scores.column("tuned", "kl_nats")[-1] == 0.0
    # exact: the fit reads every token of the texts but BOS
    assert tuned.record["fit"]["fit_tokens"] == sum(tiny.to_tokens(t).shape[1] - 1 for t in TEXTS)


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
    # the picked layer's rows are its candidate's, decoded again in another place of one matmul:
    # the same rows rounded twice, tests/numerics.py's KL bound averaged over the tokens
    from lenslib.tuned.evaluate import lens_rows

    rows = lens_rows(tiny, held, lens, slice(None))
    delta = logit_shift(rows, None, tiny.W_U)
    token_kl = scores.token_kl[0].double()  # [layer, token] of "picked"
    # the KL bound takes the final layer's entropy as an upper bound only: log 64 is one
    stats = SimpleNamespace(entropy=torch.zeros_like(token_kl) + math.log(64), kl_to_final=token_kl)
    bound = lens_tolerances(delta, stats, stats, columns=tile_columns(tiny))["kl_to_final"].mean(1)
    for layer in range(2):
        picked = scores.column("picked", "kl_nats")[layer]
        best = min(scores.column(n, "kl_nats")[layer] for n in candidates)
        assert abs(picked - best) <= float(bound[layer])


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
    assert lens.record["corpus"]["heldout_tokens_scored"] >= recipe["score_tokens"]  # what the recipe asks
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
    # two float32 evaluations of h + h W^T + b: each within numerics step 1 of the exact value
    # (one more rounding for the sum with h)
    want = h + torch.nn.functional.linear(h, state["1.weight"], state["1.bias"])
    bound = 2 * matmul_error(h, state["1.weight"].T, state["1.bias"]) + 2 * U32 * (h.abs() + want.abs()).double()
    assert_within(lens.translate(h.unsqueeze(0), ["1_pre"])[0], want, bound, "translate")
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
    # TransformerLens runs the bridge's forward and our translators, then its own final norm
    # (gamma_{d+4} per entry either way) and a float32 log-softmax: our bridge-path rows stand
    # in for its rows, numerics' delta covers the rest, and its softmax rounds like our sums
    sdpa = decoded(tiny, [ours], "sdpa", lens=lens)[0]
    bridge = decoded(tiny, [ours], "bridge", lens=lens)[0]
    norm = 2 * gamma(int(tiny.cfg.d_model) + 4) * bridge.double().norm(dim=-1)
    delta = logit_shift(sdpa, bridge, tiny.W_U) + norm * float(tiny.W_U.detach().double().norm(dim=0).max())
    _check_sorted_probs(ours.top_probs, logp.double().unsqueeze(1), delta, 2 * sum_error(tile_columns(tiny)))


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
                         capture_output=True, text=True, timeout=600, env=env)  # hang guards, both
    assert out.returncode == 0, out.stderr
    assert "KL tuned" in out.stdout and "least-squares start" in out.stdout
    assert "<h1>Tuned lens of tiny-llama</h1>" in (tmp_path / "t.html").read_text()
    out = subprocess.run([exe, "lens", "Hello", "--model", "tiny-llama", "--lens", "tuned"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    assert "final_post" in out.stdout


@pytest.mark.real_model
def test_real_model_tuned_lens_matches_hugging_face_float64(smollm2, smollm2_hf):
    """SmolLM2: identity = logit lens exactly; random translators = an HF float64 computation,
    within tests/numerics.py's bounds (one float32 unembedding, one tiled fold)."""
    prompt = "The Eiffel Tower is located in the city of"
    same_result(lenslib.logit_lens(smollm2, prompt), lenslib.logit_lens(smollm2, prompt, lens=TunedLens.identity(smollm2)))
    lens = random_lens(smollm2, scale=0.02)
    result = lenslib.logit_lens(smollm2, prompt, lens=lens, k=3)
    hf = smollm2_hf
    try:
        with torch.no_grad():
            out = hf.double()(result.input_ids.unsqueeze(0), output_hidden_states=True)
            exact_rows = _float64_rows(hf, out.hidden_states, lens)
            logp = hf.lm_head(exact_rows).log_softmax(-1)
    finally:
        hf.float()
    exact = SimpleNamespace(entropy=-(logp.exp() * logp).sum(-1), kl_to_final=(logp[-1].exp() * (logp[-1] - logp)).sum(-1))
    delta = logit_shift(decoded(smollm2, [result], "sdpa", lens=lens)[0], exact_rows, smollm2.W_U, rounded=1)
    tol = lens_tolerances(delta, result, exact, columns=tile_columns(smollm2), tiled=1)
    assert_within(result.kl_to_final, exact.kl_to_final, tol["kl_to_final"], "kl_to_final")
    _check_sorted_probs(result.top_probs, logp, delta, sum_error(tile_columns(smollm2)))

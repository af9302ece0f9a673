"""The bench harness (bench/harness.py, measure.py, report.py) and its suites (bench/suites/).

A suite declared here runs end to end on the tiny model; every declared suite is checked for
ratios over cases it declares; the memory measurement sees a large allocation; the lens suite's
computations compare like with like. No test names a case of a real suite: they read the
declarations.
"""

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from numerics import (
    EXP_ULPS, SUBNORMAL32, U32, assert_within, criterion_shift, decoded, lens_tolerances, logit_shift,
    matmul_error, sum_error, tile_columns,
)

from bench import harness
from bench.suite import Case, Defaults, Ratio, Row, Suite, Target, problems
from bench.measure import PeakMemory, Timed, measure_row, run_once
from bench.passage import passage_text, prompt_of_length
from bench.report import markdown, ratio_figure, time_figure
from bench.suites import all_suites
from bench.suites.tuned_heldout import LENSES, PAIRS, pair_name

TOKENS = [8, 12]
REPS = 2


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny():
    import lenslib

    model = lenslib.load_model("tiny-llama", device="cpu")
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 32 and model.cfg.d_vocab == 64
    return model


# ---------------------------------------------------------------- a suite declared here


@dataclass
class ToyRow(Row):
    model: object = None
    prompt: str = ""
    tokens: object = None


def toy_suite(model, calls: list) -> Suite:
    """Four cases on the tiny model; ``calls`` records every call, in order."""
    import lenslib

    def logged(key, fn):
        def run():
            calls.append(key)
            return fn()

        return run

    def context(loaded, name, n, args, report):
        prompt, tokens, _ = prompt_of_length(loaded, passage_text(), n)
        return ToyRow(name=name, n_tokens=n, model=loaded, prompt=prompt, tokens=tokens)

    def after_row(ctx, entries, kept, report):
        report["kept"].append({"model": ctx.name, "tokens": ctx.n_tokens, "cases": sorted(kept),
                               "positions": int(kept["lens"].positions.numel())})

    cases = (
        Case("lens", "logit_lens, all positions", lambda c: logged("lens", lambda: lenslib.logit_lens(c.model, c.prompt)),
             colour="#1f77b4", keep=True, read=lambda c, r: {"layers_read": len(r.layer_labels)}),
        Case("forward", "model(tokens)", lambda c: logged("forward", lambda: c.model(c.tokens)), colour="#ff7f0e",
             warm_up=True),
        Case("once", "measured once", lambda c: logged("once", lambda: c.model(c.tokens)), reps=1),
        Case("long_only", "skipped below 10 tokens", lambda c: logged("long_only", lambda: c.model(c.tokens)),
             skip=lambda c: "too short for this case" if c.n_tokens < 10 else None),
    )
    # two targets whose outcome is known whatever the machine: a ratio of two timings of this size
    # is never above 1e9 (met) and never below 1e-9 (not met)
    ratios = (
        Ratio("lens/forward", ("lens",), ("forward",), "the lens against a forward pass", at_most=1e9, plot=True),
        Ratio("forward/lens", ("forward",), ("lens",), "", at_most=1e-9, from_tokens=10),
        Ratio("(lens+once)/forward", ("lens", "once"), ("forward",), "a sum over cases"),
        Ratio("long_only/forward", ("long_only",), ("forward",), "a ratio with a skipped case"),
    )
    targets = (Target("every layer read", lambda ctx, e: (e["lens"]["layers_read"] == 3, str(e["lens"]["layers_read"]))),)
    return Suite(
        name="toy", title="Toy suite", about="A test's suite.", stem="toy", tokens_mean="tokens, BOS included",
        cases=cases, ratios=ratios, targets=targets, load=lambda name, args, report: model, context=context,
        defaults=Defaults(models=("tiny-llama",), tokens=(8,), reps=1, threads=1),
        prepare=lambda args: {"kept": []}, after_row=after_row, row_lists=("kept",),
        sections=lambda report: ["", f"Toy section: {len(report['kept'])} rows kept."],
    )


@pytest.fixture(scope="module")
def toy_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    calls: list = []
    suite = toy_suite(tiny, calls)
    report = harness.run_suite(suite, ["--tokens", ",".join(map(str, TOKENS)), "--reps", str(REPS), "--out", str(out),
                                       "--no-plot"])
    return suite, out, report, calls


def test_a_declared_suite_measures_every_case_and_writes_its_json(toy_run):
    suite, out, report, _ = toy_run
    written = json.loads((out / "toy.json").read_text())
    assert written["results"] == json.loads(json.dumps(report["results"]))
    assert written["suite"] == "toy" and written["machine"]["cpu_cores"] >= 1 and written["machine"]["torch"]
    keys = [c.key for c in suite.cases]
    assert [(r["tokens"], r["case"]) for r in written["results"]] == [(n, k) for n in TOKENS for k in keys]
    for r in written["results"]:
        case = suite.case(r["case"])
        if "skipped" in r:
            assert r["skipped"] == "too short for this case" and r["tokens"] < 10 and "median_s" not in r
            continue
        reps = case.reps or REPS
        assert len(r["times_s"]) == reps and all(_positive(t) for t in r["times_s"])
        assert r["median_s"] >= r["min_s"] > 0 and r["peak_extra_bytes"] == max(r["peak_extra_bytes_each"])
        assert r["peak_bytes"] >= r["peak_extra_bytes"] and len(r["load_average_1m_each"]) == reps
    assert sum("skipped" in r for r in written["results"]) == 1
    read = [r["layers_read"] for r in written["results"] if r["case"] == "lens"]
    assert read == [3, 3]  # figures read off the result, into the entry
    assert written["kept"] == [{"model": "tiny-llama", "tokens": n, "cases": ["lens"], "positions": n} for n in TOKENS]
    assert set(written["set_up_s"]) == {"tiny-llama"}


def test_cases_run_interleaved_with_their_own_repetitions(toy_run):
    *_, calls = toy_run
    short = ["lens", "forward", "forward", "once", "lens", "forward"]  # forward: one warm-up call first
    long = ["lens", "forward", "forward", "once", "long_only", "lens", "forward", "long_only"]
    assert calls == short + long


def test_ratios_are_quotients_of_the_measured_medians(toy_run):
    suite, out, report, _ = toy_run
    median = {(r["tokens"], r["case"]): r.get("median_s") for r in report["results"]}
    memory = {(r["tokens"], r["case"]): r.get("peak_extra_bytes") for r in report["results"]}
    assert [(r["model"], r["tokens"]) for r in report["ratios"]] == [("tiny-llama", n) for n in TOKENS]
    for row in report["ratios"]:
        n = row["tokens"]
        assert set(row) == {"model", "tokens"} | {r.name for r in suite.ratios}
        for ratio in suite.ratios:
            value = row[ratio.name]
            if any(median[n, c] is None for c in ratio.over + ratio.under):
                assert value == {"time": None, "memory": None, "why_none": "case long_only skipped"}
                continue
            expected = sum(median[n, c] for c in ratio.over) / sum(median[n, c] for c in ratio.under)
            assert value["time"] == expected  # exact: bench.suite.ratio_values's float64 expression, same order
            if len(ratio.over) > 1:
                assert value["memory"] is None  # peaks of two calls do not add
            elif memory[n, ratio.under[0]]:
                assert value["memory"] == memory[n, ratio.over[0]] / memory[n, ratio.under[0]]  # exact: one division


def test_targets_are_checked_where_they_apply(toy_run):
    _, out, report, _ = toy_run
    found = {(t["tokens"], t["target"]): t["met"] for t in report["targets"]}
    assert found == {
        (8, "lens/forward <= 1e+09"): True, (12, "lens/forward <= 1e+09"): True,
        (12, "forward/lens <= 1e-09 at 10 tokens and above"): False,  # from_tokens: not checked at 8
        (8, "every layer read"): True, (12, "every layer read"): True,
    }
    md = (out / "toy.md").read_text()
    assert "Targets: 4 of 5 met" in md
    assert "| tiny-llama | 12 | forward/lens <= 1e-09 at 10 tokens and above | **NOT met** |" in md


def test_markdown_has_every_row_and_renders_again_from_the_json(toy_run):
    suite, out, report, _ = toy_run
    md = (out / "toy.md").read_text()
    for r in report["results"]:
        assert f"| {r['model']} | {r['tokens']} | {r['case']} {r['label']} |" in md
    assert "skipped: too short for this case" in md and "measured once" in md
    assert "lens/forward: the lens against a forward pass" in md and "Toy section: 2 rows kept." in md
    assert "| model | tokens | " + " | ".join(r.name for r in suite.ratios) + " |" in md
    assert markdown(json.loads((out / "toy.json").read_text()), suite) == md


def test_figures_follow_the_declaration(toy_run):
    suite, _, report, _ = toy_run
    fig = time_figure(report, suite)
    assert [t.legendgroup for t in fig.data] == [c.key for c in suite.cases]
    for trace in fig.data:
        expected = [12] if trace.legendgroup == "long_only" else TOKENS
        assert list(trace.x) == expected and all(_positive(y) for y in trace.y)
        assert trace.line.color == suite.case(trace.legendgroup).colour
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    ratios = ratio_figure(report, suite)
    assert [t.name for t in ratios.data] == [r.name for r in suite.ratios if r.plot]
    assert list(ratios.data[0].y) == [row["lens/forward"]["time"] for row in report["ratios"]]


def test_append_keeps_earlier_rows_and_replaces_those_measured_again(tiny, tmp_path):
    suite = toy_suite(tiny, [])
    common = ["--reps", "1", "--out", str(tmp_path), "--no-plot", "--cases", "lens,forward"]
    harness.run_suite(suite, ["--tokens", "8"] + common)
    second = harness.run_suite(suite, ["--tokens", "12", "--append"] + common)
    assert [(r["tokens"], r["case"]) for r in second["results"]] == [(8, "lens"), (8, "forward"), (12, "lens"),
                                                                     (12, "forward")]
    assert [r["tokens"] for r in second["kept"]] == [8, 12]
    assert [part["settings"]["tokens"] for part in second["runs"]] == [[8], [12]]
    third = harness.run_suite(suite, ["--tokens", "8", "--append", "--reps", "1", "--out", str(tmp_path),
                                      "--no-plot", "--cases", "lens"])
    assert [(r["tokens"], r["case"]) for r in third["results"]] == [(12, "lens"), (12, "forward"), (8, "lens")]
    assert [r["tokens"] for r in third["ratios"]] == [12, 8]
    assert third["runs"][-1]["replaces"] == ["tiny-llama at 8 tokens"]
    md = (tmp_path / "toy.md").read_text()
    assert "Done in 3 parts" in md and "replaces the earlier tiny-llama at 8 tokens" in md


def test_bad_options_are_refused_with_the_choices(tiny, tmp_path, capsys):
    suite = toy_suite(tiny, [])
    for argv, says in ((["--cases", "lens,zz"], "choose from lens, forward, once, long_only"),
                       (["--tokens", "8,x"], "whole numbers"),
                       (["--dtype", "bf16"], "runs in fp32 only"),
                       (["--reps", "0"], "--reps and --threads must be >= 1")):
        with pytest.raises(SystemExit):
            harness.run_suite(suite, argv + ["--out", str(tmp_path)])
        assert says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- every declared suite


def test_every_suite_is_listed_and_declared_consistently(capsys):
    from bench.__main__ import main

    suites = all_suites()
    assert len(suites) >= 5
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    stems = [s.stem for s in suites.values()]
    assert len(set(stems)) == len(stems)  # no two suites write the same files
    for name, suite in suites.items():
        assert f"{name}: {suite.title}" in listed
        assert problems(suite) == [], name
        keys = {c.key for c in suite.cases}
        for ratio in suite.ratios:
            assert set(ratio.over) | set(ratio.under) <= keys, f"{name}: {ratio.name}"
        if any(make is time_figure for _, make, _ in suite.figures):
            assert all(c.colour for c in suite.cases), f"{name}: every case needs a colour for its figure"
        assert suite.defaults.models and suite.defaults.reps >= 1
    assert main(["no-such-suite"]) == 2 and "choose one of" in capsys.readouterr().err


def test_the_declaration_check_finds_what_is_wrong(tiny):
    suite = toy_suite(tiny, [])
    from dataclasses import replace

    bad = replace(suite, cases=suite.cases + (suite.cases[0],),
                  ratios=suite.ratios + (Ratio("lens/nothing", ("lens",), ("nothing",)),))
    found = problems(bad)
    assert "case key 'lens' declared twice" in found
    assert any("ratio 'lens/nothing' needs cases ['nothing']" in p for p in found)
    with pytest.raises(ValueError, match="declared wrongly"):
        harness.run_suite(bad, [])


# ---------------------------------------------------------------- measurement


def test_peak_memory_sees_a_large_allocation():
    size = 256 * 2**20
    with PeakMemory("cpu") as idle:
        pass
    with PeakMemory("cpu") as memory:
        block = torch.ones(size // 4)  # written, so resident
        del block
    # 256 MiB is far above glibc's largest mmap threshold (32 MiB), so the tensor gets fresh pages,
    # all resident once written: extra >= size up to page and RSS accounting granularity (kB). The
    # 10% margins are generous, not derived; what they catch (an allocation not seen at all, or a
    # peak left over from earlier) reads near 0 or near size, far from either threshold.
    assert memory.extra >= 0.9 * size, memory.extra
    assert idle.extra < 0.1 * size
    assert memory.peak - memory.base == memory.extra
    run = run_once(lambda: torch.ones(size // 4).sum(), "cpu")
    assert run.extra_bytes >= 0.9 * size and run.result is None and run.seconds > 0


def test_measure_row_reads_each_result_right_after_it_ran():
    order = []

    def step(name):
        def fn():
            order.append(name)
            return len(order)

        return fn

    measured, kept = measure_row({
        "x": Timed(step("x"), reps=3, read=lambda result: {"seen": result, "at": list(order)}),
        "y": Timed(step("y"), reps=2, keep=True, warm_up=True),
    }, "cpu")
    assert order == ["x", "y", "y", "x", "y", "x"]
    assert measured["x"]["seen"] == 6 and measured["x"]["at"] == order  # the last run's result, at once
    assert kept == {"y": 5} and len(measured["y"]["times_s"]) == 2 and "seen" not in measured["y"]


# ---------------------------------------------------------------- the lens suite's computations


def test_lens_suite_on_the_tiny_model(tmp_path):
    """Every declared case measured or skipped with a reason, every ratio present, lenslib agreeing
    with TransformerLens's own lens."""
    suite = all_suites()["lens"]
    report = harness.run_suite(suite, ["--tiny", "--tokens", "8,24", "--reps", "1", "--out", str(tmp_path),
                                       "--no-plot"])
    keys = [c.key for c in suite.cases]
    assert [r["case"] for r in report["results"]] == keys * 2
    assert all("median_s" in r or r["skipped"] for r in report["results"])
    assert all(set(row) >= {r.name for r in suite.ratios} for row in report["ratios"])
    # exact agreement is derived, not observed: on these prompts the tiny model's smallest gap
    # between a target's logit and any other is 110x (24 tokens; 322x at 8) the two float32 logits'
    # rounding bound gamma_d sum|x w| (d = 32), and top-1 is compared only where lenslib's top two
    # probabilities are tie_gap apart; entropy_tol is the two paths' worst-case rounding (agreement)
    for g in report["agreement"]:
        assert g["top1_disagree"] == 0 and g["entropy_over_tolerance"] == 0 and g["rank_disagree"] == 0
        assert g["top1_compared"] + g["top1_ties_skipped"] == 3 * g["tokens"]
    assert [g["tokens"] for g in report["agreement"]] == [8, 24]
    assert "Disagreements (findings): none." in (tmp_path / "results.md").read_text()


def test_agreement_reports_a_disagreement(tiny):
    """A wrong top-1, entropy or rank on lenslib's side is counted, not hidden."""
    import copy
    import inspect

    import lenslib
    from bench.suites.lens import TOP_K, case_tl_targets, case_tl_top_k
    from bench.suites.lens_agreement import agreement

    defaults = {name: p.default for name, p in inspect.signature(agreement).parameters.items()}

    prompt, tokens, _ = prompt_of_length(tiny, passage_text(), 12)
    lens = lenslib.logit_lens(tiny, prompt, k=TOP_K)
    top, targets = case_tl_top_k(tiny, tokens), case_tl_targets(tiny, tokens)
    assert agreement(lens, top, targets)["top1_disagree"] == 0
    broken = copy.deepcopy(lens)
    broken.top_ids[1, 3, 0] = (broken.top_ids[1, 3, 0] + 1) % 64
    broken.entropy[0, 2] += 10 * defaults["entropy_tol"]  # well past the tolerance it is counted against
    broken.target_rank[2, 5] += 1
    found = agreement(broken, top, targets)
    # counted unless lenslib's own top two are within agreement's tie gap (then either order is right)
    assert found["top1_disagree"] == int(lens.top_probs[1, 3, 0] - lens.top_probs[1, 3, 1] > defaults["tie_gap"])
    assert found["entropy_over_tolerance"] == 1 and found["rank_disagree"] == 1
    assert found["rank_disagree_where"] == [f"{lens.layer_labels[2]} pos 5"]
    assert torch.equal(top.readout.top_ids[:, 0], lens.top_ids)  # same top-5 on the tiny model


def test_prompts_are_exactly_n_tokens_of_the_passage(tiny):
    import lenslib

    text = passage_text()
    # a size floor, not a tolerance: real prose (2046 words, 2652 SmolLM2 tokens when written);
    # longer prompts repeat it, so the floor only guards against a truncated file
    assert len(text.split()) > 1000
    for n in (2, 17, 127):
        prompt, tokens, copies = prompt_of_length(tiny, text, n)
        assert tokens.shape == (1, n) and copies >= 1
        assert text.startswith(prompt[:200])
        assert len(lenslib.logit_lens(tiny, prompt, positions=None).positions) == n


def test_lens_cases_compute_what_the_lens_computes(tiny):
    """The naive path gives the lens's statistics, and the floor's matmul gives its logits: the
    ratios compare like with like."""
    import lenslib
    from bench.suites.lens import TOP_K, case_floor, case_naive, normalised_resid

    model = tiny
    prompt, tokens, _ = prompt_of_length(model, passage_text(), 20)
    lens = lenslib.logit_lens(model, prompt, k=TOP_K)
    with torch.no_grad():
        entropy, top_lp, top_ids, kl = case_naive(model, tokens)
        resid = normalised_resid(model, tokens)
        logits = case_floor(resid, model.W_U, model.b_U, chunk_bytes=2**30)  # one tile
        small = case_floor(resid, model.W_U, model.b_U, chunk_bytes=3 * 4 * 64 * 7)  # 7 positions
        narrow = case_floor(resid, model.W_U, model.b_U, chunk_bytes=3 * 4 * 16)  # 1 x 16 columns
        unembedded = model.unembed(resid)
        _, cache = model.run_with_cache(tokens)  # the rows case_naive decodes (the bridge's forward)
        naive_rows = cache.accumulated_resid(apply_ln=True)[:, 0]
    # tests/numerics.py steps 2-4: the two paths' rows differ by a measured amount (delta); the
    # naive float32 log-softmax rounds like the lens's tile sums (tiled=2); the naive probabilities
    # are one float32 exp of a stored log-probability more (u |log p| and exp's ulps, relative)
    delta = logit_shift(resid, naive_rows, model.W_U, model.b_U)
    naive = SimpleNamespace(entropy=entropy[:, 0], kl_to_final=kl[:, 0])
    tol = lens_tolerances(delta, lens, naive, columns=tile_columns(model))
    assert_within(entropy[:, 0], lens.entropy, tol["entropy"], "entropy")
    assert_within(kl[:, 0], lens.kl_to_final, tol["kl_to_final"], "kl_to_final")
    naive_probs = top_lp[:, 0].exp()  # sorted, like the lens's: order statistics move no more than values
    rtol = tol["prob_rtol"].unsqueeze(-1) + U32 * (top_lp[:, 0].double().abs() + EXP_ULPS)
    larger = torch.maximum(naive_probs, lens.top_probs).double()
    assert_within(naive_probs, lens.top_probs, larger * rtol + 2 * SUBNORMAL32, "top probabilities")
    # the floor's tiles and model.unembed: two float32 products of the same rows, each within
    # step 1's elementwise bound, plus a rounding for a bias added separately
    bound = 2 * matmul_error(resid, model.W_U, model.b_U) + U32 * unembedded.double().abs()
    assert resid.shape == (3, 20, 32) and logits.shape == (20 * 3, 64)  # rows are [pos, layer]
    assert_within(logits.view(20, 3, 64).transpose(0, 1), unembedded, bound, "one tile")
    assert small.shape == (6 * 3, 64)  # blocks of 7 positions: 0-6, 7-13, 14-19
    assert_within(small.view(6, 3, 64).transpose(0, 1), unembedded[:, 14:], bound[:, 14:], "7 positions")
    assert narrow.shape == (3, 16)  # the last tile: position 19, columns 48-63
    assert_within(narrow, unembedded[:, 19, 48:], bound[:, 19, 48:], "16 columns")


def test_tl_agreement_suite_against_float64_on_the_tiny_model(tiny, tmp_path):
    """Each lens's error against float64 from Hugging Face alone: small, not zero, same ranks."""
    import lenslib

    report = harness.run_suite(all_suites()["tl-agreement"], ["--tiny", "--out", str(tmp_path)])
    [row] = report["errors_against_float64"]
    assert row["layers"] == 3 and row["ranks_compared"] == 3 * (row["tokens"] - 1)
    assert len(row["lenses"]) == 3
    # tests/numerics.py steps 2-4 against float64: a float32 forward's rows are held to step 6's
    # criterion (criterion_shift); an entropy over 64 tokens is at most ln 64; one float32 side
    prompt, _, _ = prompt_of_length(tiny, passage_text(), row["tokens"])
    delta = criterion_shift(tiny, decoded(tiny, [lenslib.logit_lens(tiny, prompt)], "sdpa")[0], row["tokens"])
    worst = SimpleNamespace(entropy=torch.full_like(delta, math.log(64)), kl_to_final=torch.zeros_like(delta))
    bound = float(lens_tolerances(delta, worst, worst, columns=tile_columns(tiny), tiled=1)["entropy"].max())
    for lens in row["lenses"]:
        assert 0 < lens["entropy_max_abs_err_nats"] <= bound, bound  # fp32 against float64: not zero either
        # exact counts, with no near-tie allowance (numerics step 5): the tiny model's random
        # logits have no tie within rounding on this passage; a CPU that found one would fail here
        assert lens["rank_differs_from_float64"] == 0 and lens["top1_differs_from_float64"] == 0
    md = (tmp_path / "tl_agreement.md").read_text()
    assert all(f"| {lens['lens']} |" in md for lens in row["lenses"])


@pytest.mark.real_model
def test_tuned_suites_on_smollm2(tmp_path):
    """The tuned lens's targets from its record and on a short held-out slice, and a lens call."""
    suites = all_suites()
    tuned = harness.run_suite(suites["tuned"], ["--models", "smollm2-135m", "--tokens", "24", "--reps", "1",
                                                "--out", str(tmp_path)])
    declared = {t.text for t in suites["tuned"].all_targets()}
    assert {t["target"] for t in tuned["targets"]} == declared
    assert "tuned lens of smollm2-135m" in (tmp_path / "tuned_results.md").read_text()
    held = harness.run_suite(suites["tuned-heldout"], ["--models", "smollm2-135m", "--tokens", "64",
                                                       "--out", str(tmp_path)])
    [score] = held["results"]
    assert score["heldout_tokens"] >= 64 and len(score["table"]) == len(LENSES) * 31
    assert {t["target"] for t in held["targets"]} == {t.text for t in suites["tuned-heldout"].all_targets()}
    found = score["intervals_nats"]
    assert found["layers"] == [f"{i}_pre" for i in range(30)] and found["texts"] == score["windows"]
    assert list(found["lenses"]) == list(LENSES) and list(found["pairs"]) == [pair_name(a, b) for a, b in PAIRS]
    # 64 tokens are one or two windows: every resampled mean is one window's, the other's, or (two
    # windows, one of each) the point itself, so each interval holds its point exactly
    for v in found["lenses"].values():
        assert all(lo <= x <= hi for lo, x, hi in zip(v["low"], v["mean"], v["high"]))
    for v in found["pairs"].values():
        assert all(lo <= x <= hi for lo, x, hi in zip(v["low"], v["diff"], v["high"]))
    # the bootstrap's point is the table's mean: both average the same positive per-token KLs in
    # float64, the bootstrap's copy stored as float32 (each value moved by at most 2^-24 of itself,
    # so the mean too) and summed in another order (float64: n 2^-53, negligible for n < 10^6); the
    # JSON keeps the intervals to 6 decimals (half a unit: 5e-7 nats)
    for lens, mean in found["mean_but_last"]["lenses"].items():
        assert mean["low"] <= mean["mean"] <= mean["high"]
        assert math.isclose(mean["mean"], score["mean_kl_nats_but_last"][lens], rel_tol=2**-24 + 1e6 * 2**-53,
                            abs_tol=5e-7), lens
    import lenslib
    from lenslib.tuned.evaluate import translators_sha256

    assert held["lenses"]["smollm2-135m"]["translators_sha256"]["tuned"] == translators_sha256(
        lenslib.tuned_lens("smollm2-135m", progress=False))
    md = (tmp_path / "tuned_heldout.md").read_text()
    assert all(f"KL {lens} |" in md for lens in LENSES) and all(f"{pair_name(a, b)} |" in md for a, b in PAIRS)


def test_the_bench_doctests_pass():
    import doctest

    import bench.measure
    import bench.suite

    for module in (bench.suite, bench.measure):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__

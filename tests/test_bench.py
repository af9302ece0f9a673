"""bench/lens_bench.py on the tiny model: every case measured, every ratio present, files written."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "lens_bench.py"
CASES = ["a", "b", "d", "d_torch", "e", "e'", "f", "f_bridge", "g", "g_t", "c"]  # the order each repetition runs
RATIOS = ["a/d", "b/e", "a/c", "a/g_tl_builtin", "b/e'", "f/e'", "f_bridge/e'"]
TOKENS = [8, 24]
# The naive path's estimate on the tiny model is 4.5 x 3 layers x n x 64 x 4 bytes: 28 kB at 8
# tokens, 83 kB at 24. A 50 kB limit runs it at 8 and skips it at 24, so one run tests both.
LIMIT_GB = "5e-5"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lens_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny():
    import lenslib

    return lenslib.load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--tiny", "--tokens", ",".join(map(str, TOKENS)), "--reps", "2", "--out", str(out), "--no-plot",
            "--naive-mem-limit-gb", LIMIT_GB]
    returned = bench.main(argv)
    return out, returned


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_json_has_every_case_measured(run, bench):
    out, returned = run
    report = json.loads((out / "results.json").read_text())
    assert report["results"] == json.loads(json.dumps(returned["results"]))
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["dtype"] == "float32"
    assert machine["cpu_cores"] >= 1 and machine["cpu_model"] and machine["torch"]
    seen = {(r["tokens"], r["case"]) for r in report["results"]}
    assert seen == {(n, c) for n in TOKENS for c in CASES}
    skipped = [r for r in report["results"] if "skipped" in r]
    assert [(r["tokens"], r["case"]) for r in skipped] == [(24, "c")]
    assert "exceeds the limit" in skipped[0]["skipped"] and "median_s" not in skipped[0]
    for r in report["results"]:
        assert r["model"] == "tiny-llama" and r["device"] == "cpu"
        if "skipped" in r:
            continue
        assert len(r["times_s"]) == 2 and all(_positive(t) for t in r["times_s"])
        assert _positive(r["median_s"]) and r["min_s"] <= r["median_s"]
        assert isinstance(r["peak_extra_bytes"], int) and r["peak_extra_bytes"] >= 0
        assert r["peak_extra_bytes"] == max(r["peak_extra_bytes_each"])
        assert len(r["load_average_1m_each"]) == 2
    for r in report["results"]:
        if r["case"] == "d":
            assert _positive(r["gflop_per_s"])
        if r["case"] == "c":
            assert r["estimated_peak_extra_bytes"] == int(bench.NAIVE_LIVE_TENSORS * 3 * r["tokens"] * 64 * 4)


def test_every_ratio_is_present_and_consistent(run):
    out, _ = run
    report = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["tokens"]) for r in report["ratios"]] == [("tiny-llama", n) for n in TOKENS]
    times = {(r["tokens"], r["case"]): r.get("median_s") for r in report["results"]}
    memory = {(r["tokens"], r["case"]): r.get("peak_extra_bytes") for r in report["results"]}
    for row in report["ratios"]:
        n = row["tokens"]
        for ratio in RATIOS:
            num, den = ratio.removesuffix("_tl_builtin").split("/")
            if (n, den) == (24, "c"):
                assert row[ratio]["time"] is None and row[ratio]["memory"] is None
                assert row[ratio]["why_none"] == "case c skipped"
                continue
            assert _positive(row[ratio]["time"])
            assert row[ratio]["time"] == pytest.approx(times[n, num] / times[n, den])
            if memory[n, den] > 0:
                assert row[ratio]["memory"] == pytest.approx(memory[n, num] / memory[n, den])
            else:
                assert row[ratio]["memory"] is None
        unavoidable = times[n, "d"] + times[n, "f"]
        assert row["(d+f)/d"]["time"] == pytest.approx(unavoidable / times[n, "d"])
        assert row["a/(d+f)"]["time"] == pytest.approx(times[n, "a"] / unavoidable)
        tl_both = times[n, "g"] + times[n, "g_t"]
        assert row["a/(g+g_t)_tl_builtin"]["time"] == pytest.approx(times[n, "a"] / tl_both)
        assert row["a/(g+g_t)_tl_builtin"]["memory"] is None  # peaks of two calls do not add


def test_lenslib_agrees_with_transformer_lens_own_lens(run):
    out, _ = run
    report = json.loads((out / "results.json").read_text())
    assert [(g["model"], g["tokens"]) for g in report["agreement"]] == [("tiny-llama", n) for n in TOKENS]
    for g in report["agreement"]:
        n = g["tokens"]
        assert g["positions"] == n and g["layers"] == 3
        assert g["top1_compared"] + g["top1_ties_skipped"] == 3 * n
        assert g["top1_disagree"] == 0 and g["entropy_over_tolerance"] == 0
        assert g["ranks_compared"] == 3 * (n - 1) and g["rank_disagree"] == 0
        assert g["entropy_max_abs_diff_nats"] < 1e-4
    assert "Disagreements (findings): none." in (out / "results.md").read_text()


def test_agreement_reports_a_disagreement(bench, tiny):
    """A wrong top-1, entropy or rank on lenslib's side is counted, not hidden."""
    import copy

    import torch

    import lenslib
    from bench.cases import agreement, case_tl_targets, case_tl_top_k

    prompt, tokens, _ = bench.prompt_of_length(tiny, bench.PASSAGE.read_text(), 12)
    lens = lenslib.logit_lens(tiny, prompt, k=bench.TOP_K)
    top, targets = case_tl_top_k(tiny, tokens), case_tl_targets(tiny, tokens)
    assert agreement(lens, top, targets)["top1_disagree"] == 0
    broken = copy.deepcopy(lens)
    broken.top_ids[1, 3, 0] = (broken.top_ids[1, 3, 0] + 1) % 64
    broken.entropy[0, 2] += 1e-3
    broken.target_rank[2, 5] += 1
    found = agreement(broken, top, targets)
    assert found["top1_disagree"] == int(lens.top_probs[1, 3, 0] - lens.top_probs[1, 3, 1] > 1e-5)
    assert found["entropy_over_tolerance"] == 1 and found["rank_disagree"] == 1
    assert found["rank_disagree_where"] == [f"{lens.layer_labels[2]} pos 5"]
    assert torch.equal(top.readout.top_ids[:, 0], lens.top_ids)  # same top-5 on the tiny model


def test_prompts_are_exactly_n_tokens_of_the_passage(bench, tiny):
    import lenslib

    model = tiny
    text = bench.PASSAGE.read_text()
    assert len(text.split()) > 1000  # real prose, enough for 2048 tokens of a real tokenizer
    for n in (2, 17, 127):
        prompt, tokens, copies = bench.prompt_of_length(model, text, n)
        assert tokens.shape == (1, n) and copies >= 1
        assert text.startswith(prompt[:200])
        assert len(lenslib.logit_lens(model, prompt, positions=None).positions) == n


def test_markdown_table_and_figure(run, bench):
    out, report = run
    md = (out / "results.md").read_text()
    assert "| model | tokens | case |" in md and "| a/d |" in md and "| a/(d+f) |" in md
    for n in TOKENS:
        for case, label in bench.CASES.items():
            assert f"| tiny-llama | {n} | {case} {label} |" in md
    assert "skipped: estimated" in md and "| a/g_tl_builtin |" in md and "Agreement with TransformerLens" in md
    fig = bench.figure(report)  # structure only; rendering a PNG needs a browser (slow)
    assert [trace.legendgroup for trace in fig.data] == CASES
    for trace in fig.data:
        measured = [8] if trace.legendgroup == "c" else TOKENS
        assert list(trace.x) == measured and all(_positive(y) for y in trace.y)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    ratio_fig = bench.report_module.ratio_figure(report)
    assert [t.name for t in ratio_fig.data] == ["a/g_tl_builtin", "a/d", "a/(d+f)", "b/e'", "f/e'"]
    assert list(ratio_fig.data[0].x) == TOKENS
    assert list(ratio_fig.data[0].y) == [r["a/g_tl_builtin"]["time"] for r in report["ratios"]]


def test_cases_option_runs_a_subset_and_the_ratios_say_what_is_missing(bench, tmp_path):
    report = bench.main(["--tiny", "--tokens", "8", "--reps", "1", "--out", str(tmp_path), "--no-plot",
                         "--cases", "a,g,d"])
    assert [r["case"] for r in report["results"]] == ["a", "d", "g"]
    row = report["ratios"][0]
    assert row["a/d"]["time"] > 0 and row["a/g_tl_builtin"]["time"] > 0
    assert row["b/e'"] == {"time": None, "memory": None, "why_none": "case b not run"}
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--cases", "a,zz", "--out", str(tmp_path)])


def test_cases_compute_what_the_lens_computes(bench, tiny):
    """c gives the lens's statistics, and d's matmul gives its logits: the ratios compare like with like."""
    import torch

    import lenslib

    model = tiny
    prompt, tokens, _ = bench.prompt_of_length(model, bench.PASSAGE.read_text(), 20)
    lens = lenslib.logit_lens(model, prompt, k=bench.TOP_K)
    with torch.no_grad():
        entropy, top_lp, top_ids, kl = bench.case_naive(model, tokens)
        resid = bench.normalised_resid(model, tokens)
        logits = bench.case_floor(resid, model.W_U, model.b_U, chunk_bytes=2**30)  # one tile
        small = bench.case_floor(resid, model.W_U, model.b_U, chunk_bytes=3 * 4 * 64 * 7)  # 7 positions
        narrow = bench.case_floor(resid, model.W_U, model.b_U, chunk_bytes=3 * 4 * 16)  # 1 x 16 columns
        unembedded = model.unembed(resid)
    torch.testing.assert_close(entropy[:, 0], lens.entropy, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kl[:, 0], lens.kl_to_final, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(top_lp[:, 0].exp(), lens.top_probs, atol=1e-5, rtol=1e-4)
    assert resid.shape == (3, 20, 32) and logits.shape == (20 * 3, 64)  # rows are [pos, layer]
    torch.testing.assert_close(logits.view(20, 3, 64).transpose(0, 1), unembedded, atol=1e-5, rtol=1e-5)
    assert small.shape == (6 * 3, 64)  # blocks of 7 positions: 0-6, 7-13, 14-19
    torch.testing.assert_close(small.view(6, 3, 64).transpose(0, 1), unembedded[:, 14:], atol=1e-5, rtol=1e-5)
    assert narrow.shape == (3, 16)  # the last tile: position 19, columns 48-63
    torch.testing.assert_close(narrow, unembedded[:, 19, 48:], atol=1e-5, rtol=1e-5)


def test_tl_agreement_against_float64_on_the_tiny_model(tmp_path):
    """bench/tl_agreement.py: each lens's error against float64 from Hugging Face alone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tl_agreement", BENCH.parent / "tl_agreement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--model", "tiny-llama", "--positions", "20", "--out", str(tmp_path)])
    assert report["layers"] == 3 and report["ranks_compared"] == 3 * 19
    assert [r["lens"] for r in report["errors_against_float64"]] == [
        "lenslib (forward=sdpa)", "lenslib (forward=bridge)", "TransformerLens tools.analysis.logit_lens"]
    for row in report["errors_against_float64"]:
        assert 0 < row["entropy_max_abs_err_nats"] < 1e-4  # fp32 against float64: small, not zero
        assert row["rank_differs_from_float64"] == 0 and row["top1_differs_from_float64"] == 0
    assert "| lenslib (forward=sdpa) |" in (tmp_path / "tl_agreement.md").read_text()


def test_append_adds_a_part_and_keeps_each_parts_machine(bench, tmp_path):
    first = ["--tiny", "--tokens", "8", "--reps", "1", "--out", str(tmp_path), "--no-plot", "--cases", "a,d"]
    bench.main(first)
    report = bench.main(["--tiny", "--tokens", "12", "--reps", "1", "--out", str(tmp_path), "--no-plot",
                         "--cases", "a,b", "--append"])
    assert [(r["tokens"], r["case"]) for r in report["results"]] == [(8, "a"), (8, "d"), (12, "a"), (12, "b")]
    assert [r["tokens"] for r in report["ratios"]] == [8, 12]
    assert [part["settings"]["tokens"] for part in report["runs"]] == [[8], [12]]
    assert "Done in 2 parts" in (tmp_path / "results.md").read_text()
    again = bench.main(["--tiny", "--tokens", "8", "--reps", "1", "--out", str(tmp_path), "--no-plot",
                        "--cases", "a,g", "--append"])
    assert [(r["tokens"], r["case"]) for r in again["results"]] == [(12, "a"), (12, "b"), (8, "a"), (8, "g")]
    assert again["runs"][-1]["replaces"] == ["tiny-llama at 8 tokens"]
    assert "replaces the earlier tiny-llama at 8 tokens" in (tmp_path / "results.md").read_text()

"""``lenslib attribute`` / ``lenslib patch`` run for real in subprocesses, and one-line warnings."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
from numerics import U32, U64, gamma

from lenslib.causal.attribution import attribute
from tests.test_attribution import _heads_bound, _own_parts, _sum_check_bound
from tests.test_cli import run


def test_help_with_examples():
    for command in ("attribute", "patch"):
        out = run(command, "--help")
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout and "examples:" in out.stdout


def test_attribute_writes_json_csv_html(tmp_path, tiny):
    out = run("attribute", "abcab", "--target", "c", "--versus", "d", "--model", "tiny-llama", "--per-head",
              "--top", "3", "--json", str(tmp_path / "a.json"), "--csv", str(tmp_path / "a.csv"),
              "--html", str(tmp_path / "a.html"))
    assert out.returncode == 0, out.stderr
    assert "final norm scale frozen" in out.stdout and len([l for l in out.stdout.splitlines() if l.startswith("  ")]) == 3
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["component_labels"][:2] == ["embed", "0_attn_h0"] and data["versus_token"] == "d"
    # the sum check: tests/test_attribution.py's derived bound for this attribution (per head: the
    # blocks' sum check plus the heads' own rounding), and Python's float64 re-summation of the
    # JSON numbers (gamma_{n+2} in float64 of their absolute sum)
    result = attribute(tiny, "abcab", target="c", versus="d", per_head=True)
    parts, streams = _own_parts(tiny, "abcab")
    bound = _sum_check_bound(tiny, result, parts, streams, "c", "d") + float(_heads_bound(tiny, "abcab", "c", "d").sum())
    terms = data["contributions"] + [data["constant"], data["total"]]
    bound += gamma(len(terms), U64) * sum(map(abs, terms))
    assert abs(sum(data["contributions"]) + data["constant"] - data["total"]) <= bound
    frame = pd.read_csv(tmp_path / "a.csv")
    assert list(frame.columns) == ["component", "block", "kind", "contribution"] and len(frame) == len(data["component_labels"])
    page = (tmp_path / "a.html").read_text()
    assert "Plotly.newPlot" in page and "<script src=" not in page


def test_patch_writes_json_csv_html(tmp_path):
    out = run("patch", "abcab", "abdab", "--answer", "c", "--model", "tiny-llama", "--metric", "logit",
              "--json", str(tmp_path / "p.json"), "--csv", str(tmp_path / "p.csv"), "--html", str(tmp_path / "p.html"))
    assert out.returncode == 0, out.stderr
    assert "best patch" in out.stdout and "final_post" in out.stdout
    data = json.loads((tmp_path / "p.json").read_text())
    assert len(data["restored"]) == 3 and len(data["restored"][0]) == 6
    frame = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert len(frame) == 18 and set(frame["corrupt_token"]) >= {"d"}
    assert "Plotly.newPlot" in (tmp_path / "p.html").read_text()


def test_patch_components_on_the_command_line(tmp_path):
    out = run("patch", "abcab", "abdab", "--answer", "c", "--model", "tiny-llama", "--site", "head",
              "--direction", "noising", "--positions", "3,5", "--json", str(tmp_path / "h.json"),
              "--csv", str(tmp_path / "h.csv"), "--html", str(tmp_path / "h.html"))
    assert out.returncode == 0, out.stderr
    assert "(head, noising)" in out.stdout and "removes" in out.stdout and "1_attn_h" in out.stdout
    data = json.loads((tmp_path / "h.json").read_text())
    assert data["site"] == "head" and data["direction"] == "noising" and data["positions"] == [3, 5]
    assert len(data["restored"]) == 8 and data["head"][:5] == [0, 1, 2, 3, 0]
    # effect = 1 - restored, one float32 subtraction: within u of the exact difference, relative
    assert data["effect"][0][0] == pytest.approx(1 - data["restored"][0][0], rel=U32, abs=0)
    frame = pd.read_csv(tmp_path / "h.csv", keep_default_na=False)
    assert len(frame) == 16 and set(frame["head"]) == {0, 1, 2, 3}
    page = (tmp_path / "h.html").read_text()
    assert page.count("Plotly.newPlot") == 3 and "corrupt into clean" in page  # heads map + two heatmaps
    out = run("patch", "abcab", "abdab", "--answer", "c", "--model", "tiny-llama", "--site", "mlp")
    assert out.returncode == 0, out.stderr
    assert "(mlp, denoising)" in out.stdout and "1_mlp" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["patch", "abc", "abcd", "--answer", "c", "--model", "tiny-llama"], "same number of tokens"),
        (["patch", "abc", "abd", "--answer", "c", "--model", "tiny-llama", "--site", "heads"], "invalid choice"),
        (["patch", "abc", "abd", "--answer", "c", "--model", "tiny-llama", "--positions", "x"], "--positions takes"),
        (["patch", "abc", "abd", "--answer", "", "--model", "tiny-llama"], "empty"),
        (["attribute", "abc", "--target", "cd", "--model", "tiny-llama"], "2 tokens"),
        (["attribute", "abc", "--model", "tiny-llama"], "--target"),
        (["attribute", "", "--target", "c", "--model", "tiny-llama"], "prompt is empty"),
    ],
)
def test_usage_errors_are_one_line(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_warnings_print_as_one_line(monkeypatch, capsys):
    import lenslib.lens.logit_lens as module
    from lenslib.cli import main as cli

    real = module.logit_lens

    def noisy(*args, **kwargs):
        warnings.warn("something\nto know", UserWarning)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "logit_lens", noisy)  # what lenslib.cli.lens calls
    assert cli.main(["lens", "abc", "--model", "tiny-llama"]) == 0
    err = capsys.readouterr().err
    assert err == "lenslib: warning: something to know\n"


def test_multi_token_target_on_the_command_line():
    out = run("lens", "abc", "--model", "tiny-llama", "--target", "de")
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and "joint, 2 tokens" in out.stdout

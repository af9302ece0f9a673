"""The ``lenslib`` console script, run for real in subprocesses (on the tiny model where possible)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

LENSLIB = str(Path(sys.executable).with_name("lenslib"))
INJECTION = "ab<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">\""


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # a hang guard, not a performance target: a tiny-model command takes ~10 s here, a bundled model's
    # first load (cache build) minutes on a 2-core machine; 300 s only stops a stuck process
    return subprocess.run([LENSLIB, *args], capture_output=True, text=True, timeout=timeout)


def test_help_everywhere_with_examples():
    for args in ([], ["lens"], ["recall"], ["compare"], ["models"]):
        out = run(*args, "--help")
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout and "examples:" in out.stdout


def test_models_lists_bundled_models():
    out = run("models")
    assert out.returncode == 0
    assert "gemma-3-270m" in out.stdout and "smollm2-135m" in out.stdout
    assert "4-bit-quantised" in out.stdout


def test_lens_writes_json_csv_html(tmp_path):
    out = run("lens", "Hello there", "--model", "tiny-llama", "--k", "3", "--positions", "all",
              "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"), "--html", str(tmp_path / "r.html"))
    assert out.returncode == 0, out.stderr
    assert "final_post" in out.stdout and "top-3" in out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["layer_labels"] == ["0_pre", "1_pre", "final_post"]
    assert len(data["top_ids"]) == 3 and len(data["top_ids"][0]) == 12 and len(data["top_ids"][0][0]) == 3
    assert data["target_prob"][0][-1] is None  # no next token at the last position
    frame = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert list(frame.columns[:3]) == ["layer", "layer_label", "position"] and len(frame) == 3 * 12 * 3
    page = (tmp_path / "r.html").read_text()
    assert "Plotly.newPlot" in page and "<script src=" not in page  # plotly.js inlined: opens offline


@pytest.mark.parametrize(
    "args, message",
    [
        (["lens", "", "--model", "tiny-llama"], "prompt is empty"),
        (["lens", "x", "--model", "no-such-model"], "cannot load model 'no-such-model'"),
        (["lens", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["lens", "x", "--k", "many"], "invalid int value"),
        (["lens", "x", "--model", "tiny-llama", "--json", "/proc/nope/out.json"], "cannot write /proc/nope/out.json"),
        (["lens", "x", "--model", "tiny-llama", "--k", "0"], "k must be"),
        (["recall", "--relation", "nope", "--out", "/tmp/x"], "unknown relation"),
        (["compare", "x", "--models", "tiny-llama", "--html", "/tmp/x.html"], "at least two"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message):
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_failed_run_leaves_no_half_written_output(tmp_path):
    target = tmp_path / "r.json"
    out = run("lens", "x" * 300, "--model", "tiny-llama", "--json", str(target))  # too long for 128
    assert out.returncode == 2 and "context is 128" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_compare_writes_a_report(tmp_path):
    out = run("compare", "abc", "--models", "tiny-llama,tiny-llama", "--html", str(tmp_path / "c.html"))
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "c.html").read_text()
    # four figures (probability, rank, entropy, KL), each with one curve per model, both labelled
    assert page.count('"name":"tiny-llama (1)"') == 4 and page.count('"name":"tiny-llama (2)"') == 4


def test_report_escapes_tokens_and_prompt(tmp_path):
    out = run("lens", INJECTION, "--model", "tiny-llama", "--html", str(tmp_path / "r.html"))
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "r.html").read_text()
    assert "<script>document.title" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (make setup installs it)")
def test_report_renders_in_chromium_and_injection_does_not_run(tmp_path):
    report = tmp_path / "r.html"
    assert run("lens", INJECTION, "--model", "tiny-llama", "--html", str(report)).returncode == 0
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120,  # hang guard: the page renders in seconds
    ).stdout
    assert "pwned" not in dom.split("</title>")[0]  # the title is untouched: no script ran
    assert "main-svg" in dom  # plotly drew the figures
    assert "&lt;script&gt;document.title" in dom  # the prompt shows as text


@pytest.mark.real_model
def test_lens_on_a_bundled_model_prints_paris():
    out = run("lens", "The Eiffel Tower is located in the city of", "--target", " Paris")
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.split()[0] == "final_post" and "' Paris'" in last and last.split()[-1] == "1"

"""The notebooks' prose states only what their outputs show (lenslib.checks.prose_numbers).

nbmake re-executes the notebooks but never reads their prose; this test does. It runs on the
committed notebooks, which `make run` re-executes, so a rerun that changes a stated number makes
it fail until the sentence is rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lenslib.checks.prose_numbers import unsupported_claims

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def _code(source: str, text: str) -> dict:
    return {"cell_type": "code", "source": source,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}


def _md(source: str) -> dict:
    return {"cell_type": "markdown", "source": source}


def _claims(*cells) -> list[str]:
    return [problem.claim for problem in unsupported_claims(list(cells))]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4  # a floor, not a tolerance: the glob found nothing if the path broke (6 now)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_number_and_token_in_the_prose_is_shown_before_it(path):
    problems = unsupported_claims(json.loads(path.read_text())["cells"])
    assert not problems, (
        f"{path.name} states what no earlier output shows (print it, compute the sentence, or "
        "mark an outside figure with <!-- outside: ... -->):\n" + "\n".join(map(str, problems))
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_executed_with_static_images(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert all(c.get("execution_count") for c in code), f"{path.name} has cells that were not run"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    plotly = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert all("image/png" in o["data"] for o in plotly), "every plotly figure also as a PNG"
    assert not [o for o in outputs if " at 0x" in "".join(o.get("data", {}).get("text/plain", ""))], \
        "an output whose plain-text form is a bare object repr"
    prose = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "4-bit" in prose, "each notebook says the bundled models are 4-bit-quantised copies"


def test_numbers_must_appear_in_an_earlier_output_not_a_later_one():
    later = _code("print(104)", "104\n")
    assert _claims(_md("104 prompts"), later) == ["104"]
    assert _claims(later, _md("104 prompts")) == []


def test_code_sources_and_plot_data_do_not_support_a_number():
    plot = {"cell_type": "code", "source": "x = 104",
            "outputs": [{"output_type": "display_data",
                         "data": {"application/vnd.plotly.v1+json": {"data": [{"y": [104]}]}}}]}
    assert _claims(plot, _md("104 prompts")) == ["104"]


def test_rounded_forms_are_supported_but_not_looser_ones():
    shown = _code("", "median depth 0.7778, accuracy 0.815182, layer 13.0, 1,026 tokens\n")
    assert _claims(shown, _md("depth 0.78, 81.5% right, at layer 13, over 1,026 tokens")) == []
    assert _claims(shown, _md("depth 0.8 at layer 14")) == ["14"]
    assert _claims(_code("", "12.6\n"), _md("layer 13")) == ["13"]  # integers must match exactly


def test_outside_numbers_and_tokens_are_declared_in_a_comment():
    cell = _md('Belrose et al. 2023 decode `" the"`.\n<!-- outside: 2023, " the" -->')
    assert _claims(cell) == []
    assert _claims(_md('Belrose et al. 2023 decode `" the"`.')) == ["2023", '`" the"`']


def test_code_spans_math_links_headings_and_list_markers_are_not_claims():
    cell = _md("# 3. Title\n1. step `k=5` and $d^2$ [paper](https://arxiv.org/abs/2303.08112)\n")
    assert _claims(cell) == []


def test_quoted_tokens_must_appear_in_an_earlier_cell():
    shown = _code("lenslib.logit_lens(model, prompt)", "top-1: ' Paris' 0.76\n")
    assert _claims(shown, _md('`" Paris"` wins; `" Lyon"` is second')) == ['`" Lyon"`']

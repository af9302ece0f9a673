"""circuitsvis views: props built from the result, offline HTML, token text that cannot run."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from circuitsvis.utils.render import RenderedHTML
from numerics import U32

import lenslib
from lenslib.plotting.lens import clean_token
from lenslib.plotting.views import (
    LensView,
    layer_log_probs_view,
    next_token_prob_view,
    topk_view,
)

# Views hold the lens's float32 numbers, widened to float64 or passed through one float32 or
# float64 log: at most a rounding each side, so 4 u relative.
SAME = 4 * U32

IMG = """<img/src="x"/onerror="document.title='pwned'">"""  # no spaces: circuitsvis turns them into &nbsp;
BREAKOUT = "</script><script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def result(tiny):
    return lenslib.logit_lens(tiny, "Hello world", k=3)


@pytest.fixture(scope="module")
def hostile(result):
    """The same result with token strings that would run as code if inserted as HTML."""
    top = [[list(row) for row in layer] for layer in result.top_tokens]
    top[1][2][0] = IMG
    top[2][5][1] = BREAKOUT
    strs = list(result.str_tokens)
    strs[3] = BREAKOUT
    targets = list(result.target_tokens)
    targets[1] = IMG
    targets[4] = "<script>alert(1)</script>"
    return dataclasses.replace(result, top_tokens=top, str_tokens=strs, target_tokens=targets)


def _props(view, component):
    """The props object a view passes to CircuitsVis.render."""
    html = str(view)
    start = html.index(f"CircuitsVis.{component}, ") + len(f"CircuitsVis.{component}, ")
    return json.loads(html[start : html.rindex(");\n</script>")])


def test_next_token_prob_view(result):
    view = next_token_prob_view(result)
    assert isinstance(view, LensView) and isinstance(view, RenderedHTML)
    props = _props(view, "ColoredTokensMulti")
    assert props["tokens"] == [clean_token(t, visible_spaces=False) for t in result.target_tokens[:-1]]
    assert props["tokens"][:2] == ["H", "e"]  # BOS is never predicted, so never shown
    assert props["labels"] == result.layer_labels
    assert props["positiveBounds"] == [1.0, 1.0, 1.0]
    values = props["values"]  # [pos, layer]
    assert len(values) == 11 and len(values[0]) == 3
    assert values[4][1] == pytest.approx(float(result.target_prob[1, 4]), rel=SAME)


def test_next_token_prob_view_needs_next_token(tiny):
    fixed = lenslib.logit_lens(tiny, "Hello", target="a")
    with pytest.raises(ValueError, match="next input token as target"):
        next_token_prob_view(fixed)
    with pytest.raises(ValueError, match="positions=None"):
        next_token_prob_view(lenslib.logit_lens(tiny, "Hello", positions="last"))


def test_views_are_offline(result):
    for view in (next_token_prob_view(result), layer_log_probs_view(result), topk_view(result)):
        html = view._repr_html_()
        assert html == str(view) == view.local_src
        assert "unpkg.com" not in html and "<script src" not in html
        # the bundle is inlined: circuitsvis's iife.js is 1,295,474 bytes (a size floor, not a tolerance)
        assert "CircuitsVis.render(" in html and len(html) > 1_000_000


def test_layer_log_probs_view(result):
    props = _props(layer_log_probs_view(result, "1_pre"), "TokenLogProbs")
    assert props["prompt"] == [clean_token(t, visible_spaces=False) for t in result.str_tokens]
    assert len(props["topKLogProbs"]) == len(props["topKTokens"]) == 11
    assert props["topKLogProbs"][3][0] == pytest.approx(float(result.top_probs[1, 3, 0].log()), rel=SAME)
    assert props["topKTokens"][3] == [clean_token(t, visible_spaces=False) for t in result.top_tokens[1][3]]
    assert props["correctTokenRank"] == (result.target_rank[1, :-1] - 1).tolist()  # 0 = top
    assert props["correctTokenLogProb"][5] == pytest.approx(float(result.target_logprob[1, 5]), rel=SAME)
    assert _props(layer_log_probs_view(result, 1), "TokenLogProbs") == props
    assert _props(layer_log_probs_view(result), "TokenLogProbs")["correctTokenRank"] == (
        result.target_rank[-1, :-1] - 1
    ).tolist()


def test_layer_log_probs_view_errors(tiny, result):
    with pytest.raises(ValueError, match="unknown layer"):
        layer_log_probs_view(result, "9_pre")
    with pytest.raises(ValueError, match="layer must be"):
        layer_log_probs_view(result, 3)
    gaps = lenslib.logit_lens(tiny, "Hello world", positions=[1, 2, 5])
    with pytest.raises(ValueError, match="consecutive positions"):
        layer_log_probs_view(gaps)


def test_topk_view(result):
    props = _props(topk_view(result), "TopkTokens")
    n_layer, n_pos, k = result.top_ids.shape
    assert len(props["tokens"]) == len(props["topkVals"]) == n_pos
    assert props["sampleLabels"][1] == "position 1: H"
    assert props["thirdDimensionName"] == "Layer"
    for c in range(n_pos):
        vals, idxs = props["topkVals"][c][0], props["topkIdxs"][c][0]  # [k, layer]
        for l in range(n_layer):
            for j in range(k):
                assert props["tokens"][c][idxs[j][l]] == clean_token(result.top_tokens[l][c][j], visible_spaces=False)
                assert vals[j][l] == pytest.approx(float(result.top_probs[l, c, j]), rel=SAME)


def test_views_escape_tokens(hostile):
    views = {
        "ColoredTokensMulti": next_token_prob_view(hostile),
        "TokenLogProbs": layer_log_probs_view(hostile, 1),
        "TopkTokens": topk_view(hostile),
    }
    for component, view in views.items():
        html = str(view)
        assert "<img" not in html and "<script>alert" not in html and "<script>document" not in html
        assert html.count("</script>") == 1  # only the element's own closing tag
        text = json.dumps(_props(view, component))
        assert "&lt;img/src=" in text or "&lt;/script&gt;" in text
    assert _props(views["ColoredTokensMulti"], "ColoredTokensMulti")["tokens"][1] == clean_token(IMG)
    # sample labels are plain text in circuitsvis: not HTML-escaped, only made script-safe
    assert _props(views["TopkTokens"], "TopkTokens")["sampleLabels"][3] == f"position 3: {BREAKOUT}"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chrome/Chromium (apt-get install chromium)")
def test_views_render_without_running_token_code(hostile):
    views = [next_token_prob_view(hostile), layer_log_probs_view(hostile, 1), topk_view(hostile)]
    page = LensView("\n".join(str(v) for v in views)).document("lenslib view")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "view.html"
        path.write_text(page, encoding="utf-8")
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp}/profile", "--virtual-time-budget=3000", "--dump-dom", path.as_uri()],
            capture_output=True, text=True, timeout=120,  # a hang guard: it renders in seconds
        ).stdout
    assert "<title>lenslib view</title>" in dom  # an injected handler would have set "pwned"
    rendered = re.findall(r'id="circuits-vis-[0-9a-f]+" style="margin: 15px 0;"><div', dom)
    assert len(rendered) == 3  # React drew all three views from the inlined bundle, offline
    assert '<img src="x"' not in dom
    assert "&lt;img/src=" in dom  # the token is on the page as text


def test_views_say_what_they_show_in_plain_text(result):
    """Where HTML does not render (a code host, a terminal), the view still says what it is."""
    assert repr(next_token_prob_view(result)).startswith(
        "<lenslib view: each of 11 tokens coloured by the probability each of 3 layers gave it."
    )
    assert "at layer final_post" in repr(layer_log_probs_view(result, -1))
    assert "top-3 next tokens of 3 layers at 12 position(s)" in repr(topk_view(result))
    assert " at 0x" not in repr(topk_view(result))

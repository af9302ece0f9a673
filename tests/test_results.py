"""Every result type follows one protocol: model_name, to_frame(), to_dict() for JSON, a readable str."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import lenslib
from lenslib.recall.dataset import RecallItem


def results(tiny):
    from lenslib.models.random_weights import tiny_model

    items = [RecallItem("letters", "a", "abc", "d"), RecallItem("letters", "b", "abd", "ef")]
    lens = lenslib.TunedLens.identity(tiny)
    fit = lenslib.fit_tuned_lens(tiny, ["the quick brown fox jumps over the lazy dog, " * 2] * 8,
                                 recipe={"steps": 2, "sample": 8, "top_k": 4}, progress=False)
    return {
        "LensResult": lenslib.logit_lens(tiny, "abc"),
        "Attribution": lenslib.attribute(tiny, "abc", target="d"),
        "PatchResult": lenslib.patch_layers(tiny, "abcab", "abdab", target="c"),
        "RecallRun": lenslib.run_recall(tiny, items, progress=False),
        "LensEvaluation": lenslib.evaluate_lens(tiny, {"logit": None, "identity": lens}, ["hello there"], progress=False),
        "TunedLensFit": fit,
        "Comparison": lenslib.compare({"a": tiny, "b": tiny_model(seed=1)}, "abc"),
    }


@pytest.fixture(scope="module")
def all_results(tiny):
    return results(tiny)


@pytest.mark.parametrize("kind", ["LensResult", "Attribution", "PatchResult", "RecallRun", "LensEvaluation",
                                  "TunedLensFit", "Comparison"])
def test_result_protocol(all_results, kind):
    result = all_results[kind]
    assert type(result).__name__ == kind and kind in lenslib.__all__
    assert isinstance(result.model_name, str) and result.model_name
    frame = result.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0
    json.dumps(result.to_dict(), allow_nan=False, default=None)  # plain values only, no NaN
    text = str(result)
    assert text and "\n" in text or len(text) > 40  # a size floor (several lines, or a sentence), not a tolerance
    assert result.model_name.split(" vs ")[0] in text


def test_layer_labels_where_there_are_layers(all_results):
    for kind in ("LensResult", "PatchResult", "RecallRun", "LensEvaluation", "TunedLensFit"):
        labels = all_results[kind].layer_labels
        assert labels[0] == "0_pre", kind
    assert all_results["Comparison"].layer_labels("a")[-1] == "final_post"


def test_one_error_base_class():
    for name in ("InputError", "ModelNotAvailableError", "LensMismatchError", "CorpusNotAvailableError",
                 "NotEnoughTextError"):
        assert issubclass(getattr(lenslib, name), lenslib.LenslibError)
    with pytest.raises(lenslib.LenslibError):
        lenslib.logit_lens(lenslib.load_model("tiny-llama"), "")

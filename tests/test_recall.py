"""The factual-recall dataset, its loader, and the recall analysis built on the logit lens."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from numerics import (
    SUBNORMAL32, U32, assert_ranks_within, assert_within, criterion_shift, decoded, exact_logits,
    near_ties, sum_error, tile_columns, unembedding,
)

import lenslib
from lenslib.recall.analysis import (
    RecallRun,
    accuracy_by_relation,
    emergence_by_relation,
    emergence_layer,
    run_recall,
)
from lenslib.recall.dataset import (
    RecallItem,
    answer_token_ids,
    load_recall_dataset,
    relations,
    single_token_flags,
    single_token_items,
)

# --- the dataset -------------------------------------------------------------------------------


def test_dataset_size_and_relations():
    items = load_recall_dataset()
    # floors, not tolerances: the file holds 315 items over 11 relations, the smallest with 11;
    # the floors catch a truncated or mis-filtered data file, they are no statistical requirement
    assert len(items) >= 150
    assert len(relations()) >= 6
    assert relations() == list(dict.fromkeys(item.relation for item in items))
    for name in relations():
        assert sum(item.relation == name for item in items) >= 10, name


def test_items_are_well_formed():
    for item in load_recall_dataset():
        assert isinstance(item, RecallItem)
        assert all(isinstance(v, str) and v for v in (item.relation, item.subject, item.prompt))
        assert item.answer.startswith(" ") and not item.answer.startswith("  "), item
        assert item.answer.strip() and item.answer == item.answer.rstrip(), item
        assert item.prompt == item.prompt.strip(), item  # the answer's space is the only gap
        word = re.compile(rf"\b{re.escape(item.answer.strip())}\b")
        assert not word.search(item.prompt), f"the prompt gives the answer away: {item}"


def test_no_duplicate_prompts():
    prompts = [item.prompt for item in load_recall_dataset()]
    assert len(prompts) == len(set(prompts))


def test_items_are_frozen():
    item = load_recall_dataset()[0]
    with pytest.raises(AttributeError):
        item.answer = " London"


def test_relation_filter():
    capitals = load_recall_dataset("country_capital")
    assert capitals and all(item.relation == "country_capital" for item in capitals)
    two = load_recall_dataset(["country_capital", "opposite"])
    assert {item.relation for item in two} == {"country_capital", "opposite"}
    assert load_recall_dataset(None) == load_recall_dataset()


def test_unknown_relation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="capital_of") as error:
        load_recall_dataset(["country_capital", "capital_of"])
    for name in relations():
        assert name in str(error.value)


def test_single_token_filter_with_the_tiny_character_tokenizer(tiny):
    items = [
        RecallItem("letters", "a", "ab", "c"),  # one character: one token
        RecallItem("letters", "b", "ab", " cd"),  # three characters: three tokens
    ]
    assert answer_token_ids(items, tiny) == [
        tiny.to_tokens("c", prepend_bos=False)[0].tolist(),
        tiny.to_tokens(" cd", prepend_bos=False)[0].tolist(),
    ]
    assert single_token_flags(items, tiny) == [True, False]
    assert single_token_flags(items, tiny.tokenizer) == [True, False]  # a tokenizer works too
    assert single_token_items(items, tiny) == items[:1]


# --- emergence_layer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ranks, expected",
    [
        ([5, 3, 1, 1], 2),
        ([1, 1, 1], 0),  # top-1 from the embeddings on
        ([7, 4, 2], None),  # never top-1
        ([1, 1, 2], None),  # top-1, then lost at the final layer
        ([9, 1, 1, 3, 2, 1, 1], 5),  # top-1, drops, recovers: counts from the recovery
        ([4, 1], 1),  # only the final layer
        ([2], None),
        ([1], 0),
    ],
)
def test_emergence_layer(ranks, expected):
    assert emergence_layer(ranks) == expected
    assert emergence_layer(torch.tensor(ranks)) == expected


def test_emergence_layer_rejects_an_empty_trajectory():
    with pytest.raises(ValueError, match="empty"):
        emergence_layer([])


# --- run_recall on the tiny model --------------------------------------------------------------


def _final_top1(model, prompt: str) -> str:
    result = lenslib.logit_lens(model, prompt, k=1, positions="last")
    return result.top_tokens[-1][0][0]


@pytest.fixture(scope="module")
def tiny_items(tiny):
    prompts = ["ab", "Hello", "the cat", "xyz", "Go!"]
    # The first two ask for the model's own prediction, so some prompts are correct.
    items = [RecallItem("own", p, p, _final_top1(tiny, p)) for p in prompts[:2]]
    items += [RecallItem("fixed", p, p, a) for p, a in zip(prompts[2:], ["c", "q", "a"])]
    return items


@pytest.fixture(scope="module")
def tiny_run(tiny, tiny_items):
    return run_recall(tiny, tiny_items, batch_size=2, progress=False)


def test_run_recall_shapes(tiny, tiny_items, tiny_run):
    n_prompt, n_layer = len(tiny_items), tiny.cfg.n_layers + 1
    assert isinstance(tiny_run, RecallRun)
    assert tiny_run.ranks.shape == tiny_run.probs.shape == (n_prompt, n_layer)
    assert tiny_run.layer_labels == ["0_pre", "1_pre", "final_post"]
    assert tiny_run.n_layers == n_layer
    assert tiny_run.items == tiny_items
    assert list(tiny_run.table.columns) == [
        "relation", "subject", "prompt", "answer", "answer_tokens", "final_rank", "final_prob", "correct",
        "emergence_layer", "final_top1", "final_top1_prob",
    ]
    assert len(tiny_run.table) == n_prompt
    assert ((tiny_run.ranks >= 1) & (tiny_run.ranks <= tiny.cfg.d_vocab)).all()
    assert ((tiny_run.probs > 0) & (tiny_run.probs <= 1)).all()


def test_run_recall_table_agrees_with_the_ranks(tiny_run):
    table, ranks, probs = tiny_run.table, tiny_run.ranks, tiny_run.probs
    assert table["final_rank"].tolist() == ranks[:, -1].tolist()
    assert torch.equal(torch.tensor(table["final_prob"].to_numpy()).float(), probs[:, -1])  # the same float32s
    assert table["correct"].tolist() == (ranks[:, -1] == 1).tolist()
    for row, trajectory in zip(table.itertuples(), ranks.tolist()):
        expected = emergence_layer(trajectory)
        if expected is None:
            assert pd.isna(row.emergence_layer) and not row.correct
        else:
            assert row.emergence_layer == expected and row.correct
            assert all(r == 1 for r in trajectory[expected:])
        assert (row.final_top1 == row.answer) == row.correct


def test_own_predictions_are_correct(tiny_run):
    own = tiny_run.table[tiny_run.table["relation"] == "own"]
    assert own["correct"].all()
    assert (own["final_prob"] == own["final_top1_prob"]).all()


def _assert_same_answer(model, got_ranks, got_probs, single):
    """A recall run's ranks and probabilities ``[layer]`` against one prompt's lens: another batch
    of the same prompt, so tests/numerics.py's criterion_shift bounds its logits' shift; ranks
    differ only by near-ties, probabilities by step 3's relative bound."""
    rows = decoded(model, [single], "sdpa")[0]  # [layer, 1, d_model]
    delta = criterion_shift(model, rows, single.input_ids.numel())
    W_U, b_U, _, transform = unembedding(model)
    assert_ranks_within(got_ranks.view(-1, 1), single.target_rank, rows, W_U, b_U, single.target_ids, delta, transform)
    rtol = torch.expm1(2 * delta[:, 0] + 2 * sum_error(tile_columns(model))) + 2 * U32
    larger = torch.maximum(got_probs, single.target_prob[:, 0]).double()
    assert_within(got_probs, single.target_prob[:, 0], larger * rtol + 2 * SUBNORMAL32, "probability")


def test_run_recall_matches_single_prompt_lens(tiny, tiny_items, tiny_run):
    for i, item in enumerate(tiny_items):
        single = lenslib.logit_lens(tiny, item.prompt, k=1, target=item.answer, positions="last")
        _assert_same_answer(tiny, tiny_run.ranks[i], tiny_run.probs[i], single)


def test_batch_size_does_not_change_the_result(tiny, tiny_items, tiny_run):
    one_batch = run_recall(tiny, tiny_items, batch_size=16, progress=False)
    for i, item in enumerate(tiny_items):  # both against the single prompt's lens, as above
        single = lenslib.logit_lens(tiny, item.prompt, k=1, target=item.answer, positions="last")
        _assert_same_answer(tiny, one_batch.ranks[i], one_batch.probs[i], single)


def test_run_recall_tracks_multi_token_answers_jointly(tiny):
    items = [RecallItem("letters", "a", "ab", "c"), RecallItem("letters", "b", "ab", " cd")]
    run = run_recall(tiny, items, progress=False)
    assert run.table["answer_tokens"].tolist() == [1, 3]
    joint = lenslib.logit_lens(tiny, "ab", target=" cd", positions="last")
    single = lenslib.logit_lens(tiny, "ab", target="c", positions="last")
    # the run's batch held both items' teacher-forced runs: rows round apart from each lens's;
    # per answer token numerics' criterion_shift, summed over the answer's 3 tokens for the joint
    _assert_same_answer(tiny, run.ranks[0], run.probs[0], single)
    prompt, answer = tiny.to_tokens("ab")[0], tiny.to_tokens(" cd", prepend_bos=False)[0]
    where = torch.arange(prompt.numel() - 1, prompt.numel() - 1 + answer.numel())
    forced = SimpleNamespace(input_ids=torch.cat([prompt, answer[:-1]]), positions=where)
    rows = decoded(tiny, [forced], "sdpa")[0]  # [layer, answer token, d_model]
    delta = criterion_shift(tiny, rows, forced.input_ids.numel())
    # the joint rank is the worst token's: it moves by at most the most near-ties of any token
    exact = exact_logits(rows, tiny.W_U)
    targets = answer.view(1, -1).expand(rows.shape[0], -1)
    z_t = exact.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ties = near_ties(exact.flatten(0, 1), targets.flatten(), (2 * delta + 2 * U32 * z_t.abs()).flatten())
    assert ((run.ranks[1] - joint.target_rank[:, 0]).abs() <= ties.view_as(z_t).amax(-1)).all()
    delta = delta.sum(-1)  # the joint log-probability sums the tokens' (step 3, per token)
    rtol = torch.expm1(2 * delta + 2 * answer.numel() * sum_error(tile_columns(tiny))) + 2 * U32
    larger = torch.maximum(run.probs[1], joint.target_prob[:, 0]).double()
    assert_within(run.probs[1], joint.target_prob[:, 0], larger * rtol + 2 * SUBNORMAL32, "joint probability")
    with pytest.raises(ValueError, match="no items"):
        run_recall(tiny, [], progress=False)


def test_accuracy_by_relation(tiny_run):
    table = accuracy_by_relation(tiny_run)
    assert list(table.index) == ["own", "fixed", "all"]
    assert table.loc["own", "accuracy"] == 1.0
    assert table.loc["all", "n"] == len(tiny_run.items)
    assert table.loc["all", "n_correct"] == int(tiny_run.table["correct"].sum())
    assert table.loc["fixed", "n"] == 3


def test_emergence_by_relation(tiny_run):
    table = emergence_by_relation(tiny_run)
    assert list(table.index) == ["own", "fixed", "all"]
    own = tiny_run.table[tiny_run.table["relation"] == "own"]["emergence_layer"].astype(float)
    assert table.loc["own", "n_correct"] == 2
    assert table.loc["own", "median_layer"] == own.median()
    assert table.loc["own", "median_depth"] == own.median() / (tiny_run.n_layers - 1)
    assert table.loc["own", "earliest"] <= table.loc["own", "latest"]
    if table.loc["fixed", "n_correct"] == 0:
        assert math.isnan(table.loc["fixed", "median_layer"])


# --- the real tokenizer ------------------------------------------------------------------------


@pytest.mark.real_model
def test_answers_tokenize_alike_alone_and_in_context_and_some_are_several_tokens():
    """Most answers are one Gemma token; the several-token ones are exactly the multi-word names."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lenslib.models.loading.hf_model_dir("gemma-3-270m"))
    items = load_recall_dataset()
    several = {item.answer for item, single in zip(items, single_token_flags(items, tokenizer)) if not single}
    assert several == {item.answer for item in items if " " in item.answer.strip() or "-" in item.answer}
    # counts, not tolerances: the set holds 12 multi-word answers on purpose (at least 10 keep the
    # joint path exercised) and "most answers are one token" is held to at most a tenth (31 of 315)
    assert 10 <= len(several) <= len(items) // 10, sorted(several)
    # In context too: the prompt's tokens followed by the answer's tokens.
    for item in items:
        together = tokenizer.encode(item.prompt + item.answer, add_special_tokens=False)
        alone = tokenizer.encode(item.prompt, add_special_tokens=False)
        assert together == alone + tokenizer.encode(item.answer, add_special_tokens=False), item

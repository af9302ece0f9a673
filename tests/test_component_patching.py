"""Component patching against independent paths: TransformerLens's own ``transformer_lens.patching``
(one forward pass per patch, on the bridge's hooks), hooks written here on the Hugging Face
modules, and the statements that hold exactly (everything patched = the other run; the last
block's MLP at the last position in closed form; a block's heads together = its attention)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from numerics import U32, assert_within, longest_reduction, stream_tolerance
from transformer_lens import patching as tl_patching

from lenslib.causal.components import patch_components
from lenslib.causal.patching import patch_layers
from lenslib.causal.sites import Patch, Readout, plan_batches, record, run_patches

CLEAN, CORRUPT = "abcab", "abdab"  # the tiny model's tokenizer: one token per character
PARIS = ("The Eiffel Tower is located in the city of", "The Colosseum is located in the city of", " Paris")
TL_SWEEPS = {"attn": tl_patching.get_act_patch_attn_out, "mlp": tl_patching.get_act_patch_mlp_out,
             "resid": tl_patching.get_act_patch_resid_pre}


def _criterion(model, *texts):
    """How far two forward runs of one input (another path, another batch, patched alike) may
    read apart in logits: tests/numerics.py's step-6 criterion on the end of the path,
    gamma_K max|logits| (K: a block's longest reduction), as tests/test_patching.py holds them."""
    with torch.no_grad():
        logits = torch.cat([model(model.to_tokens(text)) for text in texts])
    return stream_tolerance(longest_reduction(model, logits.shape[1]), logits)


def _fraction_rounding(result, span):
    """``[row, pos]``: restored is float64 arithmetic on float32 values, stored in float32 (a
    rounding of it and of the metric it came from, relative to the span), as in test_patching."""
    return 2 * U32 * (result.restored.double().abs() + result.metric.double().abs() / span)


def _tl_metric(model, target):
    def metric(logits):
        return logits[0, -1, target]

    return metric


def _runs(model, clean, corrupt, direction):
    """TransformerLens's inputs: the tokens run and the cache patched from."""
    clean_ids, corrupt_ids = model.to_tokens(clean), model.to_tokens(corrupt)
    base, source = (corrupt_ids, clean_ids) if direction == "denoising" else (clean_ids, corrupt_ids)
    _, cache = model.run_with_cache(source)
    return base, cache


@pytest.mark.parametrize("forward", ["sdpa", "bridge"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("site", ["attn", "mlp", "resid"])
def test_every_block_and_position_matches_transformer_lens(tiny, site, direction, forward):
    target = tiny.to_single_token("c")
    ours = patch_components(tiny, CLEAN, CORRUPT, target="c", site=site, direction=direction, metric="logit",
                            forward=forward, batch_size=5)
    base, cache = _runs(tiny, CLEAN, CORRUPT, direction)
    theirs = TL_SWEEPS[site](tiny, base, cache, _tl_metric(tiny, target))  # [layer, pos]
    rows = ours.metric if site != "resid" else ours.metric[:-1]  # TL has no final_post row
    assert rows.shape == theirs.shape
    torch.testing.assert_close(rows, theirs.float(), atol=_criterion(tiny, CLEAN, CORRUPT), rtol=0)
    assert (ours.metric != ours.metric[0, 0]).any()  # not all the unpatched value


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_every_head_and_position_matches_transformer_lens(tiny, direction):
    target = tiny.to_single_token("c")
    ours = patch_components(tiny, CLEAN, CORRUPT, target="c", site="head", direction=direction, metric="logit",
                            positions="all", batch_size=7)
    base, cache = _runs(tiny, CLEAN, CORRUPT, direction)
    theirs = tl_patching.get_act_patch_attn_head_out_by_pos(tiny, base, cache, _tl_metric(tiny, target))
    n_layers, n_heads = tiny.cfg.n_layers, tiny.cfg.n_heads
    assert ours.layer_labels[:2] == ["0_attn_h0", "0_attn_h1"] and ours.block[n_heads] == 1
    mine = ours.metric.view(n_layers, n_heads, -1).permute(0, 2, 1)  # [layer, pos, head] as TL
    T = _criterion(tiny, CLEAN, CORRUPT)
    torch.testing.assert_close(mine, theirs.float(), atol=T, rtol=0)
    # by_head at the last position is the same numbers, as effects: T over the span, the fractions'
    # rounding, and one more for 1 - restored
    effect = ours.by_head()
    span = abs(ours.clean_value - ours.corrupt_value)
    expected = ((theirs[:, -1].double() - ours.corrupt_value) / (ours.clean_value - ours.corrupt_value)).float()
    want = expected if direction == "denoising" else 1 - expected
    rounding = _fraction_rounding(ours, span).view(n_layers, n_heads, -1)[..., -1]
    assert_within(effect, want, T / span + 2 * rounding + U32 * want.double().abs(), "by_head")


def test_resid_site_is_patch_layers(tiny):
    ours = patch_components(tiny, CLEAN, CORRUPT, target="c", site="resid", metric="logit")
    theirs = patch_layers(tiny, CLEAN, CORRUPT, target="c", metric="logit")
    assert ours.layer_labels == theirs.layer_labels == ["0_pre", "1_pre", "final_post"]
    T = _criterion(tiny, CLEAN, CORRUPT)
    torch.testing.assert_close(ours.metric, theirs.metric, atol=T, rtol=0)
    gap = abs(ours.clean_value - ours.corrupt_value)  # the fractions divide float error by it
    bound = T / gap + _fraction_rounding(ours, gap) + _fraction_rounding(theirs, gap)
    assert_within(ours.restored, theirs.restored, bound, "restored")


def test_restored_and_effect_formulas(tiny):
    for direction in ("denoising", "noising"):
        result = patch_components(tiny, CLEAN, CORRUPT, target="c", site="attn", direction=direction, metric="logit")
        restored = (result.metric.double() - result.corrupt_value) / (result.clean_value - result.corrupt_value)
        rounding = _fraction_rounding(result, abs(result.clean_value - result.corrupt_value))
        assert_within(result.restored, restored, rounding, "restored")
        effect = restored if direction == "denoising" else 1 - restored
        assert_within(result.effect, effect, rounding + U32 * effect.abs(), "effect")  # 1 - x: one rounding more
        # before the changed token ('c' vs 'd' at position 3) the activations agree: no effect at all
        assert torch.all(result.effect[:, :3] == 0)
        frame = result.to_frame()
        assert {"block", "head", "effect"} <= set(frame.columns) and len(frame) == 2 * 6
        assert result.direction in str(result) and "attention outputs" in str(result)


def test_skipping_no_ops_changes_nothing(tiny):
    for site in ("attn", "mlp", "head"):
        kept = patch_components(tiny, CLEAN, CORRUPT, target="c", site=site, positions="all", metric="logit")
        full = patch_components(tiny, CLEAN, CORRUPT, target="c", site=site, positions="all", metric="logit",
                                skip_no_ops=False)
        torch.testing.assert_close(kept.metric, full.metric, atol=_criterion(tiny, CLEAN, CORRUPT), rtol=0)


def _recordings(model, clean, corrupt, target):
    readout = Readout(model, "logit", model.to_single_token(target))
    return readout, record(model, model.to_tokens(clean)[0], readout), record(model, model.to_tokens(corrupt)[0], readout)


def _check_exact_statements(model, clean, corrupt, target, heads=True):
    """Each statement is exact in real numbers; in float32 two runs of one input read apart by
    at most :func:`_criterion`'s ``atol``."""
    atol = _criterion(model, clean, corrupt)
    readout, clean_run, corrupt_run = _recordings(model, clean, corrupt, target)
    n_layers, n_tokens = int(model.cfg.n_layers), clean_run.tokens.numel()
    assert abs(clean_run.value - corrupt_run.value) > 20 * atol  # the runs really differ: a margin for teeth
    every = tuple(Patch(site, l) for l in range(n_layers) for site in ("attn", "mlp"))
    every_pos = tuple(Patch(site, l, p) for l in range(n_layers) for site in ("attn", "mlp") for p in range(n_tokens))
    last = n_tokens - 1
    runs = [every, every_pos, (), (Patch("mlp", n_layers - 1, last),)]
    for forward_runs in (runs,):
        denoised = run_patches(model, corrupt_run, clean_run, forward_runs, readout, batch_size=3)
        noised = run_patches(model, clean_run, corrupt_run, forward_runs, readout, batch_size=3)
        # every attention and MLP output at every position: the other run exactly
        for i in (0, 1):
            assert denoised[i] == pytest.approx(clean_run.value, abs=atol)
            assert noised[i] == pytest.approx(corrupt_run.value, abs=atol)
        # nothing patched: the base run (up to the rounding of a readout batched with other rows)
        assert denoised[2] == pytest.approx(corrupt_run.value, abs=atol)
        assert noised[2] == pytest.approx(clean_run.value, abs=atol)
    # the last block's MLP at the last position, in closed form: final = x - mlp_base + mlp_source,
    # then the final norm and the unembedding (read here from the Hugging Face modules)
    hf = model.original_model
    for base, source, got in ((corrupt_run, clean_run, denoised[3]), (clean_run, corrupt_run, noised[3])):
        x = base.acts["resid"][n_layers, last] - base.acts["mlp"][n_layers - 1, last] + source.acts["mlp"][n_layers - 1, last]
        with torch.no_grad():
            logit = hf.lm_head(hf.model.norm(x.view(1, 1, -1)))[0, 0, readout.target]
        assert float(got) == pytest.approx(float(logit), abs=atol)
    if heads:  # every head of a block at one position together is its attention output there
        n_heads = int(model.cfg.n_heads)
        every_head = tuple(Patch("head", l, None, h) for l in range(n_layers) for h in range(n_heads))
        every_head += tuple(Patch("mlp", l) for l in range(n_layers))
        assert float(run_patches(model, corrupt_run, clean_run, [every_head], readout)[0]) == pytest.approx(
            clean_run.value, abs=atol)  # every head and every MLP output: the clean run
        for layer in (0, n_layers // 2, n_layers - 1):
            together = tuple(Patch("head", layer, last, h) for h in range(n_heads))
            values = run_patches(model, corrupt_run, clean_run, [together, (Patch("attn", layer, last),)], readout)
            assert float(values[0]) == pytest.approx(float(values[1]), abs=atol)


def test_exact_statements_tiny(tiny):
    _check_exact_statements(tiny, CLEAN, CORRUPT, "c")


def test_forward_paths_record_the_same_activations(tiny):
    readout = Readout(tiny, "prob", tiny.to_single_token("c"))
    ids = tiny.to_tokens(CLEAN)[0]
    fast, slow = record(tiny, ids, readout, "sdpa"), record(tiny, ids, readout, "bridge")
    assert fast.path == "sdpa" and slow.path == "bridge" and fast.kv is not None
    longest = longest_reduction(tiny, ids.numel())
    for site in ("resid", "attn", "mlp", "head"):  # numerics step 6, as in test_fast_forward
        assert fast.acts[site].shape == slow.acts[site].shape
        assert_within(fast.acts[site], slow.acts[site], stream_tolerance(longest, slow.acts[site]), site)
    # a probability of logits within the criterion T: p (e^{2T} - 1) (numerics step 3), stored
    T = _criterion(tiny, CLEAN)
    assert fast.value == pytest.approx(slow.value, rel=math.expm1(2 * T) + 2 * U32)


def test_plan_batches_covers_every_run_once():
    starts = [(l, p) for l in (0, 3, 3, 5) for p in range(0, 16, 3)]
    batches = plan_batches(starts, n_tokens=16, batch_size=4)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(starts)))
    assert all(len(b) <= 4 for b in batches)
    assert all(len({starts[i][0] for i in b}) == 1 for b in batches)  # one first block per pass
    # a long prompt whose runs start late is split rather than recomputed from its start
    late = [(0, 0)] + [(0, 60)] * 3
    assert sorted(map(sorted, plan_batches(late, n_tokens=64, batch_size=4))) == [[0], [1, 2, 3]]


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="unknown site 'heads'.*attn"):
        patch_components(tiny, CLEAN, CORRUPT, target="c", site="heads")
    with pytest.raises(ValueError, match="unknown direction.*noising"):
        patch_components(tiny, CLEAN, CORRUPT, target="c", direction="forward")
    with pytest.raises(ValueError, match="same number of tokens.*Reword"):
        patch_components(tiny, "abc", "abcd", target="c", site="mlp")
    with pytest.raises(ValueError, match="nothing to patch"):
        patch_components(tiny, "abc", "abc", target="c")
    with pytest.raises(ValueError, match="layer 2 is not a block.*0..1"):
        patch_components(tiny, CLEAN, CORRUPT, target="c", layers=[2])
    with pytest.raises(ValueError, match="outside the prompt"):
        patch_components(tiny, CLEAN, CORRUPT, target="c", positions=[9])
    with pytest.raises(ValueError, match="batch_size"):
        patch_components(tiny, CLEAN, CORRUPT, target="c", batch_size=0)
    with pytest.raises(ValueError, match="forward must be"):
        patch_components(tiny, CLEAN, CORRUPT, target="c", forward="fast")
    with pytest.raises(ValueError, match="by_head needs"):
        patch_components(tiny, CLEAN, CORRUPT, target="c").by_head()


def test_layers_and_positions_subsets(tiny):
    full = patch_components(tiny, CLEAN, CORRUPT, target="c", site="mlp", metric="logit")
    part = patch_components(tiny, CLEAN, CORRUPT, target="c", site="mlp", metric="logit", layers=[1], positions=[3, 5])
    assert part.layer_labels == ["1_mlp"] and part.positions.tolist() == [3, 5]
    T = _criterion(tiny, CLEAN, CORRUPT)  # other batches
    torch.testing.assert_close(part.metric[0], full.metric[1, [3, 5]], atol=T, rtol=0)
    resid = patch_components(tiny, CLEAN, CORRUPT, target="c", site="resid", layers=[2], positions="last")
    # the whole final stream at the last position: the clean run, within 2T of the span (test_patching)
    span = abs(resid.clean_value - resid.corrupt_value)
    assert resid.layer_labels == ["final_post"] and resid.restored[0, 0] == pytest.approx(1.0, abs=2 * T / span)


# ---------------------------------------------------------------- the bundled models


def _hf_patched(hf_model, base_ids, source_ids, site, layer, pos, target):
    """One patch by hand on the Hugging Face modules: the source run's output of the module that
    writes ``site`` into the stream, copied into the base run at ``pos``; the logit of ``target``."""
    block = hf_model.model.layers[layer]
    gemma = hasattr(block, "post_feedforward_layernorm")
    module = {"attn": block.post_attention_layernorm if gemma else block.self_attn,
              "mlp": block.post_feedforward_layernorm if gemma else block.mlp}[site]
    kept = {}

    def keep(_module, _inputs, output):
        kept["out"] = (output[0] if isinstance(output, tuple) else output).clone()

    def replace(_module, _inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        out = out.clone()
        out[:, pos] = kept["out"][:, pos]
        return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

    with torch.no_grad():
        handle = module.register_forward_hook(keep)
        hf_model(source_ids.view(1, -1))
        handle.remove()
        handle = module.register_forward_hook(replace)
        logits = hf_model(base_ids.view(1, -1)).logits
        handle.remove()
    return float(logits[0, -1, target])


def _check_real(model, hf_model):
    clean, corrupt, answer = PARIS
    atol = _criterion(model, clean, corrupt)  # TransformerLens's runs and hooks on HF: other paths
    target = model.to_single_token(answer)
    n_layers = int(model.cfg.n_layers)
    clean_ids, corrupt_ids = model.to_tokens(clean)[0], model.to_tokens(corrupt)[0]
    last, subject = clean_ids.numel() - 1, 2  # BOS, ' The', ' Eiffel' / ' Col...'
    layers = [0, n_layers // 2, n_layers - 2]
    for site in ("attn", "mlp"):
        for direction in ("denoising", "noising"):
            ours = patch_components(model, clean, corrupt, target=target, site=site, direction=direction,
                                    metric="logit", layers=layers, positions=[subject, last])
            base, cache = _runs(model, clean, corrupt, direction)
            index = pd.DataFrame([(l, p) for l in layers for p in (subject, last)], columns=["layer", "pos"])
            theirs = TL_SWEEPS[site](model, base, cache, _tl_metric(model, target), index_df=index,
                                    index_axis_names=None)
            torch.testing.assert_close(ours.metric.reshape(-1), theirs.float(), atol=atol, rtol=0)
        # and by hand on the Hugging Face modules (denoising, one layer)
        ours = patch_components(model, clean, corrupt, target=target, site=site, metric="logit",
                                layers=[n_layers // 2], positions=[subject])
        by_hand = _hf_patched(hf_model, corrupt_ids, clean_ids, site, n_layers // 2, subject, target)
        assert float(ours.metric[0, 0]) == pytest.approx(by_hand, abs=atol)
    return clean, corrupt, answer


@pytest.mark.real_model
def test_smollm2_against_transformer_lens_and_hugging_face(smollm2, smollm2_hf):
    clean, corrupt, answer = _check_real(smollm2, smollm2_hf)
    target = smollm2.to_single_token(answer)
    heads = patch_components(smollm2, clean, corrupt, target=target, site="head", metric="logit",
                             layers=[3, 20], direction="noising")
    base, cache = _runs(smollm2, clean, corrupt, "noising")
    last = len(heads.clean_tokens) - 1
    index = pd.DataFrame([(l, last, h) for l in (3, 20) for h in range(9)], columns=["layer", "pos", "head"])
    theirs = tl_patching.get_act_patch_attn_head_out_by_pos(smollm2, base, cache, _tl_metric(smollm2, target),
                                                            index_df=index, index_axis_names=None)
    torch.testing.assert_close(heads.metric.reshape(-1), theirs.float(), atol=_criterion(smollm2, clean, corrupt), rtol=0)
    _check_exact_statements(smollm2, clean, corrupt, answer)


@pytest.mark.real_model
def test_gemma_against_transformer_lens_and_hugging_face(gemma, gemma_hf):
    clean, corrupt, answer = _check_real(gemma, gemma_hf)
    _check_exact_statements(gemma, clean, corrupt, answer, heads=False)
    with pytest.raises(ValueError, match="site='head' is refused.*post-attention RMSNorm.*site='attn'"):
        patch_components(gemma, clean, corrupt, target=answer, site="head")

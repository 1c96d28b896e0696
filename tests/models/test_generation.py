"""Generation from the recurrent state (FAVOR+) or a KV cache (exact) equals full recomputation."""

import pytest
import torch

from performers import FavorConfig, PerformerConfig, PerformerForCausalLM, generate
from performers.cli import main as cli_main
from performers.layers import KVCache
from performers.models.generation import sample_next_token
from performers.ops import FavorState
from tests.helpers.results import assert_written_by_the_results_writer

DT = torch.float64
VOCAB = 29


def model_for(attention="favor", position="learned", seed=0, **overrides):
    config = PerformerConfig(
        vocab_size=VOCAB,
        d_model=16,
        num_layers=2,
        num_heads=4,
        d_ff=32,
        max_position_embeddings=64,
        position=position,
        dropout=0.0,
        attention=attention,
        favor=FavorConfig(16, chunk_size=4),
        pad_token_id=0,
        **overrides,
    )
    torch.manual_seed(seed)
    return PerformerForCausalLM(config).to(DT).eval()


def prompt(b=2, length=7, seed=0):
    return torch.randint(1, VOCAB, (b, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def recompute(model, ids, steps, *, generator=None, **sampling):
    """The reference: run the whole parallel model on every prefix."""
    for _ in range(steps):
        logits = model(ids).logits[:, -1]
        token = sample_next_token(logits, generator=generator, **sampling)
        ids = torch.cat([ids, token[:, None]], dim=1)
    return ids


@pytest.mark.parametrize("attention", ["favor", "exact"])
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_greedy_generation_equals_full_recomputation(attention, position):
    model = model_for(attention, position)
    x = prompt()
    out = model.generate(x, max_new_tokens=10)
    assert out.shape == (2, 17) and torch.equal(out[:, :7], x)
    assert torch.equal(out, recompute(model, x, 10))


@pytest.mark.parametrize("attention", ["favor", "exact"])
def test_sampling_equals_recomputation_with_the_same_generator(attention):
    model = model_for(attention)
    x = prompt()
    kwargs = {"do_sample": True, "temperature": 1.7, "top_k": 12, "top_p": 0.9}
    out = generate(model, x, 12, generator=torch.Generator().manual_seed(3), **kwargs)
    again = generate(model, x, 12, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(out, again)
    assert torch.equal(out, recompute(model, x, 12, generator=torch.Generator().manual_seed(3), **kwargs))
    other = generate(model, x, 12, generator=torch.Generator().manual_seed(4), **kwargs)
    assert not torch.equal(out, other)


@pytest.mark.parametrize("attention", ["favor", "exact"])
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_left_padded_batch_equals_each_prompt_alone(attention, position):
    model = model_for(attention, position)
    lengths = [9, 4, 6]
    prompts = [prompt(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    width = max(lengths)
    batch = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        batch[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    out = generate(model, batch, 8, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone = generate(model, p[None], 8)
        assert torch.equal(out[row, width:], alone[0, len(p) :])


def test_decoding_state_does_not_grow_with_the_context():
    model = model_for("favor")
    with torch.no_grad():
        short = model(prompt(length=5), use_cache=True).past_key_values
        long = model(prompt(length=40), use_cache=True).past_key_values
    assert all(isinstance(s, FavorState) for s in long.layers)
    assert [s.kv.shape for s in short.layers] == [s.kv.shape for s in long.layers] == [(2, 4, 16, 4)] * 2
    assert long.length == 40 and long.next_position.tolist() == [40, 40]
    model.set_attention("exact")
    with torch.no_grad():
        cache = model(prompt(length=40), use_cache=True).past_key_values
        assert isinstance(cache.layers[0], KVCache) and cache.layers[0].length == 40
        cache = model(prompt(length=1), past_key_values=cache).past_key_values
    assert cache.layers[0].length == 41 and cache.length == 41


def test_eos_stops_rows_and_pads_finished_ones():
    model = model_for()
    x = prompt()
    free = generate(model, x, 10)
    eos = int(free[0, 7 + 2])  # the token row 0 emits third
    out = generate(model, x, 10, eos_token_id=eos)
    first_eos = [int((row[7:] == eos).nonzero()[0]) if (row[7:] == eos).any() else None for row in free]
    for row in range(2):
        stop = first_eos[row]
        if stop is None:
            assert torch.equal(out[row, 7 : out.shape[1]], free[row, 7 : out.shape[1]])
        else:
            assert torch.equal(out[row, : 7 + stop + 1], free[row, : 7 + stop + 1])
            assert (out[row, 7 + stop + 1 :] == 0).all()  # pad_token_id fills finished rows
    if all(s is not None for s in first_eos):
        assert out.shape[1] == 7 + max(first_eos) + 1  # stopped once every row finished
    firsts = [int(t) for t in free[:, 7]]
    assert generate(model, x, 10, eos_token_id=firsts).shape == (2, 8)  # every row ends at once
    filled = generate(model, x, 10, eos_token_id=[eos], pad_token_id=5)
    assert (filled[0, 7 + first_eos[0] + 1 :] == 5).all()


def test_max_new_tokens_and_max_length():
    model = model_for()
    x = prompt()
    assert generate(model, x, 0).shape == (2, 7)
    assert generate(model, x, 5).shape == (2, 12)
    assert generate(model, x, 50, max_length=10).shape == (2, 10)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        generate(model, x, 60)


def test_generation_input_errors_and_training_flag_restored():
    model = model_for().train()
    x = prompt()
    right_padded = torch.ones_like(x)
    right_padded[0, -2:] = 0
    with pytest.raises(ValueError, match="left padding"):
        generate(model, x, 3, attention_mask=right_padded)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, x, 3, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, x, 3, do_sample=True, top_p=1.5)
    generate(model, x, 2)
    assert model.training


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 2.8, 0.5]]).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    top2 = sample_next_token(logits, do_sample=True, top_k=2, generator=g)
    assert set(top2.tolist()) == {1, 2}
    nucleus = sample_next_token(logits, do_sample=True, top_p=0.5, generator=g)
    assert set(nucleus.tolist()) <= {1, 2}
    greedy_like = sample_next_token(logits, do_sample=True, top_p=1e-6, generator=g)
    assert (greedy_like == 1).all()
    assert (sample_next_token(logits) == 1).all()


def test_bench_generate_smoke(tmp_path):
    out = tmp_path / "generate.json"
    args = ["bench", "generate", "--contexts", "16", "32", "--new-tokens", "2", "--warmup", "1"]
    args += ["--d-model", "16", "--layers", "1", "--heads", "2", "--d-ff", "32", "--num-features", "8"]
    args += ["--vocab-size", "31", "--threads", "1", "--out", str(out), "--no-plot"]
    assert cli_main(args) == 0
    payload = assert_written_by_the_results_writer(out)
    rows = payload["rows"]
    assert {(r["backend"], r["context"]) for r in rows} == {
        (b, c) for b in ("favor", "exact") for c in (16, 32)
    }
    assert all(r["per_token_ms"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert payload["settings"]["new_tokens"] == 2


def test_bench_generate_prefill_mode():
    from performers.bench.generate import measure

    rows = measure(
        contexts=(12,),
        new_tokens=2,
        warmup=0,
        cache="prefill",
        d_model=16,
        num_layers=1,
        num_heads=2,
        d_ff=32,
        favor=FavorConfig(8),
        vocab_size=31,
    )
    assert [r.backend for r in rows] == ["favor", "exact"] and all(r.prefill_s > 0 for r in rows)

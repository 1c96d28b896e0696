"""Worker processes of tests/distributed/test_context_parallel.py: each runs every case on its shard of the
sequence under gloo and compares with the single-process op it also computes.

Not a test module (pytest does not collect it): torch.multiprocessing imports it in the
spawned processes.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import replace

import torch
import torch.distributed as dist

from performers.distributed import favor_attention, record_communication, shard_of
from performers.ops import KERNELS, favor_attention_step, get_kernel, orthogonal_projection
from performers.ops import favor_attention as single_favor_attention

DT = torch.float64
# Every kernel of the registry, and a generalized kernel without projection.
KERNEL_CASES = [(name, True) for name in KERNELS] + [("relu", False)]


def _init(rank: int, world: int, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)


def _data(lengths, *, b=2, h=2, d=4, dv=3, m=6, seed=0, dtype=DT, kernel="softmax", projection=True):
    total = sum(lengths)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, total, n, generator=g, dtype=dtype) for n in (d, d, dv))
    w = orthogonal_projection(m, d, generator=g, dtype=dtype) if projection else None
    mask = torch.zeros(b, total, dtype=torch.bool)
    mask[0, total - total // 4 :] = True  # right padding
    mask[1, : lengths[0] + 1] = True  # left padding covering all of shard 0
    return q, k, v, w, mask


def _bounds(lengths, rank):
    start = sum(lengths[:rank])
    return start, start + lengths[rank]


def _check(name, got, expected, rtol=1e-9, atol=1e-10):
    try:
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    except AssertionError as error:
        raise AssertionError(f"{name}: {error}") from None


def _weights_like(t):
    return torch.linspace(-1, 1, t.numel(), dtype=t.dtype).reshape(t.shape)


def case_outputs_and_gradients(rank, world, lengths):
    """Every kernel, causal and not, padding, unequal shards (some of one token), chunk sizes
    that do not divide the shards: outputs and gradients equal the single-process op."""
    lo, hi = _bounds(lengths, rank)
    for kernel, with_projection in KERNEL_CASES:
        for causal in (False, True):
            q, k, v, w, mask = _data(lengths, kernel=kernel, projection=with_projection)
            for t in (q, k, v) + ((w,) if w is not None else ()):
                t.requires_grad_(True)
            options = dict(causal=causal, kernel=kernel, key_padding_mask=mask, chunk_size=3)
            expected = single_favor_attention(q, k, v, w, **options)
            weights = _weights_like(expected)
            wanted = (q, k, v) + ((w,) if w is not None else ())
            ref_grads = torch.autograd.grad((expected * weights).sum(), wanted)
            shard = [t.detach()[:, :, lo:hi].clone().requires_grad_(True) for t in (q, k, v)]
            w_local = None if w is None else w.detach().clone().requires_grad_(True)
            options["key_padding_mask"] = mask[:, lo:hi]
            out = favor_attention(*shard, w_local, **options, block_size=2, shard_offset=lo)
            label = f"{kernel}{'' if with_projection else ' (no projection)'} causal={causal} {lengths}"
            _check(f"{label} output", out, expected[:, :, lo:hi])
            grads = torch.autograd.grad(
                (out * weights[:, :, lo:hi]).sum(), shard + ([w_local] if w is not None else [])
            )
            for name, got, ref in zip("qkv", grads[:3], ref_grads[:3], strict=True):
                _check(f"{label} grad {name}", got, ref[:, :, lo:hi])
            if w is not None:
                total = grads[3].clone()
                dist.all_reduce(total)
                _check(f"{label} grad projection (summed over ranks)", total, ref_grads[3])


def case_gradient_penalty(rank, world, lengths):
    """Second derivatives cross shards: the derivative of a gradient penalty ``‖∂L/∂q‖² +
    ‖∂L/∂k‖²`` with respect to every input equals the single-process one (the collectives'
    backward passes are differentiable with create_graph=True; ∂L/∂k is one of them). The
    softmax kernel only: the other kernels' generic paths take plain autograd and the same
    collectives (all-reduce, the prefix exchange)."""
    lo, hi = _bounds(lengths, rank)
    for kernel in ("softmax",):
        for causal in (False, True):
            q, k, v, w, mask = _data(lengths, h=1, m=4, kernel=kernel)
            options = dict(causal=causal, kernel=kernel, key_padding_mask=mask, chunk_size=2)
            full = [t.clone().requires_grad_(True) for t in (q, k, v, w)]
            weights = _weights_like(v)
            out = single_favor_attention(*full, **options)
            grad_qk = torch.autograd.grad((out * weights).sum(), full[:2], create_graph=True)
            expected = torch.autograd.grad(sum(g.square().sum() for g in grad_qk), full)
            shard = [t[:, :, lo:hi].clone().requires_grad_(True) for t in (q, k, v)]
            w_local = w.clone().requires_grad_(True)
            options["key_padding_mask"] = mask[:, lo:hi]
            out = favor_attention(*shard, w_local, **options, block_size=2)
            grad_qk = torch.autograd.grad((out * weights[:, :, lo:hi]).sum(), shard[:2], create_graph=True)
            grads = torch.autograd.grad(sum(g.square().sum() for g in grad_qk), [*shard, w_local])
            label = f"{kernel} causal={causal} {lengths} gradient penalty"
            for name, got, ref in zip("qkv", grads[:3], expected[:3], strict=True):
                _check(f"{label}: grad {name}", got, ref[:, :, lo:hi])
            total = grads[3].clone()
            dist.all_reduce(total)
            _check(f"{label}: grad projection (summed over ranks)", total, expected[3])


def case_later_tokens_do_not_change_earlier_shards(rank, world, lengths):
    """Causal, float32: changing every token of the shards after ``r`` leaves the outputs of
    shards ``<= r`` bit for bit unchanged."""
    last_fixed = world // 2 - 1
    lo, hi = _bounds(lengths, rank)
    for kernel in ("softmax", "trig", "favor++", "relu"):
        q, k, v, w, mask = _data(lengths, dtype=torch.float32, kernel=kernel)
        outs = []
        for variant in (0, 1):
            inputs = [t[:, :, lo:hi].clone() for t in (q, k, v)]
            if variant and rank > last_fixed:
                g = torch.Generator().manual_seed(100 + rank)
                inputs = [torch.randn(t.shape, generator=g) * 3 for t in inputs]
            outs.append(
                favor_attention(*inputs, w, causal=True, kernel=kernel, key_padding_mask=mask[:, lo:hi])
            )
        if rank <= last_fixed:
            assert torch.equal(outs[0], outs[1]), f"{kernel}: rank {rank} changed when later shards changed"
        else:
            assert not torch.equal(outs[0], outs[1])


def case_initial_state_return_state_and_decoding(rank, world, lengths):
    """A causal prefix state before the sequence, the returned state of the whole sequence,
    and decoding from it on one process: equal to the single-process prefill."""
    lo, hi = _bounds(lengths, rank)
    for kernel in ("softmax", "gaussian-hyperbolic", "favor++", "trig", "relu"):
        q, k, v, w, mask = _data([3, *lengths], kernel=kernel, seed=5)
        q.requires_grad_(True)
        k.requires_grad_(True)
        v.requires_grad_(True)
        mask[1] = False
        options = dict(causal=True, kernel=kernel, chunk_size=2)
        _head, state = single_favor_attention(
            q[:, :, :3], k[:, :, :3], v[:, :, :3], w, **options, return_state=True
        )
        rest = [t[:, :, 3:] for t in (q, k, v)]
        expected, expected_state = single_favor_attention(
            *rest, w, **options, initial_state=state, key_padding_mask=mask[:, 3:], return_state=True
        )
        weights = _weights_like(expected)
        ref = torch.autograd.grad((expected * weights).sum(), (q, k, v), retain_graph=True)
        shard = [t[:, :, lo:hi] for t in rest]
        out, final = favor_attention(
            *shard,
            w,
            **options,
            initial_state=state,
            key_padding_mask=mask[:, 3 + lo : 3 + hi],
            return_state=True,
        )
        _check(f"{kernel} output after an initial state", out, expected[:, :, lo:hi])
        grads = torch.autograd.grad((out * weights[:, :, lo:hi]).sum(), (q, k, v))
        for name, got, want in zip("qkv", grads, ref, strict=True):
            # The prefix positions (before the sequence) get every rank's share: sum them.
            dist.all_reduce(got)
            _check(f"{kernel} grad {name} through the initial state (summed)", got, want)

        def absolute(s):
            scale = s.log_offset.exp()[..., None]
            return s.kv * scale[..., None], s.normalizer * scale

        for a, b in zip(absolute(final), absolute(expected_state), strict=True):
            _check(f"{kernel} returned state", a.detach(), b.detach())
        # Decoding continues from the gathered state on any one process.
        with torch.no_grad():
            g = torch.Generator().manual_seed(9)
            steps = [torch.randn(2, 2, 1, n, generator=g, dtype=DT) for n in (4, 4, 3)]
            got, _ = favor_attention_step(*steps, final, w, kernel=kernel)
            want, _ = favor_attention_step(*steps, expected_state, w, kernel=kernel)
            _check(f"{kernel} decoding after a context-parallel prefill", got, want)


def case_bidirectional_cross_attention_shards(rank, world, lengths):
    """Query and key shards of different lengths (bidirectional cross-attention)."""
    g = torch.Generator().manual_seed(3)
    lq = [n + 2 for n in lengths]
    q = torch.randn(2, 2, sum(lq), 4, generator=g, dtype=DT)
    k = torch.randn(2, 2, sum(lengths), 4, generator=g, dtype=DT)
    v = torch.randn(2, 2, sum(lengths), 3, generator=g, dtype=DT)
    w = orthogonal_projection(6, 4, generator=g, dtype=DT)
    qlo, qhi = _bounds(lq, rank)
    lo, hi = _bounds(lengths, rank)
    for kernel in ("softmax", "favor++", "trig"):
        expected = single_favor_attention(q, k, v, w, kernel=kernel)
        out = favor_attention(q[:, :, qlo:qhi], k[:, :, lo:hi], v[:, :, lo:hi], w, kernel=kernel)
        _check(f"{kernel} cross-attention shards", out, expected[:, :, qlo:qhi])


def case_device_mesh_and_communication(rank, world, lengths):
    """A 1-D DeviceMesh serves as the group; a 2-D one is refused; the collectives send
    O(M·(Dv+1)) bytes per call whatever the sequence length."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("context",))
    lo, hi = _bounds(lengths, rank)
    q, k, v, w, _mask = _data(lengths)
    expected = single_favor_attention(q, k, v, w, causal=True)
    out = favor_attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], w, causal=True, group=mesh)
    _check("1-D DeviceMesh group", out, expected[:, :, lo:hi])
    sizes = {}
    for length in (8 * world, 64 * world):
        q, k, v, w, _ = _data([length // world] * world)
        shard = [shard_of(t, mesh, dim=2).requires_grad_(True) for t in (q, k, v)]
        for causal in (False, True):
            with record_communication() as calls:
                favor_attention(*shard, w, causal=causal, group=mesh).sum().backward()
            sizes[(length, causal)] = [(c.kind, c.bytes, c.backward) for c in calls]
    for causal in (False, True):
        assert sizes[(8 * world, causal)] == sizes[(64 * world, causal)], sizes
        summary = 2 * 2 * 6 * (3 + 1) * 8  # B·H·M·(Dv+1) float64 values
        payload = [b for kind, b, _ in sizes[(8 * world, causal)]]
        assert summary in payload or summary + 2 * 2 * 8 in payload, (causal, payload)


def case_errors(rank, world, lengths):
    """Disagreements are the same ValueError on every process, never a hang."""
    import pytest

    lo, hi = _bounds(lengths, rank)
    q, k, v, w, mask = _data(lengths)
    shard = [t[:, :, lo:hi] for t in (q, k, v)]
    if rank == 1:
        bad = [t[..., :3] for t in shard[:2]] + [shard[2]]
        bad_w = orthogonal_projection(6, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    else:
        bad, bad_w = shard, w
    with pytest.raises(ValueError, match=r"disagree on the head size D \(rank 0 has 4, rank 1 has 3\)"):
        favor_attention(*bad, bad_w)
    more = orthogonal_projection(8, 4, generator=torch.Generator().manual_seed(0), dtype=DT)
    with pytest.raises(ValueError, match=r"disagree on the projection rows M \(rank 0 has 6, rank 1 has 8\)"):
        favor_attention(*shard, more if rank == 1 else w)
    other = orthogonal_projection(6, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    with pytest.raises(ValueError, match=r"disagree on the projection values \(rank 1 differs"):
        favor_attention(*shard, other if rank == 1 else w)
    with pytest.raises(ValueError, match=r"disagree on the causal"):
        favor_attention(*shard, w, causal=rank == 1)
    # Inputs one process rejects: its own error there, the rank named everywhere else.
    bad_mask = mask[:, lo:hi] if rank != 1 else mask[:, : hi - lo + 1]
    expected = r"key_padding_mask" if rank == 1 else r"rank 1 rejected its inputs"
    with pytest.raises(ValueError, match=expected):
        favor_attention(*shard, w, causal=True, key_padding_mask=bad_mask)
    # Shards given out of order: rank 0 holds the second half.
    swapped = sum(lengths[1:]) if rank == 0 else 0
    with pytest.raises(ValueError, match=r"not contiguous in group-rank order: rank 1 starts at position 0"):
        favor_attention(*shard, w, causal=True, shard_offset=swapped)
    mine = replace(get_kernel("favor++"), name="my-favor++", statistics=None, parameters_from_statistics=None)
    with pytest.raises(
        ValueError, match=r"kernel 'my-favor\+\+' has data-dependent parameters but no Kernel.statistics"
    ):
        favor_attention(*shard, w, kernel=mine)
    single_favor_attention(q, k, v, w, kernel=mine)  # fine on one process
    from torch.distributed.device_mesh import init_device_mesh

    if world == 4:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("data", "context"))
        with pytest.raises(ValueError, match=r"must be one-dimensional: got a 2-D DeviceMesh"):
            favor_attention(*shard, w, group=mesh)
    # Still in step after all the refusals: a correct call works.
    out = favor_attention(*shard, w, causal=True)
    _check("after errors", out, single_favor_attention(q, k, v, w, causal=True)[:, :, lo:hi])


def case_models(rank, world, lengths):
    """A Performer LM on its shard with context_group: logits and hidden states equal one
    process (learned and rotary positions, left and right padding); a causal prefill with
    use_cache gives every process the cache of the whole sequence, and decoding from it on one
    process equals decoding after a one-process prefill. Exact attention and labels refuse."""
    import pytest

    from performers import FavorConfig, PerformerConfig, PerformerForCausalLM, PerformerForMaskedLM

    lo, hi = _bounds(lengths, rank)
    total = sum(lengths)
    for position in ("learned", "rotary"):
        for model_class in (PerformerForMaskedLM, PerformerForCausalLM):
            torch.manual_seed(0)
            config = PerformerConfig(
                vocab_size=11, d_model=8, num_layers=2, num_heads=2, d_ff=16, dropout=0.0,
                max_position_embeddings=32, position=position, favor=FavorConfig(6), pad_token_id=0,
            )  # fmt: skip
            model = model_class(config).double()
            g = torch.Generator().manual_seed(1)
            ids = torch.randint(1, 11, (2, total), generator=g)
            attention = torch.ones(2, total, dtype=torch.long)
            attention[0, total - 3 :] = 0
            attention[1, :2] = 0
            causal = model_class is PerformerForCausalLM
            expected = model(ids, attention, output_hidden_states=True)
            got = model(
                ids[:, lo:hi],
                attention[:, lo:hi],
                output_hidden_states=True,
                context_group=None if world == 1 else dist.group.WORLD,
            )
            label = f"{model_class.__name__} {position}"
            _check(f"{label} logits", got.logits, expected.logits[:, lo:hi])
            for i, (a, b) in enumerate(zip(got.all_hidden_states, expected.all_hidden_states, strict=True)):
                _check(f"{label} hidden state {i}", a, b[:, lo:hi])
            with pytest.raises(ValueError, match="labels are not accepted with context_group"):
                model(ids[:, lo:hi], context_group=dist.group.WORLD, labels=ids[:, lo:hi])
            if not causal:
                continue
            with torch.no_grad():
                ids = torch.randint(1, 11, (2, total), generator=g)
                single = model(ids, use_cache=True)
                sharded = model(ids[:, lo:hi], use_cache=True, context_group=dist.group.WORLD)
                cache, reference = sharded.past_key_values, single.past_key_values
                assert cache.length == reference.length == total
                assert torch.equal(cache.next_position, reference.next_position)
                step = torch.randint(1, 11, (2, 1), generator=g)
                a = model(step, past_key_values=cache).logits
                b = model(step, past_key_values=reference).logits
                _check(f"{label} decoding after a context-parallel prefill", a, b)
    model.set_attention("exact")
    with pytest.raises(ValueError, match="context parallelism needs FAVOR attention"):
        model(ids[:, lo:hi], context_group=dist.group.WORLD)


CASES = {name: fn for name, fn in globals().items() if name.startswith("case_") and callable(fn)}


def worker(rank: int, world: int, path: str, lengths: list[int], cases: list[str], report: str) -> None:
    _init(rank, world, path)
    try:
        for name in cases:
            CASES[name](rank, world, lengths)
    except BaseException:
        with open(f"{report}.{rank}", "w") as handle:
            handle.write(traceback.format_exc())
        os._exit(1)  # the other processes may wait in a collective: do not hang them politely
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Training: the Trainer with context_parallel, against one process on the same global batch


def variable_proteins(n: int, seed: int = 0) -> list[str]:
    """Motif proteins of 3 to 8 motifs: batches of them are padded, so shards at the end of a
    short row hold only padding."""
    g = torch.Generator().manual_seed(seed)
    motifs = ["ACDEFG", "HIKLMN", "PQRSTV", "WYACDE"]
    out = []
    for _ in range(n):
        count = int(torch.randint(3, 9, (1,), generator=g))
        out.append("".join(motifs[i] for i in torch.randint(0, 4, (count,), generator=g).tolist()))
    return out


def train_tiny(out, task: str, context: int, *, position: str, concatenate: bool, stop_at=None, resume=False):
    """A tiny FAVOR+ model (no dropout) trained for 6 steps; returns its state dict."""
    from performers import FavorConfig, PerformerConfig, build_model
    from performers.jobs.proteins import protein_trainer
    from performers.proteins import ProteinTokenizer
    from performers.training import TrainingConfig

    tok = ProteinTokenizer()
    torch.manual_seed(0)
    config = PerformerConfig(
        vocab_size=len(tok), d_model=16, num_layers=2, num_heads=2, d_ff=32,
        max_position_embeddings=64, dropout=0.0, position=position,
        favor=FavorConfig(8, redraw_every=2), pad_token_id=tok.pad_id,
    )  # fmt: skip
    model = build_model(config, task)
    training = TrainingConfig(
        task=task, max_steps=6, batch_size=4, max_length=52, warmup_steps=2, eval_every=3,
        eval_batches=1, checkpoint_every=3, log_every=100, learning_rate=3e-3,
        concatenate=concatenate, context_parallel=context, tensorboard=False,
    )  # fmt: skip
    trainer = protein_trainer(
        model, tok, variable_proteins(48), variable_proteins(4, seed=1), training, out, log=lambda _: None
    )
    trainer.fit(resume=resume, stop_at=stop_at)
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


TRAINING_RUNS = [
    ("mlm", "learned", False),
    ("clm", "rotary", False),
    ("clm", "learned", True),
]


def train_worker(rank: int, world: int, path: str, out: str, context: int, report: str) -> None:
    """Every training run with context_parallel = ``context`` (world/context data-parallel
    groups), then a run split at step 3 and resumed; rank 0 saves the parameters."""
    _init(rank, world, path)
    try:
        results = {}
        for task, position, concatenate in TRAINING_RUNS:
            name = f"{task}-{position}-{'windows' if concatenate else 'crops'}"
            results[name] = train_tiny(
                f"{out}/{name}", task, context, position=position, concatenate=concatenate
            )
        if world == context:
            # Bit-identical resume needs a fixed summation order of the gradient all-reduce:
            # DistributedDataParallel re-buckets its gradients after the first step of every
            # run, and with more than two processes gloo's ring then adds them in another order
            # (two add a + b either way). Plain DDP on 4 processes has the same limit.
            split = f"{out}/split"
            train_tiny(split, "clm", context, position="rotary", concatenate=False, stop_at=3)
            resumed = train_tiny(split, "clm", context, position="rotary", concatenate=False, resume=True)
            full = results["clm-rotary-crops"]
            for name in full:
                assert torch.equal(resumed[name], full[name]), f"resumed run differs in {name}"
        if rank == 0:
            torch.save(results, f"{out}/parameters.pt")
    except BaseException:
        with open(f"{report}.{rank}", "w") as handle:
            handle.write(traceback.format_exc())
        os._exit(1)
    dist.barrier()
    dist.destroy_process_group()

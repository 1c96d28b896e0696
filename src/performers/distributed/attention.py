r"""Context-parallel FAVOR attention: one sequence split into contiguous shards over processes.

FAVOR+ needs a fixed-size summary of the keys, not the keys: bidirectionally every query reads
``Σ_j φ(k_j)[v_j, 1]ᵀ`` (``M' × (Dv+1)``), so the shards exchange one all-reduce of that size
per call whatever the sequence length; causally shard ``r`` reads the same sum over the shards
before it, from one all-gather of every shard's summary (:mod:`performers.distributed.prefix`).
Backward mirrors forward: an all-reduce, or an all-gather of the prefix gradients.

Stabilizers stay exact and causal-safe: the bidirectional key maximum is an all-reduce max;
causally each summary carries its offset and shard ``r`` continues from the running maximum of
the shards before it, exactly as the single-process algorithm crosses its chunk boundaries, so
no output reads a later token. Kernels with an exponential form run the fused paths (a key
summary, then the readout or the causal pass from the prefix state); the others the generic
feature path, whose data-dependent parameters (FAVOR++'s ``A``) come from statistics combined
over the shards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from performers.distributed.checks import agree_on_call, call_row
from performers.distributed.collectives import all_reduce_max, all_reduce_sum
from performers.distributed.layout import resolve_group
from performers.distributed.prefix import exclusive_prefix, offset_weights
from performers.distributed.shards import ContextShards
from performers.ops import DEFAULT_CHUNK_SIZE, FavorState, KernelLike
from performers.ops.bidirectional.fused import exp_key_summary, exp_query_readout
from performers.ops.call import FavorCall, check_favor_call, compute_dtype
from performers.ops.causal.fused import fused_causal_exp_attention
from performers.ops.causal.generic import causal_linear_attention
from performers.ops.features import ExpForm
from performers.ops.generic_features import attention_features, state_params
from performers.ops.numerics import guarded_divide, with_ones

__all__ = ["favor_attention"]


def _finite(offset: Tensor) -> Tensor:
    """A raw offset as states store it: ``-inf`` (no key) becomes the placeholder 0."""
    return torch.where(torch.isfinite(offset), offset, torch.zeros_like(offset))


def favor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None = None,
    *,
    is_causal: bool = False,
    kernel: KernelLike = "softmax",
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
    block_size: int | None = None,
    group=None,
    shard_offset: int | None = None,
    causal: bool | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, FavorState]:
    """:func:`performers.favor_attention` of a sequence split over the processes of ``group``.

    Every process passes its contiguous shard of the sequence — the processes hold the shards
    in the order of their rank in ``group`` — and gets back its shard of the output, equal (up
    to rounding) to the matching rows of the single-process result. Shards may differ in
    length (a shard of one position is fine). Gradients of ``q``, ``k``, ``v`` are those of the
    sum of every process's loss (collectives run backwards too, so every process must call
    backward); a tensor every process holds, such as ``projection`` or ``initial_state``,
    receives this process's share, and the shares sum to the single-process gradient (as
    DistributedDataParallel's gradient all-reduce does, up to its averaging).

    Args:
        q: ``(B, H, Lq_r, D)``, k: ``(B, H, Lk_r, D)``, v: ``(B, H, Lk_r, Dv)``: this process's
            shard (causal: ``Lq_r == Lk_r``; bidirectional: query and key shards may differ).
        projection, is_causal, kernel, scale, chunk_size, eps, block_size: as in
            :func:`performers.favor_attention`, the same on every process (checked);
            ``causal`` is the older spelling of ``is_causal``. (``attn_mask`` and
            ``enable_gqa`` are not taken here: pass key padding as ``key_padding_mask`` and
            repeat grouped key/value heads.)
        key_padding_mask: ``(B, Lk_r)`` bool, True marks a padded key of this shard; padding may
            sit anywhere, and a shard may be entirely padding.
        initial_state: causal only, the state before the whole sequence (the same on every
            process), e.g. from an earlier call; checked against the inputs as in
            :func:`performers.favor_attention`.
        return_state: causal only, also return the state after the *whole* sequence (the same
            on every process): decoding continues from it with
            :func:`performers.favor_attention_step` on one process.
        group: the process group (a ``ProcessGroup``, a one-dimensional ``DeviceMesh`` such as
            ``mesh["context"]``, or None for the default group).
        shard_offset: optional position of this shard's first key in the sequence; when given
            (on every process) the shards are checked to be contiguous in rank order.
        cu_seqlens: not supported: packed sequences (:func:`performers.favor_attention`'s
            ``cu_seqlens``) are refused with a ValueError on every process, before any
            collective (a shard would cut sequences whose boundaries the others do not see).

    Returns:
        ``(B, H, Lq_r, Dv)``, and the :class:`~performers.FavorState` after the sequence if
        ``return_state``.

    Raises:
        ValueError: bad shapes or options on this process (and, on the others, an error naming
            the rank that rejected its inputs), or processes that disagree on shapes, kernel,
            scale, dtype, projection values or state options, or non-contiguous shards: on every
            process, before any other collective, so none is left waiting.
        RuntimeError: torch.distributed is not initialized.
    """
    if cu_seqlens is not None:
        # Checked before anything collective, so every process refuses alike and none waits.
        raise ValueError(
            "performers.distributed.favor_attention does not take cu_seqlens: context parallelism "
            "shards one long sequence; run packed batches with performers.favor_attention "
            "(data parallel), or pass each sequence unpacked"
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "performers.distributed.favor_attention needs torch.distributed to be initialized "
            "(torch.distributed.init_process_group, e.g. under torchrun)"
        )
    group = resolve_group(group)
    # Input errors of one process must reach the others (which would otherwise wait for it in
    # the first collective): they travel with the call's description.
    row, error, call = None, None, None
    try:
        call = check_favor_call(
            q, k, v, projection, kernel=kernel, is_causal=is_causal, causal=causal, scale=scale,
            key_padding_mask=key_padding_mask, chunk_size=chunk_size, block_size=block_size,
            initial_state=initial_state, return_state=return_state, eps=eps,
        )  # fmt: skip
        row = call_row(
            q, k, v, projection,
            kernel_name=call.kernel.name, causal=call.causal, scale=float(call.scale),
            initial_state=initial_state is not None, return_state=return_state, shard_offset=shard_offset,
        )  # fmt: skip
    except (TypeError, ValueError) as caught:
        error = caught
    device = q.device if isinstance(q, Tensor) else torch.device("cpu")
    layout = agree_on_call(row, error, group=group, rank=dist.get_rank(group), device=device)
    # (agree_on_call raised on every process if any rejected its inputs: `call` is set.)
    out_dtype = call.out_dtype
    dtype = compute_dtype(q, k, v)
    call = call.replace(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype))
    with torch.autocast(device_type=q.device.type, enabled=False):
        if call.kernel.exp_form is not None and projection is not None:
            out, state = _exponential(call, call.kernel.exp_form(projection.to(dtype)), group)
        else:
            shards = ContextShards(
                group,
                causal=call.causal,
                self_attention=layout.self_attention,
                initial_offset=None if initial_state is None else initial_state.log_offset.to(dtype),
            )
            out, state = _generic(call, shards)
    if return_state:
        # The state records its kernel, as the single-process one does.
        return out.to(out_dtype), state._replace(kernel=call.kernel.name)
    return out.to(out_dtype)


def _initial(initial_state: FavorState | None, dtype) -> tuple[Tensor | None, Tensor | None]:
    if initial_state is None:
        return None, None
    state = torch.cat([initial_state.kv, initial_state.normalizer.unsqueeze(-1)], dim=-1)
    return state.to(dtype), initial_state.log_offset.to(dtype)


def _as_state(total: Tensor, offset: Tensor, params: Tensor | None = None) -> FavorState:
    return FavorState(total[..., :-1], total[..., -1], _finite(offset), params)


def _exponential(call: FavorCall, form: ExpForm, group) -> tuple[Tensor, FavorState | None]:
    """The fused paths: this shard's key summary, exchanged, then read (bidirectional) or
    continued (causal)."""
    q, k, v, input_scale, mask = call.q, call.k, call.v, call.input_scale, call.key_padding_mask
    causal, block_size, eps, return_state = call.causal, call.block_size, call.eps, call.return_state
    # Bidirectional: one key maximum per feature (moved to the query side by the readout, so no
    # query row underflows); causal: one per (batch, head), the units of a FavorState.
    kv, normalizer, offset = exp_key_summary(
        k, v, form, scale=input_scale, key_padding_mask=mask, block_size=block_size, per_feature=not causal
    )
    summary = torch.cat([kv, normalizer.unsqueeze(-1)], dim=-1)  # (B, H, M', Dv+1)
    if not causal:
        # Bring every shard's summary to the global per-feature key maxima, then add them up.
        top = all_reduce_max(offset, group)
        summary = all_reduce_sum(summary * offset_weights(offset, top)[..., None], group)
        out = exp_query_readout(
            q, summary[..., :-1], summary[..., -1], form, scale=input_scale, block_size=block_size, eps=eps,
            key_offsets=top,
        )  # fmt: skip
        return out, None
    initial, initial_offset = _initial(call.initial_state, q.dtype)
    exchanged = exclusive_prefix(
        summary, offset, group=group, initial=initial, initial_offset=initial_offset, with_total=return_state
    )
    prefix, prefix_offset = exchanged[0], exchanged[1]
    out, _, _ = fused_causal_exp_attention(
        q, k, v, form, scale=input_scale, key_padding_mask=mask, chunk_size=call.chunk_size, eps=eps,
        initial_state=prefix, initial_offset=prefix_offset,
    )  # fmt: skip
    return out, _as_state(exchanged[2], exchanged[3]) if return_state else None


def _generic(call: FavorCall, shards: ContextShards) -> tuple[Tensor, FavorState | None]:
    """Materialized features of any kernel; offsets and parameters completed over the shards."""
    q, k, v, kern, mask, eps = call.q, call.k, call.v, call.kernel, call.key_padding_mask, call.eps
    initial_state, dtype = call.initial_state, call.q.dtype
    q_features, k_features, offsets, params = attention_features(
        kern, q, k, call.projection, call.input_scale,
        causal=call.causal, key_padding_mask=mask, initial_offset=shards.key_offset_start,
        params=state_params(kern, initial_state, dtype), shards=shards,
    )  # fmt: skip
    if offsets is None:
        # Plain features (no exponential part): every summary is in units of exp(0).
        end_offset = k_features.new_zeros(k_features.shape[:2])
        key_weights = None
    else:
        end_offset = shards.end_offset
        # Key j is in units of exp(m_j); the shard's summary in those of its last offset.
        key_weights = offset_weights(offsets, end_offset[..., None])[..., None]
    values = with_ones(v)
    weighted = values if key_weights is None else values * key_weights
    summary = torch.matmul(k_features.transpose(-2, -1), weighted)  # (B, H, M', Dv+1)
    if not call.causal:
        # Offsets are the global key maximum already: the summaries add up as they are.
        summary = shards.sum(summary)
        out = torch.matmul(q_features, summary)
        return guarded_divide(out[..., :-1], out[..., -1], eps), None
    initial, initial_offset = _initial(initial_state, dtype)
    exchanged = exclusive_prefix(
        summary, end_offset, group=shards.group, initial=initial, initial_offset=initial_offset,
        with_total=call.return_state,
    )  # fmt: skip
    prefix, prefix_offset = exchanged[0], exchanged[1]
    if offsets is None:
        prefix_offset = _finite(prefix_offset)
    out = causal_linear_attention(
        q_features, k_features, v, key_log_offsets=offsets, chunk_size=call.chunk_size,
        initial_state=FavorState(prefix[..., :-1], prefix[..., -1], prefix_offset), eps=eps,
    )  # fmt: skip
    return out, _as_state(exchanged[2], exchanged[3], params) if call.return_state else None

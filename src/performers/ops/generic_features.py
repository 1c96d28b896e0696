"""The feature stage of the generic paths: stabilized query and key features of any kernel.

:mod:`performers.ops.bidirectional.generic`, :mod:`performers.ops.causal.generic` and
:mod:`performers.ops.causal.recurrent` take materialized features; this module computes them
from ``q`` and ``k`` for every registry kernel, with the stabilizers of
:mod:`performers.ops.features` and the data-dependent parameters of FAVOR++
(:mod:`performers.ops.favor_plus_plus`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from performers.ops.features import (
    FeatureMapOutput,
    stabilize_keys,
    stabilize_queries,
    stabilized_exp_features,
)
from performers.ops.kernels import Kernel
from performers.ops.shards import SequenceShards
from performers.ops.state import FavorState

__all__ = ["attention_features", "state_params"]


def attention_features(
    kernel: Kernel,
    q: Tensor,
    k: Tensor,
    projection: Tensor | None,
    input_scale: float,
    *,
    causal: bool,
    key_padding_mask: Tensor | None,
    initial_offset: Tensor | Callable[[Tensor], Tensor] | None,
    params: Tensor | None = None,
    shards: SequenceShards | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Stabilized query and key features, key offsets and the map's data-dependent parameters.

    Args:
        kernel: the feature map.
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)`` (unscaled, in the compute dtype).
        projection: ``(M, D)`` or None.
        input_scale: ``√scale``, the factor applied to ``q`` and ``k``.
        causal, key_padding_mask, initial_offset: as in
            :func:`performers.ops.features.stabilize_keys`.
        params: ``(B, H)`` parameters of a causal state being continued (FAVOR++'s ``A``; NaN
            rows are still open), else None: they are computed from ``q`` and ``k``.
        shards: ``q`` and ``k`` are one shard of a sequence (context parallelism): statistics
            that read the whole sequence (the map's parameters, FAVOR++'s column balance) are
            completed through it. Key offsets stay local to the shard.

    Returns:
        ``(q_features (B, H, Lq, M'), k_features (B, H, Lk, M'), offsets (B, H, Lk) or None,
        params (B, H) or None)``.
    """
    w = None if projection is None else projection.to(q.dtype)
    if kernel.exp_form is not None and w is not None and causal:
        form = kernel.exp_form(w)
        q_features, _ = stabilized_exp_features(q, form, scale=input_scale, role="query")
        k_features, offsets = stabilized_exp_features(
            k,
            form,
            scale=input_scale,
            role="key",
            causal=causal,
            key_padding_mask=key_padding_mask,
            initial_offset=initial_offset,
        )
        return q_features, k_features, offsets, None
    q_scaled, k_scaled = q * input_scale, k * input_scale
    feature_params = params
    if kernel.parameters is not None:
        # NaN marks a (batch, head) whose causal prefix holds no real key yet (all padding): its
        # parameter is still open and is fixed by the first real key of a later call.
        # The statistic is O(L·d), cheaper than testing for open rows (a host-device sync).
        fresh = _parameters(kernel, q_scaled, k_scaled, causal, key_padding_mask, shards)
        params = fresh if params is None else torch.where(torch.isnan(params), fresh, params)
        # Rows still open have seen only padded keys, which carry no weight: any finite value
        # gives them the same (zero) contribution.
        feature_params = torch.nan_to_num(params, nan=0.0)
    q_map, k_map = kernel(q_scaled, w, feature_params), kernel(k_scaled, w, feature_params)
    if not causal and q_map.log is not None and k_map.log is not None:
        # Bidirectional exponential maps: per-feature key maxima to the query side, so no
        # query row underflows to zero in float32 at large logits.
        q_map, k_map = _balance_columns(q_map, k_map, key_padding_mask, shards)
    q_features = stabilize_queries(q_map)
    k_features, offsets = stabilize_keys(
        k_map,
        causal=causal,
        key_padding_mask=key_padding_mask,
        initial_offset=initial_offset,
    )
    return q_features, k_features, offsets, params


def _parameters(
    kernel: Kernel,
    q: Tensor,
    k: Tensor,
    causal: bool,
    key_padding_mask: Tensor | None,
    shards: SequenceShards | None,
) -> Tensor:
    """The map's data-dependent parameters ``(B, H)`` of scaled ``q`` and ``k``: of this call's
    positions, or of the whole sequence whose shard they are."""
    if shards is None:
        return kernel.parameters(q, k, causal=causal, key_padding_mask=key_padding_mask)
    if kernel.statistics is None or kernel.parameters_from_statistics is None:
        raise ValueError(
            f"kernel {kernel.name!r} has data-dependent parameters but no Kernel.statistics / "
            "parameters_from_statistics: they cannot be computed for a sequence split into "
            "shards (context parallelism); give the kernel those two functions"
        )
    local = kernel.statistics(
        q, k, causal=causal, key_padding_mask=key_padding_mask, self_attention=shards.self_attention
    )
    stats = shards.first_defined(local) if causal else shards.sum(local)
    return kernel.parameters_from_statistics(stats, q.shape[-1], causal=causal)


def _balance_columns(
    q_map: FeatureMapOutput,
    k_map: FeatureMapOutput,
    key_padding_mask: Tensor | None,
    shards: SequenceShards | None = None,
) -> tuple[FeatureMapOutput, FeatureMapOutput]:
    """Move each feature's largest key log ``c_f`` from the keys to the queries (bidirectional).

    ``φ_f(q)·φ_f(k)`` is unchanged, so this is exact. Large logits spread the key log-features
    by hundreds of nats across features (and FAVOR++'s features carry a per-feature constant
    ``A‖ω_f‖²`` that does the same when ``A`` is very negative); with ``c_f`` moved, the query
    row maximum is ``max_{j,f}`` of the row's products, so the largest
    term of every row is exactly 1 and float32 cannot underflow a whole row. Bidirectional only:
    ``c_f`` reads every key (causal attention keeps its running key maximum).
    """
    k_log = k_map.log.detach()
    if key_padding_mask is not None:
        k_log = k_log.masked_fill(key_padding_mask[:, None, :, None], float("-inf"))
    column = k_log.amax(dim=-2, keepdim=True)  # (B, H, 1, M')
    if shards is not None:
        column = shards.max(column)
    column = torch.nan_to_num(column, neginf=0.0)
    return q_map._replace(log=q_map.log + column), k_map._replace(log=k_map.log - column)


def state_params(kernel: Kernel, state: FavorState | None, dtype: torch.dtype) -> Tensor | None:
    """The fixed parameters a causal continuation must reuse (FAVOR++'s ``A``), from its state."""
    if state is None or kernel.parameters is None:
        return None
    if state.kernel_params is None:
        raise ValueError(
            f"kernel {kernel.name!r} continues a causal sequence with the parameters stored in its "
            "state, but this state has none (kernel_params is None): it was built by another kernel"
        )
    return state.kernel_params.to(dtype)

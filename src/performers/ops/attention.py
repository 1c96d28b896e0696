"""FAVOR+ attention: linear-time attention through random features.

``favor_attention`` mirrors the keyword style of ``F.scaled_dot_product_attention``: inputs
``(B, H, L, D)``, an optional ``scale`` (default ``1/√D``), ``causal`` for the unidirectional
form. Inputs in float16/bfloat16 are computed in float32 (with autocast disabled inside) and
the output is returned in the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from performers.ops.bidirectional import blockwise_exp_attention
from performers.ops.causal import (
    DEFAULT_CHUNK_SIZE,
    FavorState,
    causal_linear_attention,
    causal_linear_attention_step,
    guarded_divide,
)
from performers.ops.causal_fused import fused_causal_exp_attention
from performers.ops.features import (
    FeatureMapOutput,
    Kernel,
    get_kernel,
    stabilize_keys,
    stabilize_queries,
    stabilized_exp_features,
)

__all__ = ["favor_attention", "favor_attention_step", "linear_attention"]

KernelLike = str | Kernel | Callable[[Tensor], Tensor]


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")


def _validate_qkv(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_float(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, L, D) with 4 dimensions, got {_shape(t)}")
    if q.shape[:2] != k.shape[:2] or q.shape[:2] != v.shape[:2]:
        raise ValueError(
            "q, k and v must share batch and head sizes (B, H); "
            f"got q {_shape(q)}, k {_shape(k)}, v {_shape(v)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dimension D; got q {_shape(q)}, k {_shape(k)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same length Lk; got k {_shape(k)}, v {_shape(v)}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(
            f"causal attention needs q and k of the same length L; got q {_shape(q)}, k {_shape(k)}"
        )


def _validate_mask(mask: Tensor | None, batch: int, length: int) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"key_padding_mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor (True = padded key), got {mask.dtype}")
    if mask.shape != (batch, length):
        raise ValueError(
            f"key_padding_mask must have shape (B, Lk) = ({batch}, {length}), got {_shape(mask)}"
        )


def _validate_projection(projection: Tensor | None, kernel: Kernel, dim: int) -> None:
    if projection is None:
        if kernel.requires_projection:
            raise ValueError(
                f"kernel {kernel.name!r} needs a projection of shape (M, D) with D = {dim}; "
                "build one with performers.orthogonal_projection(M, D, generator=...)"
            )
        return
    _check_float("projection", projection)
    if projection.dim() != 2:
        raise ValueError(f"projection must have shape (M, D), got {_shape(projection)}")
    if projection.shape[0] < 1:
        raise ValueError(f"projection must have M >= 1 rows (random features), got {_shape(projection)}")
    if projection.shape[1] != dim:
        raise ValueError(
            f"projection must have shape (M, D) with D = {dim} (the head dimension), got {_shape(projection)}"
        )


def _check_chunk(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.promote_types(tensors[0].dtype, tensors[1].dtype)
    for t in tensors[2:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _input_scale(scale: float | None, dim: int) -> float:
    if scale is None:
        return dim**-0.5
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return float(scale)


def _features(
    kernel: Kernel,
    q: Tensor,
    k: Tensor,
    projection: Tensor | None,
    input_scale: float,
    *,
    causal: bool,
    key_padding_mask: Tensor | None,
    initial_offset: Tensor | None,
    params: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Stabilized query and key features, key offsets (see ``features.stabilize_keys``) and the
    map's data-dependent parameters (``params`` if given, else computed from ``q`` and ``k``)."""
    w = None if projection is None else projection.to(q.dtype)
    if kernel.exp_rows is not None and w is not None:
        rows, log_const = kernel.exp_rows(w)
        q_features, _ = stabilized_exp_features(q, rows, scale=input_scale, log_const=log_const, role="query")
        k_features, offsets = stabilized_exp_features(
            k,
            rows,
            scale=input_scale,
            log_const=log_const,
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
        fresh = kernel.parameters(q_scaled, k_scaled, causal=causal, key_padding_mask=key_padding_mask)
        params = fresh if params is None else torch.where(torch.isnan(params), fresh, params)
        # Rows still open have seen only padded keys, which carry no weight: any finite value
        # gives them the same (zero) contribution.
        feature_params = torch.nan_to_num(params, nan=0.0)
    q_map, k_map = kernel(q_scaled, w, feature_params), kernel(k_scaled, w, feature_params)
    if kernel.parameters is not None and not causal and q_map.log is not None and k_map.log is not None:
        q_map, k_map = _balance_columns(q_map, k_map, key_padding_mask)
    q_features = stabilize_queries(q_map)
    k_features, offsets = stabilize_keys(
        k_map,
        causal=causal,
        key_padding_mask=key_padding_mask,
        initial_offset=initial_offset,
    )
    return q_features, k_features, offsets, params


def _balance_columns(
    q_map: FeatureMapOutput, k_map: FeatureMapOutput, key_padding_mask: Tensor | None
) -> tuple[FeatureMapOutput, FeatureMapOutput]:
    """Move each feature's largest key log ``c_f`` from the keys to the queries (bidirectional).

    ``φ_f(q)·φ_f(k)`` is unchanged, so this is exact. FAVOR++'s features carry a per-feature
    constant ``A‖ω_f‖²`` that spreads them by hundreds of nats when ``A`` is very negative; with
    ``c_f`` moved, the query row maximum is ``max_{j,f}`` of the row's products, so the largest
    term of every row is exactly 1 and float32 cannot underflow a whole row. Bidirectional only:
    ``c_f`` reads every key (causal attention keeps its running key maximum).
    """
    k_log = k_map.log.detach()
    if key_padding_mask is not None:
        k_log = k_log.masked_fill(key_padding_mask[:, None, :, None], float("-inf"))
    column = torch.nan_to_num(k_log.amax(dim=-2, keepdim=True), neginf=0.0)  # (B, H, 1, M')
    return q_map._replace(log=q_map.log + column), k_map._replace(log=k_map.log - column)


def _state_params(kernel: Kernel, state: FavorState | None, dtype: torch.dtype) -> Tensor | None:
    """The fixed parameters a causal continuation must reuse (FAVOR++'s ``A``), from its state."""
    if state is None or kernel.parameters is None:
        return None
    if state.kernel_params is None:
        raise ValueError(
            f"kernel {kernel.name!r} continues a causal sequence with the parameters stored in its "
            "state, but this state has none (kernel_params is None): it was built by another kernel"
        )
    return state.kernel_params.to(dtype)


def _bidirectional(q_features: Tensor, k_features: Tensor, values: Tensor, eps: float | None) -> Tensor:
    # Q'(K'ᵀ[V 1]): one (M × (Dv+1)) summary, then one matmul per query.
    values_aug = torch.cat([values, values.new_ones(*values.shape[:-1], 1)], dim=-1)
    summary = torch.matmul(k_features.transpose(-2, -1), values_aug)
    out = torch.matmul(q_features, summary)
    return guarded_divide(out[..., :-1], out[..., -1], eps)


def linear_attention(
    q_features: Tensor,
    k_features: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
) -> Tensor | tuple[Tensor, FavorState]:
    """Normalized linear attention ``diag(Q'K'ᵀ1)⁻¹ Q'(K'ᵀV)`` for features you computed.

    Args:
        q_features: ``(B, H, Lq, M)``.
        k_features: ``(B, H, Lk, M)``.
        v: ``(B, H, Lk, Dv)``.
        causal: unidirectional (prefix-sum) form; needs ``Lq == Lk``.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key: it is removed from both
            the numerator and the denominator.
        chunk_size, initial_state, return_state: causal form only, see
            :func:`performers.ops.causal.causal_linear_attention`.
        eps: denominator guard (see :func:`performers.ops.causal.guarded_divide`).

    Returns:
        ``(B, H, Lq, Dv)``, and the final :class:`FavorState` if ``return_state``.
    """
    _validate_qkv(q_features, k_features, v, causal=causal)
    _validate_mask(key_padding_mask, k_features.shape[0], k_features.shape[2])
    _check_chunk(chunk_size)
    if (initial_state is not None or return_state) and not causal:
        raise ValueError("initial_state and return_state are only defined for causal=True")
    if key_padding_mask is not None:
        k_features = k_features.masked_fill(key_padding_mask[:, None, :, None], 0.0)
    if causal:
        return causal_linear_attention(
            q_features,
            k_features,
            v,
            chunk_size=chunk_size,
            initial_state=initial_state,
            return_state=return_state,
            eps=eps,
        )
    return _bidirectional(q_features, k_features, v, eps)


def favor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None = None,
    *,
    causal: bool = False,
    kernel: KernelLike = "softmax",
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
    block_size: int | None = None,
) -> Tensor | tuple[Tensor, FavorState]:
    """FAVOR attention: softmax (or generalized-kernel) attention in ``O(L·M·D)`` time.

    Args:
        q: ``(B, H, Lq, D)`` queries.
        k: ``(B, H, Lk, D)`` keys.
        v: ``(B, H, Lk, Dv)`` values.
        projection: ``(M, D)`` random projection (see :func:`performers.orthogonal_projection`);
            may be None only for generalized kernels, which then use ``f(x)`` directly.
        causal: unidirectional attention (query ``i`` sees keys ``j ≤ i``); needs ``Lq == Lk``.
        kernel: a registry name (``"softmax"``, ``"softmax-hyperbolic"``, ``"trig"``,
            ``"favor++"``, ``"relu"``, ``"elu"``, ``"abs"``, ``"exp"``, the Gaussian-kernel
            ``"gaussian"``, ``"gaussian-hyperbolic"``, ``"gaussian-trig"``,
            ``"gaussian-favor++"``), a :class:`Kernel`, or a callable ``f``. ``"favor++"``
            computes its parameter ``A`` per (batch, head) from ``q`` and ``k`` (causal: from
            the first non-padded position, kept in the returned state; see
            :mod:`performers.ops.features`) and takes the generic (non-fused) paths.
        scale: the softmax temperature of ``exp(scale·qᵀk)``, default ``1/√D``; ``q`` and ``k``
            are multiplied by ``√scale`` before the feature map.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key (as in
            ``nn.MultiheadAttention``); padded keys leave numerator and denominator alike.
        chunk_size: positions per chunk of the causal algorithm.
        initial_state: causal only, the state returned by an earlier call or by
            :func:`favor_attention_step`; the keys here continue that prefix.
        return_state: causal only, also return the state after the last position.
        eps: denominator guard, default the dtype's smallest normal number.
        block_size: bidirectional softmax kernels only: positions per block of the fused
            path (:mod:`performers.ops.bidirectional`); default sized for the cache.

    Returns:
        ``(B, H, Lq, Dv)`` in the dtype of the inputs, and the :class:`FavorState` (float32 or
        float64) if ``return_state``.
    """
    _validate_qkv(q, k, v, causal=causal)
    kern = get_kernel(kernel)
    _validate_projection(projection, kern, q.shape[-1])
    _validate_mask(key_padding_mask, k.shape[0], k.shape[2])
    _check_chunk(chunk_size)
    if (initial_state is not None or return_state) and not causal:
        raise ValueError("initial_state and return_state are only defined for causal=True")
    input_scale = _input_scale(scale, q.shape[-1]) ** 0.5
    out_dtype = torch.promote_types(q.dtype, v.dtype)
    dtype = _compute_dtype(q, k, v)

    with torch.autocast(device_type=q.device.type, enabled=False):
        if not causal and kern.exp_rows is not None and projection is not None:
            rows, _ = kern.exp_rows(projection.to(dtype))
            out = blockwise_exp_attention(
                q.to(dtype),
                k.to(dtype),
                v.to(dtype),
                rows,
                scale=input_scale,
                key_padding_mask=key_padding_mask,
                block_size=block_size,
                eps=eps,
            )
            return out.to(out_dtype)
        # The fused causal path starts from an empty state and returns a non-differentiable
        # final state; a state that gradients must flow through takes the autograd path.
        state_needs_grad = return_state and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
        fused = kern.exp_rows is not None and projection is not None and initial_state is None
        if causal and fused and not state_needs_grad:
            rows, log_const = kern.exp_rows(projection.to(dtype))
            out, final, final_offset = fused_causal_exp_attention(
                q.to(dtype),
                k.to(dtype),
                v.to(dtype),
                rows,
                scale=input_scale,
                log_const=log_const,
                key_padding_mask=key_padding_mask,
                chunk_size=chunk_size,
                eps=eps,
            )
            if return_state:
                return out.to(out_dtype), FavorState(final[..., :-1], final[..., -1], final_offset)
            return out.to(out_dtype)
        q_features, k_features, offsets, params = _features(
            kern,
            q.to(dtype),
            k.to(dtype),
            projection,
            input_scale,
            causal=causal,
            key_padding_mask=key_padding_mask,
            initial_offset=None if initial_state is None else initial_state.log_offset.to(dtype),
            params=_state_params(kern, initial_state, dtype),
        )
        if causal:
            result = causal_linear_attention(
                q_features,
                k_features,
                v.to(dtype),
                key_log_offsets=offsets,
                chunk_size=chunk_size,
                initial_state=initial_state,
                return_state=return_state,
                eps=eps,
            )
        else:
            result = _bidirectional(q_features, k_features, v.to(dtype), eps)
    if return_state:
        out, state = result
        return out.to(out_dtype), state._replace(kernel_params=params)
    return result.to(out_dtype)


def favor_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: FavorState | None,
    projection: Tensor | None = None,
    *,
    kernel: KernelLike = "softmax",
    scale: float | None = None,
    eps: float | None = None,
) -> tuple[Tensor, FavorState]:
    """Causal FAVOR attention for one new position, from the recurrent state: ``O(M·D)``.

    Args:
        q, k: ``(B, H, 1, D)``; v: ``(B, H, 1, Dv)`` — the new position.
        state: the state after the previous positions (from ``favor_attention(...,
            causal=True, return_state=True)`` or an earlier step), or None at the start.
        projection, kernel, scale, eps: as in :func:`favor_attention`.

    Returns:
        ``(out, state)``: ``out`` of shape ``(B, H, 1, Dv)`` equal (up to rounding) to position
        ``t`` of the parallel causal output, and the updated state.
    """
    _validate_qkv(q, k, v, causal=True)
    if q.shape[2] != 1:
        raise ValueError(f"favor_attention_step takes one position: q must be (B, H, 1, D), got {_shape(q)}")
    kern = get_kernel(kernel)
    _validate_projection(projection, kern, q.shape[-1])
    input_scale = _input_scale(scale, q.shape[-1]) ** 0.5
    out_dtype = torch.promote_types(q.dtype, v.dtype)
    dtype = _compute_dtype(q, k, v)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q_features, k_features, offsets, params = _features(
            kern,
            q.to(dtype),
            k.to(dtype),
            projection,
            input_scale,
            causal=True,
            key_padding_mask=None,
            initial_offset=None if state is None else state.log_offset.to(dtype),
            params=_state_params(kern, state, dtype),
        )
        out, new_state = causal_linear_attention_step(
            q_features[:, :, 0],
            k_features[:, :, 0],
            v[:, :, 0].to(dtype),
            state,
            key_log_offset=None if offsets is None else offsets[..., 0],
            eps=eps,
        )
    return out.unsqueeze(2).to(out_dtype), new_state._replace(kernel_params=params)

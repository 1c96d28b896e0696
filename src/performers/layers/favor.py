"""``FavorAttention``: the FAVOR attention of one layer, with its random projection.

The module owns everything random about FAVOR attention: the ``(M, D)`` projection matrix (a
registered buffer, so it is saved in ``state_dict`` and follows ``.to()``) and the counters
that decide when it is redrawn. Its forward pass is deterministic: the same inputs give the
same outputs until :meth:`FavorAttention.redraw` is called, in training and in eval alike. All
its options come in one :class:`~performers.FavorConfig`.

Redraws are reproducible without communication: draw number ``c`` of layer ``l`` under seed
``s`` is made by a CPU :class:`torch.Generator` seeded with :func:`projection_seed(s, l, c)
<projection_seed>`, so every process of a distributed job computes the same matrix, and a run
resumed from a ``state_dict`` (which holds the counters) continues with the same draws.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from performers import distributed
from performers.layers.favor_config import FavorConfig
from performers.layers.packed import packed_favor_attention
from performers.ops import (
    FavorState,
    Kernel,
    favor_attention,
    favor_attention_step,
    get_kernel,
    make_projection,
)
from performers.ops.masks import resolve_is_causal
from performers.utils import derive_seed
from performers.utils.validation import is_int

__all__ = ["FavorAttention", "projection_seed"]


def projection_seed(seed: int, layer_index: int, redraw_count: int) -> int:
    """The generator seed of draw ``redraw_count`` of layer ``layer_index`` under ``seed``
    (see :func:`performers.utils.derive_seed`: unrelated seeds for nearby triples)."""
    for name, value in (("seed", seed), ("layer_index", layer_index), ("redraw_count", redraw_count)):
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return derive_seed(seed, layer_index, redraw_count)


class FavorAttention(nn.Module):
    """FAVOR attention for heads of size ``head_dim``, owning its random projection.

    One projection ``(M, head_dim)`` is shared by all heads of the layer (as in the paper's
    implementation); heads differ through their queries and keys.

    Args:
        head_dim: ``D``, the size of one head.
        config: every FAVOR option (:class:`~performers.FavorConfig`; default ``FavorConfig()``:
            FAVOR+ softmax with ``M = 256`` orthogonal features).
        layer_index: the projection of draw ``c`` is a pure function of
            ``(config.seed, layer_index, c)``, see :func:`projection_seed`.
        scale: softmax temperature, default ``1/√head_dim``.
        eps: denominator guard of the normalization, default the dtype's smallest normal.
        device, dtype: of the projection buffer.

    Buffers (all in ``state_dict``):
        projection: ``(M, head_dim)`` (absent without projection).
        redraw_count: int64 scalar, the draw number of the current projection.
        step_count: int64 scalar, training steps counted by :meth:`training_step`.
    """

    projection: Tensor | None
    redraw_count: Tensor
    step_count: Tensor

    def __init__(
        self,
        head_dim: int,
        config: FavorConfig | None = None,
        *,
        layer_index: int = 0,
        scale: float | None = None,
        eps: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not is_int(head_dim) or head_dim < 1:
            raise ValueError(f"head_dim must be an int >= 1, got {head_dim!r}")
        config = FavorConfig() if config is None else config
        if not isinstance(config, FavorConfig):
            raise TypeError(f"config must be a FavorConfig, got {type(config).__name__}")
        projection_seed(config.seed, layer_index, 0)  # validates layer_index
        self.head_dim = head_dim
        self.config = config
        self.layer_index = layer_index
        self.scale = scale
        self.eps = eps

        self.register_buffer("redraw_count", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long, device=device))
        if config.has_projection:
            initial = self.draw_projection(0).to(device=device, dtype=dtype or torch.get_default_dtype())
            self.register_buffer("projection", initial)
        else:
            self.register_buffer("projection", None)

    @property
    def kernel(self) -> Kernel:
        """The resolved feature map (:class:`~performers.ops.Kernel`) named by ``config.kernel``."""
        return get_kernel(self.config.kernel)

    @property
    def feature_dim(self) -> int:
        """``M'``, the size of one feature vector (``2M`` for hyperbolic/trig, ``D`` without projection)."""
        return self.kernel.feature_dim(self.projection, self.head_dim)

    def draw_projection(self, redraw_count: int) -> Tensor:
        """Projection number ``redraw_count``: ``(M, head_dim)`` float64 on the CPU.

        A pure function of ``(config.seed, layer_index, redraw_count)``; sampling always happens
        on a CPU generator, so the matrix is the same on every device.
        """
        if not self.config.has_projection:
            raise ValueError("this FavorAttention has no projection (config.num_features is None)")
        generator = torch.Generator(device="cpu")
        generator.manual_seed(projection_seed(self.config.seed, self.layer_index, redraw_count))
        return make_projection(
            self.config.num_features,
            self.head_dim,
            kind=self.config.projection,  # type: ignore[arg-type]
            row_norms=self.config.row_norms,  # type: ignore[arg-type]
            generator=generator,
            dtype=torch.float64,
        )

    @torch.no_grad()
    def redraw(self) -> None:
        """Draw the next projection (increments ``redraw_count``), in place."""
        self.redraw_count += 1
        if self.projection is not None:
            count = int(self.redraw_count.item())
            self.projection.copy_(self.draw_projection(count))

    @torch.no_grad()
    def training_step(self, every: int | None = None) -> bool:
        """Count one training step; redraw when the count reaches a multiple of ``every``.

        ``every`` defaults to ``config.redraw_every`` (0 = never). Returns True if it redrew.
        The counter is a buffer, so a run resumed from a ``state_dict`` redraws at the same
        steps as the uninterrupted run.
        """
        if every is None:
            every = self.config.redraw_every
        elif not is_int(every) or every < 0:
            raise ValueError(f"every must be None or an int >= 0, got {every!r}")
        self.step_count += 1
        if every and int(self.step_count.item()) % every == 0:
            self.redraw()
            return True
        return False

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        is_causal: bool = False,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        enable_gqa: bool = False,
        initial_state: FavorState | None = None,
        return_state: bool = False,
        context_group=None,
        cu_seqlens: Tensor | None = None,
        causal: bool | None = None,
    ) -> Tensor | tuple[Tensor, FavorState]:
        """FAVOR+ attention over ``(B, H, L, D)`` inputs with this module's projection.

        Args:
            q: ``(B, H, Lq, D)``; k: ``(B, Hkv, Lk, D)``; v: ``(B, Hkv, Lk, Dv)`` (``Hkv = H``
                unless ``enable_gqa``).
            is_causal: unidirectional attention (``Lq == Lk``).
            key_padding_mask: ``(B, Lk)`` bool, True marks a padded key.
            attn_mask, enable_gqa: SDPA's boolean mask (True = attend; the masks that factor
                into key padding and causality) and grouped-query attention, see
                :func:`performers.favor_attention`.
            initial_state, return_state: continue from / return the recurrent state
                (causal only), see :func:`performers.favor_attention`.
            context_group: the inputs are this process's shard of a sequence split over a
                process group (or 1-D DeviceMesh): context parallelism,
                :func:`performers.distributed.favor_attention` (``attn_mask`` is not taken there;
                grouped key/value heads are repeated).
            cu_seqlens: packed sequences: ``q, k, v`` are one row ``(1, H, T, D)`` of sequences
                end to end, int ``(N + 1,)`` offsets from 0 to ``T``; attention stays within
                each (:func:`performers.layers.packed.packed_favor_attention`; no masks, state
                or context group with it).
            causal: deprecated spelling of ``is_causal`` (a DeprecationWarning).

        Returns:
            ``(B, H, Lq, Dv)``, and the :class:`FavorState` when ``return_state``.
        """
        is_causal = resolve_is_causal(is_causal, causal, deprecated_in="FavorAttention.forward")
        self._check_head_dim(q, k)
        options = dict(
            is_causal=is_causal,
            kernel=self.kernel,
            scale=self.scale,
            key_padding_mask=key_padding_mask,
            chunk_size=self.config.chunk_size,
            initial_state=initial_state,
            return_state=return_state,
            eps=self.eps,
            block_size=self.config.block_size,
        )
        if cu_seqlens is not None:
            if context_group is not None or enable_gqa:
                raise ValueError("packed sequences (cu_seqlens) take no context_group or enable_gqa")
            return packed_favor_attention(
                q, k, v, self.projection, cu_seqlens, **options, attn_mask=attn_mask,
                backend=self.config.backend, recompute_features=self.config.recompute_features,
            )  # fmt: skip
        if context_group is not None:
            if attn_mask is not None:
                raise ValueError(
                    "context parallelism takes key padding as key_padding_mask, not attn_mask "
                    "(see performers.distributed.favor_attention)"
                )
            if enable_gqa and k.shape[1] and q.shape[1] != k.shape[1]:
                groups = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            return distributed.favor_attention(q, k, v, self.projection, **options, group=context_group)
        return favor_attention(
            q, k, v, self.projection, **options, attn_mask=attn_mask, enable_gqa=enable_gqa,
            backend=self.config.backend, recompute_features=self.config.recompute_features,
        )  # fmt: skip

    def step(
        self, q: Tensor, k: Tensor, v: Tensor, state: FavorState | None, *, enable_gqa: bool = False
    ) -> tuple[Tensor, FavorState]:
        """One causal position from the recurrent state: ``q, k`` ``(B, H, 1, D)``, ``v`` ``(B, H, 1, Dv)``
        (``k``, ``v`` with ``Hkv`` heads under ``enable_gqa``).

        Costs ``O(M·D)`` per head whatever the length of the prefix; returns ``(out (B, H, 1,
        Dv), new_state)``. Outside autograd the state's tensors are updated in place (as a KV
        cache is appended to): the returned state shares them. The inputs are not checked (a
        decoding loop's per-token cost); the state came from this module's causal call.
        """
        self._check_head_dim(q, k)
        return favor_attention_step(
            q, k, v, state, self.projection, kernel=self.kernel, scale=self.scale, eps=self.eps,
            enable_gqa=enable_gqa, backend=self.config.backend, inplace=True, check_inputs=False,
        )  # fmt: skip

    def _check_head_dim(self, q: Tensor, k: Tensor) -> None:
        """``q`` and ``k`` have this module's head dimension (the projection's ``D``): a
        ValueError naming both sizes otherwise, rather than a complaint about the projection."""
        for name, t in (("q", q), ("k", k)):
            if isinstance(t, Tensor) and t.dim() >= 1 and t.shape[-1] != self.head_dim:
                raise ValueError(
                    f"this FavorAttention was built for heads of size head_dim = {self.head_dim}, but "
                    f"{name} has D = {t.shape[-1]} (shape {tuple(t.shape)}, expected (B, H, L, "
                    f"{self.head_dim})); build FavorAttention({t.shape[-1]}, ...) for heads of that size"
                )

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, layer_index={self.layer_index}, {self.config}"

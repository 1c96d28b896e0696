"""``FavorAttention``: the FAVOR+ attention kernel of one layer, with its random projection.

The module owns everything random about FAVOR+ attention: the ``(M, D)`` projection matrix (a
registered buffer, so it is saved in ``state_dict`` and follows ``.to()``) and the counters
that decide when it is redrawn. Its forward pass is deterministic: the same inputs give the
same outputs until :meth:`FavorAttention.redraw` is called, in training and in eval alike.

Redraws are reproducible without communication: draw number ``c`` of layer ``l`` under seed
``s`` is made by a CPU :class:`torch.Generator` seeded with :func:`projection_seed(s, l, c)
<projection_seed>`, so every process of a distributed job computes the same matrix, and a run
resumed from a ``state_dict`` (which holds the counters) continues with the same draws.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from performers.ops.attention import favor_attention, favor_attention_step
from performers.ops.causal import DEFAULT_CHUNK_SIZE, FavorState
from performers.ops.features import Kernel, get_kernel
from performers.ops.projections import make_projection

__all__ = ["FavorAttention", "projection_seed"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """The SplitMix64 output function: a bijective 64-bit mixer with good avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def projection_seed(seed: int, layer_index: int, redraw_count: int) -> int:
    """The generator seed of draw ``redraw_count`` of layer ``layer_index`` under ``seed``.

    Each argument is folded into a 64-bit state through SplitMix64, so nearby triples (layer 0
    and 1, draw 7 and 8) give unrelated seeds; a plain sum such as ``seed + layer + count``
    would make layer 1's first draw equal layer 0's second. The result is a non-negative int
    below ``2**63``, accepted by :meth:`torch.Generator.manual_seed` everywhere.
    """
    for name, value in (("seed", seed), ("layer_index", layer_index), ("redraw_count", redraw_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    state = _splitmix64(seed & _MASK64)
    state = _splitmix64(state ^ (layer_index & _MASK64))
    state = _splitmix64(state ^ (redraw_count & _MASK64))
    return state >> 1


def _optional_count(value: int | None, name: str) -> int:
    """``None`` → 0; otherwise an int >= 0 (0 meaning "off" / "no projection")."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
    return value


class FavorAttention(nn.Module):
    """FAVOR+ attention for heads of size ``head_dim``, owning its random projection.

    One projection ``(M, head_dim)`` is shared by all heads of the layer (as in the paper's
    implementation); heads differ through their queries and keys.

    Args:
        head_dim: ``D``, the size of one head.
        num_features: ``M``, rows of the random projection. ``None`` or 0 means "no
            projection", allowed only for generalized kernels (``"relu"``, ``"elu"``, ...),
            which then use ``f(x)`` directly.
        kernel: a registry name (see :data:`performers.KERNELS`), a :class:`Kernel` or a
            callable ``f`` for a generalized kernel.
        projection_kind: ``"orthogonal"`` (block-orthogonal, FAVOR+) or ``"iid"``.
        row_norms: ``"chi"`` (unbiased softmax) or ``"sqrt_d"`` (regularized), orthogonal only.
        seed, layer_index: the projection of draw ``c`` is a pure function of
            ``(seed, layer_index, c)``, see :func:`projection_seed`.
        redraw_every: redraw after every this many calls of :meth:`training_step`; None or 0
            disables the schedule (explicit :meth:`redraw` still works).
        chunk_size: positions per chunk of the causal algorithm.
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
        num_features: int | None = 256,
        *,
        kernel: str | Kernel | Callable[[Tensor], Tensor] = "softmax",
        projection_kind: str = "orthogonal",
        row_norms: str = "chi",
        seed: int = 0,
        layer_index: int = 0,
        redraw_every: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        scale: float | None = None,
        eps: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"head_dim must be an int >= 1, got {head_dim!r}")
        # Keep the registry name when given one (resolved on use): modules stay picklable
        # even though registry entries such as "relu" are built from lambdas.
        self._kernel_spec = kernel
        resolved = get_kernel(kernel)  # fails early on an unknown name
        self.num_features = _optional_count(num_features, "num_features")
        if self.num_features == 0 and resolved.requires_projection:
            raise ValueError(
                f"kernel {resolved.name!r} needs a random projection: num_features must be >= 1 "
                f"(got {num_features!r}); only generalized kernels work without one"
            )
        if projection_kind not in ("orthogonal", "iid"):
            raise ValueError(f"projection_kind must be 'orthogonal' or 'iid', got {projection_kind!r}")
        if row_norms not in ("chi", "sqrt_d"):
            raise ValueError(f"row_norms must be 'chi' or 'sqrt_d', got {row_norms!r}")
        if projection_kind == "iid" and row_norms != "chi":
            raise ValueError("row_norms='sqrt_d' is only defined for projection_kind='orthogonal'")
        projection_seed(seed, layer_index, 0)  # validates seed and layer_index
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self.head_dim = head_dim
        self.projection_kind = projection_kind
        self.row_norms = row_norms
        self.seed = seed
        self.layer_index = layer_index
        self.redraw_every = _optional_count(redraw_every, "redraw_every")
        self.chunk_size = chunk_size
        self.scale = scale
        self.eps = eps

        self.register_buffer("redraw_count", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long, device=device))
        if self.num_features:
            initial = self.draw_projection(0).to(device=device, dtype=dtype or torch.get_default_dtype())
            self.register_buffer("projection", initial)
        else:
            self.register_buffer("projection", None)

    @property
    def kernel(self) -> Kernel:
        """The resolved feature map (:class:`Kernel`)."""
        return get_kernel(self._kernel_spec)

    @property
    def feature_dim(self) -> int:
        """``M'``, the size of one feature vector (``2M`` for hyperbolic/trig, ``D`` without projection)."""
        return self.kernel.num_features(self.projection, self.head_dim)

    def draw_projection(self, redraw_count: int) -> Tensor:
        """Projection number ``redraw_count``: ``(M, head_dim)`` float64 on the CPU.

        A pure function of ``(seed, layer_index, redraw_count)``; sampling always happens on
        a CPU generator, so the matrix is the same on every device.
        """
        if not self.num_features:
            raise ValueError("this FavorAttention has no projection (num_features is None/0)")
        generator = torch.Generator(device="cpu")
        generator.manual_seed(projection_seed(self.seed, self.layer_index, redraw_count))
        return make_projection(
            self.num_features,
            self.head_dim,
            kind=self.projection_kind,  # type: ignore[arg-type]
            row_norms=self.row_norms,  # type: ignore[arg-type]
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

        ``every`` defaults to :attr:`redraw_every` (0 = never). Returns True if it redrew.
        The counter is a buffer, so a run resumed from a ``state_dict`` redraws at the same
        steps as the uninterrupted run.
        """
        every = self.redraw_every if every is None else _optional_count(every, "every")
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
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        initial_state: FavorState | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, FavorState]:
        """FAVOR+ attention over ``(B, H, L, D)`` inputs with this module's projection.

        Args:
            q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``.
            causal: unidirectional attention (``Lq == Lk``).
            key_padding_mask: ``(B, Lk)`` bool, True marks a padded key.
            initial_state, return_state: continue from / return the recurrent state
                (causal only), see :func:`performers.favor_attention`.

        Returns:
            ``(B, H, Lq, Dv)``, and the :class:`FavorState` when ``return_state``.
        """
        return favor_attention(
            q,
            k,
            v,
            self.projection,
            causal=causal,
            kernel=self.kernel,
            scale=self.scale,
            key_padding_mask=key_padding_mask,
            chunk_size=self.chunk_size,
            initial_state=initial_state,
            return_state=return_state,
            eps=self.eps,
        )

    def step(self, q: Tensor, k: Tensor, v: Tensor, state: FavorState | None) -> tuple[Tensor, FavorState]:
        """One causal position from the recurrent state: ``q, k`` ``(B, H, 1, D)``, ``v`` ``(B, H, 1, Dv)``.

        Costs ``O(M·D)`` per head whatever the length of the prefix; returns ``(out (B, H, 1,
        Dv), new_state)``.
        """
        return favor_attention_step(
            q, k, v, state, self.projection, kernel=self.kernel, scale=self.scale, eps=self.eps
        )

    def extra_repr(self) -> str:
        features = self.num_features or "none (generalized kernel on x)"
        return (
            f"head_dim={self.head_dim}, num_features={features}, kernel={self.kernel.name!r}, "
            f"projection_kind={self.projection_kind!r}, row_norms={self.row_norms!r}, seed={self.seed}, "
            f"layer_index={self.layer_index}, redraw_every={self.redraw_every or None}"
        )

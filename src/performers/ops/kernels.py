"""The estimator registry: one name per feature map, used by modules, configs, the CLI and benchmarks.

A :class:`Kernel` says everything attention needs to know about a map as data (no test of
function identity anywhere): whether it needs a projection, whether its features are
nonnegative, its exponential form (which selects the fused paths), its data-dependent
parameters and how to check parameters a user passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.ops.favor_plus_plus import (
    check_gerf_parameter,
    favor_plus_plus_from_statistics,
    favor_plus_plus_parameters,
    favor_plus_plus_statistics,
    gerf_features,
)
from performers.ops.features import (
    ExpForm,
    FeatureMapOutput,
    exp_form,
    gaussian_hyperbolic_features,
    gaussian_positive_features,
    gaussian_trigonometric_features,
    generalized_features,
    hyperbolic_softmax_features,
    positive_softmax_features,
    trigonometric_softmax_features,
)

__all__ = ["KERNELS", "Kernel", "KernelLike", "feature_map", "get_kernel", "register_kernel"]

FeatureFn = Callable[..., FeatureMapOutput]


@dataclass(frozen=True)
class Kernel:
    """One entry of the estimator registry.

    Attributes:
        name: registry name used by modules, configs, the CLI and benchmarks.
        fn: ``fn(x, projection) -> FeatureMapOutput`` (``fn(x, projection, params)`` with
            ``parameters``).
        requires_projection: the map needs a ``(M, D)`` projection (otherwise it is optional).
        nonnegative: every feature is ``>= 0`` (so the attention denominator is positive).
        features_per_row: ``M'/M`` (2 for the hyperbolic and trigonometric maps).
        exp_form: for maps of the form ``φ(x) = exp(P x − a‖x‖²/2 − c)``, a function
            ``W -> ExpForm(P, a, c)`` (:func:`performers.ops.features.exp_form`); it must describe
            the same map as ``fn``. Attention then takes the fused paths.
        parameters: for maps with data-dependent parameters (FAVOR++), a function
            ``parameters(q, k, *, causal, key_padding_mask) -> (B, H)`` of the scaled queries
            and keys ``(B, H, L, D)``; the map is then called as ``fn(x, projection, params)``
            and attention computes the parameters once per call, before the feature maps.
        check_params: for such maps, ``check_params(params)`` raises on parameters outside the
            map's domain; :func:`feature_map` calls it on parameters a user passes (attention
            computes valid ones and skips it: a check would synchronize host and device).
        statistics, parameters_from_statistics: for such maps, the parameters as a function of
            statistics that combine across the shards of a sequence split among processes
            (context parallelism, :mod:`performers.distributed`):
            ``statistics(q, k, *, causal, key_padding_mask, self_attention) -> (B, H, S)``, summed
            over shards (bidirectional) or taken from the first shard where they are not NaN
            (causal), then ``parameters_from_statistics(stats, D, causal=...) -> (B, H)``. A map
            with ``parameters`` but without these cannot run context-parallel.
    """

    name: str
    fn: FeatureFn
    requires_projection: bool
    nonnegative: bool
    features_per_row: int = 1
    exp_form: Callable[[Tensor], ExpForm] | None = None
    parameters: Callable[..., Tensor] | None = None
    check_params: Callable[[Tensor], None] | None = None
    statistics: Callable[..., Tensor] | None = None
    parameters_from_statistics: Callable[..., Tensor] | None = None

    def __call__(
        self, x: Tensor, projection: Tensor | None, params: Tensor | None = None
    ) -> FeatureMapOutput:
        if self.parameters is None:
            return self.fn(x, projection)
        if params is None:
            raise ValueError(
                f"kernel {self.name!r} has data-dependent parameters: pass params, e.g. "
                f"KERNELS[{self.name!r}].parameters(q, k) of shape (B, H) (one value shared by "
                "the queries and keys whose kernel is estimated)"
            )
        return self.fn(x, projection, params)

    def feature_dim(self, projection: Tensor | None, dim: int) -> int:
        """Feature width ``M'`` produced for a given projection ``(M, D)`` (or none) and input ``D``.

        Not to be confused with ``num_features`` (``M``, the projection's rows) used elsewhere.
        """
        if projection is None:
            return dim
        return self.features_per_row * projection.shape[-2]


KernelLike = str | Kernel | Callable[[Tensor], Tensor]

KERNELS: dict[str, Kernel] = {}


def register_kernel(kernel: Kernel, *, overwrite: bool = False) -> Kernel:
    """Add ``kernel`` to the registry under ``kernel.name`` and return it."""
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a Kernel, got {type(kernel).__name__}")
    if kernel.name in KERNELS and not overwrite:
        raise ValueError(f"a kernel named {kernel.name!r} is already registered")
    KERNELS[kernel.name] = kernel
    return kernel


def _elu_plus_one(u: Tensor) -> Tensor:
    return F.elu(u) + 1.0


def _identity(u: Tensor) -> Tensor:
    return u


def _generalized(f: Callable[[Tensor], Tensor]) -> FeatureFn:
    return partial(generalized_features, f=f)


_softmax_form = partial(exp_form, antithetic=False, norm=1.0)
_hyperbolic_form = partial(exp_form, antithetic=True, norm=1.0)
_gaussian_form = partial(exp_form, antithetic=False, norm=2.0)
_gaussian_hyperbolic_form = partial(exp_form, antithetic=True, norm=2.0)
_gerf = dict(
    parameters=favor_plus_plus_parameters,
    check_params=check_gerf_parameter,
    statistics=favor_plus_plus_statistics,
    parameters_from_statistics=favor_plus_plus_from_statistics,
)

for _kernel in (
    Kernel("softmax", positive_softmax_features, True, True, 1, _softmax_form),
    Kernel("softmax-hyperbolic", hyperbolic_softmax_features, True, True, 2, _hyperbolic_form),
    Kernel("trig", trigonometric_softmax_features, True, False, 2),
    Kernel("favor++", partial(gerf_features, gaussian=False), True, True, **_gerf),
    Kernel("gaussian", gaussian_positive_features, True, True, 1, _gaussian_form),
    Kernel("gaussian-hyperbolic", gaussian_hyperbolic_features, True, True, 2, _gaussian_hyperbolic_form),
    Kernel("gaussian-trig", gaussian_trigonometric_features, True, False, 2),
    Kernel("gaussian-favor++", partial(gerf_features, gaussian=True), True, True, **_gerf),
    Kernel("relu", _generalized(F.relu), False, True),
    Kernel("elu", _generalized(_elu_plus_one), False, True),
    Kernel("abs", _generalized(torch.abs), False, True),
    Kernel("exp", _generalized(torch.exp), False, True),
    # The rest of the paper's Appendix D.3 sweep. Their features can be negative: the normalizer
    # of a row may then vanish (guarded to 0) — part of what the sweep measures.
    Kernel("sigmoid", _generalized(torch.sigmoid), False, True),
    Kernel("gelu", _generalized(F.gelu), False, False),
    Kernel("tanh", _generalized(torch.tanh), False, False),
    Kernel("cos", _generalized(torch.cos), False, False),
    Kernel("identity", _generalized(_identity), False, False),
):
    register_kernel(_kernel)


def get_kernel(kernel: KernelLike) -> Kernel:
    """Resolve a registry name, a :class:`Kernel`, or a plain callable ``f``.

    A plain callable becomes the generalized kernel ``f(Wx) + 1e-3`` (or ``f(x) + 1e-3``
    without projection); it is treated as possibly signed.
    """
    if isinstance(kernel, Kernel):
        return kernel
    if isinstance(kernel, str):
        try:
            return KERNELS[kernel]
        except KeyError:
            known = ", ".join(repr(k) for k in KERNELS)
            raise ValueError(f"kernel: unknown name {kernel!r}; known kernels are {known}") from None
    if callable(kernel):
        name = getattr(kernel, "__name__", type(kernel).__name__)
        return Kernel(
            f"generalized({name})", _generalized(kernel), requires_projection=False, nonnegative=False
        )
    raise TypeError(f"kernel must be a registry name, a Kernel or a callable, got {type(kernel).__name__}")


def feature_map(
    x: Tensor,
    projection: Tensor | None,
    kernel: KernelLike = "softmax",
    params: Tensor | float | None = None,
) -> Tensor:
    """Plain features ``φ(x)``: ``(..., L, D)`` → ``(..., L, M')``, with no stabilization.

    ``params``: the data-dependent parameters of kernels such as ``"favor++"`` (``A``: a float or
    ``x.shape[:-2]``), required for them (checked with the kernel's ``check_params``) and
    ignored otherwise.
    """
    kern = get_kernel(kernel)
    if kern.parameters is not None and params is not None:
        if not isinstance(params, Tensor):
            params = torch.tensor(float(params), dtype=x.dtype, device=x.device)
        if kern.check_params is not None:
            kern.check_params(params)
    return kern(x, projection, params).materialize()

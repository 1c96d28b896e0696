r"""Second derivatives through the hand-written autograd Functions.

The fused paths (:mod:`performers.ops.bidirectional.fused`, :mod:`performers.ops.causal.fused`),
the stabilized features of the generic path (:mod:`performers.ops.features`) and the Triton
kernels (:mod:`performers.ops.triton`) are autograd Functions whose fast backward reads
intermediates their forward computed without a graph (reciprocal denominators, outputs, stored
features). A backward run with ``create_graph=True`` (gradient penalties, Hessian-vector
products, meta-learning) would treat those as constants and give wrong second derivatives.

So each of those backward passes asks :func:`wants_graph` first: when the caller wants a graph
(autograd runs a backward with grad mode on exactly when ``create_graph=True``) it returns
:func:`graph_backward` of a PyTorch recomputation of its forward from the saved *inputs* — the
same units and the same detached stabilizing offsets (maxima of log-features), which cancel
exactly between numerator and denominator for every value of the inputs, so holding them
constant is exact at every order (:mod:`performers.ops.features`). That recomputation
materializes the ``L×M`` features the fast path avoids; it costs memory only when a second
derivative is asked for. Otherwise the fast backward runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["graph_backward", "wants_graph"]


def wants_graph() -> bool:
    """Whether the backward now running must itself be differentiable: autograd runs a backward
    in grad mode exactly when it was called with ``create_graph=True``."""
    return torch.is_grad_enabled()


def graph_backward(
    inputs: Sequence[Tensor | None],
    needs: Sequence[bool],
    forward: Callable[..., Sequence[Tensor | None]],
    grad_outputs: Sequence[Tensor | None],
) -> tuple[Tensor | None, ...]:
    """The vector-Jacobian product of ``forward`` as a differentiable function (a graph).

    Args:
        inputs: the Function's saved inputs (as ``ctx.saved_tensors`` gives them: connected to
            the graph they came from, which is what makes the result differentiable in them).
        needs: ``ctx.needs_input_grad`` for ``inputs``.
        forward: ``forward(*inputs)`` recomputes the Function's outputs with differentiable
            PyTorch operations (stabilizers detached, as in the forward).
        grad_outputs: the gradients of those outputs (None: that output was not used).

    Returns:
        One gradient per input: a tensor where ``needs`` (None if the output does not depend on
        it), None elsewhere.
    """
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs, strict=True)) if need and t is not None]
    result: list[Tensor | None] = [None] * len(inputs)
    if not wanted:
        return tuple(result)
    with torch.enable_grad():
        # Partial derivatives: the recomputation reads x + 0 with a fresh zero leaf per input
        # and is differentiated with respect to those zeros. Differentiated with respect to the
        # inputs themselves, it would also follow a path from one input to another (the
        # summary a readout takes is itself a function of the projection it also takes) and
        # count that path twice, here and in the backward that called this one.
        zeros = {i: torch.zeros_like(inputs[i], requires_grad=True) for i in wanted}
        proxies = [t + zeros[i] if i in zeros else t for i, t in enumerate(inputs)]
        outputs = forward(*proxies)
    pairs = [
        (out, grad)
        for out, grad in zip(outputs, grad_outputs, strict=True)
        if out is not None and grad is not None and out.requires_grad
    ]
    if not pairs:
        return tuple(result)
    grads = torch.autograd.grad(
        [out for out, _ in pairs],
        [zeros[i] for i in wanted],
        [grad.to(out.dtype) for out, grad in pairs],
        create_graph=True,
        allow_unused=True,
    )
    for i, grad in zip(wanted, grads, strict=True):
        result[i] = grad
    return tuple(result)

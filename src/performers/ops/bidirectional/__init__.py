"""Bidirectional FAVOR attention (every query sees every key), one module per path.

==============  ==================================================================================
``naive``       the quadratic references every path below is tested against
``generic``     ``Q'(K'ᵀ[V 1])`` on materialized features (any kernel)
``fused``       exponential kernels, keys streamed in blocks, hand-written backward
``favor``       runs a checked :class:`~performers.ops.call.FavorCall` on the path chosen by
                :mod:`performers.ops.attention` (fused, generic, or the Triton kernels of
                :mod:`performers.ops.triton.bidirectional`)
==============  ==================================================================================
"""

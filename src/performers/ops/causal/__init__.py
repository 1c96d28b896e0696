"""Causal FAVOR attention (query ``i`` sees keys ``j ≤ i``), one module per path.

==============  ==================================================================================
``naive``       the references every path below is tested against (quadratic; the recurrence)
``generic``     chunked prefix sums with autograd (any kernel, any state)
``fused``       exponential kernels, segments of chunks, hand-written backward
``packed``      packed rows (``cu_seqlens``): the chunked algorithm restarting at each sequence
                (masks, segmented stabilizers, per-sequence parameters and states)
``recurrent``   one position from the recurrent state: the decoding step
                (:func:`~performers.ops.favor_attention_step`)
``favor``       runs a checked :class:`~performers.ops.call.FavorCall` on the path chosen by
                :mod:`performers.ops.attention` (fused, generic, or the Triton kernels of
                :mod:`performers.ops.triton.causal`; the step's are in
                :mod:`performers.ops.triton.decode`)
==============  ==================================================================================
"""

"""Decoding speed at long contexts: FAVOR+ recurrent state vs exact attention with a KV cache.

For each context length ``T`` and backend the same model (same weights; only the attention
backend differs) decodes ``warmup + new_tokens`` tokens one at a time after a context of ``T``
positions; each step is timed on its own and the median over the ``new_tokens`` steps after
warm-up is reported (per-token time and tokens/s over the batch).

The context is either a real prompt pass (``cache="prefill"``) or, by default,
``cache="synthetic"``: per-layer caches of the right shape filled with random numbers. The
cost of a decoding step depends only on the cache's shape — ``O(M·D)`` per head for the FAVOR+
state, ``O(T·D)`` for a KV cache of ``T`` positions — so synthetic caches measure the same
thing without the exact backend's ``O(T²)`` prompt pass, which would dominate the run time at
``T = 65536``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from performers.bench.results import write_results
from performers.layers import FavorConfig, KVCache
from performers.models import PerformerCache, PerformerConfig, PerformerForCausalLM
from performers.ops import FavorState

__all__ = ["GenerateRow", "decoder_model", "format_table", "measure", "plot", "write_json"]

DEFAULT_CONTEXTS = (1024, 4096, 16384, 65536)


@dataclass
class GenerateRow:
    """One measurement point."""

    backend: str
    context: int
    batch: int
    new_tokens: int
    per_token_ms: float  # median over the timed steps
    per_token_ms_p25: float
    per_token_ms_p75: float
    tokens_per_s: float  # batch / median step time
    cache_mib: float  # memory of all layers' caches at the start of decoding
    cache: str  # "synthetic" or "prefill"
    prefill_s: float | None  # prompt pass time with cache="prefill"


def decoder_model(
    *,
    vocab_size: int = 1000,
    d_model: int = 512,
    num_layers: int = 6,
    num_heads: int = 8,
    d_ff: int = 1024,
    favor: FavorConfig | None = None,
    max_positions: int = 65536,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> PerformerForCausalLM:
    """A randomly initialized causal LM with rotary positions (no position limit), in eval mode;
    weights drawn after ``torch.manual_seed(seed)``."""
    config = PerformerConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        d_ff=d_ff,
        max_position_embeddings=max_positions,
        position="rotary",
        dropout=0.0,
        favor=FavorConfig() if favor is None else favor,
    )
    torch.manual_seed(seed)
    return PerformerForCausalLM(config).to(device=device, dtype=dtype).eval()


def _cache_bytes(cache: PerformerCache) -> int:
    total = 0
    for layer in cache.layers:
        if isinstance(layer, KVCache):
            total += layer.nbytes()
        else:
            total += sum(t.numel() * t.element_size() for t in layer if isinstance(t, torch.Tensor))
    return total


def synthetic_cache(
    model: PerformerForCausalLM, batch: int, context: int, capacity: int, generator: torch.Generator
) -> PerformerCache:
    """Per-layer caches for a context of ``context`` positions, filled with random numbers."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    layers = []
    for block in model.model.layers:
        attn = block.attn
        heads, head_dim = attn.num_heads, attn.head_dim
        if attn.attention == "favor":
            # The FAVOR+ state is float32 even for half-precision models (ops compute in float32).
            state_dtype = torch.promote_types(dtype, torch.float32)
            features = attn.favor.feature_dim
            shape = (batch, heads, features)
            kv = torch.randn(*shape, head_dim, generator=generator, dtype=state_dtype).to(device)
            normalizer = (torch.rand(*shape, generator=generator, dtype=state_dtype) + 1.0).to(device)
            layers.append(
                FavorState(kv, normalizer, torch.zeros(batch, heads, dtype=state_dtype, device=device))
            )
        else:
            key = torch.randn(batch, heads, context, head_dim, generator=generator, dtype=dtype).to(device)
            value = torch.randn(batch, heads, context, head_dim, generator=generator, dtype=dtype).to(device)
            layers.append(KVCache(key, value, capacity=capacity))
    next_position = torch.full((batch,), context, dtype=torch.long, device=device)
    return PerformerCache(layers, next_position, context)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_decoding(
    model: PerformerForCausalLM, cache: PerformerCache, token: torch.Tensor, steps: int
) -> list[float]:
    """Seconds of each of ``steps`` greedy decoding steps continuing ``cache`` from ``token`` ``(B, 1)``."""
    device = token.device
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        out = model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        cache = out.past_key_values
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure(
    *,
    contexts: tuple[int, ...] = DEFAULT_CONTEXTS,
    backends: tuple[str, ...] = ("favor", "exact"),
    new_tokens: int = 32,
    warmup: int = 16,
    batch: int = 1,
    cache: str = "synthetic",
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    **model_sizes,
) -> list[GenerateRow]:
    """Time decoding for every ``(context, backend)``; ``model_sizes`` go to :func:`decoder_model`."""
    if cache not in ("synthetic", "prefill"):
        raise ValueError(f"cache must be 'synthetic' or 'prefill', got {cache!r}")
    if new_tokens < 1 or warmup < 0 or batch < 1:
        raise ValueError("need new_tokens >= 1, warmup >= 0 and batch >= 1")
    device = torch.device(device)
    extra = warmup + new_tokens + 1
    model = decoder_model(
        max_positions=max(contexts) + extra, seed=seed, dtype=dtype, device=device, **model_sizes
    )
    vocab = model.config.vocab_size
    rows = []
    for context in contexts:
        for backend in backends:
            model.set_attention(backend)
            generator = torch.Generator().manual_seed(seed + context)
            prefill_s = None
            if cache == "synthetic":
                past = synthetic_cache(model, batch, context, context + extra, generator)
            else:
                prompt = torch.randint(0, vocab, (batch, context), generator=generator).to(device)
                _sync(device)
                start = time.perf_counter()
                with torch.no_grad():
                    past = model(prompt, use_cache=True, logits_to_keep=1).past_key_values
                _sync(device)
                prefill_s = time.perf_counter() - start
            cache_mib = _cache_bytes(past) / 2**20
            token = torch.randint(0, vocab, (batch, 1), generator=generator).to(device)
            times = time_decoding(model, past, token, warmup + new_tokens)[warmup:]
            del past
            median = statistics.median(times)
            q1, _, q3 = (
                statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (median,) * 3
            )
            rows.append(
                GenerateRow(
                    backend=backend,
                    context=context,
                    batch=batch,
                    new_tokens=new_tokens,
                    per_token_ms=median * 1e3,
                    per_token_ms_p25=q1 * 1e3,
                    per_token_ms_p75=q3 * 1e3,
                    tokens_per_s=batch / median,
                    cache_mib=cache_mib,
                    cache=cache,
                    prefill_s=prefill_s,
                )
            )
    return rows


def format_table(rows: list[GenerateRow]) -> str:
    lines = [
        "| backend | context | batch | per-token ms (median) | IQR ms | tokens/s | cache MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.backend} | {r.context} | {r.batch} | {r.per_token_ms:.3f} | "
            f"{r.per_token_ms_p25:.3f}–{r.per_token_ms_p75:.3f} | {r.tokens_per_s:.1f} | {r.cache_mib:.2f} |"
        )
    return "\n".join(lines)


def write_json(rows: list[GenerateRow], path: str | Path, settings: dict) -> Path:
    """Write the rows with their ``settings`` to ``path`` (JSON, with the environment) and the
    table (:func:`format_table`) next to it (``.md``); returns ``path``."""
    payload = {"settings": settings, "rows": [asdict(r) for r in rows]}
    settings_line = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "favor")
    markdown = f"# Decoding speed\n\nSettings: {settings_line}.\n\n{format_table(rows)}\n"
    return write_results(path, payload, markdown)


def plot(rows: list[GenerateRow], path: str | Path) -> Path | None:
    """Per-token time vs context length, one line per backend; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in dict.fromkeys(r.backend for r in rows):
        points = sorted((r.context, r.per_token_ms) for r in rows if r.backend == backend)
        label = "FAVOR+ (recurrent state)" if backend == "favor" else "exact (KV cache)"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("time per generated token (ms, median)")
    ax.set_title("Decoding cost vs context length")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

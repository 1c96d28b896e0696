"""Performer Transformers: pre-LayerNorm blocks with FAVOR+ (or exact) self-attention.

* :class:`PerformerModel` — embeddings, ``num_layers`` blocks, final LayerNorm; returns hidden
  states (bidirectional unless ``is_causal=True``).
* :class:`PerformerForMaskedLM` — bidirectional encoder with an LM head (BERT-style MLM).
* :class:`PerformerForCausalLM` — causal decoder with an LM head; incremental decoding from a
  per-layer recurrent state (:class:`PerformerCache`) and :meth:`~PerformerForCausalLM.generate`.
* :func:`build_model` — the model of a task from a config.

Padding: ``attention_mask`` ``(B, L)`` (1 = token, 0 = padding, the Hugging Face convention)
or ``key_padding_mask`` ``(B, L)`` bool (True = padding, the ``nn.MultiheadAttention``
convention). Positions count from each row's first real token, so left-padded and unpadded
prompts see the same positions.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from performers import distributed
from performers.layers import (
    FavorAttention,
    FeatureRedrawer,
    LayerCache,
    MultiheadAttentionBase,
    packed_position_ids,
)
from performers.models import io
from performers.models.blocks import LMHead, PerformerBlock, token_loss
from performers.models.config import PerformerConfig
from performers.models.generation import GenerationMixin
from performers.models.masks import padding_from_masks, position_ids_from_padding, resolve_cu_seqlens
from performers.models.outputs import CausalLMOutput, MaskedLMOutput, PerformerCache, PerformerModelOutput
from performers.utils import IGNORE_INDEX

__all__ = [
    "TASKS",
    "PerformerForCausalLM",
    "PerformerForMaskedLM",
    "PerformerModel",
    "PerformerPreTrainedModel",
    "build_model",
]


class PerformerPreTrainedModel(nn.Module):
    """Shared by all Performer models: config, initialization, backend switch, redraw, save/load."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):  # from_pretrained finds it by the name in config.json
            io.MODEL_CLASSES[cls.__name__] = cls

    def __init__(self, config: PerformerConfig) -> None:
        super().__init__()
        if not isinstance(config, PerformerConfig):
            raise TypeError(f"config must be a PerformerConfig, got {type(config).__name__}")
        self.config = config

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, LMHead):
            if module.weight is not None:
                nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def post_init(self) -> None:
        """Initialize every weight (normal ``initializer_range``; LayerNorm 1/0; biases 0)."""
        self.apply(self._init_weights)

    def set_attention(self, attention: str) -> None:
        """Switch every attention module to ``"favor"`` or ``"exact"`` in place (weights unchanged)."""
        self.config = replace(self.config, attention=attention)  # validates the name
        for module in self.modules():
            if isinstance(module, MultiheadAttentionBase):
                module.attention = attention

    def favor_attention_modules(self) -> list[FavorAttention]:
        """The :class:`FavorAttention` of every layer, in layer order."""
        return [m for m in self.modules() if isinstance(m, FavorAttention)]

    def feature_redrawer(self, every: int | None = None) -> FeatureRedrawer:
        """A :class:`FeatureRedrawer` for this model (``every`` defaults to ``config.redraw_every``)."""
        return FeatureRedrawer(self, every=every)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``.

        See :func:`performers.models.io.save_pretrained`.
        """
        io.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs):
        """Load a model saved by :meth:`save_pretrained`.

        See :func:`performers.models.io.from_pretrained` for the keyword arguments.
        """
        return io.from_pretrained(directory, model_class=cls, **kwargs)


class PerformerModel(PerformerPreTrainedModel):
    """Token (and learned position) embeddings, ``num_layers`` blocks and a final LayerNorm."""

    def __init__(self, config: PerformerConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, config.d_model)
            if config.position == "learned"
            else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(PerformerBlock(config, i) for i in range(config.num_layers))
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: PerformerCache | None = None,
        use_cache: bool = False,
        is_causal: bool = False,
        output_hidden_states: bool = False,
        context_group=None,
        cu_seqlens: Tensor | None = None,
    ) -> PerformerModelOutput:
        """Hidden states of the last layer.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1 = token, 0 = padding (or give ``key_padding_mask``).
            key_padding_mask: ``(B, L)`` bool, True = padding.
            position_ids: ``(B, L)``; default counts from each row's first real token, and
                continues ``past_key_values.next_position``.
            past_key_values: cache of the preceding positions (causal only); with it, the masks
                describe the new tokens only. It is advanced in place, as decoding loops use it
                (a KV cache is appended to; a FAVOR+ state of one new token is updated in place
                outside autograd): ``copy.deepcopy`` it to continue the same prefix twice.
            use_cache: return the cache after these positions (implied by ``past_key_values``).
            is_causal: unidirectional attention.
            output_hidden_states: also return every layer's hidden states ``(B, L, E)``: the
                embedding output, then each block's output, the last one after the final
                LayerNorm (see :class:`PerformerModelOutput`).
            context_group: context parallelism — ``input_ids`` (and the masks) are this
                process's contiguous shard of each sequence, the processes of this group (a
                ``ProcessGroup`` or 1-D ``DeviceMesh``) hold the shards in rank order, and every
                one of them calls forward (and backward) together. Positions are counted in
                the whole sequence; FAVOR attention exchanges ``O(M·D)`` summaries per layer
                (:func:`performers.distributed.favor_attention`); the hidden states returned
                are this shard's. FAVOR+ only; dropout masks differ from a one-process run.
            cu_seqlens: packed sequences — ``input_ids`` ``(1, T)`` holds ``N`` sequences end
                to end, int ``(N + 1,)`` offsets rising from 0 to ``T``. No position attends
                across a boundary (FAVOR+ and exact attention alike), and positions (learned
                or rotary) restart at 0 in each sequence: every sequence's hidden states equal
                those it has alone. Without it, one row whose ``position_ids`` restart at 0
                (as Hugging Face's ``DataCollatorWithFlattening`` writes them) is packed the
                same way. No padding mask, cache or context group with packing.

        Returns:
            :class:`PerformerModelOutput` with ``last_hidden_state`` ``(B, L, E)`` (and
            ``hidden_states``, ``num_layers + 1`` tensors, with ``output_hidden_states``).
        """
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer tensor of shape (B, L), got {shape}")
        batch, length = input_ids.shape
        if length == 0:
            raise ValueError("input_ids must hold at least one position")
        padding = padding_from_masks(attention_mask, key_padding_mask, batch, length)
        use_cache = use_cache or past_key_values is not None
        if use_cache and not is_causal:
            raise ValueError("past_key_values / use_cache need causal attention (is_causal=True)")
        if past_key_values is not None and len(past_key_values.layers) != len(self.layers):
            raise ValueError(
                f"past_key_values has {len(past_key_values.layers)} layers, the model {len(self.layers)}"
            )
        past_length = 0 if past_key_values is None else past_key_values.length
        if padding is not None and not use_cache and not torch.compiler.is_compiling():
            # A mask with no padded position changes nothing; dropping it lets exact attention
            # use SDPA's fused kernels instead of an (L, L) bias (e.g. concatenated windows).
            if not bool(padding.any()):
                padding = None

        cu_seqlens = resolve_cu_seqlens(
            cu_seqlens,
            position_ids,
            batch,
            length,
            padded=padding is not None,
            decoding=use_cache,
            sharded=context_group is not None,
        )
        if cu_seqlens is not None and position_ids is None:
            position_ids = packed_position_ids(cu_seqlens, length)
            longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            if self.embed_positions is not None and longest > self.config.max_position_embeddings:
                raise ValueError(
                    f"a packed sequence of {longest} positions exceeds max_position_embeddings "
                    f"({self.config.max_position_embeddings}) of the learned position embedding"
                )

        # Where these positions sit in the sequence: this call's, or under context
        # parallelism the shards' (one all-gather of per-row token counts).
        shard = None
        if context_group is not None:
            device = input_ids.device
            shard = distributed.shard_positions(padding, batch, length, context_group, device=device)
        start, total_length = (0, length) if shard is None else (shard.start, shard.total_length)
        if position_ids is None:
            if (
                self.embed_positions is not None
                and past_length + total_length > self.config.max_position_embeddings
            ):
                raise ValueError(
                    f"sequence of {past_length + total_length} positions exceeds max_position_embeddings "
                    f"({self.config.max_position_embeddings}) of the learned position embedding"
                )
            if past_key_values is not None:
                steps = torch.arange(start, start + length, device=input_ids.device)
                position_ids = past_key_values.next_position[:, None] + steps
            elif shard is not None:
                position_ids = shard.position_ids
            elif padding is not None:
                position_ids = position_ids_from_padding(padding)
            else:
                position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)

        hidden = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(position_ids)
        hidden = self.dropout(hidden)
        rotary_positions = position_ids if self.config.position == "rotary" else None
        layer_caches: list[LayerCache] = []
        all_hidden: list[Tensor] = []
        for index, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, cache = layer(
                hidden,
                key_padding_mask=padding,
                is_causal=is_causal,
                position_ids=rotary_positions,
                cache=None if past_key_values is None else past_key_values.layers[index],
                use_cache=use_cache,
                context_group=context_group,
                cu_seqlens=cu_seqlens,
            )
            if use_cache:
                layer_caches.append(cache)
        hidden = self.norm(hidden)
        new_cache = None
        if use_cache:
            if shard is None:
                next_position = position_ids[:, -1] + 1
            elif past_key_values is None:
                next_position = shard.next_position
            else:
                next_position = past_key_values.next_position + total_length
            new_cache = PerformerCache(layer_caches, next_position, past_length + total_length)
        # The last block's raw output is replaced by its normalized form, as Hugging Face models do.
        hidden_states = (*all_hidden, hidden) if output_hidden_states else None
        return PerformerModelOutput(hidden, new_cache, hidden_states)


class _PerformerWithLMHead(PerformerPreTrainedModel):
    """A :class:`PerformerModel` (``self.model``) followed by a language-model head."""

    def __init__(self, config: PerformerConfig) -> None:
        super().__init__(config)
        self.model = PerformerModel(config)
        self.lm_head = LMHead(config.d_model, config.vocab_size, tied=config.tie_embeddings, bias=config.bias)
        self.post_init()


class PerformerForMaskedLM(_PerformerWithLMHead):
    """Bidirectional Performer encoder with a masked-language-model head."""

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        context_group=None,
        cu_seqlens: Tensor | None = None,
    ) -> MaskedLMOutput:
        """Logits ``(B, L, V)`` for every position; ``loss`` over ``labels`` ``(B, L)`` != -100
        (the mean over those tokens, packed or not);
        with ``output_hidden_states``, every layer's ``(B, L, E)`` in ``all_hidden_states``
        (see :class:`PerformerModelOutput`); ``context_group`` as in
        :meth:`PerformerModel.forward` (this shard's logits; no ``labels``); ``cu_seqlens``
        (packed sequences in one row) as there."""
        _check_context_labels(context_group, labels)
        out = self.model(
            input_ids,
            attention_mask,
            key_padding_mask=key_padding_mask,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            context_group=context_group,
            cu_seqlens=cu_seqlens,
        )
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden, self.model.embed_tokens.weight)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}")
            loss = token_loss(logits.flatten(0, 1), labels.flatten())
        return MaskedLMOutput(
            logits=logits, loss=loss, hidden_states=hidden, all_hidden_states=out.hidden_states
        )


class PerformerForCausalLM(GenerationMixin, _PerformerWithLMHead):
    """Causal Performer decoder with a language-model head; see :meth:`generate`."""

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        past_key_values: PerformerCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        output_hidden_states: bool = False,
        context_group=None,
        cu_seqlens: Tensor | None = None,
    ) -> CausalLMOutput:
        """Next-token logits.

        Args:
            input_ids, attention_mask, key_padding_mask, position_ids, past_key_values, use_cache: as in
                :meth:`PerformerModel.forward` (always causal).
            labels: ``(B, L)``; shifted inside (position ``t`` predicts ``labels[t+1]``),
                -100 ignored, like Hugging Face causal LMs.
            logits_to_keep: if > 0, compute logits for the last this many positions only
                (generation needs one).
            output_hidden_states: also return every layer's ``(B, L, E)`` in
                ``all_hidden_states`` (see :class:`PerformerModelOutput`).
            context_group: context parallelism, as in :meth:`PerformerModel.forward` (this
                shard's logits; no ``labels``); with ``use_cache`` every process gets the
                cache of the whole sequence, from which one process can decode.
            cu_seqlens: packed sequences in one row, as in :meth:`PerformerModel.forward`
                (or ``position_ids`` that restart); the loss never predicts a sequence's
                first token from the sequence before it, so it equals the unpacked loss.

        Returns:
            :class:`CausalLMOutput`.
        """
        _check_context_labels(context_group, labels)
        out = self.model(
            input_ids,
            attention_mask,
            key_padding_mask=key_padding_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            is_causal=True,
            output_hidden_states=output_hidden_states,
            context_group=context_group,
            cu_seqlens=cu_seqlens,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            if labels is not None:
                raise ValueError("labels need the logits of every position; use logits_to_keep=0")
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden, self.model.embed_tokens.weight)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}")
            packed = cu_seqlens  # checked by the model; else restarting position_ids, as there
            if packed is None:
                packed = resolve_cu_seqlens(
                    None, position_ids, *input_ids.shape,
                    padded=attention_mask is not None or key_padding_mask is not None,
                    decoding=use_cache or past_key_values is not None,
                )  # fmt: skip
            if packed is not None and packed.numel() > 2:
                # Position t predicts labels[t + 1]: a sequence's first token is not predicted
                # from the previous sequence's last (as Hugging Face's collator marks it -100).
                labels = labels.clone()
                labels[0, packed[1:-1].long()] = IGNORE_INDEX
            loss = token_loss(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return CausalLMOutput(
            logits=logits,
            loss=loss,
            past_key_values=out.past_key_values,
            hidden_states=hidden,
            all_hidden_states=out.hidden_states,
        )


def _check_context_labels(context_group, labels: Tensor | None) -> None:
    if context_group is not None and labels is not None:
        raise ValueError(
            "labels are not accepted with context_group: a shard's loss needs the token count of "
            "the whole sequence (and causal labels cross shard boundaries); compute it from the "
            "logits, as performers.training.Trainer does with context_parallel"
        )


# The head each training objective needs: masked LM, causal LM, or the bare encoder.
TASKS: dict[str, type[PerformerPreTrainedModel]] = {
    "mlm": PerformerForMaskedLM,
    "clm": PerformerForCausalLM,
    "encoder": PerformerModel,
}


def build_model(config: PerformerConfig, task: str = "mlm") -> PerformerPreTrainedModel:
    """A freshly initialized model for ``task``: ``"mlm"`` (:class:`PerformerForMaskedLM`),
    ``"clm"`` (:class:`PerformerForCausalLM`) or ``"encoder"`` (:class:`PerformerModel`).

    Initialization draws from the global torch RNG: call ``torch.manual_seed`` first for
    reproducible weights (two models built after the same seed are identical whatever their
    attention backend).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task](config)

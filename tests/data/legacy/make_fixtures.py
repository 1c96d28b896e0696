"""Writes the legacy fixtures of this folder with the code of commit 1c1c9cd (performers 0.1.0,
before FavorConfig): a Performer model saved by ``save_pretrained`` with the flat FAVOR fields in
``config.json``, and a Hugging Face BERT converted by ``performerize`` with the flat
``favor_config`` dict. Each folder also holds ``expected.safetensors``: an input and the output
the saving code computed from it, so a test can check that today's loader rebuilds the same
function (projections and redraw counters included).

Run from a checkout of that commit: ``git worktree add /tmp/old 1c1c9cd && cd /tmp/old &&
python /path/to/make_fixtures.py OUT_DIR``.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

out = Path(sys.argv[1])

from performers import PerformerConfig, PerformerForCausalLM, PerformerForMaskedLM  # noqa: E402

torch.manual_seed(0)
ids = torch.randint(0, 20, (2, 11))
for name, cls, options in (
    (
        "performer_causal_favorpp",
        PerformerForCausalLM,
        dict(kernel="favor++", num_features=8, projection_kind="iid", redraw_every=7, seed=3, chunk_size=4),
    ),
    (
        "performer_mlm_relu_noproj",
        PerformerForMaskedLM,
        dict(kernel="relu", num_features=0, redraw_every=None, seed=1),
    ),
    (
        "performer_mlm_softmax_sqrtd",
        PerformerForMaskedLM,
        dict(kernel="softmax", num_features=12, row_norms="sqrt_d", redraw_every=0, seed=5, chunk_size=8),
    ),
):
    config = PerformerConfig(
        vocab_size=20,
        d_model=16,
        num_layers=2,
        num_heads=2,
        d_ff=32,
        max_position_embeddings=32,
        dropout=0.0,
        pad_token_id=0,
        **options,
    )
    model = cls(config).eval()
    for module in model.favor_attention_modules():
        module.redraw()  # draw 1: a loader must restore the redraw counters too
    with torch.no_grad():
        logits = model(ids).logits
    model.save_pretrained(out / name)
    save_file({"input_ids": ids, "logits": logits.contiguous()}, str(out / name / "expected.safetensors"))

from transformers import BertConfig, BertModel  # noqa: E402

from performers.integrations.transformers import performerize  # noqa: E402

torch.manual_seed(0)
bert = BertModel(
    BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
).eval()
performerize(bert, num_features=8, kernel="softmax-hyperbolic", seed=4, redraw_every=3, chunk_size=16)
bert.encoder.layer[1].attention.self.favor.redraw()
mask = torch.ones(2, 9, dtype=torch.long)
mask[1, 6:] = 0
ids = torch.randint(1, 30, (2, 9))
with torch.no_grad():
    hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
bert.save_pretrained(out / "hf_bert_favor")
save_file(
    {"input_ids": ids, "attention_mask": mask, "last_hidden_state": hidden.contiguous()},
    str(out / "hf_bert_favor" / "expected.safetensors"),
)
print("wrote", sorted(p.name for p in out.iterdir()))

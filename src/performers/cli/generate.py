"""``performers generate``: continue protein prompts with a trained causal LM
(:func:`performers.generate`, constant cost per token with FAVOR+)."""

from __future__ import annotations

import argparse

import torch

from performers.cli.common import UsageError, option_names, user_errors_named
from performers.cli.options import add_compute_options, compute_device, model_source
from performers.jobs import load_trained
from performers.jobs.hf_protein_lm import generate_proteins, protein_lm_from_directory
from performers.models import PerformerForCausalLM
from performers.proteins import ProteinTokenizer, UnknownResidueError

HELP = "continue protein prompts with a trained causal LM"
DESCRIPTION = f"""{HELP}: a performers PerformerForCausalLM, or a Hugging Face causal protein
model directory (ProtGPT2-style GPT-2, converted by performers convert or not), which generates
through its own generate() and cache and counts --max-new-tokens in its byte-pair tokens.
Masked models (ESM, ProtBert, performers masked LMs) do not continue sequences and are refused."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help=HELP, description=DESCRIPTION)
    parser.add_argument(
        "model",
        help="a performers model or run directory, or a Hugging Face protein model directory (ESM, "
        "ProtBert, ProtGPT2): a causal one (PerformerForCausalLM, ProtGPT2)",
    )
    parser.add_argument("prompts", nargs="+", help="residue strings, e.g. MKV")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="residues to add per prompt")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--allow-unknown",
        action="store_true",
        help="map characters outside the model's residues to <unk> instead of refusing the prompt",
    )
    add_compute_options(parser)
    return parser


def encode_prompts(tokenizer: ProteinTokenizer, prompts: list[str], *, allow_unknown: bool):
    """``(ids, mask)`` of the prompts, left-padded; a character the tokenizer has no residue for
    is a UsageError naming the prompt, the character and its position, unless ``allow_unknown``
    (then it becomes ``<unk>``, which the model was never trained to continue)."""
    unknown = "unk" if allow_unknown else "error"
    for number, prompt in enumerate(prompts, start=1):
        try:
            tokenizer.encode(prompt, unknown=unknown)
        except UnknownResidueError as error:
            raise UsageError(
                f"prompt {number} {prompt!r}: {error.char!r} at position {error.position + 1} is not a "
                f"residue of this model ({tokenizer.residues}); pass --allow-unknown to map it to <unk>"
            ) from None
    return tokenizer.batch_encode(prompts, padding_side="left", unknown=unknown)


def _run_huggingface(args: argparse.Namespace, device: torch.device) -> int:
    try:
        lm = protein_lm_from_directory(args.model, device=device)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load the model: {error}") from None
    if not lm.is_causal:
        raise UsageError(
            f"{args.model}: generation needs a causal LM (ProtGPT2-style); this "
            f"{type(lm.model).__name__} is a masked or encoder-only model"
        )
    with user_errors_named(option_names(args.command_parser)):
        proteins = generate_proteins(
            lm,
            args.prompts,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    for protein in proteins:
        print(protein)
    return 0


def run(args: argparse.Namespace) -> int:
    device = compute_device(args)
    if model_source(args.model) == "huggingface":
        return _run_huggingface(args, device)
    model, tokenizer = load_trained(args.model)
    if not isinstance(model, PerformerForCausalLM):
        raise UsageError(f"{args.model}: generation needs a causal LM (train with --task clm)")
    model.to(device)
    ids, mask = encode_prompts(tokenizer, args.prompts, allow_unknown=args.allow_unknown)
    # Drop <eos>: the model continues the prompt. Ids and the sampling generator live with the model.
    ids, mask = ids[:, :-1].to(device), mask[:, :-1].to(device)
    with user_errors_named(option_names(args.command_parser)):  # --top-p 2: "--top-p: top_p must ..."
        tokens = model.generate(
            ids,
            max_new_tokens=args.max_new_tokens,
            attention_mask=mask,
            do_sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
            generator=torch.Generator(device=device).manual_seed(args.seed),
        )
    for row in tokens:
        print(tokenizer.decode(row))
    return 0

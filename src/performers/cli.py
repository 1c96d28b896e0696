"""Command line: ``performers demo``, ``performers bench approximation``, ``performers bench generate``."""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _approximation(args: argparse.Namespace) -> int:
    from performers.bench.approximation import format_table, measure, write_json

    if args.sections != ["attention"] or args.out:
        return _approximation_sections(args)

    settings = {
        "length": args.length,
        "dim": args.dim,
        "feature_counts": list(args.features),
        "repeats": args.repeats,
        "input_std": args.input_std,
        "seed": args.seed,
    }
    start = time.perf_counter()
    rows = measure(
        length=args.length,
        dim=args.dim,
        feature_counts=tuple(args.features),
        repeats=args.repeats,
        input_std=args.input_std,
        seed=args.seed,
        kernels=tuple(args.kernels),
    )
    print(
        f"FAVOR estimators vs exact softmax attention: L={args.length}, D={args.dim}, "
        f"inputs N(0, {args.input_std}²), {args.repeats} draws per row, float64"
    )
    print(format_table(rows))
    print(
        "Kernel MSE is over all (query, key) pairs of exp(q·k/√D); the theory column is Lemma 2 "
        "for iid features (orthogonal features should be lower)."
    )
    if args.json:
        write_json(rows, args.json, settings)
        print(f"wrote {args.json}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def _approximation_sections(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from performers.bench.approximation import format_sections, plot_sections, run_sections

    start = time.perf_counter()
    settings = {
        "command": "performers " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None,
        "sections": args.sections,
        "length": args.length,
        "dim": args.dim,
        "feature_counts": list(args.features),
        "repeats": args.repeats,
        "input_std": args.input_std,
        "seed": args.seed,
        "kernels": list(args.kernels),
        "models": list(args.model),
        "proteins": args.proteins,
    }
    results = run_sections(
        args.sections,
        length=args.length,
        dim=args.dim,
        feature_counts=args.features,
        repeats=args.repeats,
        input_std=args.input_std,
        seed=args.seed,
        kernels=args.kernels,
        models=args.model,
        num_proteins=args.proteins,
    )
    tables = format_sections(results, settings)
    print(tables)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"settings": settings, **results}, indent=2) + "\n"
        (out / "approximation.json").write_text(payload)
        (out / "tables.md").write_text(tables + "\n")
        for path in plot_sections(results, out):
            print(f"wrote {path}")
        print(f"wrote {out / 'approximation.json'} and {out / 'tables.md'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, **results}, indent=2) + "\n")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def _add_approximation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=256, help="sequence length L (default 256)")
    p.add_argument("--dim", type=int, default=16, help="head dimension D (default 16)")
    p.add_argument("--features", type=int, nargs="+", default=[16, 64, 256], help="feature counts M")
    p.add_argument("--repeats", type=int, default=8, help="projection draws per row (default 8)")
    p.add_argument("--input-std", type=float, default=0.5, help="std of the random q and k entries")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument(
        "--kernels",
        nargs="+",
        default=["softmax", "softmax-hyperbolic", "trig", "favor++"],
        help="estimators (registry names with an MSE formula)",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        default=["attention"],
        choices=["attention", "kernel", "reduction", "proteins", "sklearn"],
        help="what to measure: attention error on random q/k (default), kernel-value MSE per pair, "
        "FAVOR++ variance reduction, attention error on trained protein models (--model), "
        "RBF kernel approximation on scikit-learn's digits",
    )
    p.add_argument("--model", nargs="*", default=[], help="trained protein model directories (proteins)")
    p.add_argument("--proteins", type=int, default=16, help="test proteins fed to each model (proteins)")
    p.add_argument("--out", default=None, help="directory for approximation.json, tables.md and PNG plots")
    p.set_defaults(func=_approximation)


def _generate(args: argparse.Namespace) -> int:
    from performers.bench.generate import format_table, measure, plot, write_json

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    sizes = {
        "vocab_size": args.vocab_size,
        "d_model": args.d_model,
        "num_layers": args.layers,
        "num_heads": args.heads,
        "d_ff": args.d_ff,
        "num_features": args.num_features,
        "kernel": args.kernel,
    }
    settings = {
        "contexts": list(args.contexts),
        "backends": list(args.backends),
        "new_tokens": args.new_tokens,
        "warmup": args.warmup,
        "batch": args.batch,
        "cache": args.cache,
        "seed": args.seed,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        **sizes,
    }
    start = time.perf_counter()
    rows = measure(
        contexts=tuple(args.contexts),
        backends=tuple(args.backends),
        new_tokens=args.new_tokens,
        warmup=args.warmup,
        batch=args.batch,
        cache=args.cache,
        seed=args.seed,
        device=args.device,
        dtype=dtype,
        **sizes,
    )
    print(
        f"Greedy decoding, {args.layers} layers, d_model {args.d_model}, {args.heads} heads, "
        f"M = {args.num_features}, batch {args.batch}, {args.dtype} on {args.device}, "
        f"{torch.get_num_threads()} threads, {args.cache} cache; median of {args.new_tokens} steps "
        f"after {args.warmup} warm-up steps"
    )
    print(format_table(rows))
    out = write_json(rows, args.out, settings)
    print(f"wrote {out}")
    if not args.no_plot:
        png = plot(rows, out.with_suffix(".png"))
        print(f"wrote {png}" if png else "matplotlib not installed: no plot")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536], help="context lengths"
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=["favor", "exact"],
        choices=["favor", "exact"],
        help="FAVOR+ recurrent state and/or exact attention with a KV cache",
    )
    p.add_argument("--new-tokens", type=int, default=32, help="timed decoding steps per point (default 32)")
    p.add_argument("--warmup", type=int, default=4, help="untimed decoding steps first (default 4)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument(
        "--cache",
        choices=["synthetic", "prefill"],
        default="synthetic",
        help="random caches of the right shape (default) or a real prompt pass",
    )
    p.add_argument("--vocab-size", type=int, default=1000, help="vocabulary of the random model")
    p.add_argument("--d-model", type=int, default=512, help="model width")
    p.add_argument("--layers", type=int, default=6, help="Transformer blocks")
    p.add_argument("--heads", type=int, default=8, help="attention heads")
    p.add_argument("--d-ff", type=int, default=1024, help="feed-forward width")
    p.add_argument("--num-features", type=int, default=256, help="random features M per layer")
    p.add_argument("--kernel", default="softmax", help="FAVOR kernel name (default softmax)")
    p.add_argument(
        "--dtype",
        choices=["float32", "float64", "bfloat16", "float16"],
        default="float32",
        help="model dtype",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random model and caches")
    p.add_argument(
        "--out", default="docs/results/generate.json", help="JSON output (a .png is written next to it)"
    )
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    p.set_defaults(func=_generate)


def _add_training_args(p: argparse.ArgumentParser, *, steps: int, out: str) -> None:
    p.add_argument("--task", choices=["mlm", "clm"], default="mlm", help="masked (BID) or causal (UNI) LM")
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step (global)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per protein crop")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=20, help="linear warm-up steps before the cosine decay")
    p.add_argument("--d-model", type=int, default=128, help="model width")
    p.add_argument("--layers", type=int, default=2, help="Transformer blocks")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--d-ff", type=int, default=256, help="feed-forward width")
    p.add_argument("--num-features", type=int, default=64, help="random features M")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout probability")
    p.add_argument("--eval-every", type=int, default=25, help="validation every N steps")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training proteins")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test proteins")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument(
        "--concatenate",
        action="store_true",
        help="train and evaluate on proteins joined into windows of exactly --max-length tokens",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order, masks, projections")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default=out, help=f"output directory (default {out})")
    p.add_argument(
        "--config",
        default=None,
        help='JSON file of option values (keys as the long options, e.g. {"d_model": 256}); '
        "options given on the command line win",
    )


def _training_setup(args: argparse.Namespace):
    from performers.proteins.experiment import ModelSize
    from performers.training.trainer import TrainingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    size = ModelSize(args.d_model, args.layers, args.heads, args.d_ff, args.num_features, args.dropout)
    training = TrainingConfig(
        task=args.task,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        eval_every=args.eval_every,
        checkpoint_every=max(args.eval_every, args.steps // 4),
        bf16=args.bf16,
        seed=args.seed,
        concatenate=args.concatenate,
    )
    return size, training


def _demo(args: argparse.Namespace) -> int:
    from performers.proteins.experiment import compare

    size, training = _training_setup(args)
    start = time.perf_counter()
    report = compare(
        out_dir=args.out,
        size=size,
        training=training,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
    )
    print(report)
    print(
        f"wrote {args.out}/report.md, report.json, learning_curves.png in {time.perf_counter() - start:.0f}s"
    )
    return 0


def _protein_bench(args: argparse.Namespace, run, written: str, *, sized: bool = True, **options) -> int:
    """Run one of the ``bench proteins-*`` experiments, print its report and what it wrote.

    ``sized``: the experiment builds models of the command line's size (not: it loads one)."""
    size, training = _training_setup(args)
    if sized:
        options["size"] = size
    start = time.perf_counter()
    report = run(
        out_dir=args.out,
        training=training,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        **options,
    )
    print(report)
    print(f"wrote {args.out}/{written} in {time.perf_counter() - start:.0f}s")
    return 0


def _proteins_table(args: argparse.Namespace) -> int:
    from performers.bench.proteins import table2

    return _protein_bench(args, table2, "table2.md, table2.json, curves_*.png", tasks=tuple(args.tasks))


def _proteins_long(args: argparse.Namespace) -> int:
    from performers.bench.proteins import long_context

    return _protein_bench(
        args,
        long_context,
        "long.md, long.json, curves_long.png",
        minutes=args.minutes,
        probe_steps=args.probe_steps,
    )


def _proteins_backcompat(args: argparse.Namespace) -> int:
    from performers.bench.proteins import backward_compatibility

    return _protein_bench(
        args,
        backward_compatibility,
        "backcompat.md, backcompat.json, backcompat.png",
        sized=False,
        exact_dir=args.exact,
    )


def _train(args: argparse.Namespace) -> int:
    """Train; under ``torchrun --nproc_per_node=N -m performers train ...`` every process runs
    this with its share of each batch (gloo on CPU, nccl on GPU)."""
    import os

    import torch.distributed as dist

    from performers.proteins.experiment import run_training

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    size, training = _training_setup(args)
    try:
        result = run_training(
            args.attention,
            out_dir=args.out,
            attention=args.attention,
            kernel=args.kernel,
            size=size,
            training=training,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            resume=args.resume,
        )
    finally:
        if distributed:
            dist.destroy_process_group()
    if not result.test:  # a rank other than 0
        return 0
    print(
        f"test accuracy {100 * result.test['accuracy']:.2f}%, perplexity {result.test['perplexity']:.2f}, "
        f"{result.tokens_per_second:,.0f} tokens/s; model saved to {args.out}/final"
    )
    return 0


def _load_trained(directory: str, **overrides):
    from pathlib import Path

    from performers.models.io import from_pretrained
    from performers.proteins.tokenizer import ProteinTokenizer

    path = Path(directory)
    if (path / "final").is_dir():
        path = path / "final"
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return from_pretrained(path, **overrides), ProteinTokenizer.load(path / "tokenizer.json")


def _evaluate(args: argparse.Namespace) -> int:
    from performers.models.performer import PerformerForCausalLM
    from performers.proteins.data import read_split
    from performers.proteins.experiment import DEFAULT_CORPUS
    from performers.training.trainer import evaluate_model

    model, tokenizer = _load_trained(args.model, attention=args.attention)
    task = "clm" if isinstance(model, PerformerForCausalLM) else "mlm"
    sequences = read_split(DEFAULT_CORPUS, args.split)[: args.limit]
    result = evaluate_model(
        model, tokenizer, sequences, task=task, max_length=args.max_length, batch_size=args.batch_size
    )
    print(
        f"{args.split}: accuracy {100 * result['accuracy']:.2f}%, perplexity {result['perplexity']:.2f} "
        f"over {result['tokens']} {'masked positions' if task == 'mlm' else 'next tokens'}"
    )
    return 0


def _generate_proteins(args: argparse.Namespace) -> int:
    from performers.models.performer import PerformerForCausalLM

    model, tokenizer = _load_trained(args.model)
    if not isinstance(model, PerformerForCausalLM):
        raise SystemExit(f"{args.model}: generation needs a causal LM (train with --task clm)")
    ids, mask = tokenizer.batch_encode(args.prompts, padding_side="left")
    ids, mask = ids[:, :-1], mask[:, :-1]  # drop <eos>: the model continues the prompt
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
        generator=torch.Generator().manual_seed(args.seed),
    )
    for row in tokens:
        print(tokenizer.decode(row))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from performers.models.config import PerformerConfig
    from performers.models.performer import PerformerModel
    from performers.proteins.secondary_structure import finetune
    from performers.proteins.tokenizer import ProteinTokenizer

    if args.pretrained and args.random_init:
        # The control: the pretrained model's exact architecture, randomly initialized.
        config = _load_trained(args.pretrained)[0].config
        torch.manual_seed(args.seed)
        encoder, source = PerformerModel(config), f"random initialization (architecture of {args.pretrained})"
    elif args.pretrained:
        model, _ = _load_trained(args.pretrained)
        encoder = model.model if hasattr(model, "model") else model
        source = args.pretrained
    else:
        torch.manual_seed(args.seed)
        tokenizer = ProteinTokenizer()
        config = PerformerConfig(
            vocab_size=len(tokenizer),
            d_model=args.d_model,
            num_layers=args.layers,
            num_heads=args.heads,
            d_ff=2 * args.d_model,
            num_features=args.num_features,
            max_position_embeddings=args.max_length,
            pad_token_id=tokenizer.pad_id,
        )
        encoder, source = PerformerModel(config), "random initialization"
    result = finetune(
        encoder,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.lr,
        freeze_encoder=args.freeze,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        seed=args.seed,
    )
    print(f"secondary structure, encoder from {source}: test Q3 {100 * result['q3']:.2f}%")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="performers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="the main job: a FAVOR+ protein LM and its exact-softmax twin, trained and compared"
    )
    _add_training_args(demo, steps=150, out="runs/demo")
    demo.set_defaults(func=_demo)
    train = sub.add_parser("train", help="train a protein language model on the shipped corpus")
    _add_training_args(train, steps=1000, out="runs/train")
    train.add_argument(
        "--attention", choices=["favor", "exact"], default="favor", help="FAVOR+ or exact softmax attention"
    )
    train.add_argument("--kernel", default="softmax", help="FAVOR kernel (registry name)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    train.set_defaults(func=_train)
    evaluate = sub.add_parser("evaluate", help="accuracy and perplexity of a trained model on a split")
    evaluate.add_argument("model", help="directory written by training (its final/ or a save_pretrained dir)")
    evaluate.add_argument("--split", choices=["train", "valid", "test"], default="test", help="corpus split")
    evaluate.add_argument("--max-length", type=int, default=256, help="tokens per protein (crop at start)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="proteins per forward pass")
    evaluate.add_argument("--limit", type=int, default=None, help="first N proteins of the split")
    evaluate.add_argument(
        "--attention", choices=["favor", "exact"], default=None, help="override the backend"
    )
    evaluate.set_defaults(func=_evaluate)
    generate = sub.add_parser("generate", help="continue protein prompts with a trained causal LM")
    generate.add_argument("model", help="directory of a trained PerformerForCausalLM")
    generate.add_argument("prompts", nargs="+", help="residue strings, e.g. MKV")
    generate.add_argument("--max-new-tokens", type=int, default=50, help="residues to add per prompt")
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    generate.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    generate.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability mass")
    generate.add_argument("--seed", type=int, default=0, help="sampling seed")
    generate.set_defaults(func=_generate_proteins)
    finetune = sub.add_parser("finetune", help="secondary structure (Q3) with a per-residue head on FLIP")
    finetune.add_argument("--pretrained", default=None, help="trained model directory (default: random init)")
    finetune.add_argument("--freeze", action="store_true", help="train the head only (a linear probe)")
    finetune.add_argument(
        "--random-init",
        action="store_true",
        help="with --pretrained: its architecture, randomly initialized (the control run)",
    )
    finetune.add_argument("--steps", type=int, default=200, help="optimizer steps")
    finetune.add_argument("--batch-size", type=int, default=16, help="proteins per step")
    finetune.add_argument("--max-length", type=int, default=256, help="tokens per protein crop")
    finetune.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    finetune.add_argument(
        "--train-limit", type=int, default=None, help="use only the first N training proteins"
    )
    finetune.add_argument("--test-limit", type=int, default=None, help="score only the first N test proteins")
    finetune.add_argument("--d-model", type=int, default=128, help="random-init encoder size")
    finetune.add_argument("--layers", type=int, default=2, help="random-init encoder blocks")
    finetune.add_argument("--heads", type=int, default=4, help="random-init encoder heads")
    finetune.add_argument("--num-features", type=int, default=64, help="random-init encoder features M")
    finetune.add_argument("--seed", type=int, default=0, help="seed of the head, batches and random init")
    finetune.set_defaults(func=_finetune)
    bench = sub.add_parser("bench", help="reproducible measurements")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    _add_approximation_args(
        bench_sub.add_parser("approximation", help="attention and kernel error of each estimator vs M")
    )
    _add_generate_args(
        bench_sub.add_parser("generate", help="tokens/s of FAVOR+ recurrent decoding vs exact + KV cache")
    )
    table = bench_sub.add_parser(
        "proteins-table",
        help="the paper's Table 2 here: UNI and BID; exact, FAVOR+ softmax and ReLU; equal steps",
    )
    _add_training_args(table, steps=400, out="runs/table2")
    table.add_argument(
        "--tasks",
        nargs="+",
        choices=["clm", "mlm"],
        default=["clm", "mlm"],
        help="UNI (clm) and/or BID (mlm)",
    )
    table.set_defaults(func=_proteins_table)
    long = bench_sub.add_parser(
        "proteins-long",
        help="concatenated long windows: tokens/s, peak memory and accuracy in equal wall-clock time",
    )
    _add_training_args(long, steps=1, out="runs/long")
    long.add_argument("--minutes", type=float, default=10.0, help="training budget per model (default 10)")
    long.add_argument(
        "--probe-steps", type=int, default=4, help="steps of the speed/memory probe run (first is warm-up)"
    )
    long.set_defaults(func=_proteins_long)
    backcompat = bench_sub.add_parser(
        "proteins-backcompat",
        help="convert a trained exact-softmax protein MLM to FAVOR+ and fine-tune it (vs from scratch)",
    )
    _add_training_args(backcompat, steps=40, out="runs/backcompat")
    backcompat.add_argument("--exact", required=True, help="run directory of the exact-softmax model")
    backcompat.set_defaults(func=_proteins_backcompat)
    speed = bench_sub.add_parser(
        "speed",
        help="time and memory vs L: FAVOR+, exact, identity, peers (see `performers bench speed --help`)",
        add_help=False,
    )
    speed.set_defaults(func=lambda _: 0)
    from performers.integrations.commands import add_commands

    add_commands(sub, bench_sub)  # convert, distill, bench compat (Hugging Face models)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "speed"]:
        # The speed harness owns its options (it also re-invokes itself per point).
        from performers.bench.speed import main as speed_main

        return speed_main(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        args = _with_config_file(parser, argv, args)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return args.func(args)


def _with_config_file(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace):
    """Re-parse with the config file's values as defaults, so explicit options still win."""
    import json
    from pathlib import Path

    path = Path(args.config)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"--config {path}: cannot read a JSON object ({error})")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a JSON object of option values")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - set(vars(args)))
    if unknown:
        parser.error(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    # The parser that owns the options: the command's, or a nested one (`bench proteins-table`).
    target = parser
    for name in (args.command, getattr(args, "bench", None)):
        actions = [a for a in target._actions if isinstance(a, argparse._SubParsersAction)]
        if name is None or not actions:
            break
        target = actions[0].choices[name]
    target.set_defaults(**values)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())

"""The `dspo train`, `dspo eval` and `dspo make-tiny-model` subcommands, registered through `dspo.cli`."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys

from trainer.config import CHOICES, PretrainConfig, TrainConfig


def field_help() -> dict[str, str]:
    """The comment after each TrainConfig field: its meaning is written once, there, and --help shows it."""
    source = inspect.getsource(TrainConfig)
    found = re.findall(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, re.MULTILINE)
    return {name: text.replace("%", "%%") for name, text in found}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, named like the field, with the field's default and comment."""
    helps = field_help()
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("dataset", "model", "output_dir"):
            continue
        flag = "--" + field.name.replace("_", "-")
        default, text = field.default, helps.get(field.name, " ")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif field.name == "buckets":
            parser.add_argument(flag, type=int, nargs="*", default=list(default), help=text)
        elif default is None:
            kind = float if field.name in ("beta", "lora_alpha", "peak_tflops") else str
            parser.add_argument(flag, type=kind, default=default, help=text)
        else:
            choices = CHOICES.get(field.name)
            parser.add_argument(flag, type=type(default), default=default, choices=choices, help=text)


def run_train(args: argparse.Namespace) -> int:
    from dspo.dataset_format import DatasetError
    from trainer.train import train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
        metrics = train(cfg).metrics
    except (DatasetError, ValueError, OSError) as e:
        print(f"dspo train: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from dspo.dataset_format import DatasetError
    from trainer.evaluate import evaluate

    try:
        metrics = evaluate(
            backbone=args.backbone,
            model_dir=args.model,
            out_dir=args.out,
            lora=args.lora,
            dataset=args.dataset,
            lq_dir=args.lq,
            hq_dir=args.hq,
            scale=args.scale,
            steps=args.steps,
            seed=args.seed,
            device=args.device,
        )
    except (DatasetError, ValueError, OSError) as e:
        print(f"dspo eval: {e}", file=sys.stderr)
        return 2
    print(
        json.dumps({v: {k: s[k] for k in ("psnr", "ssim") if k in s} for v, s in metrics["variants"].items()})
    )
    return 0


def run_make_tiny_model(args: argparse.Namespace) -> int:
    from trainer.tiny import make_tiny_model

    print(make_tiny_model(args.dir, args.backbone, seed=args.seed))
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    from trainer.pretrain import pretrain, read_pairs

    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    try:
        print(pretrain(read_pairs(args.lq, args.hq), args.output_dir, cfg))
    except (ValueError, OSError) as e:
        print(f"dspo pretrain: {e}", file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="fine-tune an SR backbone on a DSPO dataset",
        description="Every flag is a field of trainer.config.TrainConfig. The defaults are GPU settings: "
        "on a CPU see the CPU recipe in docs/trainer.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument(
        "--dataset",
        required=True,
        help="dataset folder (native format, SPEC §2), a downloaded dataset.tar, or the folder it was "
        "unpacked into",
    )
    train.add_argument("--model", required=True, help="local diffusers folder of the backbone")
    train.add_argument("--output-dir", required=True)
    _add_config_flags(train)
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser("eval", help="run a backbone (base, or with --lora) on held-out LQ images")
    ev.add_argument("--backbone", required=True, choices=["upscaler", "onestep"])
    ev.add_argument("--model", required=True)
    ev.add_argument("--lora", help="folder with pytorch_lora_weights.safetensors; also writes the A/B set")
    ev.add_argument("--dataset", help="take the LQ images of this dataset's val split")
    ev.add_argument("--lq", help="a folder of LQ images")
    ev.add_argument("--hq", help="a folder of HQ images named like the LQ ones, for PSNR/SSIM")
    ev.add_argument("--out", required=True)
    ev.add_argument("--scale", type=int, default=4, help="onestep: the SR factor")
    ev.add_argument("--steps", type=int, default=20, help="upscaler: inference steps")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="cpu")
    ev.set_defaults(func=run_eval)

    tiny = subparsers.add_parser("make-tiny-model", help="write a tiny random diffusers folder for tests")
    tiny.add_argument("dir")
    tiny.add_argument("--backbone", required=True, choices=["upscaler", "onestep"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=run_make_tiny_model)

    pre = subparsers.add_parser(
        "pretrain", help="train a small x4 upscaler (a diffusers folder) from scratch on (LQ, HQ) pairs"
    )
    pre.add_argument(
        "--lq", required=True, help="a folder of LQ images, 1/4 the size of the HQ ones, same names"
    )
    pre.add_argument("--hq", required=True, help="a folder of HQ images")
    pre.add_argument("--output-dir", required=True)
    for field in dataclasses.fields(PretrainConfig):
        pre.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    pre.set_defaults(func=run_pretrain)

"""`avemo corpus`, `cache`, `train`, `evaluate`, `compare` (argument parsing only; heavy imports are lazy)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path


def _opt(p: argparse.ArgumentParser, name: str, **kw) -> None:
    """Add ``--name_with_underscores`` and its ``--dashed-alias``."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    p.add_argument(*flags, dest=name, **kw)


def progress_to_stderr(json_output: bool):
    """With --json, stdout carries only the JSON document: epoch lines and logs go to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if json_output else contextlib.nullcontext()


# ---------------------------------------------------------------- corpus
def corpus_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("data/corpus"), help="output folder (default: %(default)s)")
    p.add_argument("--actors", type=int, default=10, help="number of actors, 60 clips each (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="re-render clips that already exist")


def corpus_run(args: argparse.Namespace) -> int:
    from avemo.training.synthetic.corpus import generate_corpus

    files = generate_corpus(args.out, n_actors=args.actors, seed=args.seed, jobs=args.jobs, overwrite=args.overwrite)
    print(f"{len(files)} clips in {args.out}")
    return 0


# ---------------------------------------------------------------- cache
def cache_arguments(p: argparse.ArgumentParser) -> None:
    _opt(p, "data_root", type=Path, default=Path("data/corpus"), help="RAVDESS-layout folder (default: %(default)s)")
    _opt(p, "cache_dir", type=Path, default=Path("cache"), help="cache folder (default: %(default)s)")
    p.add_argument(
        "--face-crop", choices=["auto", "haar", "center"], default="auto", help="face crop (default: %(default)s)"
    )
    p.add_argument("--jobs", type=int, default=2, help="decoding processes (default: %(default)s)")


def cache_run(args: argparse.Namespace) -> int:
    from avemo.contract.geometry import DEFAULT_GEOMETRY
    from avemo.training.data import ravdess
    from avemo.training.data.cache import build_cache

    items, problems = ravdess.scan(args.data_root, modality=None, vocal_channel=None)
    for p in problems:
        print(f"skipped {p.path}: {p.reason}", file=sys.stderr)
    cached, bad = build_cache(
        [it.path for it in items], args.cache_dir, DEFAULT_GEOMETRY, face_crop=args.face_crop, jobs=args.jobs
    )
    crops: dict[str, int] = {}
    for c in cached.values():
        crops[c.crop_method] = crops.get(c.crop_method, 0) + 1
    print(f"{len(cached)} clips cached in {args.cache_dir} ({len(bad)} failed); face crops: {crops}")
    return 0


def runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--device / --amp / --channels_last (training/runtime.py); torchrun sets up DDP by itself."""
    g = p.add_argument_group(
        "hardware (torchrun --nproc_per_node N avemo train ... runs DDP: NCCL on GPU, gloo on CPU)"
    )
    _opt(
        g, "device", choices=["auto", "cpu", "cuda"], default="auto", help="(default: %(default)s = CUDA when present)"
    )
    _opt(
        g,
        "amp",
        choices=["auto", "bf16", "off"],
        default="auto",
        help="mixed precision: bf16 autocast (default: %(default)s = on for a bf16-capable GPU)",
    )
    _opt(
        g,
        "channels_last",
        choices=["auto", "on", "off"],
        default="auto",
        help="NHWC memory format for the CNNs (default: %(default)s = on with CUDA)",
    )


def runtime_config(args: argparse.Namespace) -> dict:
    return {"device": args.device, "amp": args.amp, "channels_last": args.channels_last}


# ---------------------------------------------------------------- train
def train_arguments(p: argparse.ArgumentParser) -> None:
    from avemo.training.models.config import FUSIONS  # light module: no torch import

    _opt(p, "data_root", default="data/corpus", help="RAVDESS-layout folder (default: %(default)s)")
    _opt(p, "cache_dir", default="cache", help="decoded-clip cache (default: %(default)s)")
    _opt(p, "out_dir", default=None, help="run folder (default: runs/<fusion>)")
    p.add_argument(
        "--fusion", choices=FUSIONS, default="gated", help="fusion method or unimodal baseline (default: %(default)s)"
    )
    _opt(
        p,
        "num_classes",
        type=int,
        choices=[4, 8],
        default=8,
        help="8 emotions or the 4-class mapping (default: %(default)s)",
    )
    _opt(
        p,
        "split_mode",
        choices=["actor", "kfold", "stratified"],
        default="actor",
        help="how to split (default: %(default)s)",
    )
    p.add_argument("--fold", type=int, default=0, help="test fold for --split_mode kfold (default: %(default)s)")
    p.add_argument("--folds", type=int, default=5, help="number of folds for kfold (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=20, help="max epochs (default: %(default)s)")
    _opt(p, "batch_size", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default: %(default)s)")
    _opt(p, "weight_decay", type=float, default=1e-2, help="AdamW weight decay (default: %(default)s)")
    _opt(
        p,
        "use_cosine_annealing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cosine LR schedule (default: on)",
    )
    _opt(
        p,
        "early_stopping_patience",
        type=int,
        default=5,
        help="epochs without val macro-F1 gain before stopping (default: %(default)s)",
    )
    _opt(
        p,
        "modality_dropout",
        type=float,
        default=0.2,
        help="per-modality drop probability in training (default: %(default)s)",
    )
    m = p.add_argument_group("model")
    _opt(
        m,
        "use_resnet_audio",
        action="store_true",
        help="ResNet18 on the log-mel (1-channel stem) instead of the light CNN",
    )
    _opt(m, "use_resnet_video", action="store_true", help="torchvision ResNet18 per frame instead of the light CNN")
    _opt(
        m,
        "video_pooling",
        choices=["meanmax", "mean", "attention"],
        default="meanmax",
        help="temporal pooling of frame features (default: %(default)s)",
    )
    _opt(m, "spec_augment", action="store_true", help="SpecAugment in training: 0-20 mel-bin and 0-40 frame masks")
    _opt(
        m,
        "variational",
        action="store_true",
        help="variational encoder heads (mu/logvar; on for the uncertainty fusions)",
    )
    _opt(
        m,
        "gate_alpha",
        type=float,
        default=0.5,
        help="gated_uncertainty: w = alpha*w_unc + (1-alpha)*w_gate (default: %(default)s)",
    )
    _opt(
        m,
        "contrastive_proj_dim",
        type=int,
        default=0,
        help="projection size for the InfoNCE loss, 0 = off (default: %(default)s)",
    )
    _opt(
        p,
        "teacher_audio",
        default="",
        help="frozen audio-only checkpoint distilled into the audio head (weight --delta_va)",
    )
    _opt(
        p,
        "teacher_video",
        default="",
        help="frozen video-only checkpoint distilled into the video head (weight --delta_va)",
    )
    _opt(
        p,
        "tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorBoard logs in <out_dir>/tensorboard (default: on)",
    )
    p.add_argument(
        "--wandb",
        action="store_true",
        help="also log to Weights & Biases (offline into <out_dir>/wandb when no API key; never fails the run)",
    )
    _opt(p, "wandb_project", default="avemo", help="W&B project (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/last.pt")
    _opt(p, "max_train_batches", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tiny encoders (tests, smoke runs)
    _opt(p, "no_progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    runtime_arguments(p)
    from avemo.training.losses.terms import add_loss_arguments

    add_loss_arguments(p.add_argument_group("losses"))


def train_config_from_args(args: argparse.Namespace):
    from avemo.training.losses.terms import LossWeights
    from avemo.training.models.config import ModelConfig
    from avemo.training.train.config import TrainConfig

    model = ModelConfig(
        fusion=args.fusion,
        num_classes=args.num_classes,
        modality_dropout=args.modality_dropout,
        use_resnet_audio=args.use_resnet_audio,
        use_resnet_video=args.use_resnet_video,
        video_pooling=args.video_pooling,
        spec_augment=args.spec_augment,
        variational=args.variational,
        gate_alpha=args.gate_alpha,
        contrastive_proj_dim=args.contrastive_proj_dim,
    )
    if args.tiny:
        from dataclasses import replace

        from avemo.training.train.compare import TINY_MODEL

        model = replace(model, **TINY_MODEL)
    return TrainConfig(
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        out_dir=args.out_dir or f"runs/{args.fusion}",
        num_classes=args.num_classes,
        split_mode=args.split_mode,
        fold=args.fold,
        folds=args.folds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        use_cosine_annealing=args.use_cosine_annealing,
        early_stopping_patience=args.early_stopping_patience,
        losses=LossWeights.from_args(args).to_dict(),
        loss_weighting=args.loss_weighting,
        loss_weighting_momentum=args.loss_weighting_momentum,
        loss_weighting_every=args.loss_weighting_every,
        teacher_audio=args.teacher_audio,
        teacher_video=args.teacher_video,
        tensorboard=args.tensorboard,
        wandb=args.wandb,
        wandb_project=args.wandb_project,
        seed=args.seed,
        resume=args.resume,
        **runtime_config(args),
        max_train_batches=args.max_train_batches,
        progress=not args.no_progress,
        model=model,
    )


def train_run(args: argparse.Namespace) -> int:
    from avemo.training.train.loop import train

    with progress_to_stderr(args.json):
        results = train(train_config_from_args(args))
    if "fusion" not in results:  # a torchrun rank other than 0: rank 0 prints
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in results.items() if k != "history"}, indent=2))
    else:
        print(summary_line(results))
    return 0


def summary_line(results: dict) -> str:
    test = results.get("test", {}).get("clip", {})
    return (
        f"{results['fusion']}: test clip macro-F1 {test.get('macro_f1', float('nan')):.3f}, "
        f"accuracy {test.get('accuracy', float('nan')):.3f} ({test.get('n', 0)} clips); "
        f"checkpoint {results['checkpoint']}"
    )


# ---------------------------------------------------------------- evaluate
def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="checkpoint (best.pt)")
    _opt(p, "data_root", default="data/corpus", help="RAVDESS-layout folder (default: %(default)s)")
    _opt(p, "cache_dir", default="cache", help="decoded-clip cache (default: %(default)s)")
    p.add_argument(
        "--split", choices=["train", "val", "test"], default="test", help="split to evaluate (default: %(default)s)"
    )
    _opt(p, "split_mode", choices=["actor", "kfold", "stratified"], default="actor", help="(default: %(default)s)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="split seed and noise seed (default: %(default)s)")
    p.add_argument(
        "--drop",
        choices=["audio", "video"],
        default=None,
        help="missing modality: zero that input and set its modality_mask entry to 0",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=None,
        metavar="SNR_DB",
        help="add white Gaussian noise to the audio at this SNR in dB (per window, from its own power)",
    )
    _opt(
        p,
        "report_dir",
        type=Path,
        default=None,
        help="also write per_class_report.md and error_cases.md/.json for this condition into this folder",
    )
    _opt(p, "no_progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")


def evaluate_run(args: argparse.Namespace) -> int:
    from avemo.contract.geometry import WindowGeometry
    from avemo.training.data.prepare import prepare_data
    from avemo.training.evaluation.robustness import evaluate_condition
    from avemo.training.models.checkpoint import model_from_checkpoint
    from avemo.training.train.config import TrainConfig

    model, ckpt = model_from_checkpoint(args.checkpoint)
    cfg = TrainConfig(
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        num_classes=len(ckpt["labels"]),
        split_mode=args.split_mode,
        fold=args.fold,
        folds=args.folds,
        seed=args.seed,
        progress=not args.no_progress,
    )
    datasets, _ = prepare_data(
        cfg.data_root,
        cfg.cache_dir,
        WindowGeometry.from_dict(ckpt["geometry"]),
        num_classes=cfg.num_classes,
        split_mode=cfg.split_mode,
        folds=cfg.folds,
        fold=cfg.fold,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    ds = datasets[args.split]
    if len(ds) == 0:
        raise SystemExit(f"the {args.split} split is empty")
    res, pred = evaluate_condition(
        model,
        ds,
        ckpt["labels"],
        drop=args.drop,
        noise_snr_db=args.noise,
        seed=args.seed,
        progress=not args.no_progress,
    )
    res["split"] = args.split
    res["checkpoint"] = str(args.checkpoint)
    if args.report_dir is not None:
        from avemo.training.evaluation.reports import write_reports

        args.report_dir.mkdir(parents=True, exist_ok=True)
        summary = write_reports(
            pred,
            ckpt["labels"],
            args.report_dir,
            [c.source for c in ds.clips],
            res["clip"],
            title=f"{args.split} split, {res['condition']['description']}",
        )
        res["error_cases"] = summary["error_cases"]
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(evaluate_summary(res))
    return 0


def evaluate_summary(res: dict) -> str:
    """Readable summary of ``evaluate_run``'s result: condition, clip metrics, per-class table."""
    c = res["clip"]
    w = res.get("mean_modality_weights", [float("nan")] * 2)
    lines = [
        f"{res.get('split', 'split')} ({res['condition']['description']}): {c['n']} clips, "
        f"macro-F1 {c['macro_f1']:.3f}, accuracy {c['accuracy']:.3f}; window macro-F1 {res['window']['macro_f1']:.3f}; "
        f"mean modality weights audio {w[0]:.2f} / video {w[1]:.2f}",
        f"  {'class':10s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'support':>8s}",
    ]
    for label, r in res["per_class"].items():
        lines.append(f"  {label:10s} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f} {r['support']:8d}")
    return "\n".join(lines)


# ---------------------------------------------------------------- compare
def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fusions",
        default="audio,video,late,concat,gated,xattn,uncertainty,gated_uncertainty,hierarchical",
        help="comma-separated fusions / baselines to train (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=20, help="max epochs per model (default: %(default)s)")
    _opt(p, "data_root", default="data/corpus", help="RAVDESS-layout folder (default: %(default)s)")
    _opt(p, "cache_dir", default="cache", help="decoded-clip cache (default: %(default)s)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/compare"), help="runs go to <out>/<fusion> (default: %(default)s)"
    )
    _opt(p, "num_classes", type=int, choices=[4, 8], default=8, help="(default: %(default)s)")
    _opt(p, "split_mode", choices=["actor", "kfold", "stratified"], default="actor", help="(default: %(default)s)")
    p.add_argument("--fold", type=int, default=0, help="test fold for --split_mode kfold (default: %(default)s)")
    p.add_argument("--folds", type=int, default=5, help="number of folds for kfold (default: %(default)s)")
    _opt(p, "batch_size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default: %(default)s)")
    _opt(p, "early_stopping_patience", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="one seed for every model (default: %(default)s)")
    p.add_argument(
        "--retrain", action="store_true", help="train again even when a finished run with the same config exists"
    )
    _opt(
        p,
        "tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorBoard logs in <out>/<fusion>/tensorboard (default: on)",
    )
    p.add_argument(
        "--wandb", action="store_true", help="log every run to Weights & Biases (offline without an API key)"
    )
    runtime_arguments(p)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tiny encoders (tests, smoke runs)
    _opt(p, "max_train_batches", type=int, default=0, help=argparse.SUPPRESS)
    _opt(p, "no_progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")


def compare_run(args: argparse.Namespace) -> int:
    from avemo.training.models.config import ModelConfig
    from avemo.training.train.compare import TINY_MODEL, compare, parse_fusions
    from avemo.training.train.config import TrainConfig

    try:
        fusions = parse_fusions(args.fusions)
    except ValueError as e:
        raise SystemExit(str(e))
    base = TrainConfig(
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        num_classes=args.num_classes,
        split_mode=args.split_mode,
        fold=args.fold,
        folds=args.folds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        early_stopping_patience=args.early_stopping_patience,
        tensorboard=args.tensorboard,
        wandb=args.wandb,
        seed=args.seed,
        max_train_batches=args.max_train_batches,
        progress=not args.no_progress,
        model=ModelConfig(num_classes=args.num_classes),
        **runtime_config(args),
    )
    with progress_to_stderr(args.json):
        result = compare(
            fusions, base, args.out, retrain=args.retrain, model_overrides=TINY_MODEL if args.tiny else None
        )
    if args.json:
        print(json.dumps({"rows": result["rows"], "config": result["config"]}, indent=2))
    else:
        print(result["markdown"], end="")
        print(f"written {args.out / 'comparison.md'} and {args.out / 'comparison.json'}")
    return 0

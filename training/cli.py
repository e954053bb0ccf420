"""`avemo corpus`, `cache`, `train`, `evaluate`, `compare` (argument parsing only; heavy imports are lazy).

The options of `cache`, `train`, `evaluate` and `compare` are the fields of ``TrainConfig``,
``ModelConfig`` and ``LossWeights`` (defaults and help live there; ``avemo.contract.options.add_fields``), and
a parsed namespace goes back to those configs with ``avemo.contract.options.config_from_args``. A flag that
was given but would do nothing with the rest of the command line is refused (``refuse_inapplicable``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

from avemo.contract.options import UsageError, add_fields, add_option, config_from_args, given


def progress_to_stderr(json_output: bool):
    """With --json, stdout carries only the JSON document: epoch lines and logs go to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if json_output else contextlib.nullcontext()


def _sections(p: argparse.ArgumentParser) -> dict:
    """The help sections of the config options, created in their display order (empty ones are not shown)."""
    from avemo.training.train.config import HELP_SECTIONS

    return {title: p.add_argument_group(title) for title in HELP_SECTIONS}


def _checked(cfg, given_flags: dict[str, str]):
    """Refuse given-but-inapplicable flags, then impossible values (``check_config``), as usage errors."""
    from avemo.training.train.config import check_config

    refuse_inapplicable(cfg, given_flags)
    try:
        check_config(cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return cfg


def refuse_inapplicable(cfg, given_flags: dict[str, str]) -> None:
    """UsageError for a flag given on the command line (``avemo.contract.options.given``) that ``cfg`` ignores.

    Flags left at their defaults are never refused: some loss weights default to non-zero values that
    are harmless no-ops for most fusions.
    """
    from avemo.training.models.config import GATE_FUSIONS, RECONSTRUCTION_FUSIONS, UNIMODAL_FUSIONS
    from avemo.training.train.config import variational_encoders

    m = cfg.model

    def refuse(dests: tuple[str, ...], applies: bool, why: str) -> None:
        for dest in dests:
            if dest in given_flags and not applies:
                raise UsageError(f"{given_flags[dest]} {why}")

    refuse(("fold", "folds"), cfg.split_mode == "kfold", f"only applies to --split_mode kfold (got {cfg.split_mode})")
    refuse(
        ("loss_weighting_momentum",),
        cfg.loss_weighting == "inverse_ema",
        f"only applies to --loss_weighting inverse_ema (got {cfg.loss_weighting})",
    )
    refuse(
        ("loss_weighting_every",),
        cfg.loss_weighting == "grad_balance",
        f"only applies to --loss_weighting grad_balance (got {cfg.loss_weighting})",
    )
    fusion = m.fusion
    refuse(("gate_alpha",), fusion == "gated_uncertainty", f"only applies to --fusion gated_uncertainty (got {fusion})")
    contrastive = ("contrastive", "delta_nce", "contrastive_temperature", "contrastive_pairs")
    several = fusion not in UNIMODAL_FUSIONS and len(cfg.modalities) != 1
    refuse(
        (*contrastive, "contrastive_proj_dim"),
        several,
        f"needs two or more modalities: the InfoNCE loss pairs their embeddings (got --fusion {fusion}"
        f"{', --modalities ' + cfg.modalities if cfg.modalities else ''})",
    )
    refuse(
        ("contrastive",),
        m.contrastive_proj_dim > 0 or fusion == "joyful",
        "needs --contrastive_proj_dim > 0 (the InfoNCE loss reads the projected embeddings z_<modality>) "
        "or --fusion joyful (its graph contrastive loss)",
    )
    refuse(
        contrastive[1:],
        m.contrastive_proj_dim > 0,
        "needs --contrastive_proj_dim > 0: the InfoNCE loss reads the projected embeddings z_<modality>",
    )
    refuse(
        ("context",),
        cfg.is_dialogue,
        f"applies to conversation datasets (--dataset iemocap|iemocap_4|meld|meld_sentiment) only "
        f"(got --dataset {cfg.dataset})",
    )
    refuse(
        ("window_past", "window_future", "joyful_variant"),
        fusion == "joyful",
        f"only applies to --fusion joyful (got {fusion})",
    )
    clips_only = (
        "face_crop", "video_augment", "spec_augment", "audio_encoder", "audio_layers", "audio_pretrained",
        "video_encoder", "video_pretrained", "freeze_encoders", "unfreeze_after", "encoder_lr", "cache_features",
        "train_speech_frontend",
    )  # fmt: skip
    refuse(clips_only, not cfg.is_features, f"applies to clips (--dataset ravdess) only (got --dataset {cfg.dataset})")
    refuse(  # conversations: --split_mode kfold = folds of whole IEMOCAP sessions / MELD dialogues
        ("split_mode",),
        not cfg.is_features or (cfg.is_dialogue and cfg.split_mode == "kfold"),
        f"applies to clips (--dataset ravdess), and to conversation datasets as kfold only (folds of whole "
        f"sessions / dialogues) (got --dataset {cfg.dataset}, --split_mode {cfg.split_mode})",
    )
    refuse(
        ("feature_encoder", "regression_loss"),
        cfg.is_features,
        f"applies to feature datasets (--dataset mosi|mosei|sims) only (got --dataset {cfg.dataset})",
    )
    refuse(
        ("regression_loss",),
        cfg.resolved_task == "regression",
        "applies to --task regression only",
    )
    refuse(
        ("aux",),
        several,
        f"weights the unimodal auxiliary heads of a fusion model; --fusion {fusion} has none",
    )
    refuse(
        ("reconstruction", "use_smooth_l1"),
        fusion in RECONSTRUCTION_FUSIONS,
        f"only applies to --fusion {' or '.join(RECONSTRUCTION_FUSIONS)}, the fusion with reconstructions "
        f"(got {fusion})",
    )
    refuse(
        ("gate_reg",),
        fusion in GATE_FUSIONS,
        f"only applies to --fusion {' or '.join(GATE_FUSIONS)}, the fusions with a gate output (got {fusion})",
    )
    refuse(
        ("kl",),
        variational_encoders(m),
        f"needs variational encoders: --variational or an uncertainty fusion (got --fusion {fusion})",
    )


# ---------------------------------------------------------------- corpus
def corpus_arguments(p: argparse.ArgumentParser) -> None:
    from avemo.contract.labels import EMOTIONS_8
    from avemo.training.synthetic.corpus import DEFAULT_ACTORS, DEFAULT_REPETITIONS

    add_option(p, "out", "root", type=Path, default=Path("data/corpus"), help="output folder (default: %(default)s)")
    add_option(
        p, "actors", type=int, default=DEFAULT_ACTORS, help="actors, 30 clips per repetition (default: %(default)s)"
    )
    add_option(p, "seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    add_option(p, "jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    codes = ", ".join(f"{i} {name}" for i, name in enumerate(EMOTIONS_8, 1))
    add_option(
        p,
        "emotions",
        type=int,
        nargs="+",
        choices=range(1, len(EMOTIONS_8) + 1),
        metavar="CODE",
        default=None,
        help=f"render only these emotion codes ({codes}; default: all)",
    )
    add_option(
        p,
        "repetitions",
        type=int,
        nargs="+",
        choices=(1, 2),
        metavar="REP",
        default=list(DEFAULT_REPETITIONS),
        help="repetitions to render, 1 and/or 2 (default: %(default)s: more people rather than more takes)",
    )
    add_option(p, "overwrite", action="store_true", help="re-render clips that already exist")
    add_option(p, "no_progress", action="store_true", help="no progress bar")
    feat = p.add_argument_group(
        "feature files (--format mosi|mosei|sims: an MMSA pickle; iemocap|meld: a dialogue pickle; instead of clips)"
    )
    add_option(
        feat,
        "format",
        choices=("ravdess", "mosi", "mosei", "sims", "iemocap", "meld"),
        default="ravdess",
        help="ravdess: MP4 clips in RAVDESS layout; mosi / mosei / sims: one feature file in MMSA's layout "
        "(aligned_50.pkl / unaligned_50.pkl keys, dims and conventions); iemocap / meld: one dialogue feature file "
        "in DialogueRNN / MMGCN's layout (IEMOCAP_features.pkl 9-tuple, MELD 10-tuple with visual features); "
        "written to --out (default: %(default)s)",
    )
    add_option(feat, "aligned", action="store_true", help="word-aligned file (every modality 50 steps)")
    add_option(
        feat,
        "samples",
        type=int,
        nargs=3,
        metavar=("TRAIN", "VALID", "TEST"),
        default=None,
        help="examples per split (default: a small file; MOSEI's real sizes are 16326 1871 4659)",
    )
    add_option(
        feat,
        "dialogues",
        type=int,
        nargs=2,
        metavar=("TRAIN", "TEST"),
        default=None,
        help="--format iemocap|meld: dialogues per split (default: IEMOCAP's 120 31, MELD 200 50)",
    )
    add_option(
        feat,
        "no_visual",
        action="store_true",
        help="--format meld: DialogueRNN's 9-tuple without visual features (default: MMGCN's 10-tuple with them)",
    )


def corpus_run(args: argparse.Namespace) -> int:
    from avemo.training.synthetic.corpus import generate_corpus

    flags = given(args)
    dialogue = args.format in ("iemocap", "meld")
    misplaced = [d for d in (("aligned", "samples") if dialogue else ("dialogues", "no_visual")) if d in flags]
    if misplaced:
        formats = "mosi|mosei|sims" if dialogue else "iemocap|meld"
        raise UsageError(f"{flags[misplaced[0]]} applies to --format {formats} only (got --format {args.format})")
    if dialogue:
        from avemo.training.data.dialogues import read_dialogues
        from avemo.training.synthetic.dialogues import write_dialogue_file

        if args.no_visual and args.format == "iemocap":
            raise UsageError("--no_visual applies to --format meld only (IEMOCAP's 9-tuple always has visual features)")
        out = args.out if "out" in flags else Path(f"data/{args.format}_features.pkl")
        try:
            path = write_dialogue_file(
                out,
                layout=args.format,
                visual=not args.no_visual,
                dialogues=tuple(args.dialogues) if args.dialogues else None,
                seed=args.seed,
            )
        except ValueError as e:
            raise UsageError(str(e)) from None
        splits = read_dialogues(path, args.format).splits  # read back: the file is checked as a user's would be
        train, test = splits["train"] + splits["valid"], splits["test"]
        if args.format == "iemocap":
            layout = "IEMOCAP 9-tuple"
        else:
            layout = "MELD 9-tuple, no visual" if args.no_visual else "MELD 10-tuple with visual"
        utterances = sum(len(d) for d in train + test)
        print(f"{layout}: {len(train)} train + {len(test)} test dialogues, {utterances} utterances in {path}")
        return 0
    if args.format != "ravdess":
        from avemo.training.synthetic.features import write_mmsa_file

        out = (
            args.out if "out" in given(args) else Path(f"data/{args.format}_{'' if args.aligned else 'un'}aligned.pkl")
        )
        path = write_mmsa_file(
            out,
            dataset=args.format,
            aligned=args.aligned,
            samples=tuple(args.samples) if args.samples else None,
            seed=args.seed,
        )
        print(f"{args.format} feature file ({'aligned' if args.aligned else 'unaligned'}) in {path}")
        return 0

    files = generate_corpus(
        args.out,
        n_actors=args.actors,
        seed=args.seed,
        emotions=args.emotions,
        repetitions=tuple(args.repetitions),
        jobs=args.jobs,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(f"{len(files)} clips in {args.out}")
    return 0


# ---------------------------------------------------------------- cache
CACHE_FIELDS = ("data_root", "cache_dir", "face_crop", "progress")


def cache_arguments(p: argparse.ArgumentParser) -> None:
    from avemo.training.train.config import TrainConfig

    add_fields(p, TrainConfig, CACHE_FIELDS, groups=_sections(p))
    add_option(p, "jobs", type=int, default=2, help="decoding processes (default: %(default)s)")


def cache_run(args: argparse.Namespace) -> int:
    from avemo.contract.geometry import DEFAULT_GEOMETRY
    from avemo.training.data import ravdess
    from avemo.training.data.cache import build_cache
    from avemo.training.train.config import TrainConfig

    cfg = config_from_args(TrainConfig, args)
    items, problems = ravdess.scan(cfg.data_root, modality=None, vocal_channel=None)
    for p in problems:
        print(f"skipped {p.path}: {p.reason}", file=sys.stderr)
    cached, bad = build_cache(
        [it.path for it in items],
        Path(cfg.cache_dir),
        DEFAULT_GEOMETRY,
        face_crop=cfg.face_crop,
        jobs=args.jobs,
        progress=cfg.progress,
    )
    crops: dict[str, int] = {}
    for c in cached.values():
        crops[c.crop_method] = crops.get(c.crop_method, 0) + 1
    print(f"{len(cached)} clips cached in {cfg.cache_dir} ({len(bad)} failed); face crops: {crops}")
    return 0


# ---------------------------------------------------------------- train
def run_options(p: argparse.ArgumentParser, exclude_train=(), exclude_model=()) -> None:
    """The options of one run: TrainConfig, ModelConfig and LossWeights fields, and --delta_nce."""
    from avemo.training.losses.total import LossWeights
    from avemo.training.models.config import ModelConfig
    from avemo.training.train.config import LOSSES, TrainConfig

    sections = _sections(p)
    add_fields(p, TrainConfig, exclude=exclude_train, groups=sections)
    add_fields(p, ModelConfig, exclude=exclude_model, groups=sections)
    add_fields(p, LossWeights, groups=sections)
    add_option(
        sections[LOSSES],
        "delta_nce",
        type=float,
        default=None,
        help="InfoNCE weight in the distillation setting; wins over --contrastive_weight when given (default: unset)",
    )


def losses_from_args(args: argparse.Namespace):
    """LossWeights of a command line (--delta_nce, the InfoNCE weight of the distillation setting, wins)."""
    from avemo.training.losses.total import LossWeights

    losses = config_from_args(LossWeights, args)
    return replace(losses, contrastive=args.delta_nce) if args.delta_nce is not None else losses


def train_arguments(p: argparse.ArgumentParser) -> None:
    from avemo.training.train.presets import PRESETS

    run_options(p)
    add_option(
        p,
        "preset",
        choices=sorted(PRESETS),
        default=None,
        help="a guide's model by name (flags given on the command line win; see docs/features.md, docs/dialogues.md)",
    )
    add_option(p, "tiny", action="store_true", help=argparse.SUPPRESS)  # tiny encoders (tests, smoke runs)
    add_option(p, "json", action="store_true", help="print the final metrics as JSON")


def train_config_from_args(args: argparse.Namespace):
    """The TrainConfig of an `avemo train` command line (UsageError for flags that would do nothing)."""
    from avemo.training.models.config import ModelConfig
    from avemo.training.train.compare import TINY_MODEL
    from avemo.training.train.config import CLASS_COUNTS, DIALOGUE_DATASETS, FEATURE_DATASETS, TrainConfig

    flags = given(args)
    preset = {}
    if getattr(args, "preset", None):
        from avemo.training.train.presets import PRESETS, apply_preset

        apply_preset(args, args.preset, flags)
        preset = PRESETS[args.preset]
    if args.dataset in FEATURE_DATASETS and "num_classes" not in flags and "num_classes" not in preset:
        args.num_classes = 7  # the rounded sentiment score (used with --task classification only)
    if args.dataset in DIALOGUE_DATASETS and "num_classes" not in flags and "num_classes" not in preset:
        args.num_classes = CLASS_COUNTS[args.dataset][0]  # a conversation dataset has one label set
    model = config_from_args(ModelConfig, args, num_classes=args.num_classes)
    if args.tiny:
        model = replace(model, **TINY_MODEL)
    losses = losses_from_args(args)
    out_dir = args.out_dir if "out_dir" in flags else f"runs/{model.fusion}"
    cfg = config_from_args(TrainConfig, args, out_dir=out_dir, losses=losses.to_dict(), model=model)
    return _checked(cfg, flags)


@contextlib.contextmanager
def feature_file_errors():
    """A bad or hostile feature file ends the command with its one-line message (file, split, key, expected),
    not a traceback; so do pretrained weights that cannot be had (what was needed, where it looked, the way out)."""
    from avemo.training.data.safe_pickle import FeatureFileError
    from avemo.training.models.pretrained import PretrainedWeightsUnavailable

    try:
        yield
    except (FeatureFileError, PretrainedWeightsUnavailable) as e:
        raise SystemExit(f"avemo: {e}") from None


def train_run(args: argparse.Namespace) -> int:
    from avemo.training.train.loop import train

    cfg = train_config_from_args(args)
    with progress_to_stderr(args.json), feature_file_errors():
        results = train(cfg)
    if "fusion" not in results:  # a torchrun rank other than 0: rank 0 prints
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in results.items() if k != "history"}, indent=2))
    else:
        print(summary_line(results))
    return 0


def summary_line(results: dict) -> str:
    if "regression" in results.get("test", {}):
        r = results["test"]["regression"]
        return (
            f"{results['fusion']}: test corr {r['Corr']:.3f}, MAE {r['MAE']:.3f}, MSE {r['MSE']:.3f}, "
            f"Acc-2 (non-zero) {r.get('Non0_acc_2', float('nan')):.3f}, Acc-7 {r.get('Mult_acc_7', float('nan')):.3f} "
            f"({results['test']['n']} examples); checkpoint {results['checkpoint']}"
        )
    test = results.get("test", {}).get("clip", {})
    if "dialogues" in results:  # a conversation dataset: per-utterance figures, weighted F1 first (the field's)
        return (
            f"{results['fusion']}: test weighted-F1 {test.get('weighted_f1', float('nan')):.3f}, "
            f"accuracy {test.get('accuracy', float('nan')):.3f}, macro-F1 {test.get('macro_f1', float('nan')):.3f} "
            f"({test.get('n', 0)} utterances, {results['dialogues'].get('test', 0)} dialogues); "
            f"checkpoint {results['checkpoint']}"
        )
    return (
        f"{results['fusion']}: test clip macro-F1 {test.get('macro_f1', float('nan')):.3f}, "
        f"accuracy {test.get('accuracy', float('nan')):.3f} ({test.get('n', 0)} clips); "
        f"checkpoint {results['checkpoint']}"
    )


# ---------------------------------------------------------------- evaluate
EVALUATE_FIELDS = ("dataset", "modalities", "cache_dir", "face_crop", "split_mode", "fold", "folds", "seed", "progress")


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from avemo.training.data.prepare import EVAL_SPLITS
    from avemo.training.train.config import TrainConfig

    p.add_argument("checkpoint", type=Path, help="checkpoint (best.pt)")
    add_option(
        p,
        "data_root",
        type=Path,
        nargs="+",
        default=[Path(TrainConfig.data_root)],
        metavar="ROOT",
        help="RAVDESS-layout folder(s); with several, each is evaluated and the mean ± std printed; "
        "or a feature file with --dataset mosi|mosei|sims (default: %(default)s)",
    )
    add_option(
        p,
        "split",
        choices=EVAL_SPLITS,
        default="test",
        help="split to evaluate; all = every clip of the root, e.g. a corpus of people the model never saw "
        "(default: %(default)s)",
    )
    add_option(
        p,
        "drop",
        choices=("audio", "video", "text"),
        default=None,
        help="missing modality: zero that input and set its modality_mask entry to 0",
    )
    add_option(
        p,
        "noise",
        type=float,
        default=None,
        metavar="SNR_DB",
        help="add white Gaussian noise to the audio at this SNR in dB (per window, from its own power)",
    )
    add_option(
        p,
        "report_dir",
        type=Path,
        default=None,
        help="also write per_class_report.md and error_cases.md/.json for this condition into this folder",
    )
    add_option(p, "json", action="store_true", help="print metrics as JSON")
    add_fields(p, TrainConfig, EVALUATE_FIELDS, groups=_sections(p))


def evaluate_config_from_args(args: argparse.Namespace):
    """The TrainConfig (data, split, seed) of an `avemo evaluate` command line; num_classes comes from the
    checkpoint."""
    from avemo.training.train.config import CLASS_COUNTS, DIALOGUE_DATASETS, TrainConfig

    roots = [str(r) for r in args.data_root]  # several roots: the config names the first
    extra = {"num_classes": CLASS_COUNTS[args.dataset][0]} if args.dataset in DIALOGUE_DATASETS else {}
    return _checked(config_from_args(TrainConfig, args, data_root=roots[0], **extra), given(args))


def evaluate_run(args: argparse.Namespace) -> int:
    from avemo.contract.geometry import WindowGeometry
    from avemo.training.data.prepare import prepare_split
    from avemo.training.evaluation.robustness import evaluate_condition
    from avemo.training.models.checkpoint import model_from_checkpoint

    cfg = evaluate_config_from_args(args)  # usage errors before loading anything
    if cfg.is_features:
        return evaluate_features_run(args, cfg)
    missing = [str(r) for r in args.data_root if not Path(r).is_dir()]
    if missing:
        raise UsageError(f"--data_root: no such folder {', '.join(missing)}")
    if args.report_dir is not None and len(args.data_root) > 1:
        raise UsageError("--report_dir takes one --data_root (the reports describe one set of clips)")
    model, ckpt = model_from_checkpoint(args.checkpoint)
    cfg = replace(cfg, num_classes=len(ckpt["labels"]))
    results = []
    for root in args.data_root:
        ds, info = prepare_split(
            root,
            cfg.cache_dir,
            WindowGeometry.from_dict(ckpt["geometry"]),
            args.split,
            progress=cfg.progress,
            **cfg.data_options(),
        )
        if len(ds) == 0:
            raise SystemExit(f"the {args.split} split of {root} is empty")
        res, pred = evaluate_condition(
            model,
            ds,
            ckpt["labels"],
            drop=args.drop,
            noise_snr_db=args.noise,
            seed=cfg.seed,
            progress=cfg.progress,
        )
        res["split"] = args.split
        res["data_root"] = str(root)
        res["actors"] = info["actors"]
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
        results.append(res)
    if len(results) == 1:
        doc, text = results[0], evaluate_summary(results[0])
    else:
        from avemo.training.train.generalisation import mean_std

        mean = {m: mean_std(r["clip"][m] for r in results) for m in ("macro_f1", "accuracy")}
        doc = {"roots": results, "mean": mean}
        text = "\n\n".join(f"{r['data_root']}\n{evaluate_summary(r)}" for r in results)
        text += (
            f"\n\nover {len(results)} roots: macro-F1 {mean['macro_f1']['mean']:.3f} ± {mean['macro_f1']['std']:.3f}, "
            f"accuracy {mean['accuracy']['mean']:.3f} ± {mean['accuracy']['std']:.3f} (mean ± std)"
        )
    print(json.dumps(doc, indent=2) if args.json else text)
    return 0


def evaluate_features_run(args: argparse.Namespace, cfg) -> int:
    """``avemo evaluate CKPT --dataset mosi|mosei|sims --data_root FILE``: one feature file, one split."""
    from avemo.training.evaluation.feature_eval import evaluate_feature_checkpoint, feature_summary
    from avemo.training.models.checkpoint import model_from_checkpoint

    if len(args.data_root) != 1 or not Path(args.data_root[0]).is_file():
        raise UsageError(f"--data_root: --dataset {cfg.dataset} takes one feature file (got {args.data_root})")
    for flag in ("noise", "report_dir"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag} applies to clips (--dataset ravdess) only")
    model, ckpt = model_from_checkpoint(args.checkpoint)
    if cfg.modalities:
        from avemo.training.data.features import parse_modalities

        if parse_modalities(cfg.modalities) != tuple(ckpt["model_config"]["modalities"]):
            raise UsageError(
                f"--modalities {cfg.modalities}: the checkpoint reads {', '.join(ckpt['model_config']['modalities'])}"
                " (use --drop to evaluate it without one)"
            )
    with progress_to_stderr(args.json), feature_file_errors():  # --json: stdout is the document only
        res = evaluate_feature_checkpoint(
            model, ckpt, args.data_root[0], cfg.dataset, cfg.cache_dir, args.split, args.drop, cfg.progress
        )
    res["checkpoint"] = str(args.checkpoint)
    print(json.dumps(res, indent=2) if args.json else feature_summary(res))
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
# every `avemo train` option applies to every fusion of a comparison, except these (compare sets them)
COMPARE_EXCLUDED = ("out_dir", "resume", "fold", "folds")


COMPARE_FUSIONS = "audio,video,late,concat,gated,xattn,uncertainty,gated_uncertainty,hierarchical"


def compare_arguments(p: argparse.ArgumentParser) -> None:
    add_option(
        p,
        "fusions",
        default=COMPARE_FUSIONS,
        help="comma-separated fusions / baselines to train, the same seeds and split for all (default: %(default)s; "
        "feature and conversation datasets: text,%(default)s, or only the baselines of --modalities when given). "
        "For --dataset mosi|mosei|sims|iemocap|iemocap_4|meld|meld_sentiment the baselines text, audio and video are "
        "the unimodal models of --modalities t, a and v (what `avemo train --modalities t` trains), and "
        "conversations also take joyful",
    )
    add_option(
        p,
        "out",
        type=Path,
        default=Path("runs/compare"),
        help="runs go to <out>/<fusion>, <out>/fold-<k>/<fusion> with --folds, and the seeds after the first to "
        "<out>[/fold-<k>]/seed-<s>/<fusion> with --seeds (default: %(default)s)",
    )
    add_option(
        p,
        "seeds",
        type=int,
        default=1,
        metavar="N",
        help="feature and conversation datasets: train every model with the seeds --seed, --seed + 1, ..., "
        "--seed + N - 1 and tabulate mean ± std over them (and the folds), as MMSA reports; finished runs are "
        "reused, so raising N trains only the new seeds (default: %(default)s)",
    )
    unseen = p.add_argument_group("unseen people (tables of mean ± std, missing-modality rows, generalisation.png)")
    add_option(
        unseen,
        "folds",
        dest="cv_folds",  # not TrainConfig.folds: compare sets that per fold
        type=int,
        default=0,
        metavar="K",
        help="clips: actor k-fold, train every fusion K times, each actor in the test split once; conversation "
        "datasets: K folds over every dialogue of the file (train + test), each testing whole IEMOCAP sessions "
        "(leave-sessions-out: their speakers never trained) or MELD dialogues once, validation 10 %% of the other "
        "dialogues (default: 0 = the --split_mode split / the file's split)",
    )
    add_option(
        unseen,
        "fresh_corpora",
        type=int,
        default=0,
        metavar="N",
        help="also evaluate every trained model on all clips of N corpora generated with other seeds (every "
        "identity new; needs a corpus made by `avemo corpus`; default: %(default)s)",
    )
    add_option(
        unseen,
        "fresh_root",
        type=Path,
        default=None,
        help="where the fresh corpora are generated and reused, <fresh_root>/seed-<s> (default: a folder 'fresh' "
        "beside --data_root)",
    )
    add_option(
        unseen,
        "unseen_eval",
        action="store_true",
        help="evaluate (also with each modality dropped) and tabulate mean ± std even without --folds / "
        "--fresh_corpora",
    )
    add_option(
        p,
        "fusion_epochs",
        type=int,
        default=0,
        metavar="N",
        help="max epochs of the fusion models; the baselines (audio / video / text) keep --epochs (default: 0 = "
        "--epochs)",
    )
    add_option(
        p,
        "distill_baselines",
        type=float,
        default=0.0,
        metavar="W",
        help="the fusion models distil each fold's audio-only / video-only models (trained first, frozen) into "
        "their unimodal heads with weight W (--delta_va; default: 0 = off)",
    )
    add_option(
        p, "retrain", action="store_true", help="train again even when a finished run with the same config exists"
    )
    add_option(p, "tiny", action="store_true", help=argparse.SUPPRESS)  # tiny encoders (tests, smoke runs)
    add_option(p, "json", action="store_true", help="print the comparison as JSON")
    run_options(p, exclude_train=COMPARE_EXCLUDED, exclude_model=("fusion",))


def compare_config_from_args(args: argparse.Namespace, fusions: list[str] | None = None):
    """The base TrainConfig of an `avemo compare` command line (each fusion changes model.fusion and out_dir).

    A given flag is refused when it applies to none of ``fusions`` (default: gated); values that cannot
    work are refused for any of them.
    """
    from avemo.training.models.config import UNIMODAL_FUSIONS, ModelConfig
    from avemo.training.train.compare import BASELINE_MODALITIES
    from avemo.training.train.config import CLASS_COUNTS, DIALOGUE_DATASETS, FEATURE_DATASETS, TrainConfig

    flags = given(args)
    features = args.dataset in FEATURE_DATASETS + DIALOGUE_DATASETS
    if args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1 (got {args.seeds})")
    if not features and args.seeds > 1:
        raise UsageError(
            f"--seeds applies to feature and conversation datasets (--dataset {'|'.join(FEATURE_DATASETS)}|"
            f"{'|'.join(DIALOGUE_DATASETS)}); clips: use --folds K for mean ± std over actor folds"
        )
    if features:
        for dest in ("fresh_corpora", "fresh_root", "unseen_eval", "distill_baselines"):
            if dest in flags:
                raise UsageError(
                    f"{flags[dest]} applies to clips (--dataset ravdess) only (got --dataset {args.dataset})"
                )
        if args.cv_folds and args.dataset in FEATURE_DATASETS:
            raise UsageError(
                f"{flags['cv_folds']} applies to clips (actor folds) and conversation datasets (folds of whole "
                f"sessions / dialogues); --dataset {args.dataset} keeps its file's train / valid / test split: use "
                "--seeds N for mean ± std"
            )
        if "num_classes" not in flags:  # as `avemo train`: the rounded score (classification) / the dataset's
            args.num_classes = 7 if args.dataset in FEATURE_DATASETS else CLASS_COUNTS[args.dataset][0]
        letters = args.modalities
        for fusion in fusions or []:
            if fusion in UNIMODAL_FUSIONS and letters and BASELINE_MODALITIES[fusion] not in letters:
                raise UsageError(f"--fusions {fusion}: {fusion} is not among --modalities {letters}")
            if fusion not in UNIMODAL_FUSIONS and len(letters) == 1:
                raise UsageError(
                    f"--fusions {fusion} needs two or more modalities (got --modalities {letters}; the one-modality "
                    "models are the baselines text, audio, video)"
                )
    if args.cv_folds and "split_mode" in flags:
        raise UsageError("--split_mode does not apply with --folds (every fold is a k-fold split)")
    if args.cv_folds == 1 or args.cv_folds < 0:
        raise UsageError(f"--folds must be 0 (off) or at least 2 (got {args.cv_folds})")
    if args.fusion_epochs < 0:
        raise UsageError(f"--fusion_epochs must be >= 0 (got {args.fusion_epochs})")
    if args.distill_baselines < 0:
        raise UsageError(f"--distill_baselines must be >= 0 (got {args.distill_baselines})")
    if args.distill_baselines > 0:
        if {"teacher_audio", "teacher_video", "distill"} & set(flags):
            raise UsageError("--distill_baselines sets the teachers and --delta_va itself")
        if not {"audio", "video"} & set(fusions or []):
            raise UsageError("--distill_baselines needs audio and/or video in --fusions (they are the teachers)")
    if args.fresh_corpora < 0:
        raise UsageError(f"--fresh_corpora must be >= 0 (got {args.fresh_corpora})")
    model = config_from_args(ModelConfig, args, num_classes=args.num_classes)
    cfg = config_from_args(TrainConfig, args, losses=losses_from_args(args).to_dict(), model=model)
    per_fusion = [replace(cfg, model=replace(model, fusion=f)) for f in fusions or [model.fusion]]
    if features:  # the baselines read their one modality
        per_fusion = [replace(c, modalities=BASELINE_MODALITIES.get(c.model.fusion, c.modalities)) for c in per_fusion]
    inapplicable = []
    for fusion_cfg in per_fusion:
        try:
            refuse_inapplicable(fusion_cfg, flags)
        except UsageError as e:
            inapplicable.append(e)
    if len(inapplicable) == len(per_fusion):
        raise inapplicable[0]
    for fusion_cfg in per_fusion:  # a value that cannot work for one fusion would stop the comparison there
        _checked(fusion_cfg, {})
    return cfg


def compare_run(args: argparse.Namespace) -> int:
    from avemo.training.train.compare import TINY_MODEL, compare, parse_fusions
    from avemo.training.train.config import CLIP_DATASETS

    text = args.fusions
    if "fusions" not in given(args) and args.dataset not in CLIP_DATASETS:  # features: a baseline per modality read
        baselines = [b for b in ("text", "audio", "video") if not args.modalities or b[0] in args.modalities]
        fusions = [f for f in text.split(",") if f not in ("audio", "video")]
        text = ",".join(baselines + fusions * (len(baselines) > 1))
    try:
        fusions = parse_fusions(text, args.dataset)
    except ValueError as e:
        raise UsageError(f"--fusions: {e}") from None
    base = compare_config_from_args(args, fusions)
    fresh_roots = []
    with progress_to_stderr(args.json), feature_file_errors():
        if args.fresh_corpora:
            from avemo.training.synthetic.fresh import fresh_corpora

            where = args.fresh_root or Path(base.data_root).parent / "fresh"
            try:
                fresh_roots = fresh_corpora(base.data_root, args.fresh_corpora, where, progress=base.progress)
            except ValueError as e:
                raise UsageError(f"--fresh_corpora: {e}") from None
        result = compare(
            fusions,
            base,
            args.out,
            retrain=args.retrain,
            model_overrides=TINY_MODEL if args.tiny else None,
            folds=args.cv_folds,
            fresh_roots=fresh_roots,
            evaluate_test=args.unseen_eval or None,
            fusion_epochs=args.fusion_epochs,
            distill_baselines=args.distill_baselines,
            seeds=args.seeds,
        )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
    else:
        print(result["markdown"], end="")
        print(f"written {args.out / 'comparison.md'} and {args.out / 'comparison.json'}")
    return 0

"""`avemo compare`: train several fusions with the same seed and split, tabulate their test results.

Each fusion trains into ``<out>/<fusion>/`` through ``avemo.training.train.loop.train`` with one shared
``TrainConfig`` (only ``model.fusion`` and ``out_dir`` differ). A finished run (``metrics.json``)
made with the same configuration is reused unless ``retrain``; an interrupted one with the same
configuration (``last.pt``) is resumed (``train_or_reuse``, which ``avemo demo`` uses too). Writes
``comparison.md`` and ``comparison.json`` in ``<out>``. With ``folds`` (actor k-fold, runs in
``<out>/fold-<k>/<fusion>``) or fresh corpora, every model is evaluated again on its test actors and
the fresh corpora, also with each modality dropped (``generalisation.py``), and the tables give mean ± std.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from avemo.training.losses.total import LossWeights
from avemo.training.models.checkpoint import load_checkpoint
from avemo.training.models.config import FUSIONS, UNIMODAL_FUSIONS
from avemo.training.train.config import TrainConfig
from avemo.training.train.loop import train

# configuration fields that do not change the result of a run (ignored when deciding to reuse one)
_IGNORED = (
    *("out_dir", "cache_dir", "resume", "progress", "num_workers", "num_threads"),
    *("tensorboard", "wandb", "wandb_project"),
)
_IGNORED_MODEL = ("logmel_mean", "logmel_std")  # set by train() from the training data

# tiny encoders for tests and smoke runs (`--tiny`, hidden)
TINY_MODEL = {"audio_channels": (8, 16), "video_channels": (8, 16), "embed_dim": 32}

COLUMNS = ("fusion", "test macro-F1", "test accuracy", "parameters", "training time (s)", "epochs run")


def parse_fusions(text: str) -> list[str]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in names if f not in FUSIONS]
    if bad or not names:
        raise ValueError(f"unknown fusion(s) {bad or text!r}; choose from {', '.join(FUSIONS)}")
    return list(dict.fromkeys(names))  # keep order, drop repeats


def comparable(config: dict) -> dict:
    """A run configuration without the fields that do not change its result."""
    d = {k: v for k, v in config.items() if k not in _IGNORED}
    d.setdefault("face_crop", "auto")  # runs made before these fields existed used these values
    d.setdefault("weight_decay_scope", "all")
    d.setdefault("video_augment", "basic")
    d.setdefault("warmup_epochs", 0.0)
    losses = dict(d.get("losses") or {})
    if "aux_masked" not in losses and (losses or "warmup_epochs" not in config):
        losses["aux_masked"] = False  # stored before the field existed: its auxiliary losses saw every window
    d["losses"] = LossWeights.from_dict(losses).to_dict()  # {} means the defaults
    model = {k: v for k, v in dict(d.get("model", {})).items() if k not in _IGNORED_MODEL}
    model["num_classes"] = d.get("num_classes", model.get("num_classes"))
    model.setdefault("unimodal_fallback", False)
    d["model"] = model
    return json.loads(json.dumps(d))  # tuples -> lists, as stored in metrics.json


def fusion_config(base: TrainConfig, fusion: str, out: Path, fusion_epochs: int = 0) -> TrainConfig:
    """``base`` for one fusion in ``<out>/<fusion>``; ``fusion_epochs`` > 0 replaces the epochs of fusion models
    (two encoders and three heads to train; the audio / video baselines keep ``base.epochs``)."""
    epochs = fusion_epochs if fusion_epochs > 0 and fusion not in UNIMODAL_FUSIONS else base.epochs
    return replace(
        base, out_dir=str(Path(out) / fusion), resume=False, epochs=epochs, model=replace(base.model, fusion=fusion)
    )


def with_baseline_teachers(cfg: TrainConfig, teachers: dict[str, str], weight: float) -> TrainConfig:
    """``cfg`` distilling ``teachers`` {"audio"/"video": checkpoint} into its unimodal heads at ``weight``."""
    return replace(
        cfg,
        teacher_audio=str(teachers.get("audio", "")),
        teacher_video=str(teachers.get("video", "")),
        losses={**cfg.losses, "distill": weight},
    )


def reusable(cfg: TrainConfig) -> dict | None:
    """metrics.json of a finished run of exactly this configuration, else None."""
    path = Path(cfg.out_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if comparable(metrics.get("config", {})) != comparable(cfg.to_dict()):
        return None
    if not (Path(cfg.out_dir) / "best.pt").exists():
        return None
    return metrics


def resumable(cfg: TrainConfig) -> bool:
    """An interrupted run of exactly this configuration left a last.pt."""
    last = Path(cfg.out_dir) / "last.pt"
    if not last.exists():
        return False
    try:
        stored = json.loads(load_checkpoint(last).get("train_config_json") or "{}")
    except Exception:
        return False
    return comparable(stored) == comparable(cfg.to_dict())


def train_or_reuse(cfg: TrainConfig, retrain: bool = False, log=print, tag: str | None = None) -> tuple[dict, bool]:
    """(metrics, reused) of the run ``cfg``: a finished run of exactly this configuration is reused and an
    interrupted one resumed, unless ``retrain``; otherwise it trains from scratch. ``tag`` prefixes the
    log lines (default ``[<fusion>]``)."""
    tag = tag or f"[{cfg.model.fusion}]"
    metrics = None if retrain else reusable(cfg)
    if metrics is not None:
        log(f"{tag} reusing finished run {cfg.out_dir} (use --retrain to train again)")
        return metrics, True
    if not retrain and resumable(cfg):
        log(f"{tag} resuming interrupted run in {cfg.out_dir}")
        cfg = replace(cfg, resume=True)
    return train(cfg), False


def row(fusion: str, metrics: dict, reused: bool) -> dict:
    clip = metrics.get("test", {}).get("clip", {})
    return {
        "fusion": fusion,
        "test_macro_f1": clip.get("macro_f1"),
        "test_accuracy": clip.get("accuracy"),
        "test_clips": clip.get("n", 0),
        "params": metrics.get("params"),
        "train_seconds": metrics.get("train_seconds"),
        "epochs_run": metrics.get("epochs_run"),
        "best_val_macro_f1": metrics.get("best_val_macro_f1"),
        "checkpoint": metrics.get("checkpoint"),
        "runtime": metrics.get("runtime", "device cpu, float32"),
        "reused": reused,
    }


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def markdown_table(rows: list[dict], folds: bool = False) -> str:
    """One line per run (with a fold column when ``folds``)."""
    cols = ("fold",) * folds + COLUMNS
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append(
            "| "
            + f"{r.get('fold', 0)} | " * folds
            + f"{r['fusion']} | {_fmt(r['test_macro_f1'], '.3f')} | {_fmt(r['test_accuracy'], '.3f')} | "
            f"{_fmt(r['params'], ',')} | {_fmt(r['train_seconds'], '.1f')} | {_fmt(r['epochs_run'], 'd')} |"
        )
    return "\n".join(lines) + "\n"


def fold_configs(base: TrainConfig, folds: int) -> list[tuple[int, TrainConfig, str]]:
    """(fold, config, sub-folder) per fold: actor k-fold when ``folds`` > 0, else the configured split as fold 0."""
    if folds <= 0:
        return [(0, base, "")]
    return [(k, replace(base, split_mode="kfold", folds=folds, fold=k), f"fold-{k}") for k in range(folds)]


def compare(
    fusions: list[str],
    base: TrainConfig,
    out: str | Path,
    retrain: bool = False,
    model_overrides: dict | None = None,
    log=print,
    folds: int = 0,
    fresh_roots: list[Path] | tuple = (),
    evaluate_test: bool | None = None,
    fusion_epochs: int = 0,
    distill_baselines: float = 0.0,
) -> dict:
    """Train (or reuse) each fusion with ``base`` and write comparison.md / comparison.json in ``out``.

    ``model_overrides``: ModelConfig fields applied to every fusion (e.g. ``TINY_MODEL`` in tests).
    ``folds`` > 0: actor k-fold, runs in ``<out>/fold-<k>/<fusion>``, every actor tested once.
    ``fresh_roots``: corpora of unseen people every trained model is also evaluated on (all clips).
    ``fusion_epochs`` > 0: the epochs of the fusion models (the unimodal baselines keep ``base.epochs``).
    ``distill_baselines`` > 0: each fold's audio-only / video-only models (trained first) are the frozen
    teachers of that fold's fusion models' unimodal heads, with this distillation weight (``--delta_va``).
    With folds or fresh corpora (or ``evaluate_test``) the models are evaluated again, also with each
    modality dropped (``avemo.training.train.generalisation``): tables of mean ± std, generalisation.png.
    Returns {"rows": [...], "config": ..., "markdown": ..., "summary": ... (when evaluated)}.
    """
    from avemo.training.train import generalisation as gen

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model_overrides:
        base = replace(base, model=replace(base.model, **model_overrides))
    rows, runs, corpora = [], {}, []
    baselines = [f for f in fusions if f in UNIMODAL_FUSIONS]
    order = fusions
    if distill_baselines > 0:
        if not baselines:
            raise ValueError("distilling the baselines needs audio and/or video among the fusions")
        order = baselines + [f for f in fusions if f not in UNIMODAL_FUSIONS]  # teachers first
    for fold, fold_cfg, sub in fold_configs(base, folds):
        if folds:
            log(f"[compare] fold {fold + 1}/{folds}")
        for fusion in order:
            cfg = fusion_config(fold_cfg, fusion, out / sub, fusion_epochs)
            if distill_baselines > 0 and fusion not in UNIMODAL_FUSIONS:
                teachers = {m: runs[(fold, m)]["checkpoint"] for m in baselines}
                cfg = with_baseline_teachers(cfg, teachers, distill_baselines)
            metrics, reused = train_or_reuse(cfg, retrain, log)
            rows.append(row(fusion, metrics, reused) | {"fold": fold})
            runs[(fold, fusion)] = {"checkpoint": metrics["checkpoint"], "data": fold_cfg.data_options()}
        corpora.append((f"test fold {fold}" if folds else "test", base.data_root, "test", fold))
    corpora += [(Path(r).name, r, "all", -1) for r in fresh_roots]
    common = comparable(base.to_dict())
    common["model"].pop("fusion", None)
    common["fusion_epochs"] = fusion_epochs or base.epochs
    common["distill_baselines"] = distill_baselines
    runtime = ", ".join(sorted({r["runtime"] for r in rows}))
    epochs = f"at most {base.epochs} epoch(s)" + (
        f" ({fusion_epochs} for the fusion models)" if fusion_epochs > 0 and fusion_epochs != base.epochs else ""
    )
    result = {"rows": rows, "config": common, "folds": folds, "fresh_corpora": [str(r) for r in fresh_roots]}
    if evaluate_test if evaluate_test is not None else (folds > 0 or len(fresh_roots) > 0):
        records = gen.evaluate_runs(runs, corpora, base.cache_dir, progress=base.progress, log=log)
        result["records"] = records
        result["summary"] = gen.summarise(records, fusions)
        table = gen.markdown(result["summary"], folds, len(fresh_roots))
        table += "\nThe runs (test = each run's own test actors):\n\n" + markdown_table(rows, folds=folds > 0)
        how = f"actor {folds}-fold (every actor tested once)" if folds else f"{base.split_mode} split"
        fresh = f", and on every clip of {len(fresh_roots)} fresh corpora" if fresh_roots else ""
        header = (
            f"# Fusion comparison: unseen people\n\nSeed {base.seed}; {how}{fresh}; {base.num_classes} classes, "
            f"{epochs}; clip-level macro-F1 / accuracy (argmax of the mean of window "
            f"probabilities) of the best validation checkpoint, mean ± std (population) over the evaluations. "
            f"Dropped modality: that input zeroed and its mask entry 0; its difference is paired with the other "
            f"modality's own model on the same fold and clips. Trained with {runtime}.\n\n"
        )
        gen.plot(result["summary"], out / "generalisation.png", f"{base.num_classes} classes, {how}{fresh}")
    else:
        table = markdown_table(rows)
        header = (
            f"# Fusion comparison\n\nSame seed ({base.seed}) and {base.split_mode} split for every model; "
            f"{base.num_classes} classes, {epochs}; test metrics at clip level "
            f"(argmax of the mean of window probabilities), best validation checkpoint. "
            f"Trained with {runtime}.\n\n"
        )
    (out / "comparison.md").write_text(header + table)
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    return result | {"markdown": table}

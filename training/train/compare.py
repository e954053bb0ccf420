"""`avemo compare`: train several fusions with the same seed and split, tabulate their test results.

Each fusion trains into ``<out>/<fusion>/`` through ``avemo.training.train.loop.train`` with one shared
``TrainConfig`` (only ``model.fusion`` and ``out_dir`` differ). A finished run (``metrics.json``)
made with the same configuration is reused unless ``retrain``; an interrupted one with the same
configuration (``last.pt``) is resumed (``train_or_reuse``, which ``avemo demo`` uses too). Writes
``comparison.md`` and ``comparison.json`` in ``<out>``. With ``folds`` (actor k-fold, runs in
``<out>/fold-<k>/<fusion>``) or fresh corpora, every model is evaluated again on its test actors and
the fresh corpora, also with each modality dropped (``generalisation.py``), and the tables give mean ± std.

Feature and conversation datasets (``compare_features``): ``seeds`` N trains every model with the seeds
seed, seed + 1, ..., seed + N - 1 (the first in ``<out>/<fusion>``, the others in ``<out>/seed-<s>/<fusion>``,
so adding a seed trains only its runs); ``folds`` K (conversations only) trains every model on K folds of
whole IEMOCAP sessions / MELD dialogues (``<out>/fold-<k>/...``). The table gives each model's test metrics
(metrics.json) as mean ± std over its runs, and every multimodal model is evaluated again with each modality
dropped through the mask. The unimodal baselines ``text`` / ``audio`` / ``video`` are the runs of
``--modalities t`` / ``a`` / ``v`` (the model ``avemo train --modalities t`` trains).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from avemo.training.losses.total import LossWeights
from avemo.training.models.checkpoint import load_checkpoint
from avemo.training.models.config import DIALOGUE_FUSIONS, FEATURE_BASELINES, FUSIONS, UNIMODAL_FUSIONS
from avemo.training.train.config import DIALOGUE_DATASETS, FEATURE_DATASETS, TrainConfig
from avemo.training.train.loop import train

# configuration fields that do not change the result of a run (ignored when deciding to reuse one)
_IGNORED = (
    *("out_dir", "cache_dir", "resume", "progress", "num_workers", "num_threads"),
    *("tensorboard", "wandb", "wandb_project"),
)
_IGNORED_MODEL = ("logmel_mean", "logmel_std")  # set by train() from the training data
# feature / conversation runs: set by train() from the file, --modalities and --task (stored, never configured)
_DATA_DECIDED_MODEL = ("modalities", "task", "input_dims", "seq_lens", "num_speakers", "gate_init_audio")
BASELINE_MODALITIES = {"text": "t", "audio": "a", "video": "v"}  # feature baselines: --fusions name -> --modalities

# tiny encoders for tests and smoke runs (`--tiny`, hidden)
TINY_MODEL: dict[str, Any] = {"audio_channels": (8, 16), "video_channels": (8, 16), "embed_dim": 32}

COLUMNS = ("fusion", "test macro-F1", "test accuracy", "parameters", "training time (s)", "epochs run")


def allowed_fusions(dataset: str = "ravdess") -> tuple[str, ...]:
    """What ``--fusions`` takes for ``dataset``: the fusions and audio / video baselines; feature and conversation
    datasets also the text baseline, conversations also joyful."""
    if dataset in DIALOGUE_DATASETS:
        return FUSIONS + FEATURE_BASELINES + DIALOGUE_FUSIONS
    if dataset in FEATURE_DATASETS:
        return FUSIONS + FEATURE_BASELINES
    return FUSIONS


def parse_fusions(text: str, dataset: str = "ravdess") -> list[str]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    allowed = allowed_fusions(dataset)
    bad = [f for f in names if f not in allowed]
    if bad or not names:
        raise ValueError(f"unknown fusion(s) {bad or text!r} for --dataset {dataset}; choose from {', '.join(allowed)}")
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
    if d.get("dataset", "ravdess") in FEATURE_DATASETS + DIALOGUE_DATASETS:
        model = {k: v for k, v in model.items() if k not in _DATA_DECIDED_MODEL}
        letters = d.get("modalities") or ""
        if len(letters) == 1:  # train() names a one-modality run after its modality, whatever model.fusion said
            model["fusion"] = {v: k for k, v in BASELINE_MODALITIES.items()}.get(letters, model.get("fusion"))
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
    """(fold, config, sub-folder) per fold when ``folds`` > 0 (clips: actor k-fold; conversations: folds of whole
    sessions / dialogues, which the trainer reads from the same ``split_mode`` kfold), else the configured split
    as fold 0."""
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
    seeds: int = 1,
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
    Feature and conversation datasets (``base.is_features``): ``compare_features`` (``seeds``, ``folds`` of
    whole sessions / dialogues; ``fresh_roots``, ``evaluate_test`` and ``distill_baselines`` are for clips).
    Returns {"rows": [...], "config": ..., "markdown": ..., "summary": ... (when evaluated)}.
    """
    from avemo.training.train import generalisation as gen

    out = Path(out)
    if model_overrides:
        base = replace(base, model=replace(base.model, **model_overrides))
    if base.is_features:
        if fresh_roots or evaluate_test or distill_baselines:
            raise ValueError("fresh corpora, --unseen_eval and --distill_baselines are for clips (--dataset ravdess)")
        return compare_features(fusions, base, out, retrain, log, folds, seeds, fusion_epochs)
    if seeds != 1:
        raise ValueError(f"seeds > 1 is for feature and conversation datasets (got {seeds} for {base.dataset})")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    runs: dict[tuple[int, str], dict] = {}
    corpora: list[tuple[str, str | Path, str, int]] = []
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
    result: dict[str, Any] = {
        "rows": rows,
        "config": common,
        "folds": folds,
        "fresh_corpora": [str(r) for r in fresh_roots],
    }
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


# ---------------------------------------------------------------- feature and conversation datasets
def seed_folder(seed: int, first: int) -> str:
    """Sub-folder of a seed's runs: none for the first seed (where a one-seed comparison puts them), else
    ``seed-<s>``."""
    return "" if seed == first else f"seed-{seed}"


def feature_run_config(base: TrainConfig, fusion: str, seed: int, out: Path, fusion_epochs: int = 0) -> TrainConfig:
    """``base`` for one model of a feature / conversation comparison in ``<out>/<fusion>`` with ``seed``; the
    baselines text / audio / video read only their modality (``--modalities t|a|v``)."""
    cfg = replace(fusion_config(base, fusion, out, fusion_epochs), seed=seed)
    if fusion in BASELINE_MODALITIES:
        cfg = replace(cfg, modalities=BASELINE_MODALITIES[fusion])
    return cfg


def feature_row(fusion: str, metrics: dict, reused: bool, fold: int, seed: int) -> dict:
    """``row`` plus the run's fold, seed, modalities (letters) and scalar test metrics ("test")."""
    from avemo.training.train.generalisation import figures

    modalities = metrics.get("config", {}).get("model", {}).get("modalities", [])
    return row(fusion, metrics, reused) | {
        "fold": fold,
        "seed": seed,
        "modalities": "".join(m[0] for m in modalities),
        "test": figures(metrics.get("test", {})),
    }


def feature_runs_table(rows: list[dict], columns: list[tuple[str, str]], folds: bool) -> str:
    """One line per run: (fold,) seed, model, its test metrics, parameters, time, epochs, reused."""
    head = ["fold"] * folds + ["seed", "model", *[label for _, label in columns]]
    head += ["parameters", "training time (s)", "epochs run", "reused"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["fold"])] * folds + [str(r["seed"]), r["fusion"]]
        cells += [_fmt(r["test"].get(key), ".3f") for key, _ in columns]
        cells += [_fmt(r["params"], ","), _fmt(r["train_seconds"], ".1f"), _fmt(r["epochs_run"], "d")]
        cells.append("yes" if r["reused"] else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_features(
    fusions: list[str],
    base: TrainConfig,
    out: str | Path,
    retrain: bool = False,
    log=print,
    folds: int = 0,
    seeds: int = 1,
    fusion_epochs: int = 0,
) -> dict:
    """Compare models on a feature file (MOSI / MOSEI / SIMS) or a conversation file (IEMOCAP / MELD).

    Every model of ``fusions`` trains (or is reused, ``train_or_reuse``) once per seed ``base.seed`` ..
    ``base.seed + seeds - 1`` and, with ``folds`` K (conversations only), per fold of whole IEMOCAP sessions /
    MELD dialogues (``avemo.training.data.dialogues.read_dialogues``): runs in
    ``<out>[/fold-<k>][/seed-<s>]/<fusion>`` (no seed folder for the first seed). Each multimodal model is
    evaluated again on its run's test split with each modality dropped through the mask
    (``generalisation.evaluate_feature_runs``). Writes comparison.md / comparison.json; returns
    {"rows", "records", "summary", "config", "folds", "seeds", "markdown"}.
    """
    from avemo.training.data.dialogues import LAYOUTS
    from avemo.training.train import generalisation as gen

    if seeds < 1:
        raise ValueError(f"seeds must be at least 1 (got {seeds})")
    if folds and not base.is_dialogue:
        raise ValueError(f"folds are for clips and conversation datasets; {base.dataset} keeps its file's split")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_list = [base.seed + i for i in range(seeds)]
    rows, runs = [], {}
    for fold, fold_cfg, sub in fold_configs(base, folds):
        if folds:
            log(f"[compare] fold {fold + 1}/{folds}")
        for seed in seed_list:
            where = out / sub / seed_folder(seed, base.seed)
            for fusion in fusions:
                cfg = feature_run_config(fold_cfg, fusion, seed, where, fusion_epochs)
                tag = f"[{fusion}{f' fold {fold}' if folds else ''}{f' seed {seed}' if seeds > 1 else ''}]"
                metrics, reused = train_or_reuse(cfg, retrain, log, tag)
                rows.append(feature_row(fusion, metrics, reused, fold, seed))
                runs[(fold, seed, fusion)] = cfg
    task = base.resolved_task
    columns = gen.metric_columns(base.dataset, task)
    records = gen.evaluate_feature_runs(runs, log=log)
    summary = gen.summarise_runs(rows, records, fusions, columns)
    common = comparable(base.to_dict())
    common["model"].pop("fusion", None)
    common["fusion_epochs"] = fusion_epochs or base.epochs
    common["seeds"] = seed_list
    result = {
        "rows": rows,
        "records": records,
        "summary": summary,
        "config": common,
        "folds": folds,
        "seeds": seed_list,
    }
    n_runs = max(folds, 1) * seeds
    group = "sessions" if base.is_dialogue and LAYOUTS[base.dataset] == "iemocap" else "dialogues"
    how = (
        f"{folds} folds of whole {group} over every dialogue of the file (each dialogue tested once; validation: "
        f"10 % of the other dialogues)"
        if folds
        else "the file's train / valid / test split"
    )
    seeds_text = f"seed {base.seed}" if seeds == 1 else f"seeds {', '.join(map(str, seed_list))}"
    over = " x ".join([f"{folds} folds"] * (folds > 0) + [f"{seeds} seed{'s' if seeds > 1 else ''}"])
    if task == "regression":
        what = "regression of the sentiment score (MMSA's metrics)"
    elif base.is_dialogue:
        what = f"{base.num_classes}-class emotion of every utterance (weighted F1: the field's figure)"
    else:
        what = f"{base.num_classes}-class sentiment"
    epochs = f"at most {base.epochs} epoch(s)" + (
        f" ({fusion_epochs} for the fusion models)" if fusion_epochs > 0 and fusion_epochs != base.epochs else ""
    )
    runtime = ", ".join(sorted({r["runtime"] for r in rows}))
    header = (
        f"# Model comparison: {base.dataset}\n\n{seeds_text.capitalize()}; {how}; {what}, {epochs}. Test metrics of "
        f"each run's best validation checkpoint (its metrics.json), mean ± std (population) over the {n_runs} "
        f"run(s) of every model ({over}). Missing modality: that input zeroed and its mask entry 0, on the same "
        f"test data; Δ = dropped minus every modality, paired run by run. Trained with {runtime}.\n\n"
    )
    table = gen.feature_markdown(summary)
    table += "\nThe runs:\n\n" + feature_runs_table(rows, columns, folds > 0)
    (out / "comparison.md").write_text(header + table)
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    return result | {"markdown": table}

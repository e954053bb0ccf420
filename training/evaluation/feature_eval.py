"""``avemo evaluate`` on a feature file: a checkpoint's metrics on one split of an MMSA pickle, with every
modality or one dropped (its input zeroed, its mask entry 0: what a missing modality is to the model)."""

from __future__ import annotations

import json
from pathlib import Path

from avemo.training.evaluation.predict import evaluate_predictions, predict, predict_conditions

SPLITS = {"train": "train", "val": "valid", "test": "test"}  # our split name -> MMSA's


def evaluate_feature_checkpoint(
    model,
    ckpt: dict,
    data_root: str | Path,
    dataset: str,
    cache_dir: str | Path,
    split: str = "test",
    drop: str | None = None,
    progress: bool = False,
) -> dict:
    """Metrics of a feature model on ``split`` of ``data_root`` -> the dict ``evaluate_predictions`` gives, plus
    "split", "condition", "data_root". The file's feature sizes must be the checkpoint's (``check_dims``)."""
    from avemo.training.data.feature_cache import open_features
    from avemo.training.data.features import FeatureDataset
    from avemo.training.data.mmsa import check_dims

    cfg = ckpt["model_config"]
    if not cfg.get("input_dims"):
        raise SystemExit("this checkpoint is a clip model: evaluate it with --dataset ravdess and a clip folder")
    if split not in SPLITS:
        raise SystemExit(f"--split must be one of {', '.join(SPLITS)} for a feature file (got {split})")
    modalities = tuple(cfg["modalities"])
    if cfg.get("num_speakers", 0) > 0:
        ds = _dialogue_split(ckpt, data_root, dataset, split, modalities)
    else:
        corpus = open_features(data_root, cache_dir, dataset=dataset, progress=progress)
        check_dims(corpus, {m: int(cfg["input_dims"][m]) for m in modalities}, source="the checkpoint")
        num_classes = len(ckpt["labels"]) if cfg.get("task") == "classification" else 1
        ds = FeatureDataset(corpus.splits[SPLITS[split]], modalities, cfg.get("task", "regression"), num_classes)
    if drop is None:
        pred = predict(model, ds, progress=progress, desc=split)
    else:
        if drop not in modalities:
            raise SystemExit(f"--drop {drop}: the model reads {', '.join(modalities)}")
        pred = predict_conditions(model, ds, [f"no_{drop}"])[f"no_{drop}"]
    res = evaluate_predictions(pred, list(ckpt["labels"]), dataset)
    res["split"], res["data_root"] = split, str(data_root)
    res["condition"] = {"drop": drop, "description": f"{drop} dropped" if drop else "every modality"}
    res["modalities"] = list(modalities)
    return res


def _dialogue_split(ckpt: dict, data_root, dataset: str, split: str, modalities: tuple[str, ...]):
    """The ``split`` DialogueDataset of a conversation file, after checking it is the checkpoint's kind of data."""
    from avemo.training.data.dialogue_dataset import prepare_dialogues
    from avemo.training.data.safe_pickle import FeatureFileError

    trained = json.loads(ckpt.get("train_config_json", "{}"))
    if trained.get("dataset") and trained["dataset"] != dataset:
        raise SystemExit(f"this checkpoint was trained on --dataset {trained['dataset']}; got --dataset {dataset}")
    # a fold's checkpoint is evaluated on that fold's splits (whole sessions / dialogues), not the file's
    folds = {"folds": trained["folds"], "fold": trained["fold"]} if trained.get("split_mode") == "kfold" else {}
    datasets, info = prepare_dialogues(data_root, dataset, modalities, **folds)
    want = {m: int(ckpt["model_config"]["input_dims"][m]) for m in modalities}
    if info["input_dims"] != want:
        raise FeatureFileError(f"{data_root}: features per utterance {info['input_dims']}, the checkpoint reads {want}")
    if list(datasets[split].class_names) != list(ckpt["labels"]):
        raise SystemExit(f"{data_root}: classes {datasets[split].class_names}, the checkpoint answers {ckpt['labels']}")
    return datasets[split]


def feature_summary(res: dict) -> str:
    """Readable lines of ``evaluate_feature_checkpoint``'s result."""
    w = ", ".join(f"{m} {x:.2f}" for m, x in zip(res["modalities"], res["mean_modality_weights"]))
    head = f"{res['split']} ({res['condition']['description']})"
    if "regression" in res:
        body = ", ".join(f"{k} {v:.4f}" for k, v in res["regression"].items())
        return f"{head}: {res['n']} examples; {body}\n  mean modality weights: {w}"
    c = res["clip"]
    return (
        f"{head}: {c['n']} examples, macro-F1 {c['macro_f1']:.3f}, accuracy {c['accuracy']:.3f}, "
        f"weighted F1 {c.get('weighted_f1', float('nan')):.3f}\n  mean modality weights: {w}"
    )

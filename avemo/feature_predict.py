"""`avemo predict --dataset mosei --data_root FILE --split test`: every sample of a feature file's split
through the served feature model on Triton, scored with the same metrics as `avemo evaluate`
(`--dataset iemocap|meld|...`: every dialogue of a conversation file's split, one request per dialogue).

The served config says which modalities, feature sizes, padded lengths, task and classes the model has
(``client.features``); the file is read by the training package's validated reader (restricted unpickler,
memory-mapped cache), so the samples, their order and their targets are exactly what `avemo evaluate`
scores, and the two commands agree to float precision.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from avemo.contract.endpoint import MODEL_NAME

DIALOGUE_DATASETS = ("iemocap", "iemocap_4", "meld", "meld_sentiment")
CHUNK = 256  # samples read from the memory map and sent per round (bounded memory on big files)


def predict_feature_split(
    url: str,
    model_name: str,
    data_root: str | Path,
    dataset: str,
    split: str = "test",
    cache_dir: str | Path = "cache",
    timeout: float = 30.0,
    batch_size: int | None = None,
    concurrency: int = 4,
    progress: bool = False,
) -> dict:
    """Metrics of the served model on ``split`` of ``data_root``: the dict `avemo evaluate --json` prints for a
    feature checkpoint (``evaluate_predictions``), plus "served_model" and "url"."""
    from avemo.client.features import FeatureClient
    from avemo.contract.features import FeatureSignature
    from avemo.contract.progress import progress as progress_bar
    from avemo.training.data.feature_cache import open_features
    from avemo.training.data.features import targets
    from avemo.training.data.mmsa import check_dims
    from avemo.training.evaluation.feature_eval import SPLITS
    from avemo.training.evaluation.predict import evaluate_predictions

    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)} for a feature file (got {split})")
    with FeatureClient(url, model_name, timeout) as client:
        sig = client.signature()
        if sig.dataset and sig.dataset != dataset:
            raise ValueError(f"the served model '{model_name}' was trained on {sig.dataset}, not --dataset {dataset}")
        corpus = open_features(data_root, cache_dir, dataset=dataset, progress=progress)
        check_dims(corpus, sig.dims, source=f"the served model '{model_name}'")
        assert isinstance(sig, FeatureSignature)  # not a conversation model's
        part = corpus.splits[SPLITS[split]]
        for m in sig.modalities:
            if part.features[m].shape[1] > sig.seq_lens[m]:
                raise ValueError(
                    f"{data_root}: {m} sequences are padded to {part.features[m].shape[1]} steps, the served model "
                    f"takes {sig.seq_lens[m]} (export a model trained on this file's layout)"
                )
        n = len(part)
        lengths = np.stack([np.asarray(part.lengths[m], np.int64) for m in sig.modalities], 1)  # [N, M]
        values, weights = [], []
        for start in progress_bar(range(0, n, CHUNK), desc="predict via Triton", unit="chunk", disable=not progress):
            sl = slice(start, min(start + CHUNK, n))
            feats = {}
            for m in sig.modalities:
                x = np.asarray(part.features[m][sl], np.float32)  # [b, L_file, D]
                pad = sig.seq_lens[m] - x.shape[1]
                feats[m] = np.pad(x, ((0, 0), (0, pad), (0, 0))) if pad else x
            out = client.infer(feats, lengths[sl], batch_size=batch_size, concurrency=concurrency)
            values.append(out.values)
            weights.append(out.modality_weights)
    num_classes = len(sig.labels) if sig.task == "classification" else 1
    key = "prediction" if sig.task == "regression" else "probs"
    pred = {
        key: np.concatenate(values),
        "modality_weights": np.concatenate(weights),
        "clip": np.arange(n),
        "label": targets(part, sig.task, num_classes),
    }
    res = evaluate_predictions(pred, list(sig.labels), dataset)
    res["split"], res["data_root"] = split, str(data_root)
    res["condition"] = {"drop": None, "description": "every modality"}
    res["modalities"] = list(sig.modalities)
    res["served_model"], res["url"] = model_name, url
    return res


def predict_dialogue_split(
    url: str,
    model_name: str,
    data_root: str | Path,
    dataset: str,
    split: str = "test",
    timeout: float = 30.0,
    progress: bool = False,
) -> dict:
    """Metrics of a served conversation model on ``split`` of a dialogue file, one request per dialogue: the
    dict `avemo evaluate --json` prints for the checkpoint, plus "served_model" and "url"."""
    from avemo.client.features import FeatureClient
    from avemo.contract.dialogues import DialogueSignature
    from avemo.contract.progress import progress as progress_bar
    from avemo.training.data.dialogue_dataset import prepare_dialogues
    from avemo.training.evaluation.predict import evaluate_predictions

    with FeatureClient(url, model_name, timeout) as client:
        sig = client.signature()
        if not isinstance(sig, DialogueSignature):
            raise ValueError(f"the served model '{model_name}' is not a conversation model")
        if sig.dataset and sig.dataset != dataset:
            raise ValueError(f"the served model '{model_name}' was trained on {sig.dataset}, not --dataset {dataset}")
        datasets, info = prepare_dialogues(data_root, dataset, sig.modalities)
        if info["input_dims"] != sig.dims:
            raise ValueError(
                f"{data_root}: features per utterance {info['input_dims']}, the served model reads {sig.dims}"
            )
        part = datasets[split]
        probs, weights = [], []
        for d in progress_bar(part.dialogues, desc="predict via Triton", unit="dialogue", disable=not progress):
            p, w = client.infer_dialogue(d.features, d.speakers)
            probs.append(p)
            weights.append(w)
    labels = part.labels
    pred = {"probs": np.concatenate(probs), "modality_weights": np.concatenate(weights), "clip": np.arange(len(labels)),
            "label": labels}  # fmt: skip
    res = evaluate_predictions(pred, list(sig.labels), dataset)
    res["split"], res["data_root"] = split, str(data_root)
    res["condition"] = {"drop": None, "description": "every modality"}
    res["modalities"] = list(sig.modalities)
    res["served_model"], res["url"] = model_name, url
    return res


def run(args: argparse.Namespace) -> int:
    """The feature path of `avemo predict` (``avemo.predict`` dispatches here when --dataset is given)."""
    from avemo.client.grpc_stream import EmotionClientError
    from avemo.training.cli import feature_file_errors, progress_to_stderr
    from avemo.training.evaluation.feature_eval import feature_summary

    model = args.model if args.model != MODEL_NAME else args.dataset  # export names a feature model after its data
    try:
        progress = not args.json and sys.stderr.isatty()
        with progress_to_stderr(args.json), feature_file_errors():  # --json: stdout is the document only
            if args.dataset in DIALOGUE_DATASETS:
                res = predict_dialogue_split(
                    args.url, model, args.data_root, args.dataset, args.split, args.timeout, progress
                )
            else:
                res = predict_feature_split(
                    args.url,
                    model,
                    args.data_root,
                    args.dataset,
                    args.split,
                    args.cache_dir,
                    args.timeout,
                    args.batch_size,
                    args.concurrency,
                    progress=progress,
                )
    except EmotionClientError as exc:
        print(f"error: {exc}\n(is the server running? start it with `avemo serve`)", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"model {model} at {args.url} (through Triton)")
        print(feature_summary(res))
    return 0

"""How trained models hold up on people they never saw: actor folds, fresh corpora, missing modalities.

``avemo compare --folds K --fresh-corpora N`` trains every fusion on each of the K actor folds and
then evaluates every trained model on

* its own fold's test actors ("test"), and
* every clip of N fresh corpora ("fresh": the generator run with other seeds, all identities new),

each with both modalities ("full") and, for models that use both, with one modality dropped through
the mask ("no_audio" / "no_video": that input zeroed and its mask entry 0). One record per
(fold, fusion, corpus, condition); ``summarise`` turns them into mean +- std per fusion, the
missing-modality rows (a bimodal model without video against the audio-only model of the same fold
on the same clips, and the other way round) and the fusion gain (fused minus the better unimodal
model, per fold and corpus). Without folds the one configured split counts as one fold.

Feature and conversation comparisons (``avemo compare --dataset mosei|iemocap|... --seeds N [--folds K]``):
``evaluate_feature_runs`` evaluates every multimodal run on its own test split with each modality dropped,
``summarise_runs`` gives each model's test metrics (its metrics.json) as mean +- std over its runs (seeds x
folds) and the missing-modality rows with their paired change, ``feature_markdown`` the tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from avemo.contract.geometry import WindowGeometry
from avemo.contract.progress import progress as progress_bar
from avemo.training.data.prepare import prepare_split
from avemo.training.evaluation.predict import KEEPS, evaluate_predictions, predict_conditions
from avemo.training.evaluation.sentiment_metrics import headline
from avemo.training.models.checkpoint import model_from_checkpoint
from avemo.training.models.config import CLIP_MODALITIES, UNIMODAL_FUSIONS
from avemo.training.train.config import TrainConfig

CONDITIONS = tuple(KEEPS)  # full, no_audio, no_video (a dropped modality: input zeroed, mask entry 0)
OTHER = {"no_audio": "video", "no_video": "audio"}  # condition -> the unimodal model it is measured against


def conditions_of(fusion: str) -> list[str]:
    """Conditions evaluated for a fusion: unimodal baselines only "full"."""
    return ["full"] if fusion in UNIMODAL_FUSIONS else list(CONDITIONS)


def mean_std(values) -> dict:
    """{"mean", "std" (population, 0 for one value), "n"} of finite values; NaN mean when there are none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def evaluate_runs(
    runs: dict[tuple[int, str], dict],
    corpora: list[tuple[str, str | Path, str, int]],
    cache_dir: str | Path,
    progress: bool = True,
    log=print,
) -> list[dict]:
    """Evaluate trained runs on corpora -> records.

    ``runs``: (fold, fusion) -> {"checkpoint": path, "data": TrainConfig.data_options() of the run}.
    ``corpora``: (name, data root, split, fold or -1) tuples; "test" corpora are evaluated only with
    the runs of their fold (split "test" of that fold's data options), fresh ones (split "all") with
    every run. Each corpus is decoded once and shared by the runs that read it.
    """
    records = []
    models = {key: model_from_checkpoint(Path(r["checkpoint"])) for key, r in runs.items()}
    for name, root, split, only_fold in corpora:
        keys = [k for k in runs if only_fold in (-1, k[0])]
        if not keys:
            continue
        _, ckpt0 = models[keys[0]]
        data = dict(runs[keys[0]]["data"], num_classes=len(ckpt0["labels"]))  # the runs' split and face crop
        geometry = WindowGeometry.from_dict(ckpt0["geometry"])
        ds, info = prepare_split(root, cache_dir, geometry, split, progress=progress, **data)
        log(f"[generalisation] {name}: {info['clips']} clips of actors {info['actors']}")
        for fold, fusion in progress_bar(keys, desc=f"evaluate {name}", unit="model", disable=not progress):
            model, ckpt = models[(fold, fusion)]
            conds = conditions_of(fusion)
            for cond, pred in predict_conditions(model, ds, conds).items():
                res = evaluate_predictions(pred, ckpt["labels"])
                records.append(
                    {
                        "fold": fold,
                        "fusion": fusion,
                        "corpus": name,
                        "kind": "test" if split != "all" else "fresh",
                        "condition": cond,
                        "macro_f1": res["clip"]["macro_f1"],
                        "accuracy": res["clip"]["accuracy"],
                        "clips": res["clip"]["n"],
                        "modality_weights": res["mean_modality_weights"],
                    }
                )
    return records


def _index(records: list[dict]) -> dict[tuple, dict]:
    return {(r["fold"], r["fusion"], r["corpus"], r["condition"]): r for r in records}


def summarise(records: list[dict], fusions: list[str]) -> dict:
    """Mean +- std per fusion and kind ("test" over folds, "fresh" over folds x corpora), the
    missing-modality rows and the fusion gain; every difference is paired (same fold, same clips)."""
    idx = _index(records)
    kinds = [k for k in ("test", "fresh") if any(r["kind"] == k for r in records)]
    out: dict = {"fusions": {}, "missing_modality": [], "fusion_gain": {}}
    for fusion in fusions:
        per_kind = {}
        for kind in kinds:
            rs = [r for r in records if r["fusion"] == fusion and r["kind"] == kind and r["condition"] == "full"]
            per_kind[kind] = {m: mean_std(r[m] for r in rs) for m in ("macro_f1", "accuracy")}
        if "test" in per_kind and "fresh" in per_kind:
            per_kind["fresh_minus_test"] = per_kind["fresh"]["macro_f1"]["mean"] - per_kind["test"]["macro_f1"]["mean"]
        out["fusions"][fusion] = per_kind
    for fusion in (f for f in fusions if f not in UNIMODAL_FUSIONS):
        for cond, other in OTHER.items():
            row: dict[str, object] = {"fusion": fusion, "condition": cond, "against": other}
            for kind in kinds:
                mine = [r for r in records if (r["fusion"], r["kind"], r["condition"]) == (fusion, kind, cond)]
                diffs = [
                    r["macro_f1"] - idx[(r["fold"], other, r["corpus"], "full")]["macro_f1"]
                    for r in mine
                    if (r["fold"], other, r["corpus"], "full") in idx
                ]
                row[kind] = {"macro_f1": mean_std(r["macro_f1"] for r in mine), "minus_unimodal": mean_std(diffs)}
            out["missing_modality"].append(row)
        if all(u in fusions for u in CLIP_MODALITIES):  # the clip comparison's audio-only and video-only models
            gain = {}
            for kind in kinds:
                diffs = []
                for r in records:
                    if (r["fusion"], r["kind"], r["condition"]) != (fusion, kind, "full"):
                        continue
                    uni = [idx.get((r["fold"], u, r["corpus"], "full")) for u in CLIP_MODALITIES]
                    found = [u for u in uni if u]
                    if len(found) == len(uni):
                        diffs.append(r["macro_f1"] - max(u["macro_f1"] for u in found))
                gain[kind] = mean_std(diffs)
            out["fusion_gain"][fusion] = gain
    return out


def _pm(s: dict | None, signed: bool = False) -> str:
    if not s or s.get("n", 0) == 0 or not math.isfinite(s["mean"]):
        return "n/a"
    spec = "+.3f" if signed else ".3f"
    return f"{format(s['mean'], spec)} ± {s['std']:.3f}"


def markdown(summary: dict, folds: int, n_fresh: int) -> str:
    """Three tables: per fusion, missing modality, fusion gain (mean ± std)."""
    has_fresh = n_fresh > 0
    over_test = f"{folds} actor folds" if folds else "the configured split"
    over_fresh = f"{max(folds, 1)} model(s) x {n_fresh} fresh corpora"
    head = ["fusion", f"test macro-F1 ({over_test})", "test accuracy"]
    if has_fresh:
        head += [f"fresh macro-F1 ({over_fresh})", "fresh accuracy", "fresh - test"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fusion, s in summary["fusions"].items():
        cells = [fusion, _pm(s.get("test", {}).get("macro_f1")), _pm(s.get("test", {}).get("accuracy"))]
        if has_fresh:
            gap = s.get("fresh_minus_test")
            cells += [
                _pm(s["fresh"]["macro_f1"]),
                _pm(s["fresh"]["accuracy"]),
                f"{gap:+.3f}" if gap is not None and math.isfinite(gap) else "n/a",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    kinds = ["test"] + (["fresh"] if has_fresh else [])
    if summary["missing_modality"]:
        head = ["model, modality dropped (mask 0)"]
        for k in kinds:
            head += [f"{k} macro-F1", f"{k}: minus the other modality's own model"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in summary["missing_modality"]:
            cells = [f"{row['fusion']}, {row['condition'][3:]} dropped (vs {row['against']}-only)"]
            for k in kinds:
                cells += [_pm(row[k]["macro_f1"]), _pm(row[k]["minus_unimodal"], signed=True)]
            lines.append("| " + " | ".join(cells) + " |")
    if summary["fusion_gain"]:
        head = ["fusion"] + [f"{k}: minus the better unimodal model" for k in kinds]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for fusion, gain in summary["fusion_gain"].items():
            lines.append("| " + " | ".join([fusion] + [_pm(gain.get(k), signed=True) for k in kinds]) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path, title: str) -> None:
    """Bar chart: macro-F1 mean ± std per fusion, test folds beside fresh corpora, and each bimodal model
    with a modality dropped beside the other modality's own model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("test", "fresh") if any(k in s for s in summary["fusions"].values())]
    bars = [(f, s) for f, s in summary["fusions"].items()]
    bars += [
        (f"{r['fusion']} no {r['condition'][3:]}", {k: {"macro_f1": r[k]["macro_f1"]} for k in kinds})
        for r in summary["missing_modality"]
    ]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(bars), 3.6))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        means = [s.get(kind, {}).get("macro_f1", {}).get("mean", np.nan) for _, s in bars]
        stds = [s.get(kind, {}).get("macro_f1", {}).get("std", 0.0) for _, s in bars]
        x = np.arange(len(bars)) + (i - (len(kinds) - 1) / 2) * width
        ax.bar(x, means, width, yerr=stds, capsize=3, label={"test": "test actors", "fresh": "fresh corpora"}[kind])
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("clip macro-F1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- feature and conversation comparisons
# MMSA's metric keys -> the names papers print (mosi / mosei: Acc-2 of the non-zero examples, Acc-7; sims: Acc-2/5)
REGRESSION_LABELS = {
    "Corr": "Corr",
    "MAE": "MAE",
    "Non0_acc_2": "Acc-2 (non-zero)",
    "Mult_acc_7": "Acc-7",
    "Mult_acc_2": "Acc-2",
    "Mult_acc_5": "Acc-5",
}
CLASSIFICATION_COLUMNS = (("weighted_f1", "weighted F1"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1"))


def metric_columns(dataset: str, task: str) -> list[tuple[str, str]]:
    """(metric key, column label) of a comparison's tables, the first one the headline: regression MMSA's
    Corr, MAE, Acc-2, Acc-7 (sims: Acc-2, Acc-5); classification weighted F1, accuracy, macro-F1."""
    if task == "regression":
        return [(k, REGRESSION_LABELS.get(k, k)) for k in headline(dataset)]
    return list(CLASSIFICATION_COLUMNS)


def figures(result: dict) -> dict[str, float]:
    """The scalar metrics of a metrics.json "test" entry or an ``evaluate_predictions`` result: MMSA's regression
    metrics, or the clip / utterance classification metrics."""
    found = result.get("regression") or result.get("clip") or {}
    return {k: float(v) for k, v in found.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def dropped_conditions(modalities) -> list[str]:
    """The missing-modality conditions of a model: "no_<m>" per modality when it reads two or more."""
    return [f"no_{m}" for m in modalities] if len(modalities) >= 2 else []


def evaluate_feature_runs(runs: dict[tuple[int, int, str], TrainConfig], log=print) -> list[dict]:
    """Evaluate every multimodal run on its own test split, with every modality and with each one dropped.

    ``runs``: (fold, seed, fusion) -> the run's TrainConfig (its best.pt in ``out_dir``). The test split is
    the one its training read (``avemo.training.train.loop.prepare_run``: the fold's, for conversations),
    built once per fold and modalities. One record per (fold, seed, fusion, condition) with its "metrics"
    (``figures``), the examples / utterances "n" and the mean modality weights.
    """
    from avemo.contract.geometry import DEFAULT_GEOMETRY
    from avemo.training.train.loop import prepare_run

    records: list[dict] = []
    tests: dict[tuple, object] = {}
    todo = [(k, cfg) for k, cfg in runs.items() if k[2] not in UNIMODAL_FUSIONS]
    if todo:
        log(f"[compare] evaluating {len(todo)} multimodal run(s) with each modality dropped")
    for (fold, seed, fusion), cfg in todo:
        model, ckpt = model_from_checkpoint(Path(cfg.out_dir) / "best.pt")
        conditions = dropped_conditions(model.modalities)
        if not conditions:
            continue
        key = (fold, cfg.modalities)
        if key not in tests:
            datasets, *_ = prepare_run(cfg, DEFAULT_GEOMETRY, progress=False)
            tests[key] = datasets["test"]
        for cond, pred in predict_conditions(model, tests[key], ["full", *conditions]).items():
            res = evaluate_predictions(pred, list(ckpt["labels"]), cfg.dataset)
            records.append(
                {
                    "fold": fold,
                    "seed": seed,
                    "fusion": fusion,
                    "condition": cond,
                    "metrics": figures(res),
                    "n": int(len(np.unique(pred["clip"]))),
                    "modality_weights": res["mean_modality_weights"],
                }
            )
    return records


def summarise_runs(rows: list[dict], records: list[dict], fusions: list[str], columns: list[tuple[str, str]]) -> dict:
    """Mean +- std of each model's test metrics over its runs (``rows``: "fusion", "modalities", "test") and the
    missing-modality rows of ``records`` (``evaluate_feature_runs``): each metric with the modality dropped and
    its change from every modality, paired by (fold, seed)."""
    keys = [k for k, _ in columns]
    out: dict = {"metrics": keys, "labels": dict(columns), "primary": keys[0], "fusions": {}, "missing_modality": []}
    for fusion in fusions:
        mine = [r for r in rows if r["fusion"] == fusion]
        out["fusions"][fusion] = {
            "modalities": mine[0]["modalities"] if mine else "",
            "runs": len(mine),
            **{k: mean_std(r["test"].get(k) for r in mine) for k in keys},
        }
    full = {(r["fold"], r["seed"], r["fusion"]): r["metrics"] for r in records if r["condition"] == "full"}
    for fusion in fusions:
        dropped = [r for r in records if r["fusion"] == fusion and r["condition"] != "full"]
        for cond in dict.fromkeys(r["condition"] for r in dropped):
            rs = [r for r in dropped if r["condition"] == cond]
            change = {}
            for k in keys:
                pairs = [(r["metrics"].get(k), full.get((r["fold"], r["seed"], fusion), {}).get(k)) for r in rs]
                change[k] = mean_std(a - b for a, b in pairs if a is not None and b is not None)
            out["missing_modality"].append(
                {
                    "fusion": fusion,
                    "condition": cond,
                    "dropped": cond.removeprefix("no_"),
                    "metrics": {k: mean_std(r["metrics"].get(k) for r in rs) for k in keys},
                    "change": change,
                }
            )
    return out


def feature_markdown(summary: dict) -> str:
    """Two tables: each model's test metrics, and each multimodal model with a modality dropped (mean ± std)."""
    keys, labels, primary = summary["metrics"], summary["labels"], summary["primary"]
    head = ["model", "modalities", *[f"test {labels[k]}" for k in keys], "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fusion, s in summary["fusions"].items():
        cells = [fusion, s["modalities"] or "n/a", *[_pm(s[k]) for k in keys], str(s["runs"])]
        lines.append("| " + " | ".join(cells) + " |")
    if summary["missing_modality"]:
        head = ["model, modality dropped (mask 0)", *[labels[k] for k in keys]]
        head.append(f"Δ {labels[primary]} (dropped - every modality)")
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in summary["missing_modality"]:
            cells = [f"{row['fusion']}, {row['dropped']} dropped", *[_pm(row["metrics"][k]) for k in keys]]
            cells.append(_pm(row["change"][primary], signed=True))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

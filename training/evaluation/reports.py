"""Per-class report and error-case table for a split (written by ``train`` for the test split).

- ``per_class_report``: clip-level precision, recall, F1 and support per class, from the confusion
  matrix (rows = true class, columns = predicted class);
- ``error_cases``: clips where the audio-only and the video-only auxiliary heads of a fusion model
  disagree (clip label = argmax of the mean of each head's window probabilities), with the fused
  label and which head was right (audio, video or neither). Unimodal models have no auxiliary
  heads: ``error_cases`` returns None and the files hold a one-line note;
- ``write_reports``: per_class_report.md, error_cases.md, error_cases.json, per_class_f1.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from avemo.training.evaluation.metrics import per_class_scores
from avemo.training.evaluation.predict import clip_means, evaluate_predictions


def per_class_report(cm, labels: list[str]) -> dict:
    """{label: {precision, recall, f1, support, predicted}} from a [C, C] confusion matrix
    (support = clips of that true class, predicted = clips given that label)."""
    cm = np.asarray(cm)
    precision, recall, f1 = per_class_scores(cm)
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(cm[i].sum()),
            "predicted": int(cm[:, i].sum()),
        }
        for i, label in enumerate(labels)
    }


def per_class_markdown(report: dict, title: str = "Per-class report", metrics: dict | None = None) -> str:
    """Markdown table of ``per_class_report`` (+ macro averages over the classes that are present in
    the labels or the predictions, as ``classification_metrics``' macro-F1)."""
    lines = [f"# {title}", "", "Clip level (label = argmax of the mean of window probabilities).", ""]
    if metrics:
        lines += [
            f"{metrics.get('n', 0)} clips, accuracy {metrics.get('accuracy', float('nan')):.3f}, "
            f"macro-F1 {metrics.get('macro_f1', float('nan')):.3f}",
            "",
        ]
    lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, r in report.items():
        lines.append(f"| {label} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    present = [r for r in report.values() if r["support"] > 0 or r.get("predicted", 0) > 0]
    if present:
        mean = {k: float(np.mean([r[k] for r in present])) for k in ("precision", "recall", "f1")}
        lines.append(
            f"| **macro avg** | {mean['precision']:.3f} | {mean['recall']:.3f} | {mean['f1']:.3f} | "
            f"{sum(r['support'] for r in present)} |"
        )
    return "\n".join(lines) + "\n"


def error_cases(pred: dict[str, np.ndarray], labels: list[str], sources: list[str] | None = None) -> list[dict] | None:
    """Clips where the audio and video heads disagree, or None without auxiliary heads.

    ``pred``: window-level dict as ``predict`` returns it (probs, audio_probs, video_probs, clip, label);
    ``sources``: file path of each clip id (``dataset.clips[i].source``); the id is used without it.
    Each case: clip, clip_file, true/audio/video/fused label, which was right, clip-level confidences.
    """
    if "audio_probs" not in pred or "video_probs" not in pred:
        return None
    clips, true, fused = clip_means(pred, "probs")
    audio, video = clip_means(pred, "audio_probs")[2], clip_means(pred, "video_probs")[2]
    cases = []
    for j, c in enumerate(clips):
        a, v, f, t = int(audio[j].argmax()), int(video[j].argmax()), int(fused[j].argmax()), int(true[j])
        if a == v:
            continue
        right = "audio" if a == t else "video" if v == t else "neither"
        cases.append(
            {
                "clip": int(c),
                "clip_file": sources[int(c)] if sources is not None else str(int(c)),
                "true": labels[t],
                "audio": labels[a],
                "video": labels[v],
                "fused": labels[f],
                "right": right,
                "fused_correct": f == t,
                "audio_conf": float(audio[j, a]),
                "video_conf": float(video[j, v]),
                "fused_conf": float(fused[j, f]),
            }
        )
    return cases


NO_AUX_NOTE = "No error-case table: this model has no audio/video auxiliary heads (unimodal baseline)."


def error_summary(cases: list[dict] | None, n_clips: int) -> dict:
    if cases is None:
        return {"available": False, "note": NO_AUX_NOTE, "n_clips": n_clips}
    count = {k: sum(c["right"] == k for c in cases) for k in ("audio", "video", "neither")}
    return {
        "available": True,
        "n_clips": n_clips,
        "n_disagree": len(cases),
        "right": count,
        "fused_correct": sum(c["fused_correct"] for c in cases),
    }


def error_cases_markdown(cases: list[dict] | None, n_clips: int, title: str = "Error cases") -> str:
    if cases is None:
        return NO_AUX_NOTE + "\n"
    s = error_summary(cases, n_clips)
    lines = [
        f"# {title}",
        "",
        f"Clips where the audio-only and video-only heads disagree: {len(cases)} of {n_clips} "
        f"(right: audio {s['right']['audio']}, video {s['right']['video']}, neither {s['right']['neither']}; "
        f"fused label correct in {s['fused_correct']}).",
        "",
        "| clip file | true | audio head | video head | fused | right |",
        "|---|---|---|---|---|---|",
    ]
    for c in cases:
        name = Path(c["clip_file"]).name
        lines.append(
            f"| {name} | {c['true']} | {c['audio']} ({c['audio_conf']:.2f}) | {c['video']} "
            f"({c['video_conf']:.2f}) | {c['fused']} ({c['fused_conf']:.2f}) | {c['right']} |"
        )
    return "\n".join(lines) + "\n"


def plot_per_class_f1(report: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    f1 = [report[n]["f1"] for n in names]
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(names), 3.5))
    ax.bar(range(len(names)), f1, color="tab:blue")
    for i, v in enumerate(f1):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("F1")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(
    pred: dict[str, np.ndarray],
    labels: list[str],
    out_dir: Path,
    sources: list[str] | None = None,
    metrics: dict | None = None,
    title: str = "test",
) -> dict:
    """Write per_class_report.md, error_cases.md, error_cases.json and per_class_f1.png into ``out_dir``.

    Returns {"per_class": ..., "error_cases": summary} (for metrics.json).
    """
    out_dir = Path(out_dir)
    metrics = metrics or evaluate_predictions(pred, labels)["clip"]
    report = per_class_report(metrics["confusion_matrix"], labels)
    (out_dir / "per_class_report.md").write_text(per_class_markdown(report, f"Per-class report: {title}", metrics))
    n_clips = int(len(np.unique(pred["clip"])))
    cases = error_cases(pred, labels, sources)
    summary = error_summary(cases, n_clips)
    (out_dir / "error_cases.md").write_text(error_cases_markdown(cases, n_clips, f"Error cases: {title}"))
    (out_dir / "error_cases.json").write_text(json.dumps({**summary, "cases": cases or []}, indent=2))
    try:
        plot_per_class_f1(report, out_dir / "per_class_f1.png", f"{title}: per-class F1")
    except Exception as e:  # a plot must never fail a run
        print(f"per-class F1 plot skipped: {e}")
    return {"per_class": report, "error_cases": summary}

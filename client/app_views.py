"""What the Gradio app shows, as plain data: status lines, summaries, tables and matplotlib figures.

No gradio import here (``avemo.client.app`` builds the page from these), so everything can be unit-tested
and the module imports on a client-only install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from avemo.client.grpc_client import EmotionClient, EmotionClientError, ServedModel

SERVER_HINT = "start it with `avemo serve` (or point the app at it with `avemo app --url HOST:PORT`)"
TABLE_HEADERS = ["start (s)", "end (s)", "label", "p", "audio w", "video w", "latency (ms)"]


def server_status(client: EmotionClient) -> tuple[ServedModel | None, str]:
    """(served model or None, one Markdown line): which model and version the app talks to, or why not."""
    try:
        if not client.is_ready():
            raise EmotionClientError(f"no ready model '{client.model_name}' at {client.url}")
        served = client.model(refresh=True)
    except EmotionClientError as exc:
        return None, (
            f"**Triton server down** (or model not ready): {exc}. The app keeps running: {SERVER_HINT}; "
            "this line re-checks every few seconds."
        )
    g = served.geometry
    return served, (
        f"**Connected**: model **{served.name}** version **{served.version}** at `{client.url}`: "
        f"{len(served.labels)} classes ({', '.join(served.labels)}), windows {g.window_seconds:g} s / hop "
        f"{g.hop_seconds:g} s, {g.sample_rate} Hz audio, {g.video_fps} fps {g.face_size}px faces"
    )


def mean_weights(timeline: list[dict]) -> dict[str, float]:
    answered = [w for w in timeline if w.get("modality_weights")]
    if not answered:
        return {"audio": 0.0, "video": 0.0}
    return {k: float(np.mean([w["modality_weights"][k] for w in answered])) for k in ("audio", "video")}


def summary_markdown(pred: dict, name: str) -> str:
    """The clip's label, probabilities, modality weights and latency, as Markdown."""
    lat, mw = pred["latency_ms"], mean_weights(pred["timeline"])
    mods = pred.get("modalities") or {}
    present = "+".join(k for k, v in mods.items() if v) or "?"
    model = pred.get("model") or {}
    top = sorted(pred["probs"].items(), key=lambda kv: -kv[1])
    lines = [
        f"### {name}: **{pred['label']}** ({pred['probs'][pred['label']]:.2f})",
        "probabilities: " + ", ".join(f"{k} {v:.2f}" for k, v in top),
        f"modality weights (mean over windows): audio **{mw['audio']:.2f}**, video **{mw['video']:.2f}**"
        f" · modalities in the file: {present}",
        f"{pred.get('windows', len(pred['timeline']))} windows over {pred.get('duration') or 0:.2f} s"
        f" · face crop: {pred.get('crop_method') or 'none'}"
        f" · window round trip p50 **{lat['p50']:.1f} ms**, p95 {lat['p95']:.1f} ms"
        + (f" · model {model.get('name')} v{model.get('version')}" if model else ""),
    ]
    return "\n\n".join(lines)


def timeline_rows(timeline: list[dict]) -> list[list]:
    """One row per window for the table (TABLE_HEADERS)."""
    rows = []
    for w in timeline:
        if w.get("error"):  # a window the server refused
            rows.append([round(w["start"], 2), round(w["end"], 2), f"error: {w['error']}", None, None, None, None])
            continue
        mw = w["modality_weights"]
        rows.append(
            [
                round(w["start"], 2),
                round(w["end"], 2),
                w["label"],
                round(w["prob"], 3),
                round(mw["audio"], 3),
                round(mw["video"], 3),
                round(w.get("latency_ms") or 0.0, 1),
            ]
        )
    return rows


def timeline_figure(timeline: list[dict], labels: list[str], title: str = "", highlight: str | None = None) -> Figure:
    """Window probabilities (top) and modality weights (bottom) over time (window centres).

    A ``matplotlib.figure.Figure`` without pyplot: safe to build in the app's worker threads."""
    timeline = [w for w in timeline if w.get("probs") and w.get("modality_weights")]  # refused windows: no answer
    fig = Figure(figsize=(9, 4.2), dpi=90)
    ax, axw = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    mids = [(w["start"] + w["end"]) / 2 for w in timeline]
    for lab in labels:
        ys = [w["probs"].get(lab, 0.0) for w in timeline]
        ax.plot(mids, ys, marker="o", ms=3, label=lab, lw=2.6 if lab == highlight else 1.1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("p")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    for key, color in (("audio", "tab:blue"), ("video", "tab:orange")):
        axw.plot(mids, [w["modality_weights"][key] for w in timeline], color=color, marker=".", label=key)
    axw.set_ylim(0, 1)
    axw.set_ylabel("weight")
    axw.set_xlabel("time (s, window centre)")
    axw.grid(alpha=0.3)
    axw.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    return fig


def upload_error_text(name: str, exc: BaseException, url: str, path=None) -> str:
    """A readable message for a failed upload (the cases `avemo predict` reports), naming the file, not a temp path."""
    from avemo.contract.media import MediaError

    if isinstance(exc, MediaError):
        text = f"**Error: cannot read `{name}`**: {exc.reason or 'not a readable audio/video file'}"
    elif isinstance(exc, EmotionClientError):
        text = f"**Error: server error for `{name}`**: {exc} ({SERVER_HINT}; Triton at `{url}`)"
    elif isinstance(exc, FileNotFoundError | PermissionError | ValueError):
        text = f"**Error: cannot use `{name}`**: {exc}"
    else:
        text = f"**Error: failed on `{name}`**: {type(exc).__name__}: {exc}"
    for p in {str(path), str(Path(path).resolve())} if path else ():
        text = text.replace(p, name)  # decoders quote the upload's temporary path
    return text


def live_error_text(exc: BaseException, url: str) -> str:
    if isinstance(exc, EmotionClientError):
        return f"**Error: live stream: server error**: {exc} ({SERVER_HINT}; Triton at `{url}`)"
    return f"**Error: live stream**: {type(exc).__name__}: {exc}"


def sample_clips(folder, limit: int = 24) -> list[Path]:
    """Media files under ``folder`` (sorted, at most ``limit``; one per emotion code first when the names are
    RAVDESS-style), offered as examples."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
    by_emotion: dict[str, Path] = {}
    for p in files:
        parts = p.stem.split("-")
        if len(parts) == 7:
            by_emotion.setdefault(parts[2], p)
    first = [by_emotion[k] for k in sorted(by_emotion)]
    rest = [p for p in files if p not in set(first)]
    return (first + rest)[:limit]


MEDIA_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wav", ".mp3", ".m4a", ".ogg", ".flac", ".aac")

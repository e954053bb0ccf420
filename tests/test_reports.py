"""Robustness evaluation (dropped / noisy modality), per-class report, error-case table, `avemo compare`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from avemo.contract.geometry import DEFAULT_GEOMETRY
from avemo.training.data.perturb import PerturbedDataset, add_noise_snr, snr_db
from avemo.training.evaluation.reports import (
    error_cases,
    error_cases_markdown,
    per_class_markdown,
    per_class_report,
    write_reports,
)
from avemo.training.models.config import ModelConfig

G = DEFAULT_GEOMETRY


class FakeWindows(torch.utils.data.Dataset):
    """WindowDataset-like items: a sine per window (different pitch per clip) and random frames."""

    def __init__(self, n_clips: int = 2, windows_per_clip: int = 2, seed: int = 0):
        rng = np.random.default_rng(seed)
        t = np.arange(G.window_samples) / G.sample_rate
        self.items = []
        for c in range(n_clips):
            for w in range(windows_per_clip):
                audio = (0.3 * np.sin(2 * np.pi * (200 + 150 * c + 20 * w) * t)).astype(np.float32)
                frames = rng.integers(0, 256, (G.frames_per_window, G.face_size, G.face_size, 3), dtype=np.uint8)
                self.items.append(
                    {
                        "audio": torch.from_numpy(audio),
                        "frames": torch.from_numpy(frames),
                        "mask": torch.ones(2),
                        "label": c % 2,
                        "clip": c,
                        "start": float(w),
                    }
                )
        self.labels = [c % 2 for c in range(n_clips)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        return self.items[k]


class Recorder(nn.Module):
    """Records what predict() feeds the model; logits depend on the audio. Declares the clip model's
    modalities and input names, as every ``FusionModel`` does."""

    modalities = ("audio", "video")
    input_names = ("audio", "frames")

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, audio, frames, mask):
        self.seen.append((audio.clone(), frames.clone(), mask.clone()))
        a = audio.abs().mean(1, keepdim=True)
        return {"logits": torch.cat([a, -a], 1), "modality_weights": mask / mask.sum(1, keepdim=True).clamp(min=1)}


# ---------------------------------------------------------------- robustness
@pytest.mark.parametrize("target", [0.0, 10.0, 20.0])
def test_noise_has_requested_snr(target):
    t = np.arange(10 * 16000) / 16000
    clean = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noisy = add_noise_snr(clean, target, np.random.default_rng(1))
    assert abs(snr_db(clean, noisy) - target) < 0.5
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    # power from the signal itself: scaling the signal scales the noise
    louder = add_noise_snr(4 * clean, target, np.random.default_rng(1))
    np.testing.assert_allclose(louder - 4 * clean, 4 * (noisy - clean), rtol=1e-4, atol=1e-6)


def test_noise_per_window_and_deterministic():
    ds = FakeWindows()
    a = PerturbedDataset(ds, noise_snr_db=5.0, seed=3)
    b = PerturbedDataset(ds, noise_snr_db=5.0, seed=3)
    c = PerturbedDataset(ds, noise_snr_db=5.0, seed=4)
    for k in range(len(ds)):
        clean = ds[k]["audio"].numpy()
        assert abs(snr_db(clean, a[k]["audio"].numpy()) - 5.0) < 0.5  # each window at its own SNR
        torch.testing.assert_close(a[k]["audio"], b[k]["audio"])
        assert not torch.equal(a[k]["audio"], c[k]["audio"])
        torch.testing.assert_close(a[k]["mask"], torch.ones(2))
        assert torch.equal(a[k]["frames"], ds[k]["frames"])
    silent = PerturbedDataset(
        [
            {
                "audio": torch.zeros(100),
                "frames": torch.zeros(1, 2, 2, 3, dtype=torch.uint8),
                "mask": torch.tensor([0.0, 1.0]),
                "label": 0,
                "clip": 0,
            }
        ],
        noise_snr_db=0.0,
    )
    assert torch.count_nonzero(silent[0]["audio"]) == 0


def test_drop_reaches_the_model():
    from avemo.training.evaluation.predict import predict

    ds = FakeWindows()
    for drop, mask in (("audio", (0.0, 1.0)), ("video", (1.0, 0.0))):
        model = Recorder()
        predict(model, PerturbedDataset(ds, drop=drop), batch_size=3)
        audio, frames, masks = (torch.cat(x) for x in zip(*model.seen))
        assert audio.shape[0] == len(ds)
        torch.testing.assert_close(masks, torch.tensor([mask] * len(ds)))
        clean_audio = torch.stack([it["audio"] for it in ds.items])
        clean_frames = torch.stack([it["frames"] for it in ds.items])
        if drop == "audio":
            assert torch.count_nonzero(audio) == 0 and torch.equal(frames, clean_frames)
        else:
            assert torch.count_nonzero(frames) == 0 and torch.equal(audio, clean_audio)
    # the base dataset is untouched and attributes pass through
    assert torch.equal(ds[0]["mask"], torch.ones(2)) and PerturbedDataset(ds, drop="audio").labels == ds.labels
    with pytest.raises(ValueError):
        PerturbedDataset(ds, drop="text")


def test_audio_dependent_model_changes_under_drop_audio():
    from avemo.training.evaluation.predict import evaluate, evaluate_predictions, predict
    from avemo.training.evaluation.robustness import evaluate_condition
    from avemo.training.models.model import build_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(fusion="gated", audio_channels=(8, 16), video_channels=(8, 16), embed_dim=32), G
    ).eval()
    ds = FakeWindows()
    clean = predict(model, ds)
    dropped = predict(model, PerturbedDataset(ds, drop="audio"))
    assert np.abs(clean["probs"] - dropped["probs"]).max() > 1e-4
    np.testing.assert_allclose(dropped["modality_weights"][:, 0], 0.0, atol=1e-6)
    noisy = predict(model, PerturbedDataset(ds, noise_snr_db=0.0))
    assert np.abs(clean["probs"] - noisy["probs"]).max() > 1e-5
    # evaluate keeps working on the wrapper, and the one-pass metrics equal evaluate's
    labels = ["a", "b"] + [f"c{i}" for i in range(6)]
    assert evaluate(model, PerturbedDataset(ds, drop="audio"), labels) == evaluate_predictions(dropped, labels)
    res, _ = evaluate_condition(model, ds, labels, drop="audio")
    assert res["condition"]["drop"] == "audio" and res["clip"] == evaluate_predictions(dropped, labels)["clip"]


# ---------------------------------------------------------------- reports
LABELS = ["neutral", "happy", "sad", "angry"]


def onehot_probs(rows):
    """rows of (class, confidence) -> probability rows over 4 classes."""
    out = []
    for c, p in rows:
        r = np.full(4, (1 - p) / 3)
        r[c] = p
        out.append(r)
    return np.array(out)


def hand_made_pred():
    # 5 clips x 2 windows; the clip label is the argmax of the MEAN of the two windows
    clip = np.repeat(np.arange(5), 2)
    label = np.repeat([1, 0, 2, 3, 1], 2)
    audio = onehot_probs(
        [
            (1, 0.9),
            (1, 0.8),  # clip 0: audio happy
            (0, 0.9),
            (2, 0.4),  # clip 1: audio neutral (mean), one window says sad
            (1, 0.7),
            (1, 0.7),  # clip 2: audio happy
            (1, 0.6),
            (1, 0.6),  # clip 3: audio happy
            (1, 0.9),
            (3, 0.5),
        ]
    )  # clip 4: audio happy
    video = onehot_probs(
        [
            (1, 0.6),
            (1, 0.6),  # clip 0: video happy -> agrees, not an error case
            (3, 0.8),
            (3, 0.8),  # clip 1: video angry -> audio right
            (2, 0.9),
            (2, 0.8),  # clip 2: video sad -> video right
            (2, 0.5),
            (0, 0.9),  # clip 3: video neutral (mean) -> neither (true angry)
            (1, 0.3),
            (1, 0.9),
        ]
    )  # clip 4: video happy -> agrees
    fused = onehot_probs([(1, 0.9)] * 2 + [(0, 0.6)] * 2 + [(2, 0.7)] * 2 + [(3, 0.8)] * 2 + [(1, 0.9)] * 2)
    return {
        "probs": fused,
        "audio_probs": audio,
        "video_probs": video,
        "clip": clip,
        "label": label,
        "modality_weights": np.full((10, 2), 0.5),
    }


def test_error_cases_lists_disagreements_and_who_was_right(tmp_path):
    pred = hand_made_pred()
    sources = [f"/data/Actor_0{i}/clip{i}.mp4" for i in range(5)]
    cases = error_cases(pred, LABELS, sources)
    got = [(c["clip"], c["clip_file"], c["true"], c["audio"], c["video"], c["fused"], c["right"]) for c in cases]
    assert got == [
        (1, sources[1], "neutral", "neutral", "angry", "neutral", "audio"),
        (2, sources[2], "sad", "happy", "sad", "sad", "video"),
        (3, sources[3], "angry", "happy", "neutral", "angry", "neither"),
    ]
    md = error_cases_markdown(cases, 5)
    assert (
        "3 of 5" in md
        and "| clip1.mp4 | neutral | neutral" in md
        and len(re.findall(r"^\| clip\d\.mp4 \|", md, re.M)) == 3
    )

    summary = write_reports(pred, LABELS, tmp_path, sources, title="hand-made")
    saved = json.loads((tmp_path / "error_cases.json").read_text())
    assert saved["n_disagree"] == 3 and saved["right"] == {"audio": 1, "video": 1, "neither": 1}
    assert [c["clip_file"] for c in saved["cases"]] == sources[1:4]
    assert summary["per_class"]["angry"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1, "predicted": 1}
    assert (tmp_path / "per_class_report.md").exists() and (tmp_path / "per_class_f1.png").stat().st_size > 0

    # a unimodal model has no auxiliary heads: a one-line note, no table
    uni = {k: v for k, v in pred.items() if k not in ("audio_probs", "video_probs")}
    assert error_cases(uni, LABELS, sources) is None
    out = tmp_path / "uni"
    out.mkdir()
    write_reports(uni, LABELS, out, sources)
    assert len((out / "error_cases.md").read_text().strip().splitlines()) == 1
    assert json.loads((out / "error_cases.json").read_text())["available"] is False


def test_per_class_report_by_hand():
    from avemo.training.evaluation.metrics import classification_metrics, confusion_matrix, per_class_scores

    y_true = [0, 0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 3]
    cm = confusion_matrix(y_true, y_pred, 4)
    r = per_class_report(cm, LABELS)
    # neutral: tp 2, predicted 2, actual 3; happy: tp 1, predicted 2, actual 2; sad: tp 1, predicted 2,
    # actual 2; angry: predicted once, never true
    expected = {
        "neutral": (1.0, 2 / 3, 0.8, 3),
        "happy": (0.5, 0.5, 0.5, 2),
        "sad": (0.5, 0.5, 0.5, 2),
        "angry": (0.0, 0.0, 0.0, 0),
    }
    for label, (p, rec, f1, n) in expected.items():
        assert r[label]["precision"] == pytest.approx(p) and r[label]["recall"] == pytest.approx(rec)
        assert r[label]["f1"] == pytest.approx(f1) and r[label]["support"] == n
    np.testing.assert_allclose([r[lab]["f1"] for lab in LABELS], per_class_scores(cm)[2])
    md = per_class_markdown(r)
    assert "| neutral | 1.000 | 0.667 | 0.800 | 3 |" in md
    assert r["angry"]["predicted"] == 1 and r["happy"]["predicted"] == 2
    # macro avg over the 4 classes present in labels or predictions, as classification_metrics' macro-F1
    assert "| **macro avg** | 0.500 | 0.417 | 0.450 | 7 |" in md
    assert classification_metrics(y_true, y_pred, LABELS)["macro_f1"] == pytest.approx(0.45)
    # classes neither true nor predicted are listed but left out of the average
    perfect = per_class_markdown(per_class_report(confusion_matrix([0, 1], [0, 1], 4), LABELS))
    assert (
        "| angry | 0.000 | 0.000 | 0.000 | 0 |" in perfect
        and "| **macro avg** | 1.000 | 1.000 | 1.000 | 2 |" in perfect
    )


# ---------------------------------------------------------------- compare (+ train reports, evaluate CLI)
@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_corpus):
    from avemo.cli import main

    root = tmp_path_factory.mktemp("cmp")
    args = [
        "compare",
        "--fusions",
        "audio,gated",
        "--epochs",
        "1",
        "--data_root",
        str(tiny_corpus),
        "--cache_dir",
        str(root / "cache"),
        "--out",
        str(root / "compare"),
        "--batch_size",
        "8",
        "--tiny",
        "--no-tensorboard",
        "--no_progress",
    ]
    assert main(args) == 0
    return root, args


@pytest.mark.slow
def test_compare_table_and_reports(compared, capsys):
    from avemo.cli import main

    root, args = compared
    out = root / "compare"
    md = (out / "comparison.md").read_text()
    for fusion in ("audio", "gated"):
        m = re.search(rf"^\| {fusion} \| (\d\.\d{{3}}) \| (\d\.\d{{3}}) \| ([\d,]+) \| (\d+\.\d) \| 1 \|$", md, re.M)
        assert m, md
        assert 0 <= float(m.group(1)) <= 1 and int(m.group(3).replace(",", "")) > 0
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["fusion"] for r in rows] == ["audio", "gated"] and not any(r["reused"] for r in rows)
    metrics = json.loads((out / "gated" / "metrics.json").read_text())
    assert metrics["config"]["model"]["embed_dim"] == 32 and metrics["config"]["seed"] == 0
    assert set(metrics["test"]["per_class"]) >= {"neutral", "angry"}
    assert metrics["test"]["error_cases"]["available"] is True
    assert json.loads((out / "audio" / "metrics.json").read_text())["split"] == metrics["split"]  # same split

    # train() wrote the reports; the unimodal run has a one-line note instead of the table
    for name in ("per_class_report.md", "error_cases.md", "error_cases.json"):
        assert (out / "gated" / name).exists() and (out / "audio" / name).exists()
    assert (
        "| clip file | true | audio head | video head | fused | right |"
        in (out / "gated" / "error_cases.md").read_text()
        or "0 of" in (out / "gated" / "error_cases.md").read_text()
    )
    assert len((out / "audio" / "error_cases.md").read_text().strip().splitlines()) == 1

    # a second run reuses the finished runs (same config) instead of training again
    capsys.readouterr()
    assert main(args + ["--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert all(r["reused"] for r in again["rows"])
    assert [r["test_macro_f1"] for r in again["rows"]] == [r["test_macro_f1"] for r in rows]

    # a run that left last.pt but no metrics.json (killed) is resumed, not restarted
    (out / "gated" / "metrics.json").unlink()
    assert main(args + ["--json"]) == 0
    captured = capsys.readouterr()
    assert "[gated] resuming interrupted run" in captured.err
    resumed = {r["fusion"]: r for r in json.loads(captured.out)["rows"]}
    assert resumed["gated"]["epochs_run"] == 1 and not resumed["gated"]["reused"] and resumed["audio"]["reused"]


@pytest.mark.slow
def test_evaluate_cli_drop_and_noise(compared, tiny_corpus, capsys):
    from avemo.cli import main

    root, _ = compared
    ckpt = root / "compare" / "gated" / "best.pt"
    common = [
        "evaluate",
        str(ckpt),
        "--data_root",
        str(tiny_corpus),
        "--cache_dir",
        str(root / "cache"),
        "--no_progress",
    ]
    capsys.readouterr()
    assert main(common + ["--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    metrics = json.loads((root / "compare" / "gated" / "metrics.json").read_text())
    assert clean["clip"] == {k: v for k, v in metrics["test"]["clip"].items()}
    assert main(common + ["--drop", "audio", "--json", "--report_dir", str(root / "dropped")]) == 0
    dropped = json.loads(capsys.readouterr().out)
    assert dropped["condition"]["drop"] == "audio" and dropped["mean_modality_weights"][0] == pytest.approx(0, abs=1e-6)
    assert (root / "dropped" / "per_class_report.md").exists()
    assert main(common + ["--noise", "10", "--seed", "0"]) == 0
    text = capsys.readouterr().out
    assert "audio noise at 10 dB SNR" in text and "precision" in text

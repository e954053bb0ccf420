"""The feature path end to end through the CLI, on a tiny generated MOSEI-layout file: train (regression and
classification), evaluate with a modality dropped, and a hostile file refused with one line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

from avemo.cli import main


def _train(tmp_path, mosei_file, *flags):
    out = tmp_path / "run"
    argv = ["train", "--data_root", str(mosei_file), "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(out)]
    assert main([*argv, "--epochs", "2", "--tiny", "--no_progress", "--json", *flags]) == 0
    return out


def test_regression_on_three_modalities_writes_mmsa_metrics(tmp_path, mosei_file, capsys):
    out = _train(tmp_path, mosei_file, "--dataset", "mosei", "--fusion", "gated_uncertainty")
    capsys.readouterr()
    res = json.loads((out / "metrics.json").read_text())
    assert res["config"]["model"]["modalities"] == ["text", "audio", "video"]
    assert res["config"]["model"]["input_dims"] == {"text": 768, "audio": 74, "video": 35}
    assert set(res["test"]["regression"]) >= {"Corr", "MAE", "Non0_acc_2", "Mult_acc_7", "MSE"}
    assert {p.name for p in out.iterdir()} >= {
        "best.pt",
        "last.pt",
        "metrics.json",
        "history.png",
        "prediction_test.png",
    }
    assert "val_corr" in res["history"][-1] and "val_weight_text" in res["history"][-1]
    assert (
        main(
            [
                "evaluate",
                str(out / "best.pt"),
                "--dataset",
                "mosei",
                "--data_root",
                str(mosei_file),
                "--cache_dir",
                str(tmp_path / "cache"),
                "--drop",
                "text",
                "--json",
                "--no_progress",
            ]
        )
        == 0
    )
    ev = json.loads(capsys.readouterr().out)
    assert ev["condition"]["drop"] == "text" and ev["mean_modality_weights"][0] == 0.0


def test_classification_with_the_attention_robust_preset(tmp_path, mosei_file, capsys):
    out = _train(tmp_path, mosei_file, "--preset", "attention_robust_v4", "--num_classes", "3")
    capsys.readouterr()
    res = json.loads((out / "metrics.json").read_text())
    assert len(res["labels"]) == 3
    assert res["config"]["model"]["fusion"] == "gated_uncertainty" and res["config"]["losses"]["focal_gamma"] == 2.0
    assert "contrastive" in {k.removeprefix("train_loss_") for k in res["history"][0]}
    assert "weighted_f1" in res["test"]["clip"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_code_running_pickle_is_refused_at_the_cli_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"train": _Payload(marker)}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "avemo.cli",
            "train",
            "--dataset",
            "mosei",
            "--data_root",
            str(bad),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--out_dir",
            str(tmp_path / "run"),
            "--no_progress",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "system" in proc.stderr and str(bad) in proc.stderr
    assert not marker.exists()

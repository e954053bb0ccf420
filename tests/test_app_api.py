"""The app for scripts, against the real Triton server: the public API as ``gradio_client`` sees it, the
``gradio_client`` example of docs/app_api.md run as written, and the upload tab's files, all compared with what
``avemo predict`` gives for the same clip (``--json``, ``--timeline-json``, ``--timeline-csv``, ``--annotate``)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import socket
import urllib.request
from pathlib import Path

import av
import pytest

from avemo.client import app
from avemo.client import cli as predict_cli

pytestmark = pytest.mark.slow

# what the page's own events were called on the API page before they were made private
INTERNAL = ("on_file", "on_frame", "on_audio", "on_tick", "on_reset", "on_reset_1", "status", "on_unload")
VARYING = ("latency_ms", "lag_ms")  # timings: differ from run to run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> Path:
    """A generated corpus clip (a face the tracker finds, and a voice) in its RAVDESS layout."""
    from avemo.training.synthetic.corpus import clip_name, render_clip, write_mp4

    path = tmp_path_factory.mktemp("api_clip") / "Actor_01" / clip_name(3, 2, 1, 1, 1)
    write_mp4(path, *render_clip(3, 2, 1, 1, 1, 0))
    return path


@pytest.fixture(scope="module")
def app_url(triton_server):
    """The app (no smoothing, as `avemo predict --smooth none`) on a free port, against the real Triton server."""
    pytest.importorskip("gradio", reason="the app needs gradio (pip install -e '.[app]')")
    args = argparse.Namespace(
        host="127.0.0.1",
        port=_free_port(),
        max_upload_mb=20,
        ssl_certfile=None,
        ssl_keyfile=None,
        samples=None,
        smooth="none",
        timeout=30.0,
        url=triton_server.url,
        model="emotion",
    )
    demo = app.build_app(args.url, args.model, None, args.smooth, args.timeout)
    app.launch(demo, args, block=False)
    yield f"http://127.0.0.1:{args.port}/"
    demo.close()
    demo.avemo_client.close()
    demo.avemo_outputs.cleanup()


@pytest.fixture(scope="module")
def cli_run(triton_server, face_clip, tmp_path_factory):
    """`avemo predict CLIP --json --timeline-json --timeline-csv --annotate` on the clip: (stdout JSON, out folder)."""
    out = tmp_path_factory.mktemp("predict_out")
    argv = [str(face_clip), "--url", triton_server.url, "--smooth", "none", "--json"]
    argv += ["--timeline-json", str(out / "t.json"), "--timeline-csv", str(out / "t.csv")]
    argv += ["--annotate", str(out / "annotated.mp4")]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert predict_cli.main(argv) == 0
    return json.loads(buf.getvalue()), out


def docs_example(repo_root: Path) -> str:
    """The python code block of docs/app_api.md's "Calling the app from a script" section."""
    text = (repo_root / "docs" / "app_api.md").read_text()
    section = text.split("## Calling the app from a script", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "docs/app_api.md: no python block under 'Calling the app from a script'"
    return found.group(1)


def _same_rows(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for key, value in g.items():
            if key in VARYING:
                continue
            assert value == pytest.approx(w[key], abs=1e-5), key


def test_api_lists_only_the_public_endpoints(app_url):
    from gradio_client import Client

    info = Client(app_url, verbose=False).view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == {f"/{name}" for name in app.API_NAMES} and not info["unnamed_endpoints"]
    assert not {f"/{name}" for name in INTERNAL} & set(info["named_endpoints"])
    predict = info["named_endpoints"]["/predict_clip"]
    assert [p["parameter_name"] for p in predict["parameters"]] == ["clip"]
    assert predict["parameters"][0]["python_type"]["type"] == "filepath"
    assert [r["label"] for r in predict["returns"]] == ["label", "probabilities", "timeline"]
    for name in app.API_NAMES:
        assert len(info["named_endpoints"][f"/{name}"]["description"]) > 60, name  # the docstring, on the API page
    # nothing undocumented either: the page's own events are private (not callable by gradio_client)
    with urllib.request.urlopen(f"{app_url}gradio_api/info?all_endpoints=true", timeout=30) as r:
        every = json.load(r)
    assert set(every["named_endpoints"]) == set(info["named_endpoints"]) and not every["unnamed_endpoints"]


def test_docs_example_gives_what_avemo_predict_gives(app_url, face_clip, cli_run, repo_root, serving_labels, capsys):
    code = docs_example(repo_root)
    assert 'Client("http://127.0.0.1:7860/")' in code and 'handle_file("clip.mp4")' in code
    code = code.replace("http://127.0.0.1:7860/", app_url).replace('"clip.mp4"', repr(str(face_clip)))
    scope: dict = {}
    exec(compile(code, "docs/app_api.md", "exec"), scope)  # the example, as a user would run it
    printed = capsys.readouterr().out
    label, probabilities, timeline = scope["label"], scope["probabilities"], scope["timeline"]

    (want,), _ = cli_run
    assert label == want["label"] and label in printed
    assert list(probabilities) == serving_labels == list(want["probs"])
    assert probabilities == pytest.approx(want["probs"], abs=1e-5)
    _same_rows(timeline, want["timeline"])
    assert [w["start"] for w in timeline][:5] == [0.0, 0.5, 1.0, 1.5, 2.0]  # 1 s windows, 0.5 s hop (the fixture's)
    assert timeline[-1]["end"] == pytest.approx(want["duration"], abs=1e-3)
    assert all(w["error"] is None for w in timeline)

    from gradio_client import Client

    info = Client(app_url, verbose=False).predict(api_name="/model_info")
    assert info["labels"] == serving_labels and info["window_seconds"] == 1.0 and info["video_fps"] == 8


def test_api_refuses_an_unreadable_clip(app_url, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"not an mp4\n" * 64)
    with pytest.raises(AppError, match="cannot read 'corrupt.mp4'"):
        Client(app_url, verbose=False).predict(clip=handle_file(str(bad)), api_name="/predict_clip")


def test_upload_tab_files_equal_avemo_predicts(triton_server, face_clip, cli_run, tmp_path, geo):
    """The upload tab's downloads and annotated clip, made as its handler makes them, against the CLI's files."""
    from avemo.client.app_upload import process_upload
    from avemo.client.grpc_client import EmotionClient
    from avemo.client.timeline_files import read_timeline_csv

    (want,), out = cli_run
    with EmotionClient(triton_server.url, "emotion") as client:
        done = process_upload(client, face_clip, face_clip.name, tmp_path, smoothing="none")
    assert done.video_note == "" and done.pred["crop_method"] in ("haar", "mixed")  # the tracker found the face
    assert done.json.name == f"{face_clip.stem}.timeline.json" and done.csv.name == f"{face_clip.stem}.timeline.csv"

    (page_json,) = json.loads(done.json.read_text())
    (cli_json,) = json.loads((out / "t.json").read_text())
    assert page_json["clip"] == face_clip.name and cli_json["clip"] == str(face_clip)  # no server temp paths
    assert cli_json["label"] == want["label"] == page_json["label"]
    _same_rows(page_json["timeline"], cli_json["timeline"])

    page_csv, cli_csv = read_timeline_csv(done.csv), read_timeline_csv(out / "t.csv")
    assert list(page_csv[0]) == list(cli_csv[0]) and len(page_csv) == len(cli_csv) == len(want["timeline"])
    for p, c in zip(page_csv, cli_csv):
        assert {k: v for k, v in p.items() if k not in ("clip", "latency_ms")} == {
            k: v for k, v in c.items() if k not in ("clip", "latency_ms")
        }

    with av.open(str(face_clip)) as src, av.open(str(done.video)) as page, av.open(str(out / "annotated.mp4")) as cli:
        frames = [sum(1 for _ in c.decode(video=0)) for c in (src, page, cli)]
        assert frames[0] == frames[1] == frames[2]
        assert page.streams.video[0].average_rate == src.streams.video[0].average_rate
        assert cli.streams.audio and cli.streams.video[0].codec_context.name == "h264"

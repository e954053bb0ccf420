"""`avemo app`: a Gradio page on the served model (upload tab + live webcam/microphone tab).

It talks to Triton only through ``avemo.client`` (gRPC), never imports torch, and reads no file but the
ones a user uploaded (Gradio's upload folder) and, with ``--samples DIR``, that folder's example clips.
It binds 127.0.0.1 by default; browsers grant the webcam and microphone only on localhost or HTTPS, so
serving beyond loopback needs ``--host 0.0.0.0 --ssl-certfile cert.pem --ssl-keyfile key.pem``.

    avemo serve &                        # Triton on 127.0.0.1:8001
    avemo app --samples data/corpus      # http://127.0.0.1:7860
"""

import argparse
import sys
from pathlib import Path
from typing import Any

from avemo.client.options import add_client_options
from avemo.client.smoothing import DEFAULT_SMOOTHING
from avemo.contract.endpoint import GRPC_URL, MODEL_NAME

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 200
STATUS_EVERY = 5.0  # seconds between server status checks in the header
WEBCAM_EVERY = 0.125  # seconds between webcam snapshots sent by the browser (8 fps, the usual model rate)
MIC_EVERY = 0.25  # seconds of microphone audio per chunk sent by the browser
LIVE_TIME_LIMIT = 600  # seconds one live stream may run before the browser has to restart it
LIVE_PLOT_EVERY = 1.0  # seconds between redraws of the live plot
LIVE_PLOT_WINDOWS = 40  # windows shown in the live plot

LIVE_SESSIONS_ATTR = "avemo_live_sessions"  # attribute of the built page holding its LiveSessions

# stable element ids (the browser test and custom CSS find the page's parts by these)
IDS = {
    "status": "server-status",
    "upload": "upload-file",
    "label": "upload-label",
    "summary": "upload-summary",
    "plot": "upload-plot",
    "table": "upload-table",
    "error": "upload-error",
    "video": "upload-video",
    "json": "upload-json",
    "csv": "upload-csv",
    "webcam": "live-webcam",
    "mic": "live-mic",
    "live_label": "live-label",
    "live_status": "live-status",
    "live_plot": "live-plot",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_options(parser, face_crop=False)
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address the page binds (default: %(default)s, this machine only); beyond loopback, browsers "
        "allow the webcam only over HTTPS: add --ssl-certfile/--ssl-keyfile",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="page port (default: %(default)s)")
    parser.add_argument(
        "--max-upload-mb",
        "--max_upload_mb",
        dest="max_upload_mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="largest accepted upload in MB (default: %(default)s)",
    )
    parser.add_argument("--ssl-certfile", "--ssl_certfile", dest="ssl_certfile", help="TLS certificate (PEM)")
    parser.add_argument("--ssl-keyfile", "--ssl_keyfile", dest="ssl_keyfile", help="TLS private key (PEM)")
    parser.add_argument(
        "--samples", metavar="DIR", help="folder of example clips offered on the upload tab (e.g. data/corpus)"
    )


def check_args(args: argparse.Namespace) -> None:
    """Refuse option combinations that cannot work (raises avemo.contract.options.UsageError)."""
    from avemo.contract.options import UsageError

    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise UsageError("--ssl-certfile and --ssl-keyfile go together")
    for opt in ("ssl_certfile", "ssl_keyfile"):
        value = getattr(args, opt)
        if value and not Path(value).is_file():
            raise UsageError(f"--{opt.replace('_', '-')} {value}: no such file")
    if args.samples and not Path(args.samples).is_dir():
        raise UsageError(f"--samples {args.samples}: not a folder")
    if args.max_upload_mb <= 0:
        raise UsageError("--max-upload-mb must be positive")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: not a TCP port")


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class UploadGuard:
    """Which paths the upload handler may open: Gradio's upload folder and the --samples folder, nothing else."""

    def __init__(self, *roots) -> None:
        self.roots = [Path(r).resolve() for r in roots if r]

    def check(self, path) -> Path:
        p = Path(path).resolve()
        if not any(p == r or r in p.parents for r in self.roots):
            raise PermissionError(f"{Path(path).name}: not an uploaded file")
        return p


API_NAMES = ("predict_clip", "model_info")  # the public API (gradio_client); every other event is private


def add_api(gr, client, guard: UploadGuard, smooth: str) -> None:
    """The public API endpoints, ``/predict_clip`` and ``/model_info`` (see docs/app_api.md), on components the
    page does not show. Call inside the gr.Blocks context."""
    from avemo.client import app_upload
    from avemo.client.app_views import upload_error_text
    from avemo.client.predict import predict_clip as predict

    def _fail(name: str, exc: Exception, path=None):
        return gr.Error(upload_error_text(name, exc, client.url, path).replace("**", "").replace("`", "'"))

    def predict_clip(clip: str) -> tuple[str, dict, list]:
        """Predict the emotion in one audio/video clip with the served model, window by window. The clip label is
        the argmax of the mean of the (smoothed) window probabilities.

        Parameters:
            clip: the clip file (MP4, WebM, WAV, ...), uploaded with gradio_client.handle_file("clip.mp4")
        Returns:
            label: the clip's label (str)
            probabilities: {label: probability} for the whole clip, over the served model's labels (dict)
            timeline: one dict per window, in time order: index, start and end (s), label and prob (the window's
            own top class), probs ({label: p}), smoothed_label and smoothed (the running label after the app's
            smoothing), modality_weights ({"audio": w, "video": w}), latency_ms, and error (None, or why the
            server refused that window, its other values then None)
        """
        name = Path(clip).name if clip else "clip"
        try:
            path = guard.check(clip)
            return app_upload.api_answer(predict(client, path, smoothing=smooth))
        except Exception as exc:  # noqa: BLE001 - the caller gets the reason, never a traceback
            raise _fail(name, exc, clip) from exc

    def model_info() -> dict:
        """The served model the app talks to: name, version, gRPC url, labels (in the order of every probability
        vector), and the window geometry (window_seconds, hop_seconds, sample_rate, video_fps, face_size).

        Returns:
            model: the model's description (dict)
        """
        try:
            return app_upload.model_info(client)
        except Exception as exc:  # noqa: BLE001
            raise _fail(client.model_name, exc) from exc

    with gr.Column(visible=False):  # inputs and outputs of the API only
        clip_in = gr.File(label="clip", type="filepath")
        label_out = gr.Textbox(label="label")
        probs_out = gr.JSON(label="probabilities")
        timeline_out = gr.JSON(label="timeline")
        model_out = gr.JSON(label="model")
        run_api = gr.Button("predict_clip")
        run_info = gr.Button("model_info")
    run_api.click(
        predict_clip,
        clip_in,
        [label_out, probs_out, timeline_out],
        api_name="predict_clip",
        concurrency_limit=4,
        show_progress="hidden",
    )
    run_info.click(model_info, None, model_out, api_name="model_info", queue=False, show_progress="hidden")


def build_app(
    url: str = GRPC_URL,
    model: str = MODEL_NAME,
    samples: str | None = None,
    smooth: str = DEFAULT_SMOOTHING,
    timeout: float = 30.0,
):
    """The gr.Blocks page (not launched)."""
    import gradio as gr

    from avemo.client import app_upload
    from avemo.client import app_views as views
    from avemo.client.app_live import MODALITY_CHOICES, LiveSessions
    from avemo.client.grpc_client import EmotionClient

    client = EmotionClient(url, model, timeout=timeout)
    status_client = EmotionClient(url, model, timeout=3.0)  # the header's checks must not wait 30 s
    sessions = LiveSessions(lambda: client, smooth=smooth)
    sample_files = views.sample_clips(samples) if samples else []
    outputs = app_upload.OutputFolders()  # the annotated clips and timeline files of the latest uploads
    hidden: dict[str, Any] = dict(api_visibility="private")  # the page's own events: no part of the API

    def status():
        return views.server_status(status_client)[1]

    # no `from __future__ import annotations` in this module: Gradio finds the gr.Request parameters
    # of these handlers by their (evaluated) annotations

    with gr.Blocks(title="avemo: emotion recognition on Triton") as demo:
        guard = UploadGuard(demo.GRADIO_CACHE, samples)
        gr.Markdown("## avemo: audio-video emotion recognition, served by Triton")
        status_md = gr.Markdown(status(), elem_id=IDS["status"])
        gr.Timer(STATUS_EVERY).tick(status, None, status_md, show_progress="hidden", queue=False, **hidden)

        with gr.Tab("Upload a clip"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="clip (MP4, WAV, ...)", elem_id=IDS["upload"], type="filepath")
                    if sample_files:
                        gr.Examples(
                            [[str(p)] for p in sample_files], inputs=[upload], label="samples", examples_per_page=8
                        )
                    label = gr.Label(label="clip label", num_top_classes=8, elem_id=IDS["label"])
                    with gr.Row():
                        json_file = gr.DownloadButton("timeline JSON", visible=False, elem_id=IDS["json"])
                        csv_file = gr.DownloadButton("timeline CSV", visible=False, elem_id=IDS["csv"])
                with gr.Column(scale=2):
                    error = gr.Markdown(visible=False, elem_id=IDS["error"])
                    summary = gr.Markdown(elem_id=IDS["summary"])
                    gr.Markdown(
                        "The clip as the model saw it: the green box is the tracked face its crops came from, a "
                        "dashed orange square the centre crop used where no face was found; the banner shows the "
                        "running label of the window at that moment."
                    )
                    video = gr.Video(
                        label="annotated clip", show_label=False, interactive=False, height=480, elem_id=IDS["video"]
                    )
                    plot = gr.Plot(label="timeline: window probabilities and modality weights", elem_id=IDS["plot"])
            table = gr.Dataframe(
                headers=views.TABLE_HEADERS, label="windows", interactive=False, elem_id=IDS["table"], wrap=True
            )

            def on_file(path):
                no_file = gr.update(value=None, visible=False)
                if not path:
                    return None, "", None, None, gr.update(value="", visible=False), None, no_file, no_file
                name = Path(path).name
                try:
                    done = app_upload.process_upload(client, guard.check(path), name, outputs.new(), smooth)
                except Exception as exc:  # noqa: BLE001 - every failure becomes a message; the app keeps serving
                    msg = views.upload_error_text(name, exc, url, path)
                    return None, "", None, None, gr.update(value=msg, visible=True), None, no_file, no_file
                pred = done.pred
                labels = list(pred["probs"])
                fig = views.timeline_figure(pred["timeline"], labels, f"{name}: {pred['label']}", pred["label"])
                summary_md = views.summary_markdown(pred, name) + (f"\n\n{done.video_note}" if done.video_note else "")
                return (
                    pred["probs"],
                    summary_md,
                    fig,
                    views.timeline_rows(pred["timeline"]),
                    gr.update(value="", visible=False),
                    str(done.video) if done.video else None,
                    gr.update(value=str(done.json), visible=True),
                    gr.update(value=str(done.csv), visible=True),
                )

            upload_out = [label, summary, plot, table, error, video, json_file, csv_file]
            upload.change(on_file, upload, upload_out, concurrency_limit=4, **hidden)

        with gr.Tab("Live: webcam + microphone"):
            gr.Markdown(
                "Start the webcam and the microphone (their record buttons); every window the two streams "
                "complete goes to Triton. Browsers allow the camera only on localhost or HTTPS."
            )
            with gr.Row():
                with gr.Column(scale=1):
                    modalities = gr.Radio(list(MODALITY_CHOICES), value="audio + video", label="modalities")
                    webcam = gr.Image(
                        sources=["webcam"], streaming=True, type="numpy", label="webcam", elem_id=IDS["webcam"]
                    )
                    mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy", elem_id=IDS["mic"])
                    reset = gr.Button("reset")
                with gr.Column(scale=2):
                    live_label = gr.Label(label="live label", num_top_classes=4, elem_id=IDS["live_label"])
                    live_status = gr.Markdown("Waiting for the camera and the microphone", elem_id=IDS["live_status"])
                    live_plot = gr.Plot(label="live timeline", elem_id=IDS["live_plot"])
            plotted = gr.State(-1)

            def _session(request: gr.Request, mode: str, create: bool = True):
                return sessions.get(request.session_hash or "anon", mode, create=create)

            def _answer(results):
                return (results[-1]["smoothed"], gr.skip()) if results else (gr.skip(), gr.skip())

            def on_frame(image, mode, request: gr.Request):
                try:
                    return _answer(_session(request, mode).push_image(image))
                except Exception as exc:  # noqa: BLE001 - shown on the page; the stream goes on
                    return gr.skip(), views.live_error_text(exc, url)

            def on_audio(chunk, mode, request: gr.Request):
                if chunk is None:
                    return gr.skip(), gr.skip()
                try:
                    return _answer(_session(request, mode).push_audio(chunk[0], chunk[1]))
                except Exception as exc:  # noqa: BLE001
                    return gr.skip(), views.live_error_text(exc, url)

            def on_tick(mode, seen, request: gr.Request):
                """Every LIVE_PLOT_EVERY s: the status line, and the plot when new windows came in."""
                sess = _session(request, mode, create=False)
                if sess is None:
                    return gr.skip(), seen, gr.skip()
                if sess.version == seen or not sess.results:
                    return gr.skip(), seen, sess.status_markdown()
                with sess._lock:
                    shown = list(sess.results[-LIVE_PLOT_WINDOWS:])
                    version = sess.version
                last = shown[-1]
                fig = views.timeline_figure(shown, sess.labels, f"live: {last['label']}", last["label"])
                return fig, version, sess.status_markdown()

            def on_reset(request: gr.Request):
                sessions.drop(request.session_hash or "anon")
                return None, "Reset: waiting for the camera and the microphone", None, -1

            live_out = [live_label, live_status]
            opts: dict[str, Any] = dict(
                time_limit=LIVE_TIME_LIMIT, concurrency_limit=8, show_progress="hidden", **hidden
            )
            webcam.stream(on_frame, [webcam, modalities], live_out, stream_every=WEBCAM_EVERY, **opts)
            mic.stream(on_audio, [mic, modalities], live_out, stream_every=MIC_EVERY, **opts)
            gr.Timer(LIVE_PLOT_EVERY).tick(
                on_tick, [modalities, plotted], [live_plot, plotted, live_status], show_progress="hidden", **hidden
            )
            reset.click(on_reset, None, [live_label, live_status, live_plot, plotted], **hidden)
            modalities.change(on_reset, None, [live_label, live_status, live_plot, plotted], **hidden)

        add_api(gr, client, guard, smooth)

        def on_unload(request: gr.Request):
            sessions.drop(request.session_hash or "anon")

        demo.unload(on_unload)
    demo.avemo_client = client
    demo.avemo_outputs = outputs  # the upload tab's output folders (removed by run() on exit)
    setattr(demo, LIVE_SESSIONS_ATTR, sessions)  # the live sessions, for tests and lag measurements
    return demo


def launch(demo, args: argparse.Namespace, block: bool = True):
    allowed = [str(Path(args.samples).resolve())] if args.samples else []
    return demo.queue(default_concurrency_limit=4).launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=int(args.max_upload_mb * 1024 * 1024),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        ssl_verify=False,  # only Gradio's start-up request to itself; self-signed certificates are the usual case
        allowed_paths=allowed,
        share=False,
        inbrowser=False,
        show_error=False,
        prevent_thread_lock=not block,
        quiet=False,
        ssr_mode=False,
    )


def run(args: argparse.Namespace) -> int:
    check_args(args)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the app needs gradio: pip install 'avemo[app]'", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not args.ssl_certfile:
        print(
            f"warning: serving on {args.host} without TLS: browsers will refuse the webcam and microphone "
            "except on localhost; add --ssl-certfile/--ssl-keyfile",
            file=sys.stderr,
        )
    demo = build_app(args.url, args.model, args.samples, args.smooth, args.timeout)
    scheme = "https" if args.ssl_certfile else "http"
    print(f"avemo app: {scheme}://{args.host}:{args.port} -> Triton {args.url} (model {args.model})", flush=True)
    try:
        launch(demo, args, block=True)
    except OSError as exc:  # the port is taken (Gradio: "Cannot find empty port"), or the address is not ours
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    finally:
        demo.avemo_client.close()
        demo.avemo_outputs.cleanup()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="avemo app", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

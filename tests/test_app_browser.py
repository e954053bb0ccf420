"""`avemo app` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by
Selenium) against the app serving on a free local port, talking to the real embedded Triton server.

- upload tab: a generated corpus clip -> label, timeline plot, annotated clip and the timeline downloads
  (screenshot ``test-artifacts/app_upload.png``), then a corrupt file -> the error text, then the clip again (the
  app still answers);
- live tab: Chromium's fake camera and microphone play a y4m + wav made from the same corpus clip; the
  test waits for live labels and the live plot (``test-artifacts/app_live.png``, lag figures in
  ``test-artifacts/app_live_lag.json``);
- an app pointed at a port where no server listens shows "server down" and a server error on upload.

A missing Chromium or chromedriver FAILS these tests on Linux, naming the program (``make test``
installs both); ``AVEMO_SKIP_BROWSER=1`` skips them instead. ``AVEMO_CHROMIUM`` / ``AVEMO_CHROMEDRIVER``
point at other binaries. ``AVEMO_DOCS_SCREENSHOT=PATH`` also saves the upload screenshot there
(how ``docs/app.png`` is made).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from avemo.client.app import IDS, LIVE_SESSIONS_ATTR

pytestmark = pytest.mark.slow

WAIT = 60.0  # seconds for any one thing to appear on the page (CI machines are small)


# ------------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_program(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    return next((p for p in map(shutil.which, names) if p), None)


def write_fake_devices(mp4: Path, y4m: Path, wav: Path, rate: int = 48000) -> None:
    """The clip's video as a YUV4MPEG2 file and its audio as 16-bit mono WAV: Chromium's fake capture inputs."""
    import av

    planes, pcm = [], []
    with av.open(str(mp4)) as container:
        fps = container.streams.video[0].average_rate
        assert fps is not None
        for frame in container.decode(video=0):
            planes.append(frame.to_ndarray(format="yuv420p"))
    with av.open(str(mp4)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for aframe in container.decode(audio=0):
            pcm += [f.to_ndarray().reshape(-1) for f in resampler.resample(aframe)]
        pcm += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    height, width = planes[0].shape[0] * 2 // 3, planes[0].shape[1]
    with open(y4m, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps.numerator}:{fps.denominator} Ip A1:1 C420jpeg\n".encode())
        for plane in planes:
            f.write(b"FRAME\n" + np.ascontiguousarray(plane).tobytes())
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.concatenate(pcm).astype(np.int16).tobytes())


def wait_for(driver, predicate, what: str, timeout: float = WAIT):
    """Poll ``predicate(driver)`` until it returns something truthy; fail with ``what`` and the page's text."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate(driver)
            if value:
                return value
        except (StaleElementReferenceException, WebDriverException):
            pass
        time.sleep(0.2)
    body = driver.find_element("tag name", "body").text[-2000:]
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; page text:\n{body}")


def text_of(driver, elem_id: str) -> str:
    return driver.find_element("id", elem_id).text


def shown_label(driver, elem_id: str, labels) -> str | None:
    """The top label of a gr.Label: its first line that is a class name (the block's title comes before it)."""
    return next((line for line in text_of(driver, elem_id).splitlines() if line.strip() in labels), None)


def error_shown(driver) -> str:
    """The upload tab's error text, "" while it is hidden (Gradio leaves a hidden component out of the page)."""
    found = driver.find_elements("id", IDS["error"])
    return found[0].text if found and found[0].is_displayed() else ""


def has_image(driver, elem_id: str) -> bool:
    return bool(driver.find_elements("css selector", f"#{elem_id} img"))


def has_video(driver, elem_id: str) -> bool:
    return bool(driver.find_elements("css selector", f"#{elem_id} video[src]"))


def shown(driver, elem_id: str) -> bool:
    found = driver.find_elements("id", elem_id)
    return bool(found) and found[0].is_displayed()


def click_tab(driver, name: str) -> None:
    for button in driver.find_elements("css selector", "button[role=tab]"):
        if name in button.text:
            button.click()
            return
    pytest.fail(f"no tab named {name!r}")


def upload(driver, path: Path) -> None:
    clear = driver.find_elements("css selector", f"#{IDS['upload']} button[aria-label='Clear']")
    if clear:
        clear[0].click()
        wait_for(driver, lambda d: d.find_elements("css selector", f"#{IDS['upload']} input[type=file]"), "upload box")
    driver.find_element("css selector", f"#{IDS['upload']} input[type=file]").send_keys(str(path))


def launch_app(url: str, samples: Path | None = None):
    """The app on a free port in this process (a thread); returns (demo, page url)."""
    from avemo.client import app

    args = argparse.Namespace(
        host="127.0.0.1",
        port=free_port(),
        max_upload_mb=20,
        ssl_certfile=None,
        ssl_keyfile=None,
        samples=str(samples) if samples else None,
        smooth="none",
        timeout=30.0,
        url=url,
        model="emotion",
    )
    app.check_args(args)
    demo = app.build_app(args.url, args.model, args.samples, args.smooth, args.timeout)
    app.launch(demo, args, block=False)
    return demo, f"http://127.0.0.1:{args.port}/"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def browser_programs() -> tuple[str, str]:
    """(chromium, chromedriver): missing ones FAIL the test (skip only with AVEMO_SKIP_BROWSER=1)."""
    chromium = find_program("AVEMO_CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    driver = find_program("AVEMO_CHROMEDRIVER", "chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path]
    if missing:
        reason = (
            f"{' and '.join(missing)} not found: the app's browser tests need Debian's chromium and chromium-driver "
            "(`make test` installs them with apt-get; or set AVEMO_CHROMIUM / AVEMO_CHROMEDRIVER)"
        )
        if os.environ.get("AVEMO_SKIP_BROWSER") == "1" or not sys.platform.startswith("linux"):
            pytest.skip(reason)
        pytest.fail(reason + "; AVEMO_SKIP_BROWSER=1 skips these tests", pytrace=False)
    pytest.importorskip("gradio", reason="the app needs gradio (pip install -e '.[app]')")
    assert chromium is not None and driver is not None  # (a missing one skipped or failed above)
    return chromium, driver


@pytest.fixture(scope="module")
def corpus_clip(tmp_path_factory) -> Path:
    """One clip of the generated corpus (actor 1, emotion 03 happy, strong intensity) in its RAVDESS layout."""
    from avemo.training.synthetic.corpus import clip_name, render_clip, write_mp4

    root = tmp_path_factory.mktemp("app_corpus")
    audio, frames = render_clip(3, 2, 1, 1, 1, 0)
    path = root / "Actor_01" / clip_name(3, 2, 1, 1, 1)
    write_mp4(path, audio, frames)
    return path


@pytest.fixture(scope="module")
def fake_devices(corpus_clip, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("fake_devices")
    y4m, wav = out / "camera.y4m", out / "microphone.wav"
    write_fake_devices(corpus_clip, y4m, wav)
    return y4m, wav


@pytest.fixture(scope="module")
def artifacts(repo_root) -> Path:
    out = Path(os.environ.get("AVEMO_TEST_ARTIFACTS") or repo_root / "test-artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser(browser_programs, fake_devices):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_programs
    y4m, wav = fake_devices
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1500",
        "--use-fake-ui-for-media-stream",  # grant camera + microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
        f"--use-file-for-fake-audio-capture={wav}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def app_page(triton_server, corpus_clip):
    """The app against the session's real Triton server, offering the corpus folder as samples."""
    demo, page = launch_app(triton_server.url, samples=corpus_clip.parents[1])
    yield demo, page
    demo.close()


# --------------------------------------------------------------------------------------------- tests


def test_upload_clip_then_corrupt_file(browser, app_page, corpus_clip, tmp_path, artifacts, serving_labels):
    _, page = app_page
    browser.get(page)
    status = wait_for(browser, lambda d: text_of(d, IDS["status"]), "the server status line")
    assert "Connected" in status and "emotion" in status and "version" in status, status
    assert corpus_clip.name in browser.find_element("tag name", "body").text  # offered as a sample

    upload(browser, corpus_clip)
    label = wait_for(browser, lambda d: shown_label(d, IDS["label"], serving_labels), "the clip label")
    wait_for(browser, lambda d: has_image(d, IDS["plot"]), "the timeline plot")
    wait_for(browser, lambda d: has_video(d, IDS["video"]), "the annotated clip")
    for key in ("json", "csv"):
        wait_for(browser, lambda d, k=key: shown(d, IDS[k]), f"the timeline {key.upper()} download")
    summary = text_of(browser, IDS["summary"])
    assert f"{corpus_clip.name}: {label}" in summary and "modality weights" in summary and "p50" in summary
    assert not error_shown(browser)
    browser.save_screenshot(str(artifacts / "app_upload.png"))
    if os.environ.get("AVEMO_DOCS_SCREENSHOT"):
        browser.save_screenshot(os.environ["AVEMO_DOCS_SCREENSHOT"])

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not an MP4 file\n" * 64)
    upload(browser, corrupt)
    error = wait_for(
        browser,
        error_shown,
        "the error message for a corrupt upload",
    )
    assert "cannot read" in error and "corrupt.mp4" in error and "/gradio/" not in error, error
    assert not has_image(browser, IDS["plot"])  # the previous clip's plot is gone
    assert not has_video(browser, IDS["video"]) and not shown(browser, IDS["json"]) and not shown(browser, IDS["csv"])
    browser.save_screenshot(str(artifacts / "app_upload_error.png"))

    # the app keeps serving: a sample from --samples (clicked) works after the error
    sample = wait_for(
        browser,
        lambda d: [b for b in d.find_elements("css selector", "button") if b.text.strip() == corpus_clip.name],
        "the sample's button",
    )
    sample[0].click()
    wait_for(browser, lambda d: has_image(d, IDS["plot"]), "the plot of the sample after the error")
    assert not error_shown(browser) and corpus_clip.name in text_of(browser, IDS["summary"])


def test_live_tab_with_fake_camera_and_microphone(browser, app_page, artifacts, serving_labels):
    demo, page = app_page
    browser.get(page)
    wait_for(browser, lambda d: "Connected" in text_of(d, IDS["status"]), "the server status line")
    click_tab(browser, "Live")
    # Gradio 6.31's webcam: "Click to Access Webcam", then its record button; the microphone's Record button
    for selector, what in (
        (f"#{IDS['webcam']} div[title='grant webcam access'] button", "the webcam's access button"),
        (f"#{IDS['webcam']} button.capture-button", "the webcam's record button"),
        (f"#{IDS['mic']} button.record-button", "the microphone's record button"),
    ):
        wait_for(browser, lambda d, sel=selector: d.find_elements("css selector", sel), what)[0].click()

    wait_for(browser, lambda d: shown_label(d, IDS["live_label"], serving_labels), "a live label")
    status = wait_for(
        browser,
        lambda d: "window" in text_of(d, IDS["live_status"]) and text_of(d, IDS["live_status"]),
        "the live status line",
    )
    wait_for(browser, lambda d: has_image(d, IDS["live_plot"]), "the live plot")
    # a few more windows: the label keeps updating
    sessions = getattr(demo, LIVE_SESSIONS_ATTR)
    session = wait_for(browser, lambda d: next(iter(sessions._sessions.values()), None), "the live session")
    first = len(session.results)
    wait_for(browser, lambda d: len(session.results) >= first + 3, "three more live windows")
    browser.save_screenshot(str(artifacts / "app_live.png"))
    lag = session.lag_stats()
    (artifacts / "app_live_lag.json").write_text(
        json.dumps({"lag_ms": lag, "windows": len(session.results), "status": status}, indent=2)
    )
    assert lag and lag["n"] >= 3
    assert all(r["label"] in serving_labels for r in session.results)


def test_server_down_message(browser, mp4_clip):
    demo, page = launch_app(f"127.0.0.1:{free_port()}")  # nothing listens there
    try:
        browser.get(page)
        status = wait_for(browser, lambda d: text_of(d, IDS["status"]), "the server status line")
        assert "server down" in status and "avemo serve" in status, status
        upload(browser, mp4_clip)
        error = wait_for(
            browser,
            error_shown,
            "the error message without a server",
        )
        assert "server error" in error and "clip.mp4" in error, error
    finally:
        demo.close()

"""The real-Triton tests cannot pass quietly: on Linux x86_64 / aarch64 anything the server needs that is missing
fails them (naming it and how to get it); only a platform with no tritonserver build skips them."""

from __future__ import annotations

import sys

import pytest

from avemo.serving.server import embedded_server_problem

LIBPYTHON = "libpython3.11.so.1.0 (linked by the Triton Python stub) is missing: apt-get install libpython3.11"


def test_a_missing_piece_fails_and_only_the_platform_skips(triton_checks):
    verdict = triton_checks.verdict
    assert verdict(None, LIBPYTHON, {}) == (
        "fail",
        f"the real Triton server should run here but cannot: {LIBPYTHON} (AVEMO_SKIP_TRITON=1 skips)",
    )
    assert verdict(None, LIBPYTHON, {"AVEMO_SKIP_TRITON": "1"}) == ("skip", f"AVEMO_SKIP_TRITON=1: {LIBPYTHON}")
    assert verdict(None, LIBPYTHON, {"AVEMO_SKIP_TRITON": "0"})[0] == "fail"
    mac = "the bundled tritonserver runs on Linux x86_64/aarch64 only (this is darwin arm64)"
    assert verdict(mac, None, {}) == ("skip", f"real Triton server not runnable here: {mac}")
    assert verdict(None, None, {}) == ("run", "")


def test_each_missing_piece_is_named_with_how_to_get_it(triton_checks, monkeypatch):
    from avemo.serving import server

    monkeypatch.setattr(server, "find_libpython", lambda version=None: None)
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    missing = triton_checks.missing()
    assert f"libpython{tag}.so.1.0" in missing and f"apt-get install libpython{tag}" in missing

    def no_stub(version=None):
        raise server.TritonServerError(f"no triton_python_backend_stub for Python {tag} in the wheel")

    monkeypatch.setattr(server, "find_stub", no_stub)
    assert "no Triton Python-backend stub for this Python" in triton_checks.missing()
    monkeypatch.setattr(server, "pytriton_dir", lambda: server.Path("/nonexistent/pytriton"))
    assert "the tritonserver binary is not installed" in triton_checks.missing()


@pytest.mark.skipif(embedded_server_problem() is not None, reason="no tritonserver build here")
def test_this_platform_runs_the_real_server(triton_checks):
    """Where a tritonserver build exists, the set-up (make install, make test's system packages) provides
    everything: nothing is missing, so no real-Triton test is skipped here."""
    assert triton_checks.platform_skip() is None
    assert triton_checks.missing() is None

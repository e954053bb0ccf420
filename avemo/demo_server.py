"""The Triton server `avemo demo` sends its test set through: the embedded one it starts and stops, or with
``--url HOST:PORT`` a server that is already running (macOS, Windows: the embedded server runs on Linux only).

A running server must read the demo's ``--model-repository`` (a Docker volume, a shared folder) in explicit
model-control mode: after the export the demo asks it to load the model (``load_model``, which reloads a
changed one) and checks that it serves the file just exported, by the ``onnx_sha256`` parameter the export
writes into config.pbtxt. A server in mode none or poll refuses to load on request; it passes only when it
already serves that file.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from avemo.contract.endpoint import HOST
from avemo.contract.options import UsageError

LOAD_TIMEOUT_S = 300.0  # --url: how long the running server may take to load the exported model


class RemoteServerError(RuntimeError):
    """--url: the running server does not serve the model the demo exported (the message says what to change)."""


def elsewhere(repository: Path) -> str:
    """What to run instead of the embedded server: the demo against a server that reads ``repository``."""
    repo = Path(repository).resolve()
    return (
        f"Run the demo against a Triton server that reads this model repository ({repo}) in explicit "
        "model-control mode, given with --url HOST:PORT: the Docker image (docker run --shm-size=1g "
        f'-p 8000-8002:8000-8002 -v "{repo}:/models" avemo-triton tritonserver --model-repository=/models '
        "--model-control-mode=explicit; then avemo demo --url localhost:8001), or a Linux machine that sees the "
        "folder; docs/platforms.md has the steps"
    )


def check_server(args: argparse.Namespace) -> None:
    """UsageError unless the demo can have its server: the embedded one runs on this machine, or a server
    answers at ``--url``."""
    if args.url is None:
        from avemo.serving.server import embedded_server_problem

        problem = embedded_server_problem()
        if problem is not None:
            raise UsageError(f"{problem}. {elsewhere(args.model_repository)}")
        return
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(args.url)
    try:
        live = client.is_server_live(client_timeout=10.0)
        why = "" if live else "the server says it is not live"
    except InferenceServerException as exc:
        live, why = False, exc.message() or str(exc)
    finally:
        client.close()
    if not live:
        raise UsageError(f"no Triton server answers at {args.url} (gRPC): {why}. {elsewhere(args.model_repository)}")


def load_on_server(url: str, repository: Path, model: str, model_file: Path) -> None:
    """Ask the Triton server at ``url`` to (re)load ``model`` from its repository (explicit model-control mode)
    and check that it then serves ``model_file``, the file the demo exported into ``repository``; raises
    RemoteServerError saying what to change otherwise."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from avemo.export.triton_repo import sha256

    exported, served, refused = sha256(model_file), "", ""
    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            client.load_model(model, client_timeout=LOAD_TIMEOUT_S)
        except InferenceServerException as exc:
            refused = exc.message() or str(exc)
        try:
            if client.is_model_ready(model):
                config = client.get_model_config(model, as_json=True)["config"]
                served = config.get("parameters", {}).get("onnx_sha256", {}).get("string_value", "")
        except InferenceServerException:
            pass  # reported below as not served
    finally:
        client.close()
    if served == exported:
        return
    if refused:
        why = f"it did not load '{model}': {refused}"
    elif served:
        why = f"its '{model}' is another model (onnx_sha256 {served[:12]}..., exported {exported[:12]}...)"
    else:
        why = f"'{model}' is not ready on it"
    raise RemoteServerError(
        f"the Triton server at {url} does not serve the model just exported to "
        f"{Path(repository).resolve() / model}: {why}. {elsewhere(repository)}"
    )


@contextlib.contextmanager
def demo_server(args: argparse.Namespace, model: str, model_file: Path, log_file: Path, step: str) -> Iterator[str]:
    """The gRPC address of a server serving ``model`` from ``args.model_repository``: the embedded server, started
    here and stopped on exit, or with ``--url`` the running server, asked to load it (``load_on_server``)."""
    if args.url is not None:
        repo = Path(args.model_repository).resolve()
        print(f"[demo] {step} Triton at {args.url}: loading {model} (its repository must be {repo})")
        load_on_server(args.url, args.model_repository, model, model_file)
        yield args.url
        return
    from avemo.serving.server import ServerPorts
    from avemo.serving.supervisor import SupervisedServer

    ports = ServerPorts.free()
    print(f"[demo] {step} starting Triton on {HOST}:{ports.grpc} (gRPC)")
    supervised = SupervisedServer(
        args.model_repository,
        ports=ports,
        log_file=log_file,
        on_event=lambda line: print(f"[demo]   {line}"),
    )
    with supervised as server:
        yield server.url

"""Where the served model lives: its name in the model repository and the server's default address.

``avemo export`` writes ``<MODEL_REPOSITORY>/<MODEL_NAME>``, ``avemo serve`` listens on these ports and
``avemo predict`` connects to ``GRPC_URL``; each is the default of a flag, so a deployment can change it.
"""

from __future__ import annotations

MODEL_NAME = "emotion"  # model folder in the repository = name the client asks Triton for
MODEL_REPOSITORY = "model_repository"  # Triton model repository folder

HOST = "127.0.0.1"  # the server binds here; 0.0.0.0 for all interfaces
GRPC_PORT = 8001  # Triton's standard ports
HTTP_PORT = 8000
METRICS_PORT = 8002
GRPC_URL = f"{HOST}:{GRPC_PORT}"

CLIENT_TIMEOUT = 30.0  # seconds a client waits for the server (a request, or silence on a stream)

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

# Load shedding. Every batched model's dynamic batcher bounds its queue (config.pbtxt default_queue_policy):
# a request beyond MAX_QUEUE_SIZE waiting ones is refused at once, one that waited QUEUE_TIMEOUT_US is
# refused (REJECT) instead of run late; both answers are "busy", and clients retry them after a jittered
# backoff. On the demo's model (2 cores, batches of up to 32 at about 4 ms a window) 64 waiting requests are
# two full batches, about 0.3 s: a held load never reaches the bound, an overload is refused within that
# time instead of queueing for seconds. docs/serving.md has the measurement.
MAX_QUEUE_SIZE = 64
QUEUE_TIMEOUT_US = 2_000_000  # a bound on a stall, far above the wait MAX_QUEUE_SIZE allows
BUSY_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired")  # Triton core's words for both
BUSY_RETRIES = 8  # a one-shot call retries a busy answer this many times before raising ServerBusy
BUSY_BACKOFF_S = (0.05, 1.0)  # first and largest backoff ceiling; each wait is uniform in [0, ceiling]
LAG_BUDGET_S = 1.5  # live sources: a window not answered within this of its media is dropped (shed)

"""Busy answers (Triton's bounded queue refusing a request) and the jittered backoff clients retry them with.

Triton answers a request it will not queue with "Exceeds maximum queue size" and one that waited too long
in the queue with "Request timeout expired" (``contract.endpoint.BUSY_MESSAGES``): the server is alive
and the request was fine, so both are retryable, unlike a refusal (INVALID_ARG) or a transport failure.
Retries wait a random time in [0, ceiling] with the ceiling doubling from ``BUSY_BACKOFF_S[0]`` up to
``BUSY_BACKOFF_S[1]`` ("full jitter"): clients that were refused together do not come back together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from tritonclient.utils import InferenceServerException

from avemo.contract.endpoint import BUSY_BACKOFF_S, BUSY_MESSAGES, BUSY_RETRIES

T = TypeVar("T")


def is_busy_message(message: str | None) -> bool:
    return message is not None and message != "" and any(m in message for m in BUSY_MESSAGES)


def is_busy(exc: BaseException) -> bool:
    """True for Triton's queue-full / queue-timeout answer (retryable), False for anything else."""
    if isinstance(exc, InferenceServerException):
        return is_busy_message(exc.message() or str(exc))
    return is_busy_message(str(exc))


def backoff(
    attempt: int, rng: random.Random | None = None, first: float = BUSY_BACKOFF_S[0], cap: float = BUSY_BACKOFF_S[1]
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): uniform in [0, min(cap, first * 2**(attempt-1))]."""
    ceiling = min(cap, first * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0.0, ceiling)


def retry_busy(
    call: Callable[[], T],
    *,
    retries: int = BUSY_RETRIES,
    on_busy: Callable[[int, float, BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """``call()``, retried up to ``retries`` times while it raises a busy answer; ``on_busy(attempt, wait, exc)``
    hears each retry. The last busy exception propagates when the retries are spent; any other at once."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_busy(exc) or attempt >= retries:
                raise
            attempt += 1
            wait = backoff(attempt, rng)
            if on_busy is not None:
                on_busy(attempt, wait, exc)
            sleep(wait)


# ------------------------------------------------------------------------------- stream error ids


class _IdTaggedResponses:
    """The gRPC response iterator of a stream, with the request id put into each busy error message that lacks
    it (Triton sends the id in ``infer_response.id``; tritonclient passes on the message only)."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __iter__(self):
        return self

    def __next__(self):
        response = next(self._inner)
        msg = response.error_message
        rid = response.infer_response.id
        # busy answers only: an error naming no request is a transport failure to the stream (a server shutting
        # down answers "Request for unknown model" to every request in flight, with their ids)
        if msg and rid and "[request id" not in msg and is_busy_message(msg):
            response.error_message = f"[request id: {rid}] {msg}"
        return response

    def __getattr__(self, name: str):  # cancel(), is_active(), ... of the real iterator
        return getattr(self._inner, name)


def name_requests_in_stream_errors() -> bool:
    """Make tritonclient's stream errors name their request, as Triton core's own messages mostly do
    ("[request id: X] Exceeds maximum queue size") but its queue timeout does not ("Request timeout
    expired"): without the id a stream cannot tell which window timed out. Wraps the response iterator
    tritonclient's stream reader consumes (tritonclient is pinned; a test checks this against the real
    server). Idempotent; False when tritonclient's internals are not the expected ones."""
    try:
        from tritonclient.grpc import _infer_stream
    except ImportError:
        return False
    cls = getattr(_infer_stream, "_InferStream", None)
    original = getattr(cls, "_init_handler", None)
    if original is None:
        return False
    if getattr(original, "_avemo_tagged", False):
        return True

    def _init_handler(self, response_iterator):
        return original(self, _IdTaggedResponses(response_iterator))

    _init_handler._avemo_tagged = True  # type: ignore[attr-defined]
    assert cls is not None  # it had an _init_handler
    cls._init_handler = _init_handler
    return True

# Production image: the official Triton server with the model repository `avemo export --backend all` wrote
# (emotion: python backend, emotion_onnx: onnxruntime, emotion_libtorch: pytorch). See docs/deploy.md.
#   avemo export runs/gated/best.pt --backend all && docker build -t avemo-triton .
#
# Base 25.07 = Triton 2.59.1, the 25.06 release (2.59.0) rebuilt with security fixes. Its gRPC frontend settles
# a client's cancellation against the request's own completion under one lock, so a cancelled request is
# released once: the signal 11 in TRITONSERVER_InferenceRequestDelete that Triton 2.51 (24.10) dies with under
# many concurrent gRPC streams. It is the newest release on CUDA 12; from 25.08 the image is CUDA 13, for which
# PyPI has no onnxruntime-gpu wheel to match the native backend. Its -py3 image ships the python, onnxruntime
# (ORT 1.22.0: ONNX IR <= 10, opset <= 22) and pytorch (libtorch of NGC PyTorch 25.07, PyTorch 2.8) backends on
# Ubuntu 24.04, Python 3.12, CUDA 12.9 and cuDNN 9; it needs NVIDIA driver >= 575 (R535/R545 on data-center
# GPUs) and a GPU of compute capability >= 7.5 (Turing or newer), as well as curl (HEALTHCHECK), the non-root
# user triton-server, uid/gid 1000 (created by Triton's build.py), and PIP_BREAK_SYSTEM_PACKAGES=1 (pip may
# install into the system Python). `avemo serve` and the tests run the Triton 2.51 that nvidia-pytriton 0.7.0
# bundles, under a supervisor that restarts it after such a crash.
FROM nvcr.io/nvidia/tritonserver:25.07-py3

# The python backend's model.py imports numpy and onnxruntime from the image's Python 3.12. numpy stays < 2
# as Triton's own image installs it ("numpy<2" for the python backend stub, which does not support numpy 2);
# 1.26.4, the last 1.x, has cp312 wheels and is the project's pin.
# onnxruntime-gpu 1.22.0 = the ORT of the native onnxruntime backend, so emotion and emotion_onnx run one ORT
# version; its PyPI wheel (cp312, manylinux_2_28) is built for CUDA 12 + cuDNN 9, the image's CUDA libraries.
RUN python3 -m pip install --no-cache-dir numpy==1.26.4 onnxruntime-gpu==1.22.0

# The repository is generated, not in git: build from a checkout where `avemo export ... --backend all` ran.
# AVEMO_MODELS lists what the build insists on (override, e.g. --build-arg AVEMO_MODELS=emotion).
ARG AVEMO_MODELS="emotion emotion_onnx emotion_libtorch"
COPY model_repository/ /models/
RUN for m in $AVEMO_MODELS; do \
        test -f "/models/$m/config.pbtxt" || { \
            echo "error: model_repository/$m/config.pbtxt missing: run 'avemo export CKPT --backend all' first" >&2; \
            exit 1; }; \
    done \
    && bad="$(find /models ! -perm -o+r)" \
    && { test -z "$bad" || { echo "error: not readable by the server user: $bad" >&2; exit 1; }; }

# Numeric uid (= triton-server) so that Kubernetes' runAsNonRoot can verify it without a name lookup.
USER 1000:1000

# HTTP, gRPC, metrics: contract/endpoint.py's HTTP_PORT, GRPC_PORT, METRICS_PORT (tests/test_deploy.py).
EXPOSE 8000 8001 8002

# Ready = every model loaded and warmed up (--strict-readiness). Model load + warm-up on a GPU takes tens of
# seconds, hence the start period; failures during it do not count.
# Exec form (no shell): any non-zero exit, curl's 22 for an HTTP error included, counts as unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["curl", "-fsS", "http://localhost:8000/v2/health/ready"]

# The base ENTRYPOINT (/opt/nvidia/nvidia_entrypoint.sh: driver checks, then exec "$@") stays, and the exec form
# makes tritonserver PID 1, which gets SIGTERM and drains. A model that fails to load stops the server
# (--exit-on-error=true): the container exits (Kubernetes restarts it, visibly) instead of serving a subset.
# --model-control-mode=none: the image's repository is all it serves, no load/unload API.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", "--strict-readiness=true", \
    "--exit-on-error=true", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]

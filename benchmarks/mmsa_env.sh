#!/usr/bin/env bash
# Creates the separate virtual environment .venv-mmsa (at the repository root) in which
# benchmarks/mmsa_runner.py runs MMSA 2.2.1's own trainer. It is kept apart from .venv on purpose:
# MMSA pulls in transformers 4.x, scikit-learn, pandas 2 and an sdist-only pynvml, none of which the
# project needs, and the main venv must not change.
#
#   bash benchmarks/mmsa_env.sh            # create or complete .venv-mmsa (idempotent, ~2 min the first time)
#   MMSA_VENV=/elsewhere bash benchmarks/mmsa_env.sh
#
# Pins (every package MMSA 2.2.1 imports, plus the transitive ones whose newest release would not fit):
#   torch==2.14.1            the main venv's torch, so both trainers run the same kernels (MMSA asks torch>=1.9.1)
#   MMSA==2.2.1              the peer under test (its wheel ships config_regression.json)
#   numpy==1.26.4            the main venv's numpy; MMSA (2022) predates numpy 2
#   transformers==4.57.6     MMSA imports BertPreTrainedModel and transformers.models.bert.modeling_bert's
#                            BertEmbeddings/BertEncoder/BertPooler at import time (BERT_MAG, for every model);
#                            4.57.6 is the last 4.x release and still has them (the non-BERT models never use them)
#   tokenizers==0.22.2, huggingface-hub==0.36.2, safetensors==0.7.0
#                            transformers 4.57.6 needs tokenizers<=0.23 and huggingface-hub<1.0
#   pandas==2.3.3            MMSA_run appends (mean, std) tuples to a DataFrame row for its result CSV;
#                            pandas 2.x is the line MMSA was used with (3.x changed the dtype rules)
#   scikit-learn==1.6.1, scipy==1.15.3
#                            MetricsTop: accuracy_score / f1_score; the newest releases that keep numpy 1.26
#   easydict==1.14           MMSA's config object
#   nvidia-ml-py3==7.352.0   MMSA's utils import pynvml at import time (only used with a GPU)
#   tqdm==4.70.1             the main venv's tqdm (honours TQDM_DISABLE, which the runner sets)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMSA_VENV:-$ROOT/.venv-mmsa}"
PYTHON="${PYTHON:-python3}"

PINS=(
    "torch==2.14.1"
    "MMSA==2.2.1"
    "numpy==1.26.4"
    "transformers==4.57.6"
    "tokenizers==0.22.2"
    "huggingface-hub==0.36.2"
    "safetensors==0.7.0"
    "pandas==2.3.3"
    "scikit-learn==1.6.1"
    "scipy==1.15.3"
    "easydict==1.14"
    "nvidia-ml-py3==7.352.0"
    "tqdm==4.70.1"
)
STAMP="$VENV/.mmsa-pins"

if [[ -x "$VENV/bin/python" && -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "${PINS[*]}" ]] \
    && "$VENV/bin/python" -c "import MMSA" >/dev/null 2>&1; then
    echo "mmsa_env: $VENV is ready"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "mmsa_env: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
echo "mmsa_env: installing ${PINS[*]}"
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
# The import MMSA's runner needs (MMSA imports every model, transformers and pynvml included).
"$VENV/bin/python" -c "import MMSA, torch; from importlib.metadata import version; print('mmsa_env: MMSA', version('MMSA'), 'on torch', torch.__version__)"
echo "${PINS[*]}" >"$STAMP"
echo "mmsa_env: $VENV is ready"

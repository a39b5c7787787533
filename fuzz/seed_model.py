#!/usr/bin/env python3
"""Writes a tiny valid skiff classifier model (safetensors) to argv[1]: the
model_blob fuzz target's seed, so mutations start from a file that passes
every check (the same model as src/accel/classify/tests.rs's tiny_model)."""
import json
import struct
import sys

tensors = [
    ("stem.weight", [4, 3, 3, 3]), ("stem.bias", [4]),
    ("blocks.0.dw.weight", [4, 1, 3, 3]), ("blocks.0.dw.bias", [4]),
    ("blocks.0.project.weight", [4, 4, 1, 1]), ("blocks.0.project.bias", [4]),
    ("head.weight", [8, 4, 1, 1]), ("head.bias", [8]),
    ("fc.weight", [2, 8]), ("fc.bias", [2]),
]
header, data = {}, b""
for name, shape in tensors:
    n = 1
    for d in shape:
        n *= d
    start = len(data)
    data += b"".join(struct.pack("<f", (i % 7) * 0.01) for i in range(n))
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [start, len(data)]}
header["__metadata__"] = {"skiff.model": "tiny", "skiff.strides": "[1]",
                          "skiff.labels": '["a","b"]'}
h = json.dumps(header).encode()
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + data)

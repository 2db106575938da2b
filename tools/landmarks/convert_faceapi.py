"""Convert face-api's TensorFlow.js weights into the safetensors files aue-landmarks ships.

Source: npm package @vladmandic/face-api 1.7.15 (MIT), folder `model/`:
  face_landmark_68_model-weights_manifest.json + face_landmark_68_model.bin
  face_landmark_68_tiny_model-weights_manifest.json + face_landmark_68_tiny_model.bin
  tiny_face_detector_model-weights_manifest.json + tiny_face_detector_model.bin
  ssd_mobilenetv1_model-weights_manifest.json + ssd_mobilenetv1_model.bin

Every tensor in these manifests is uint8-quantised (tfjs: value = q * scale + min, computed in
float64 and stored as float32). We keep the uint8 codes as they are (lossless, 4x smaller than
float32) and store each tensor's `scale` and `min` as the manifest's own decimal text in the
safetensors `__metadata__` (keys `<name>.scale`, `<name>.min`), so the Rust loader dequantises
bit-exactly as tfjs does. Only the axis order changes, to Candle's (PyTorch's) layout:
  conv `filters`            [kh, kw, in, out] -> [out, in, kh, kw]
  `depthwise_filter`        [kh, kw, c, 1]    -> [c, 1, kh, kw]
  `pointwise_filter`        [1, 1, in, out]   -> [out, in, 1, 1]
  fc `weights`              [in, out]         -> [out, in]
  `bias`                    unchanged
The SSD MobileNet v1 manifest uses TensorFlow's own names (`weights`, `depthwise_weights`,
`biases`, `convolution_bn_offset`, `BatchNorm/{gamma,beta,moving_mean,moving_variance}`), laid out
the same way; its anchors `Output/extra_dim` are stored as plain float32 in the manifest and are
kept as float32 (no scale/min). Its int32 entries (`Preprocessor/...`, `Postprocessor/...`,
`.../stack_1/...`, `concat_1/axis`) are constants of the exported TensorFlow graph that face-api
discards, and so are the two float32 scalars of `Preprocessor/` (face-api normalises the input
itself); they are skipped here too. The metadata key `float32` lists the tensors kept as float32.
Names keep face-api's, with "/" written as "." (`dense0/conv1/depthwise_filter` ->
`dense0.conv1.depthwise_filter`).

Usage (needs numpy and safetensors; run once, the outputs are committed):
  cd tools/landmarks && npm ci
  python3 convert_faceapi.py node_modules/@vladmandic/face-api ../../crates/landmarks/weights
"""

import hashlib
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

MODELS = [
    "face_landmark_68_model",
    "face_landmark_68_tiny_model",
    "tiny_face_detector_model",
    "ssd_mobilenetv1_model",
]


def to_candle_layout(name, arr):
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "weights" and arr.ndim == 4:
        leaf = "filters"  # TensorFlow's name for a convolution's filters (SSD MobileNet v1)
    if leaf == "depthwise_weights":
        leaf = "depthwise_filter"
    if leaf in ("filters", "depthwise_filter", "pointwise_filter"):
        if arr.ndim != 4:
            raise ValueError(f"{name}: expected 4 dims, got shape {arr.shape}")
        if leaf == "depthwise_filter":
            return arr.transpose(2, 3, 0, 1)  # [kh, kw, c, 1] -> [c, 1, kh, kw]
        return arr.transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]
    if leaf == "weights":
        if arr.ndim != 2:
            raise ValueError(f"{name}: expected 2 dims, got shape {arr.shape}")
        return arr.T  # [in, out] -> [out, in]
    if leaf in ("bias", "biases", "convolution_bn_offset", "gamma", "beta", "moving_mean",
                "moving_variance", "extra_dim"):
        return arr
    raise ValueError(f"{name}: unknown tensor kind {leaf!r}")


def convert(package_dir, out_dir, model):
    package = json.load(open(os.path.join(package_dir, "package.json")))
    model_dir = os.path.join(package_dir, "model")
    manifest_path = os.path.join(model_dir, f"{model}-weights_manifest.json")
    manifest_bytes = open(manifest_path, "rb").read()
    # Keep the manifest's decimal text for scale/min: the loader parses it exactly as tfjs does.
    manifest = json.loads(manifest_bytes, parse_float=str, parse_int=str)

    tensors = {}
    meta = {
        "source.package": f"{package['name']}@{package['version']}",
        "source.license": package["license"],
        "source.manifest": f"model/{model}-weights_manifest.json",
        "source.manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "layout": "candle (out, in, kh, kw); uint8 codes, value = code * scale + min in f64 then f32",
        "converter": "tools/landmarks/convert_faceapi.py",
    }
    shards = []
    for group in manifest:
        blob = b"".join(open(os.path.join(model_dir, p), "rb").read() for p in group["paths"])
        shards.append(",".join(group["paths"]))
        meta[f"source.bin_sha256.{','.join(group['paths'])}"] = hashlib.sha256(blob).hexdigest()
        offset = 0
        for w in group["weights"]:
            q = w.get("quantization")
            shape = [int(s) for s in w["shape"]]
            n = int(np.prod(shape))
            name = w["name"].replace("/", ".")
            if w["name"].startswith("Preprocessor/") or w["dtype"] == "int32":
                # A constant of the exported graph that face-api discards (see the module doc).
                if q is None or q["dtype"] != "uint8":
                    raise ValueError(f"{model}: {w['name']}: unexpected storage {w}")
                offset += n
                continue
            if w["dtype"] == "float32" and q is None:
                # Stored as float32 (the SSD anchors): keep it exact, no scale/min.
                values = np.frombuffer(blob, dtype="<f4", count=n, offset=offset).reshape(shape)
                offset += 4 * n
                tensors[name] = np.ascontiguousarray(to_candle_layout(w["name"], values))
                meta["float32"] = ",".join(filter(None, [meta.get("float32"), name]))
                continue
            if w["dtype"] != "float32" or q is None or q["dtype"] != "uint8":
                raise ValueError(f"{model}: {w['name']}: only uint8-quantised float32 is handled, got {w}")
            codes = np.frombuffer(blob, dtype=np.uint8, count=n, offset=offset).reshape(shape)
            offset += n
            tensors[name] = np.ascontiguousarray(to_candle_layout(w["name"], codes))
            meta[f"{name}.scale"] = q["scale"]
            meta[f"{name}.min"] = q["min"]
        if offset != len(blob):
            raise ValueError(f"{model}: manifest covers {offset} bytes of {len(blob)}")
    meta["source.bin"] = ";".join(f"model/{s}" for s in shards)

    out = os.path.join(out_dir, f"{model.removesuffix('_model')}.safetensors")
    save_file(tensors, out, metadata=meta)
    print(f"{out}: {len(tensors)} tensors, {os.path.getsize(out)} bytes")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    package_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    for model in MODELS:
        convert(package_dir, out_dir, model)


if __name__ == "__main__":
    main()

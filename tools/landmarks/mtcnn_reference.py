"""Run facenet-pytorch's MTCNN on some of aue-landmarks' real test photos and write its boxes.

`crates/landmarks/tests/parity.rs` checks the Candle port (`aue_landmarks::mtcnn`) against this
file: the same faces, boxes and scores. Only PNG images are used: JPEG decoders differ by a grey
level here and there (PIL's libjpeg against the `image` crate's), which moves MTCNN's boxes by up
to 1.5 px and a near-threshold score by 0.12. So the grey `einstein.jpg` (two faces, 85 and 45 px)
is decoded here once and its upper-left part saved as `tests/fixtures/mtcnn/einstein_crop.png`. facenet-pytorch 2.6.0 (MIT) with its shipped weights,
default settings (min_face_size 20, thresholds 0.6 / 0.7 / 0.7, factor 0.709), float32 on the CPU.

Usage (needs torch, torchvision, pillow and `pip install --no-deps facenet-pytorch==2.6.0 tqdm`):
  python3 tools/landmarks/mtcnn_reference.py
"""

import json
import os

import torch
from facenet_pytorch import MTCNN
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "crates", "landmarks", "tests", "fixtures")
REAL = os.path.join(FIXTURES, "real")
OUT = os.path.join(FIXTURES, "mtcnn")
# (file name, path): two PNGs of the real-photo set and the crop made below.
IMAGES = [
    ("takeo.png", os.path.join(REAL, "takeo.png")),
    ("camera.png", os.path.join(REAL, "camera.png")),
    ("einstein_crop.png", os.path.join(OUT, "einstein_crop.png")),
]


def make_crop():
    os.makedirs(OUT, exist_ok=True)
    img = Image.open(os.path.join(REAL, "einstein.jpg")).convert("L")
    img.crop((0, 200, 480, 720)).save(os.path.join(OUT, "einstein_crop.png"), optimize=True)


def main():
    torch.set_num_threads(1)
    mtcnn = MTCNN(keep_all=True, device="cpu")
    out = {"package": "facenet-pytorch 2.6.0", "torch": torch.__version__, "images": {}}
    make_crop()
    for name, path in IMAGES:
        img = Image.open(path).convert("RGB")
        boxes, probs = mtcnn.detect(img)
        faces = [] if boxes is None else [
            {"box": [float(v) for v in b], "score": float(p)} for b, p in zip(boxes, probs)
        ]
        out["images"][name] = faces
        print(name, faces)
    path = os.path.join(OUT, "mtcnn.facenet.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()

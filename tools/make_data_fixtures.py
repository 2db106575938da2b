#!/usr/bin/env python3
"""Writes the aue-data parity fixtures: a tiny RAF-DB-basic layout and the tensors the
reference's preprocessing (PIL + torchvision + numpy, docs/METHOD.md section 5) makes of it.

    python3 tools/make_data_fixtures.py            # writes crates/data/tests/fixtures/parity/
    python3 tools/make_data_fixtures.py --parquet  # then crates/data/tests/fixtures/parquet/
                                                   # (needs pyarrow: pip install pyarrow)

Output (small, committed):
  raf/basic/...                a RAF-DB basic layout: 4 test images (2 PNG, 2 JPEG), boxes with
                               fractional and tie (.5) coordinates, landmarks relative to the box
                               (one file with 66 rows)
  decoded/<stem>.png           PIL's (libjpeg-turbo's) decode of each JPEG, lossless, so that the
                               crop/resize parity can be checked apart from the JPEG decoder
  expected.safetensors         per sample `<stem>/s<S>/<case>/...`:
                                 draws    i64 [3]      dx, dy, flip of the case (test = 0, 0, 0)
                                 crop_u8  u8  [S,S,3]  PIL crop at the rounded box, mirrored for
                                                       a flip case, torchvision Resize((S, S))
                                 h_first  u8  [1]      1 when the installed Pillow resampled
                                                       horizontally first (every Pillow up to 12,
                                                       so the reference's); see pil12_resize
                                 au_loc   i64 [17,4]   the reference's AU locations
                                 image    f32 [3,S,S]  ToTensor + Normalize (some cases only)
                               and `geom/*`: random geometry cases (image size, box, landmarks in
                               image pixels, draws, S, enlarge factor) with the expected pixel
                               crop rectangle and AU locations, many of them on rounding ties.

The crop rule is the reference's (`dataset.py`, MyDataset_EM / _noBbox): enlarge by
half = int(int(factor * width) * 0.5) per side, clip, offset (train), clip, PIL crop (rounds the
box with Python's round), landmarks shifted by the unrounded left/top, flip x -> (right - left) - x,
scaled by S / crop size; AU centres scaled by G / S, midpoints of scaled points, np.round (half to
even), clamped to [L/2, G - L/2], L = 2 * round(G * 12 / 56).
"""

import os
import random

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from torchvision import transforms

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "data", "tests", "fixtures", "parity")

# iBUG-68 indices of the two centres of each AU, in the AU order of docs/METHOD.md section 1.
# A pair is a midpoint.
AU_CENTRES = [
    (21, 22), (18, 25), ((21, 22), (19, 24)), ((37, 38), (43, 44)), (41, 46), (38, 43),
    (31, 35), (50, 52), (48, 54), (48, 54), (58, 56), (51, 57), (48, 54), (60, 62), (61, 64),
    (62, 66), (51, 57),
]


def window(box, factor, w, h, dx, dy):
    left, upper, right, lower = box
    padding = max(0, int((right - left) * factor))
    half = int(padding * 0.5)
    left = max(left - half, 0)
    right = min(right + half, w)
    upper = max(upper - half, 0)
    lower = min(lower + half, h)
    left = max(left + dx, 0)
    right = min(right + dx, w)
    upper = max(upper + dy, 0)
    lower = min(lower + dy, h)
    return (left, upper, right, lower), half


def au_loc(landmarks, win, rect, flip, size):
    """The reference's get_au_loc + clamp on landmarks in image pixels (float64)."""
    left, upper, right, lower = win
    crop_w, crop_h = rect[2] - rect[0], rect[3] - rect[1]
    lm = landmarks.copy()
    lm[:, 0] -= left
    lm[:, 1] -= upper
    if flip:
        lm[:, 0] = (right - left) - lm[:, 0]
    lm[:, 0] = lm[:, 0] * size / crop_w
    lm[:, 1] = lm[:, 1] * size / crop_h
    grid = size // 4
    arr = lm.transpose()
    arr[0, :] = arr[0, :] / size * grid
    arr[1, :] = arr[1, :] / size * grid

    def centre(c):
        if isinstance(c, tuple):
            a, b = c
            return (arr[0, a] + arr[0, b]) / 2, (arr[1, a] + arr[1, b]) / 2
        return arr[0, c], arr[1, c]

    rows = []
    for c1, c2 in AU_CENTRES:
        if isinstance(c1, int) and isinstance(c2, int):
            rows.append([arr[0, c1], arr[1, c1], arr[0, c2], arr[1, c2]])
        else:
            rows.append([*centre(c1), *centre(c2)])
    loc = np.round(np.array(rows))
    crop = 2 * round(grid * 12 / 56)
    lo, hi = crop // 2, grid - crop // 2
    loc = np.clip(loc, lo, hi)
    return loc.astype(np.int64)


def pil12_resize(img, size):
    """PIL's bilinear `resize((size, size))` as Pillow up to 12.x computes it (Resample.c:
    22-bit fixed-point coefficients, horizontal pass first, 8-bit intermediate rounded half up).
    Pillow 13 may run the vertical pass first instead, which moves some values by one level."""

    def coeffs(in_size, out_size):
        scale = in_size / out_size
        filterscale = max(scale, 1.0)
        support = 1.0 * filterscale
        rows = []
        for xx in range(out_size):
            center = (xx + 0.5) * scale
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), in_size) - xmin
            w = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(xmax)]
            ww = sum(w)
            w = [v / ww for v in w] if ww != 0.0 else w
            rows.append((xmin, np.array([int(0.5 + v * (1 << 22)) for v in w], dtype=np.int64)))
        return rows

    def horizontal(a, out_w):
        out = np.empty((a.shape[0], out_w, 3), dtype=np.int64)
        for xx, (xmin, k) in enumerate(coeffs(a.shape[1], out_w)):
            acc = (a[:, xmin : xmin + len(k), :] * k[None, :, None]).sum(axis=1) + (1 << 21)
            out[:, xx, :] = np.clip(acc >> 22, 0, 255)
        return out

    a = np.asarray(img, dtype=np.int64)
    if a.shape[1] != size:
        a = horizontal(a, size)
    if a.shape[0] != size:
        a = horizontal(a.transpose(1, 0, 2), size).transpose(1, 0, 2)
    return a.astype(np.uint8)


def make_image(rng, w, h):
    """Gradients, hard-edged blocks and noise: enough detail for the resize filter to matter."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack(
        [
            128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0),
            255 * xx / w,
            255 * (1 - yy / h),
        ],
        axis=-1,
    )
    for _ in range(8):
        x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
        img[y0 : y0 + rng.integers(5, 30), x0 : x0 + rng.integers(5, 30)] = rng.integers(0, 256, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    rng = np.random.default_rng(20201229)
    basic = os.path.join(OUT, "raf", "basic")
    # (stem, extension, image size, box, landmark rows)
    specs = [
        ("test_0001", "png", (157, 131), (20.5, 15.25, 130.5, 120.75), 68),
        ("test_0002", "png", (120, 180), (-6.0, 30.5, 101.5, 170.0), 66),  # clipped left
        ("test_0003", "jpg", (200, 150), (40.75, 10.0, 180.25, 149.5), 68),
        ("test_0004", "jpg", (96, 110), (8.0, 12.5, 90.0, 100.5), 68),
    ]
    label_lines = []
    tensors = {}
    resize = {}
    for size in (64, 96, 224):
        resize[size] = transforms.Resize((size, size))
    to_tensor = transforms.ToTensor()
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

    for i, (stem, ext, (w, h), box, rows) in enumerate(specs):
        name = f"{stem}.{ext}"
        label_lines.append(f"{name} {i % 7 + 1}\n")
        img_path = os.path.join(basic, "Image", "original", name)
        os.makedirs(os.path.dirname(img_path), exist_ok=True)
        make_image(rng, w, h).save(img_path, **({"quality": 90} if ext == "jpg" else {}))
        write_text(
            os.path.join(basic, "Annotation", "boundingbox", f"{stem}.txt"),
            " ".join(repr(v) for v in box) + "\n",
        )
        # Landmarks inside the box, relative to its top-left, quarter-pixel values.
        bw, bh = box[2] - box[0], box[3] - box[1]
        rel = np.stack([rng.uniform(0, bw, 68), rng.uniform(0, bh, 68)], axis=1)
        rel = np.round(rel * 4) / 4
        written = rel if rows == 68 else np.delete(rel, [60, 64], axis=0)
        write_text(
            os.path.join(basic, "Annotation", "Landmarks_68_FAN_bbox", f"{stem}.txt"),
            "".join(f"{float(x)!r} {float(y)!r}\n" for x, y in written),
        )
        # As the reference loads them, then the 66 -> 68 mapping of aue-data (documented there):
        # the missing inner-mouth corners 60 and 64 take the outer corners 48 and 54.
        lm = np.loadtxt(os.path.join(basic, "Annotation", "Landmarks_68_FAN_bbox", f"{stem}.txt"))
        if rows == 66:
            lm = np.insert(lm, 60, lm[48], axis=0)
            lm = np.insert(lm, 64, lm[54], axis=0)
        bbox = np.loadtxt(os.path.join(basic, "Annotation", "boundingbox", f"{stem}.txt"))
        lm[:, 0] += bbox[0]
        lm[:, 1] += bbox[1]

        pil = Image.open(img_path).convert("RGB")
        if ext == "jpg":
            decoded = os.path.join(OUT, "decoded", f"{stem}.png")
            os.makedirs(os.path.dirname(decoded), exist_ok=True)
            pil.save(decoded)
        _, half = window(tuple(bbox), 0.15, w, h, 0, 0)
        cases = [("test", 0, 0, False), ("flip", half, -half, True), ("shift", -half, 1, False)]
        for case, dx, dy, flip in cases:
            win, _ = window(tuple(bbox), 0.15, w, h, dx, dy)
            rect = tuple(int(round(v)) for v in win)
            crop = pil.crop(rect)  # PIL rounds a float box the same way
            if flip:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            sizes = [64] + {(0, "test"): [224], (2, "flip"): [96]}.get((i, case), [])
            for size in sizes:
                key = f"{stem}/s{size}/{case}"
                resized = resize[size](crop)
                tensors[f"{key}/draws"] = np.array([dx, dy, int(flip)], dtype=np.int64)
                tensors[f"{key}/crop_u8"] = np.asarray(resized, dtype=np.uint8).copy()
                h_first = np.array_equal(pil12_resize(crop, size), tensors[f"{key}/crop_u8"])
                tensors[f"{key}/h_first"] = np.array([int(h_first)], dtype=np.uint8)
                tensors[f"{key}/au_loc"] = au_loc(lm, win, rect, flip, size)
                if size == 64 and case == "test" and i in (0, 2):
                    tensors[f"{key}/image"] = normalize(to_tensor(resized)).numpy().astype(np.float32)
            # The same AU rule at the other sizes the model allows.
            for size in (96, 224):
                key = f"{stem}/s{size}/{case}"
                tensors.setdefault(f"{key}/draws", np.array([dx, dy, int(flip)], dtype=np.int64))
                tensors.setdefault(f"{key}/au_loc", au_loc(lm, win, rect, flip, size))
    write_text(os.path.join(basic, "EmoLabel", "list_patition_label.txt"), "".join(label_lines))

    # Geometry-only cases: crop rectangle and AU locations, half of them built to hit ties.
    pyrng = random.Random(7)
    n = 96
    g = {k: [] for k in ("image_wh", "box", "landmarks", "draws", "size", "factor", "rect", "au_loc")}
    while len(g["size"]) < n:
        size = pyrng.choice([64, 96, 224])
        factor = pyrng.choice([0.15, 0.20])
        w, h = pyrng.randint(60, 400), pyrng.randint(60, 400)
        if len(g["size"]) % 2 == 0:
            # Nice scales: a box reaching past every edge of an S, S/2 or 2S image, so that the
            # window is the whole image, with integer landmarks: grid values land on .5 often.
            w = h = pyrng.choice([size, size // 2, 2 * size])
            pad = pyrng.randint(1, 30)
            box = (-float(pad), -float(pad), float(w + pad), float(h + pad))
            lm = np.array([[pyrng.randint(0, w), pyrng.randint(0, h)] for _ in range(68)], dtype=np.float64)
            draws = (0, 0, pyrng.randint(0, 1))
        else:
            x1 = pyrng.uniform(-40, w - 20)
            y1 = pyrng.uniform(-40, h - 20)
            x2 = pyrng.uniform(x1 + 10, x1 + 300)
            y2 = pyrng.uniform(y1 + 10, y1 + 300)
            box = (x1, y1, x2, y2)
            lm = np.stack([np.array([pyrng.uniform(x1 - 10, x2 + 10) for _ in range(68)]), np.array([pyrng.uniform(y1 - 10, y2 + 10) for _ in range(68)])], axis=1)
            half = int(int((x2 - x1) * factor) * 0.5)
            draws = (pyrng.randint(-half, half), pyrng.randint(-half, half), pyrng.randint(0, 1))
        win, _ = window(box, factor, w, h, draws[0], draws[1])
        rect = tuple(int(round(v)) for v in win)
        if rect[2] <= rect[0] or rect[3] <= rect[1]:
            continue
        g["image_wh"].append([w, h])
        g["box"].append(box)
        g["landmarks"].append(lm)
        g["draws"].append(draws)
        g["size"].append(size)
        g["factor"].append(factor)
        g["rect"].append(rect)
        g["au_loc"].append(au_loc(lm, win, rect, bool(draws[2]), size))
    tensors["geom/image_wh"] = np.array(g["image_wh"], dtype=np.int64)
    tensors["geom/box"] = np.array(g["box"], dtype=np.float64)
    tensors["geom/landmarks"] = np.array(g["landmarks"], dtype=np.float64)
    tensors["geom/draws"] = np.array(g["draws"], dtype=np.int64)
    tensors["geom/size"] = np.array(g["size"], dtype=np.int64)
    tensors["geom/factor"] = np.array(g["factor"], dtype=np.float64)
    tensors["geom/rect"] = np.array(g["rect"], dtype=np.int64)
    tensors["geom/au_loc"] = np.array(g["au_loc"], dtype=np.int64)

    save_file(tensors, os.path.join(OUT, "expected.safetensors"))
    print(f"wrote {len(tensors)} tensors under {OUT}")


def parquet_fixtures():
    """The parity samples as a parquet FER set (aue-data's `parquet` feature; schema in
    crates/data/src/parquet_source.rs), plus rows that exercise the rules:

    fer.parquet   the 4 parity test images (image bytes, 0-based label, landmarks in image
                  pixels, box, name, split, au_gt), one test row without landmarks (skipped like
                  an image without a landmark file) and one train row
    bad.parquet   3 train rows (test_0003, test_0004, test_0004); row 2 has label 9 (out of range
                  for 7 classes), row 3 a NaN landmark
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    basic = os.path.join(OUT, "raf", "basic")
    out = os.path.join(ROOT, "crates", "data", "tests", "fixtures", "parquet")
    os.makedirs(out, exist_ok=True)
    rows = []
    with open(os.path.join(basic, "EmoLabel", "list_patition_label.txt")) as f:
        entries = [line.split() for line in f if line.strip()]
    for i, (name, label) in enumerate(entries):
        stem = name.rsplit(".", 1)[0]
        with open(os.path.join(basic, "Image", "original", name), "rb") as f:
            image = f.read()
        bbox = np.loadtxt(os.path.join(basic, "Annotation", "boundingbox", f"{stem}.txt"))
        lm = np.loadtxt(os.path.join(basic, "Annotation", "Landmarks_68_FAN_bbox", f"{stem}.txt"))
        lm[:, 0] += bbox[0]
        lm[:, 1] += bbox[1]
        rows.append(
            {
                "name": name,
                "split": "test",
                "image": image,
                "label": int(label) - 1,
                "landmarks": [float(v) for v in lm.reshape(-1)],
                "box": [float(v) for v in bbox],
                "au_gt": [((i + j) % 5) / 4 for j in range(17)],
            }
        )
    # Extra rows reuse the small JPEG samples, to keep the files small.
    extra = dict(rows[3], name="no_landmarks.jpg", landmarks=None)
    train = dict(rows[2], name="train_row.jpg", split="train", box=None)
    schema = pa.schema(
        [
            ("name", pa.string()),
            ("split", pa.string()),
            ("image", pa.binary()),
            ("label", pa.int64()),
            ("landmarks", pa.list_(pa.float64())),
            ("box", pa.list_(pa.float64())),
            ("au_gt", pa.list_(pa.float32())),
        ]
    )
    table = pa.Table.from_pylist(rows + [extra, train], schema=schema)
    pq.write_table(table, os.path.join(out, "fer.parquet"))

    bad = [dict(r, split="train") for r in (rows[2], rows[3], rows[3])]
    bad[1]["label"] = 9
    bad[2]["landmarks"] = [float("nan")] + bad[2]["landmarks"][1:]
    pq.write_table(pa.Table.from_pylist(bad, schema=schema), os.path.join(out, "bad.parquet"))
    print(f"wrote fer.parquet and bad.parquet under {out}")


if __name__ == "__main__":
    import sys

    torch.manual_seed(0)
    if "--parquet" in sys.argv[1:]:
        parquet_fixtures()
    else:
        main()

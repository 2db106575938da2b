"""Measure candidate (b), MediaPipe's 468-point face mesh reduced to the iBUG 68, for comparison
with the face-api nets aue-landmarks ships (a dev tool; nothing at run time uses it).

MediaPipe has no 68-point layout, so the 68 points are taken from mesh vertices by a fixed index
map. We fit that map on data instead of copying one: for each iBUG point, the vertex with the
smallest mean inter-ocular-normalised distance to the truth over a *fitting* set (an aue-synth
train split). The map is then scored on a separate set: written as RAF-DB-layout landmark files
that `aue-landmarks eval --root DIR --pred-dir NAME` scores exactly like the face-api output.
Note the fitted map absorbs the fitting set's systematic definition offsets (e.g. where the
synthetic faces put the chin), which the face-api nets cannot do: it favours MediaPipe on
synthetic data.

Usage (needs `pip install mediapipe==0.10.14 numpy pillow`):
  python3 compare_mediapipe.py --fit /tmp/synth_train --eval /tmp/synth --pred-dir mediapipe_map \
      [--pts /tmp/menpo_pts]
"""

import argparse
import glob
import os

import mediapipe as mp
import numpy as np
from PIL import Image


def rafdb_items(root, split):
    base = os.path.join(root, "basic")
    for line in open(os.path.join(base, "EmoLabel", "list_patition_label.txt")):
        name = line.split()[0]
        if not name.startswith(split):
            continue
        stem = os.path.splitext(name)[0]
        box = np.loadtxt(os.path.join(base, "Annotation", "boundingbox", stem + ".txt"))
        gt = np.loadtxt(os.path.join(base, "Annotation", "Landmarks_68_FAN_bbox", stem + ".txt")) + box[:2]
        yield os.path.join(base, "Image", "original", name), stem, box, gt


def mesh_points(fm, path):
    img = np.asarray(Image.open(path).convert("RGB"))
    res = fm.process(img)
    if not res.multi_face_landmarks:
        return None
    h, w = img.shape[:2]
    return np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark])


def read_pts(path):
    text = open(path).read()
    body = text.split("{", 1)[1].split("}", 1)[0]
    return np.array(body.split(), dtype=float).reshape(-1, 2) - 1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--pred-dir", required=True)
    ap.add_argument("--pts")
    args = ap.parse_args()
    fm = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)

    meshes, truths, missed = [], [], 0
    for path, _, _, gt in rafdb_items(args.fit, "train"):
        m = mesh_points(fm, path)
        if m is None:
            missed += 1
            continue
        meshes.append(m)
        truths.append(gt)
    meshes, truths = np.array(meshes), np.array(truths)
    iod = np.linalg.norm(truths[:, 36] - truths[:, 45], axis=1)
    # cost[v, i] = mean_n |mesh[n, v] - truth[n, i]| / iod[n]
    cost = np.stack([(np.linalg.norm(meshes - truths[:, i : i + 1], axis=2) / iod[:, None]).mean(0) for i in range(68)], 1)
    index_map = cost.argmin(0)
    print(f"fit: {len(meshes)} faces ({missed} without a face); map = {index_map.tolist()}")
    print(f"fit-set NME with the fitted map: {cost.min(0).mean():.4f}")

    out_missed = 0
    for path, stem, box, _ in rafdb_items(args.eval, "test"):
        m = mesh_points(fm, path)
        out = os.path.join(args.eval, "basic", "Annotation", args.pred_dir, stem + ".txt")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if m is None:
            out_missed += 1
            # No face: predict the mean shape in the box so the file exists and counts as an error.
            pts = np.tile(box[:2] + (box[2:] - box[:2]) / 2, (68, 1))
        else:
            pts = m[index_map]
        np.savetxt(out, pts - box[:2], fmt="%.3f")
    print(f"eval: wrote {args.pred_dir}; {out_missed} images without a face (written as box centre)")

    if args.pts:
        nmes = []
        for pts_file in sorted(glob.glob(os.path.join(args.pts, "*.pts"))):
            img = os.path.splitext(pts_file)[0] + ".png"
            gt = read_pts(pts_file)
            m = mesh_points(fm, img)
            if m is None:
                print(f"{os.path.basename(img)}: no face")
                continue
            nme = np.linalg.norm(m[index_map] - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45])
            nmes.append(nme)
            print(f"{os.path.basename(img)}: NME {nme:.4f}")
        print(f"pts set: mean NME {np.mean(nmes):.4f} over {len(nmes)} faces")


if __name__ == "__main__":
    main()

"""Check `aue-export`'s ONNX files in ONNX Runtime against aue's own eval forward pass, and time both.

For a preset: writes a random checkpoint (crates/export/examples/onnx_dev.rs `checkpoint`: the
training-from-scratch init with BN affine parameters moved off 1 / 0 and running statistics
calibrated on a random batch, as check_forward.py does, so that float32 rounding of a random deep
network does not decide the comparison), exports it with `aue-export --all-outputs` (and with
`--with-preprocess`), validates the file with `onnx.checker` (full check, shape inference), and for
each batch size runs:
    aue      onnx_dev `forward`: aue's eval forward pass (1 untimed + --reps timed passes)
    ORT      onnxruntime's CPU provider on the same inputs (1 untimed + --reps timed runs)
It prints the relative L2 error of every output against aue's and the median pass times. Exits 1
if an output is missing, misshapen or above --tol (1e-4). Both sides use --threads threads.

    pip install onnxruntime onnx numpy safetensors
    python3 tools/check_onnx.py --preset resnet18                 # S = 224, batches 2 and 5
    python3 tools/check_onnx.py --preset resnet101 --reps 3
    python3 tools/check_onnx.py --preset tiny --size 64           # seconds

Dev tool only: tests never need Python (the Rust tests run the same files in tract).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def run(cmd: list[str], env: dict | None = None) -> str:
    t = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}")
    print(f"  {time.time() - t:6.1f} s  {' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd)}")
    return res.stdout


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    got, want = got.astype(np.float64), want.astype(np.float64)
    n = np.linalg.norm(want)
    d = np.linalg.norm(got - want)
    return float(d / n) if n > 0 else float(d)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def time_ort(sess: ort.InferenceSession, feed: dict, reps: int) -> tuple[dict, list[float]]:
    names = [o.name for o in sess.get_outputs()]
    out = sess.run(names, feed)  # untimed
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = sess.run(names, feed)
        times.append(time.perf_counter() - t)
    return dict(zip(names, out)), times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="resnet18", choices=["resnet101", "resnet50", "resnet18", "tiny"])
    ap.add_argument("--size", type=int, default=None, help="input side S (default: the preset's)")
    ap.add_argument("--batches", default="2,5")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="keep the files here (default: a temp folder)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already in target/release")
    args = ap.parse_args()

    if not args.no_build:
        run(["cargo", "build", "--release", "-p", "aue-export", "--bin", "aue-export", "--example", "onnx_dev"])
    export = os.path.join(RELEASE, "aue-export")
    dev = os.path.join(RELEASE, "examples", "onnx_dev")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    work = args.workdir or tempfile.mkdtemp(prefix="aue-onnx-")
    os.makedirs(work, exist_ok=True)
    ckpt = os.path.join(work, f"{args.preset}.safetensors")
    cmd = [dev, "checkpoint", "--preset", args.preset, "--stage", "3", "--seed", str(args.seed), "--out", ckpt]
    if args.size:
        cmd += ["--size", str(args.size)]
    run(cmd, env)

    files = {}
    for variant, flags in [("plain", []), ("preprocess", ["--with-preprocess"])]:
        path = os.path.join(work, f"{args.preset}_{variant}.onnx")
        t = time.time()
        run([export, "--checkpoint", ckpt, "--out", path, "--all-outputs", *flags], env)
        files[variant] = path
        onnx.checker.check_model(path, full_check=True)
        meta = json.load(open(path[: -len(".onnx")] + ".json"))
        print(f"  {variant}: {os.path.getsize(path) / 1e6:.1f} MB, opset {meta['opset']}, "
              f"onnx.checker full check passed, export {time.time() - t:.1f} s")
    size = meta["input_size"]
    grid = meta["au_grid"]
    lo, hi = meta["au_centre_range"]

    sessions = {k: session(v, args.threads) for k, v in files.items()}
    rng = np.random.default_rng(args.seed + 1)
    worst = 0.0
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        rgb = rng.integers(0, 256, size=(b, size, size, 3), dtype=np.uint8)
        # The data pipeline's normalisation (crates/data preprocess: (v / 255 - mean) / std in f32).
        image = ((rgb.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD)
        image = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
        au_loc = rng.integers(lo, hi + 1, size=(b, 17, 4), dtype=np.int64)
        inputs = os.path.join(work, f"inputs_b{b}.safetensors")
        outputs = os.path.join(work, f"aue_b{b}.safetensors")
        save_file({"image": image, "au_loc": au_loc}, inputs)
        timing = json.loads(run([dev, "forward", "--checkpoint", ckpt, "--inputs", inputs, "--out", outputs,
                                 "--reps", str(args.reps)], env).strip().splitlines()[-1])
        want = load_file(outputs)
        want["expression_prob"] = softmax(want["pred2"])
        for variant, sess in sessions.items():
            feed = {"image": rgb if variant == "preprocess" else image, "au_loc": au_loc}
            got, times = time_ort(sess, feed, args.reps)
            for name in ["feature", "pred_em", "au_feat", "pred_au", "pred2", "au_prob", "expression_prob"]:
                if name not in got or got[name].shape != want[name].shape:
                    print(f"  batch {b} {variant}: output {name} missing or misshapen")
                    return 1
                err = rel_l2(got[name], want[name])
                worst = max(worst, err)
                rows.append((b, variant, name, err))
            rows.append((b, variant, "time", (statistics.median(times), statistics.median(timing["seconds"]))))

    print(f"\n{args.preset}, S = {size}, {args.threads} threads, median of {args.reps} passes")
    print(f"{'batch':>5} {'graph':<11} {'output':<16} {'rel L2 vs aue':>14}")
    for b, variant, name, val in rows:
        if name == "time":
            ort_s, aue_s = val
            print(f"{b:>5} {variant:<11} {'time':<16} ORT {ort_s * 1e3:9.1f} ms  aue {aue_s * 1e3:9.1f} ms  "
                  f"(aue / ORT {aue_s / ort_s:.2f})")
        else:
            print(f"{b:>5} {variant:<11} {name:<16} {val:14.3e}")
    print(f"worst relative L2: {worst:.3e} (tolerance {args.tol:g}); files in {work}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())

"""Trainer parity on the full ResNet-101: aue's training steps of a stage against the reference's.

Both sides start from the parity filler's weights (aue_reference.fill_parity_, written once as an
f32 safetensors file; `--init default`: PyTorch's initialisers from torch seed 0) and train on one
fixed batch (B images of S x S, seed 0) with SGD, lr 0.01 (`--lr`), momentum 0.9, every part in the stage's modes (stage 1 by default, `--stage 2|3` with dropout off
on both sides):
    aue:        `aue-bench worker --mode stageN --dtype f64`: aue-train's Trainer, the step the
                stage binaries run;
    reference:  tools/bench_worker.py --mode stageN --dtype f64: aue_reference's set_stage_mode,
                stage_forward_loss, backward and torch.optim.SGD; with `--authors DIR` the
                authors' released code instead (bench_worker.py --authors: their model, loss and
                optimizer set-up unchanged, their Train() loop body; stage 1 only in f64).
Both load the same files and answer `step` with the step's loss (computed before its update). The
script prints one row per step and fails (exit 1) when a loss differs by more than --tol
(relative). In float64 the first losses agree to about 1e-13, and the difference then grows
30-100-fold per step on ResNet-101, as a one-rounding-error perturbation of the reference grows
in the reference alone (`--control`; tools/README.md has the tables); `--dtype f32` shows the
drift float32 runs of a deep network show whatever the implementation.

Run from the repository root after `cargo build --release -p aue-bench` (about 2 GB of memory per
side at B = 4, S = 224; a few minutes per side on 2 cores):
    python3 tools/trainer_parity_resnet101.py
    python3 tools/trainer_parity_resnet101.py --steps 10 --batch 4 --size 224 --threads 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import aue_reference as R  # noqa: E402


class Worker:
    """A worker process of aue-bench's protocol: `ready ...`, then `step` -> `t <s> <loss>`."""

    def __init__(self, name: str, cmd: list, env: dict):
        self.name = name
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.expect("ready")

    def expect(self, tag: str) -> str:
        line = self.proc.stdout.readline().strip()
        if not line.startswith(tag + " "):
            self.proc.kill()
            raise SystemExit(f"{self.name} worker: expected `{tag} ...`, got {line!r}")
        return line[len(tag) + 1:]

    def step(self) -> tuple[float, float]:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        seconds, loss = self.expect("t").split()
        return float(seconds), float(loss)

    def quit(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.expect("peak")
        self.proc.wait()


def write_files(folder: str, preset: str, batch: int, size: int, init: str) -> tuple[str, str]:
    """The starting weights (f32) and one batch drawn from seed 0.

    `parity`: the parity filler's deterministic values; `default`: the model's own initialisers
    (PyTorch's, as a fresh `build_model` has them) from torch seed 0.
    """
    torch.manual_seed(0)
    model = R.build_model(preset, input_size=size)
    if init == "parity":
        R.fill_parity_(model)
    weights = os.path.join(folder, "weights.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    del model
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, size, size, generator=gen)
    au_loc = R.random_au_loc(batch, size, generator=gen).to(torch.int64)
    label = torch.randint(0, 7, (batch,), generator=gen)
    inputs = os.path.join(folder, "inputs.safetensors")
    save_file({"image": image, "au_loc": au_loc, "label": label}, inputs)
    return weights, inputs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", type=int, choices=[1, 2, 3], default=1,
                    help="the stage to train (2 and 3 with dropout off on both sides)")
    ap.add_argument("--preset", default="resnet101", help="another preset for a quick run")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["f32", "f64"], default="f64")
    ap.add_argument("--init", choices=["parity", "default"], default="parity",
                    help="starting weights: the parity filler's values, or PyTorch's initialisers from seed 0")
    ap.add_argument("--tol", type=float, default=1e-6, help="largest relative loss difference accepted")
    ap.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9) of both sides")
    ap.add_argument("--control", action="store_true",
                    help="also run the reference on images x (1 + eps): how far a perturbation of one "
                         "rounding error grows in the reference alone")
    ap.add_argument("--authors", metavar="DIR",
                    help="the reference side is the authors' released code in DIR (a checkout of "
                         "HCPLab-SYSU/AUE-CRL; stage 1 in f64, or f32), run by bench_worker.py --authors")
    ap.add_argument("--aue-bench", default=os.path.join(ROOT, "target", "release", "aue-bench"))
    args = ap.parse_args()
    if args.authors and args.control:
        raise SystemExit("--control perturbs aue_reference's run: run it without --authors")
    if not os.path.isfile(args.aue_bench):
        raise SystemExit(f"{args.aue_bench} not found: run `cargo build --release -p aue-bench` first")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as folder:
        weights, inputs = write_files(folder, args.preset, args.batch, args.size, args.init)
        files = ["--weights", weights, "--inputs", inputs]
        common = ["--mode", f"stage{args.stage}", "--preset", args.preset, "--dtype", args.dtype]
        dropout_off = args.stage > 1
        workers = [
            Worker("aue", [args.aue_bench, "worker", *common, "--batch", str(args.batch), "--size",
                           str(args.size), "--device", "cpu", "--lr", str(args.lr), *files]
                   + (["--dev-no-dropout"] if dropout_off else []), env),
            Worker("reference", [sys.executable, os.path.join(HERE, "bench_worker.py"), *common, "--lr",
                                 str(args.lr), "--threads", str(args.threads), *files]
                   + (["--no-dropout"] if dropout_off else [])
                   + (["--authors", args.authors] if args.authors else []), env),
        ]
        if args.control:
            workers.append(Worker("control", workers[1].cmd + ["--nudge"], env))
        print(f"{args.preset} stage {args.stage}, {args.dtype}, batch {args.batch}, {args.size}x{args.size} px, SGD lr {args.lr} "
              f"momentum 0.9, one fixed batch, {args.init} weights\n", flush=True)
        control = " reference vs reference on images x (1 + eps) |" if args.control else ""
        ref = "authors' code" if args.authors else "reference"
        print(f"| step | aue loss | {ref} loss | relative difference | aue s | {ref} s |{control}")
        print("|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.control else ""), flush=True)
        worst = 0.0
        for step in range(1, args.steps + 1):
            (ta, la), (tr, lref), *rest = (w.step() for w in workers)
            rel = abs(la - lref) / abs(lref)
            worst = max(worst, rel)
            extra = "".join(f" {abs(lc - lref) / abs(lref):.2e} |" for _, lc in rest)
            print(f"| {step} | {la!r} | {lref!r} | {rel:.2e} | {ta:.1f} | {tr:.1f} |{extra}", flush=True)
        for w in workers:
            w.quit()
    verdict = "within" if worst <= args.tol else "OVER"
    print(f"\nlargest relative difference {worst:.2e}: {verdict} the tolerance {args.tol:.0e}")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()

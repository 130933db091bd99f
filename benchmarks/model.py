"""Size, multiply-adds and CPU latency of the hourglass variants, beside the original's.

    .venv/bin/python -m benchmarks.model [--repeats 20] [--warmup 3]

Multiply-adds are counted analytically from the built layers' shapes: for each Conv2D
out_h * out_w * kh * kw * c_in * c_out, for each DepthwiseConv2D out_h * out_w * kh * kw *
c_in * depth_multiplier; BatchNorm (folded into the convolutions at export), additions,
poolings, upsampling and the input rescaling are not counted. The same rule applied to the
original project's layers gives its published 10.1 G / 4.67 G / 1.30 G.

Latency: one image (batch 1, uint8 input) through `tf.function(model(x, training=False))`,
`warmup` calls first, then the median of `repeats` timed calls, on this machine's CPU with
TensorFlow's default thread pools. Numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from model import build_hourglass, count_trainable_parameters  # noqa: E402

# name, builder arguments, original trainable parameters, original multiply-adds (G; the
# 192 one is not published: it is the same counting rule applied to the original at 192x192)
VARIANTS = [
    ("hg_s2", dict(num_channels=256, mobile=False, input_size=(256, 256)), 6_571_554, 10.1),
    ("hg_s2_mobile", dict(num_channels=256, mobile=True, input_size=(256, 256)), 2_751_010, 4.67),
    ("hg_s2_mobile_tiny", dict(num_channels=128, mobile=True, input_size=(256, 256)), 720_802,
     1.30),
    ("hg_s2_mobile_tiny_192", dict(num_channels=128, mobile=True, input_size=(192, 192)),
     720_802, 0.73),
]


def count_multiply_adds(model) -> int:
    """Multiply-adds of the model's convolutions for one image (see the module docstring)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            _, out_h, out_w, out_c = layer.output.shape
            kh, kw = layer.kernel_size
            in_c = layer.input.shape[-1]
            if isinstance(layer, layers.DepthwiseConv2D):
                total += out_h * out_w * kh * kw * in_c * layer.depth_multiplier
            else:
                total += out_h * out_w * kh * kw * in_c * out_c // layer.groups
    return int(total)


def measure_latency_ms(model, input_size, warmup: int, repeats: int) -> float:
    """Median wall time (ms) of one batch-1 call of the compiled forward pass."""
    image = tf.constant(np.random.default_rng(0).integers(
        0, 256, (1, input_size[0], input_size[1], 3), dtype=np.uint8))
    from export.verify import interleaved_latency_ms
    forward = tf.function(lambda x: model(x, training=False))
    return interleaved_latency_ms({"forward": lambda: [o.numpy() for o in forward(image)]},
                                  repeats, rounds=1, warmup=warmup)["forward"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-keypoints", type=int, default=17)
    args = parser.parse_args(argv)

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, batch 1, "
          f"median of {args.repeats} calls after {args.warmup} warm-up calls")
    header = (f"{'variant':<22} {'input':>7} {'trainable':>10} {'original':>10} {'diff':>7} "
              f"{'MACs':>8} {'orig MACs':>9} {'CPU ms':>8}")
    print(header)
    print("-" * len(header))
    for name, kwargs, original_params, original_macs in VARIANTS:
        model = build_hourglass(num_keypoints=args.num_keypoints, num_stacks=2, **kwargs)
        params = count_trainable_parameters(model)
        macs = count_multiply_adds(model) / 1e9
        latency = measure_latency_ms(model, kwargs["input_size"], args.warmup, args.repeats)
        diff = 100.0 * (params - original_params) / original_params
        size = "x".join(str(v) for v in kwargs["input_size"])
        print(f"{name:<22} {size:>7} {params:>10,} {original_params:>10,} {diff:>+6.2f}% "
              f"{macs:>7.2f}G {original_macs:>8.2f}G {latency:>8.1f}", flush=True)


if __name__ == "__main__":
    main()

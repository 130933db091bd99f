"""The last step of `make quickstart`: what was measured and where everything is."""
from __future__ import annotations

import argparse
import glob
import json
import os
import time


def _load(path):
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="quickstart_out")
    args = p.parse_args(argv)
    out = args.out
    keras_eval = _load(os.path.join(out, "eval_keras.json")) or {}
    int8_eval = _load(os.path.join(out, "eval_int8.json")) or {}
    started = None
    if os.path.isfile(out + ".start"):
        with open(out + ".start") as f:
            started = float(f.read().strip() or 0)
    models = sorted(glob.glob(os.path.join(out, "export", "*.tflite")))
    lines = ["", "quickstart finished" + (f" in {time.time() - started:.0f} s" if started else "")]
    if keras_eval:
        lines.append(f"  validation PCK (float Keras model): {keras_eval['pck']:.4f} "
                     f"on {keras_eval['examples']} held-out examples")
    if int8_eval:
        lines.append(f"  validation PCK (int8 TFLite):       {int8_eval['pck']:.4f}")
    lines += [
        f"  records:      {out}/tfrecords (dataset_info.json describes them)",
        f"  logs:         {out}/logs (checkpoints/, val.txt, final.keras, best ep*.keras)",
        "  TFLite:       " + (", ".join(f"{m} ({os.path.getsize(m) / 1e6:.2f} MB)" for m in models) or "-"),
        f"  picture:      {out}/prediction.jpg",
        f"  TensorBoard:  tensorboard --logdir {out}/logs",
    ]
    print("\n".join(lines))
    if keras_eval and keras_eval.get("pck", 0) < 0.9:
        print("WARNING: validation PCK below the 0.9 the quickstart is meant to reach")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

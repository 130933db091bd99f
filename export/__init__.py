"""Deployable models: SavedModel and (quantized) TFLite exports of a trained hourglass, and
proof of what quantization cost.

- `python -m export --model_path M.keras --output_dir O --format saved_model tflite
  --quantize none float16 dynamic int8 int16x8 mixed --representative RECORDS [--with_decoder]`
  (`export.convert.export_model`): one file per variant, a metadata json beside each, and
  `O/export_manifest.json`. int8 and int16x8 are integer-only from their raw-pixel input on;
  mixed keeps the layers of largest quantization error in float (`export.quantize`).
- `python -m export.verify --models O --tfrecords RECORDS [--split val] [--json OUT]`
  (`export.verify.verify_exports`): size, PCK and keypoint error next to the float Keras
  model's, keypoint distance and largest heatmap difference from it on the same crops,
  single-image CPU latency of every variant timed in turns, and per TFLite file whether it is
  integer-only, GPU-delegate compatible and what its card says it is (exit 1 if not).
"""

"""Deployable models: SavedModel and (quantized) TFLite exports of a trained hourglass, and
proof of what quantization cost.

- `python -m export --model_path M.keras --output_dir O --format saved_model tflite
  --quantize none float16 dynamic int8 --representative RECORDS [--with_decoder]`
  (`export.convert.export_model`): one file per variant, a metadata json beside each, and
  `O/export_manifest.json`.
- `python -m export.verify --models O --tfrecords RECORDS [--split val] [--json OUT]`
  (`export.verify.verify_exports`): size, PCK next to the float Keras model's, largest heatmap
  difference on the same crops, and single-image CPU latency of every variant.
"""

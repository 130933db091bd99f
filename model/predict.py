"""The demo: keypoints on an image, a folder, a video file or a webcam, skeleton drawn.

Frames are read with OpenCV (BGR) and converted to RGB before the model sees them. Without
--bbox the whole frame is letterboxed to the model's aspect ratio (never stretched); the crop
uses the same affine and warp as training, and predictions go back through its inverse.
"""
from __future__ import annotations

import os
import time
from typing import Iterator, Optional

import cv2
import numpy as np

from configs import KeypointSpec
from model.runner import Runner

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def predict_image(runner: Runner, spec: KeypointSpec, image_rgb: np.ndarray,
                  bbox=None, refine: str = "dark", flip_test: bool = False, padding: float = 1.25):
    """Keypoints [K, 2] in original-image pixels and confidences [K] for one RGB image."""
    from model.evaluation import predict_heatmaps
    from pipeline.affine import crop_matrix_np, invert_np, transform_points_np, warp_image
    from pipeline.codec import HeatmapCodec
    from pipeline.coords import box_to_center_scale

    h, w = image_rgb.shape[:2]
    if bbox is not None:
        center, scale = box_to_center_scale(*bbox)
        matrix = crop_matrix_np(center, scale, padding, runner.input_size)
    else:
        matrix = crop_matrix_np(None, None, 1.0, runner.input_size, crop_mode="frame",
                                image_size=(h, w))
    crop = np.asarray(warp_image(np.asarray(image_rgb, np.uint8), matrix.astype(np.float32),
                                 runner.input_size))   # uint8 in, rounded uint8 out
    heatmaps = predict_heatmaps(runner, crop[None], spec, flip_test)
    codec = HeatmapCodec(runner.input_size, runner.stride)
    coords, conf = codec.decode(heatmaps, refine=refine)
    coords = np.asarray(coords, np.float64)[0]
    return transform_points_np(invert_np(matrix), coords), np.asarray(conf)[0]


def _frames(source: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB frame) from an image, a folder of images, a video file or a webcam index."""
    if source.isdigit() or os.path.splitext(source)[1].lower() not in IMAGE_EXTENSIONS + ("",):
        capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
        if not capture.isOpened():
            raise FileNotFoundError(f"--input {source}: cannot open it as a video or webcam")
        try:
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                yield f"frame{index:06d}", bgr[..., ::-1]
                index += 1
        finally:
            capture.release()
        return
    if os.path.isdir(source):
        paths = sorted(os.path.join(source, f) for f in os.listdir(source)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise FileNotFoundError(f"--input {source}: no images in this folder")
    elif os.path.isfile(source):
        paths = [source]
    else:
        raise FileNotFoundError(f"--input {source}: no such file or folder")
    for path in paths:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path}: not a readable image")
        yield os.path.basename(path), bgr[..., ::-1]


def _is_video(source: str) -> bool:
    return source.isdigit() or (os.path.isfile(source) and
                                os.path.splitext(source)[1].lower() not in IMAGE_EXTENSIONS)


def run_demo(runner: Runner, spec: KeypointSpec, source: str, output: Optional[str], *,
             bbox=None, refine: str = "dark", flip_test: bool = False,
             conf_threshold: float = 0.1, max_frames: Optional[int] = None) -> dict:
    """Predict on every frame of `source`; write drawn images or a video to `output`."""
    from model.draw import draw_skeleton

    video = _is_video(source)
    single = os.path.isfile(source) and not video
    writer, written, count, started = None, [], 0, time.time()
    predictions = []
    for name, frame in _frames(source):
        kps, conf = predict_image(runner, spec, frame, bbox=bbox, refine=refine, flip_test=flip_test)
        predictions.append({"frame": name, "keypoints": kps.round(2).tolist(),
                            "confidence": conf.round(4).tolist()})
        drawn = draw_skeleton(frame, kps, conf >= conf_threshold, spec)
        bgr = np.ascontiguousarray(drawn[..., ::-1])
        if output and video:
            if writer is None:
                os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
                writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), 25.0,
                                         (bgr.shape[1], bgr.shape[0]))
            writer.write(bgr)
        elif output:
            path = output if single and os.path.splitext(output)[1] else os.path.join(output, name)
            if not os.path.splitext(path)[1]:
                path += ".jpg"
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{os.path.splitext(path)[0]}.tmp-{os.getpid()}{os.path.splitext(path)[1]}"
            if not cv2.imwrite(tmp, bgr):
                raise ValueError(f"cannot write {path}: use a .jpg or .png name")
            os.replace(tmp, path)
            written.append(path)
        count += 1
        if max_frames and count >= max_frames:
            break
    if writer is not None:
        writer.release()
        written.append(output)
    seconds = time.time() - started
    return {"frames": count, "outputs": written, "seconds": round(seconds, 2),
            "fps": round(count / seconds, 2) if seconds > 0 else None, "predictions": predictions}

"""The demo: keypoints on an image, a folder, a video file or a webcam, skeleton drawn.

Frames are read with OpenCV (BGR) and converted to RGB before the model sees them. Without
--bbox the whole frame is letterboxed to the model's aspect ratio (never stretched); the crop
uses the same affine and warp as training, and predictions go back through its inverse
(``model.predictor.Predictor``, with the model card's crop and codec).

With ``track`` each frame (a video's, a webcam's or a folder's, in name order) is read from
the box of the previous frame's keypoints (``model.tracking.Tracker``); with ``smooth``
the keypoints go through a One-Euro filter that moves with the subject
(``model.tracking.OneEuroFilter``) in frame pixels, at the input's frame rate. A CSV
(frame, keypoint, x, y, confidence) can be written beside the drawings.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from configs.files import atomic_path, remove_path, temp_path
from model.predictor import Predictor
from model.tracking import (
    DEFAULT_TRACK_THRESHOLD,
    OneEuroFilter,
    OneEuroSettings,
    Tracker,
    smooth_step,
)
from pipeline.video import VIDEO_EXTENSIONS, VideoWriter


@dataclasses.dataclass(frozen=True)
class PipelinePredictor:
    """What run_demo needs of a predictor, for a model that crops, decodes and maps back by
    itself (a one-file pipeline, ``model.runner.PipelineRunner``): ``run(frame, box)`` ->
    (keypoints [K, 2] in frame pixels, confidence [K]), box None for the whole frame."""

    run: Callable
    spec: object          # configs.KeypointSpec: names and skeleton to draw

    def predict_image(self, image_rgb: np.ndarray, bbox=None) -> tuple[np.ndarray, np.ndarray]:
        keypoints, confidence = self.run(image_rgb, bbox)
        return np.asarray(keypoints, np.float64), np.asarray(confidence, np.float64)


def pipeline_runner(path: str):
    """A ``model.runner.PipelineRunner`` when `path` is a frame -> keypoints pipeline .tflite
    (two inputs, image and box: ``python -m export --full_pipeline``), else None (any other
    model, or a file ``model.runner.load_runner`` will name the problem of). ValueError
    naming the file for a pipeline that cannot be run."""
    if not (path.endswith(".tflite") and os.path.isfile(path)):
        return None
    try:
        from model.runner import PipelineRunner, open_interpreter
        inputs = len(open_interpreter(path).get_input_details())
    except Exception:  # noqa: BLE001 - no pipeline support here, or unreadable: load_runner says why
        return None
    return PipelineRunner(path) if inputs == 2 else None


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


DEFAULT_FPS = 25.0      # when the input (a webcam, some containers) reports no frame rate


def _is_video(source: str) -> bool:
    return source.isdigit() or (os.path.isfile(source) and
                                os.path.splitext(source)[1].lower() not in IMAGE_EXTENSIONS)


def _input_images(source: str) -> list[str]:
    """The image paths of an image file or a folder (sorted)."""
    if os.path.isdir(source):
        paths = sorted(os.path.join(source, f) for f in os.listdir(source)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise FileNotFoundError(f"--input {source}: no images in this folder")
        return paths
    if os.path.isfile(source):
        return [source]
    raise FileNotFoundError(f"--input {source}: no such file or folder")


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def image_output_paths(source: str, paths: list[str], output: str) -> list[str]:
    """Where each input image's drawing goes: `output` itself for one image given a file
    name, else OUTPUT/<input name>. ValueError when a path would overwrite an input or has
    no image extension."""
    ext = os.path.splitext(output)[1].lower()
    if os.path.isfile(source) and ext and not os.path.isdir(output):
        if ext not in IMAGE_EXTENSIONS:
            raise ValueError(f"--output {output}: an image is written as an image; end the name "
                             f"in .jpg or .png (or give a folder)")
        outputs = [output]
    else:
        if ext and os.path.isfile(output):
            raise ValueError(f"--output {output} is a file; a folder of images needs an output folder")
        outputs = [os.path.join(output, os.path.basename(p)) for p in paths]
    clashes = [o for o, p in zip(outputs, paths) if _same_file(o, p)]
    if clashes:
        raise ValueError(f"--output {output} would overwrite the input image {clashes[0]}"
                         + (f" and {len(clashes) - 1} more" if len(clashes) > 1 else "")
                         + "; give another output folder or file name (inputs are never overwritten)")
    return outputs


def video_output_path(source: str, output: str) -> str:
    """`output` checked for a video input: a video container extension, not the input."""
    ext = os.path.splitext(output)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
        stem = "webcam" if source.isdigit() else os.path.splitext(os.path.basename(source))[0]
        raise ValueError(f"--output {output}: a video input is written as a video; end the name in "
                         f"{', '.join(VIDEO_EXTENSIONS)} (e.g. {stem}_pose.mp4)")
    if not source.isdigit() and _same_file(source, output):
        raise ValueError(f"--output {output} is the input video; give another file name "
                         f"(inputs are never overwritten)")
    return output


def csv_output_path(source: str, csv_path: str, output: Optional[str]) -> str:
    """`csv_path` checked: a .csv name that is neither the input nor --output."""
    if os.path.splitext(csv_path)[1].lower() != ".csv":
        raise ValueError(f"--csv {csv_path}: the keypoint table is written as CSV; end the name "
                         f"in .csv")
    if os.path.isdir(csv_path):
        raise ValueError(f"--csv {csv_path} is a folder; give a file name ending in .csv")
    if not source.isdigit() and os.path.exists(source) and _same_file(source, csv_path):
        raise ValueError(f"--csv {csv_path} is the input; give another file name "
                         f"(inputs are never overwritten)")
    if output and (os.path.realpath(output) == os.path.realpath(csv_path)):
        raise ValueError(f"--csv {csv_path} is also --output; give them different names")
    return csv_path


class _CsvWriter:
    """Rows (frame, keypoint, x, y, confidence) into a temporary file, renamed to `path`
    only by ``finish``; ``discard`` removes the temporary file."""

    HEADER = "frame,keypoint,x,y,confidence\n"

    def __init__(self, path: str, names):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path, self.names, self.tmp = path, list(names), temp_path(path)
        self.file = open(self.tmp, "w", encoding="utf-8", newline="")
        self.file.write(self.HEADER)

    def write(self, frame, keypoints: np.ndarray, confidence: np.ndarray) -> None:
        self.file.write("".join(f"{frame},{name},{x:.3f},{y:.3f},{c:.4f}\n" for name, (x, y), c
                                in zip(self.names, keypoints, confidence)))

    def finish(self) -> str:
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.file.close()
        remove_path(self.tmp)


def _video_frames(capture) -> Iterator[tuple[str, np.ndarray]]:
    index = 0
    while True:
        ok, bgr = capture.read()
        if not ok or bgr is None:
            return
        yield f"frame{index:06d}", bgr[..., ::-1]
        index += 1


def _image_frames(paths: list[str]) -> Iterator[tuple[str, Optional[np.ndarray]]]:
    """(name, RGB image), or (name, None) for a file OpenCV cannot decode."""
    for path in paths:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        yield path, (None if bgr is None else bgr[..., ::-1])


def _write_image(path: str, bgr: np.ndarray) -> None:
    """Temp file then rename: never a half-written image under the final name."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, bgr):
            raise ValueError(f"cannot write {path}: use a .jpg or .png name in a writable folder")


def run_demo(predictor: Predictor | PipelinePredictor, source: str, output: Optional[str], *, bbox=None,
             conf_threshold: float = 0.1, max_frames: Optional[int] = None, track: bool = False,
             track_threshold: float = DEFAULT_TRACK_THRESHOLD,
             smooth: Optional[OneEuroSettings] = None, csv: Optional[str] = None,
             draw_box: bool = False) -> dict:
    """Predict on every frame of `source`; write drawn images or a video to `output` and, with
    `csv`, the keypoints as a table (frame: the video frame index or the image file name;
    keypoint name; x, y in frame pixels, pixel centres at +0.5; confidence).

    `track`: follow the subject from frame to frame (``model.tracking.Tracker``; `bbox`, else
    the whole frame, is where it searches); `smooth`: One-Euro filter the keypoints
    (``model.tracking.smooth_step`` when tracking: held while the subject is lost, restarted
    when a search finds it); `draw_box`: draw the box each frame was read from.

    Promises: no input file is ever overwritten (ValueError before any work); images and the
    CSV are written atomically; a video keeps the input's frame rate (DEFAULT_FPS when it
    reports none) and is written to a temporary name, renamed only when complete; unreadable
    images are skipped and listed in "skipped"; ValueError when no frame could be processed.
    "predictions" holds each frame's keypoints (smoothed when smoothing, the model's in
    "raw_keypoints"), and with tracking its "box" and "status"; "tracking" counts statuses."""
    from model.draw import draw_box as draw_box_on
    from model.draw import draw_skeleton

    video = _is_video(source)
    capture, fps, expected, paths, outputs = None, None, 0, [], []
    if csv:
        csv_output_path(source, csv, output)
    if video:
        out_video = video_output_path(source, output) if output else None
        capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
        if not capture.isOpened():
            raise FileNotFoundError(f"--input {source}: cannot open it as a video or webcam")
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if fps and 0 < fps <= 1000 else DEFAULT_FPS
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not source.isdigit() else 0
        frames = _video_frames(capture)
    else:
        paths = _input_images(source)
        outputs = image_output_paths(source, paths, output) if output else []
        frames = _image_frames(paths)
    predict = predictor.predict_image
    tracker = Tracker(predict, track_threshold, init_box=bbox) if track else None
    smoother = OneEuroFilter(smooth, conf_threshold) if smooth else None
    rate = fps or DEFAULT_FPS
    writer = VideoWriter(out_video, fps) if video and output else None
    written, skipped, count, started = [], [], 0, time.time()
    table = _CsvWriter(csv, predictor.spec.names) if csv else None
    predictions = []
    try:
        for i, (name, frame) in enumerate(frames):
            if frame is None:
                skipped.append(name)
                continue
            entry = {"frame": os.path.basename(name)}
            if tracker is not None:
                step = tracker.step(frame)
                kps, conf, box = step.keypoints, step.confidence, step.box
                entry.update(box=None if box is None else [round(v, 2) for v in box],
                             status=step.status)
            else:
                kps, conf = predict(frame, bbox)
                kps, conf, box = np.asarray(kps, np.float64), np.asarray(conf, np.float64), bbox
            if smoother is not None:
                entry["raw_keypoints"] = kps.round(2).tolist()
                kps = (smooth_step(smoother, i / rate, step) if tracker is not None
                       else smoother(i / rate, kps, conf))
            entry.update(keypoints=kps.round(2).tolist(), confidence=conf.round(4).tolist())
            predictions.append(entry)
            if table is not None:
                table.write(i if video else os.path.basename(name), kps, conf)
            drawn = draw_skeleton(frame, kps, conf >= conf_threshold, predictor.spec)
            if draw_box and box is not None:
                drawn = draw_box_on(drawn, box, tracked=tracker is None or step.status == "tracked")
            bgr = np.ascontiguousarray(drawn[..., ::-1])
            if writer is not None:
                writer.write(bgr)
            elif output:
                _write_image(outputs[i], bgr)
                written.append(outputs[i])
            count += 1
            if max_frames and count >= max_frames:
                break
        if writer is not None and count:
            written.append(writer.close())
            writer = None
        if table is not None and count:
            written.append(table.finish())
            table = None
    finally:
        if writer is not None:
            writer.discard()
        if table is not None:
            table.discard()
        if capture is not None:
            capture.release()
    seconds = time.time() - started
    if count == 0:
        raise ValueError(f"--input {source}: no frame could be processed"
                         + (f" ({len(skipped)} unreadable image(s): {', '.join(skipped[:5])})"
                            if skipped else ""))
    notes = []
    if video and expected and not max_frames and count < expected:
        notes.append(f"read {count} of the {expected} frames {source} reports (the rest could "
                     f"not be decoded)")
    result = {"frames": count, "outputs": written, "seconds": round(seconds, 2),
              "fps": round(count / seconds, 2) if seconds > 0 else None, "predictions": predictions,
              "skipped": skipped, "video_fps": fps if video else None, "notes": notes}
    if tracker is not None:
        result["tracking"] = dict(tracker.counts)
    return result

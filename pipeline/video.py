"""Video files written atomically: the containers we write, by extension, and one writer.

A video appears under its name only once it is whole: frames go to a temporary sibling (its
extension kept, as OpenCV chooses the container from it) that ``close`` renames onto the
name; ``discard``, or an error inside a ``with`` block, removes it.
"""
from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np

from configs.files import remove_path, temp_path

VIDEO_EXTENSIONS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


class VideoWriter:
    """BGR uint8 frames, all of one size, into the video ``path`` at ``fps`` frames per
    second. The file opens at the first frame (which gives the size). Raises ValueError when
    the extension is not in ``VIDEO_EXTENSIONS`` or OpenCV cannot write the file."""

    def __init__(self, path: str, fps: float):
        ext = os.path.splitext(path)[1].lower()
        if ext not in VIDEO_EXTENSIONS:
            raise ValueError(f"cannot write the video {path}: end its name in "
                             f"{', '.join(VIDEO_EXTENSIONS)}")
        self.path, self.fps, self.fourcc = path, float(fps), VIDEO_EXTENSIONS[ext]
        self.tmp = temp_path(path)
        self._writer: Optional[cv2.VideoWriter] = None
        self.frames = 0

    def write(self, bgr: np.ndarray) -> None:
        if self._writer is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                           (bgr.shape[1], bgr.shape[0]))
            if not self._writer.isOpened():
                self.discard()
                raise ValueError(f"cannot write the video {self.path}: OpenCV has no "
                                 f"{self.fourcc} writer for it; try a .mp4 or .avi name")
        self._writer.write(np.ascontiguousarray(bgr))
        self.frames += 1

    def close(self) -> str:
        """Finish the file and rename it onto ``path``; returns ``path``."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if not os.path.isfile(self.tmp) or os.path.getsize(self.tmp) == 0:
            self.discard()
            raise ValueError(f"cannot write the video {self.path}: OpenCV wrote nothing")
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Stop writing; the temporary file goes, ``path`` stays as it was."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        remove_path(self.tmp)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.discard()       # after close() nothing is left to remove

"""Keypoint definitions (classes / match points / skeleton) and run settings as plain data."""
from configs.keypoints import (  # noqa: F401
    KeypointSpec,
    KeypointSpecError,
    atomic_write_json,
    atomic_write_text,
    builtin_paths,
    builtin_spec,
    load_keypoint_spec,
)

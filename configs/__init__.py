"""Keypoint definitions (classes / match points / skeleton) and run settings as plain data."""
from configs.files import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: F401
from configs.keypoints import (  # noqa: F401
    KeypointSpec,
    KeypointSpecError,
    builtin_paths,
    builtin_spec,
    load_keypoint_spec,
)

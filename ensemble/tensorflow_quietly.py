"""`import ensemble.tensorflow_quietly`: TensorFlow loaded without its native start-up notes.

TensorFlow's C++ start-up notes go straight to file descriptor 2, some of them ("Could not find cuda drivers on your
machine", "WARNING: All log messages before absl::InitializeLog() ...") even with `TF_CPP_MIN_LOG_LEVEL=3`, and
device probing adds "failed call to cuInit" on a machine without a GPU. Importing this module sets
`TF_CPP_MIN_LOG_LEVEL=3` unless the environment sets it, then, at any level but 0 (1 and 2 are what users commonly
export to quieten TensorFlow, and they let these notes through), loads TensorFlow and probes its devices with fd 2
muted. Import it before anything that imports TensorFlow (the served model `tasks/pyfunc.py`, the flow
module a Prefect worker runs `flows/train.py`, the CLI). `TF_CPP_MIN_LOG_LEVEL=0` shows every note.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_with_fd2_muted() -> None:
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(null, 2)
    try:
        import tensorflow

        tensorflow.config.list_physical_devices(
            "GPU"
        )  # device probing ("failed call to cuInit") happens here
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


if "tensorflow" not in sys.modules and os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0":
    _import_with_fd2_muted()

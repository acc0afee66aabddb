"""Frame copies, counted at run time where they can happen between decode and the model's input.

A frame's pixels travel: OpenCV decode (capture) -> ZeroMQ message -> the inference stage's view
of the received buffer -> letterbox -> the model's input tensor. Every place on that path that
can write the pixels (or a resized version of them) into another buffer counts here, each time it
does, so ``copies_per_frame`` is measured, not assumed:

- ``capture_encode``: the decoded image was not contiguous and ``encode_frame`` made it so;
- ``zmq_send``: a frame below ``zmq.COPY_THRESHOLD`` bytes, which pyzmq copies even with
  ``copy=False`` (larger ones leave from the decoded buffer itself);
- ``receive``: the frame the detector gets is not a view on the received ZeroMQ buffer;
- ``jpeg_decode``: the frame came JPEG-encoded (``capture.frame_encoding: jpeg``) and was decoded
  into pixels of its own (capture's encode is not counted: it writes a JPEG, not the pixels);
- ``resize``: the letterbox's resize (skipped when the input already has the network size);
- ``tensor``: the one conversion into the float input tensor (BGR->RGB, HWC->CHW, /255), written
  straight into the preallocated batch.

The kernel's own copies (an ipc or tcp socket write and read) are outside the process and not
counted. ``capture_*`` sites count in the capture process, the others in the inference stage.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np

NECESSARY = ("resize", "tensor", "jpeg_decode")
"""Writes the model input needs (a JPEG frame must be decoded); every other site is a copy that should not happen."""


class FrameCopies:
    """Per-site counts of pixel copies in this process; the detector's letterbox threads note here too."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def note(self, site: str, count: int = 1) -> None:
        with self._lock:
            self.counts[site] += count

    def snapshot(self, frames: int) -> dict[str, Any]:
        """The counts, and per analysed frame: all copies and the unnecessary ones."""
        with self._lock:
            counts = dict(self.counts)
        avoidable = sum(v for k, v in counts.items() if k not in NECESSARY)
        per = (lambda n: round(n / frames, 3)) if frames else (lambda n: None)
        return {"sites": counts, "per_frame": per(sum(counts.values())), "avoidable_per_frame": per(avoidable)}


COPIES = FrameCopies()
"""This process's counter (one stage or one camera per process)."""


def capture_copies(image: np.ndarray) -> int:
    """Copies capture makes sending ``image``: 0 for a contiguous decoded frame of a real camera."""
    import zmq  # here, not at the top: the detector imports this module and stays free of zmq (bench_gpu.py)

    return int(not image.flags.c_contiguous) + int(image.nbytes < zmq.COPY_THRESHOLD)


def is_view(image: np.ndarray) -> bool:
    """True when ``image`` borrows its pixels (the received buffer) instead of owning a copy."""
    return not image.flags.owndata

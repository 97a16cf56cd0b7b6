"""Batches from a background thread, so the GPU never waits for the loader.

A worker thread pulls batches from the loader (gather rows, dynamic masking in the C++ extension,
which releases the GIL), counts their real tokens, notes whether they hold padding, pins them
on CUDA and puts them in a bounded queue. The training loop takes them with ``next()`` and copies
them to the device with ``non_blocking=True``.

Exact resume: every batch travels with the loader position *after* it. ``state_dict()`` is the
position after the last batch the loop consumed, never the (further) position of the worker,
so a checkpoint resumes at the first batch that was not trained on.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One batch as the loop receives it: CPU tensors (pinned on CUDA), plus host-side facts
    that would otherwise need a device read."""

    tensors: dict[str, torch.Tensor]
    tokens: int  # real (non-padding) tokens
    padded: bool  # any padding: the model needs an attention mask
    position: dict  # loader.state_dict() after this batch


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    """Iterate ``loader`` in a background thread, ``depth`` batches ahead."""

    def __init__(self, loader, depth: int = 4, pin_memory: bool = False):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.loader = loader
        self.pin_memory = pin_memory
        self._position = loader.state_dict()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="electra_fast-prefetch", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            for tensors in self.loader:
                position = self.loader.state_dict()
                mask = tensors["attention_mask"]
                tokens = int(mask.sum())
                if self.pin_memory:
                    tensors = {k: v.pin_memory() for k, v in tensors.items()}
                item = Batch(tensors, tokens, tokens != mask.numel(), position)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # re-raised in the training loop, where the user sees it
            self._queue.put(_Failed(e))

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, _Failed):
            raise item.exc
        self._position = item.position
        return item

    def state_dict(self) -> dict:
        """The loader position after the last batch handed out by ``next()``."""
        return dict(self._position)

    def close(self) -> None:
        self._stop.set()
        try:  # unblock a worker waiting on a full queue
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)

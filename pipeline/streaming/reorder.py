"""Putting frames back in capture order after stages with several workers."""

from __future__ import annotations

import time
from collections import defaultdict

from pipeline.streaming.message import Message

START_WAIT_S = 1.0  # how long a stream's first frames wait for lower ones before it starts at the lowest


class ReorderBuffer:
    """A bounded per-stream reorder buffer.

    Frames are released in ``seq`` order. A missing frame (dropped by a leaky link, or lost
    with a crashed worker) is waited for at most ``max_wait_s`` or until ``capacity`` later
    frames are held, then skipped. A frame arriving after it was skipped is late: dropped
    and counted, so the output stays in order.

    A stream need not start at frame 0 here: a host restarted mid-stream joins a stream that
    is running. Its first frames wait at most ``START_WAIT_S`` for lower ones (frames of the
    workers upstream arrive within a frame time or so of each other), then the stream starts
    at the lowest held; a stream whose frame 0 arrives starts at once.
    """

    def __init__(self, capacity: int = 64, max_wait_s: float = 1.0):
        self.capacity = capacity
        self.max_wait_s = max_wait_s
        self._next: dict[str, int] = {}  # a stream is absent until its start is known
        self._held: dict[str, dict[int, tuple[float, Message]]] = defaultdict(dict)

    def push(self, msg: Message) -> tuple[list[Message], int]:
        """Add a frame; return the frames now ready in order and how many were late (0 or 1)."""
        stream = msg.stream
        if msg.seq < self._next.get(stream, 0):
            return [], 1
        self._held[stream][msg.seq] = (time.monotonic(), msg)
        ready = self._release(stream)
        if len(self._held[stream]) > self.capacity:
            ready += self._skip(stream)
        return ready, 0

    def expired(self) -> list[Message]:
        """Frames released because the gap before them waited longer than ``max_wait_s``."""
        now = time.monotonic()
        ready: list[Message] = []
        for stream, held in self._held.items():
            wait = self.max_wait_s if stream in self._next else min(self.max_wait_s, START_WAIT_S)
            if held and now - min(t for t, _ in held.values()) > wait:
                ready += self._skip(stream)
        return ready

    def flush(self, stream: str) -> list[Message]:
        """Release everything held for ``stream`` in order (end-of-stream)."""
        held = self._held.pop(stream, {})
        return [held[seq][1] for seq in sorted(held)]

    def _release(self, stream: str) -> list[Message]:
        held, ready = self._held[stream], []
        if stream not in self._next:
            if 0 not in held:
                return ready  # not started: maybe lower frames are on their way
            self._next[stream] = 0
        while self._next[stream] in held:
            ready.append(held.pop(self._next[stream])[1])
            self._next[stream] += 1
        return ready

    def _skip(self, stream: str) -> list[Message]:
        held = self._held[stream]
        if not held:
            return []
        self._next[stream] = min(held)
        return self._release(stream)

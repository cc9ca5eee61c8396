"""Everything a worker sends: encoding, the shared-memory hand-off and the copy policy.

One ``Outbound`` per worker wraps its links (``transport.PushLink``). A frame goes to each
link in the form the plan agreed for it: without pixels when nobody downstream uses them,
as a shared-memory reference on one machine, raw or JPEG between machines. Each form is
encoded once however many links use it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import zmq

from pipeline.streaming.message import Message, encode
from pipeline.streaming.plan import OutputPlan
from pipeline.streaming.shm import FrameRing
from pipeline.streaming.transport import PushLink

log = logging.getLogger(__name__)

# How long a writer with a full ring sleeps between looks for a free slot: from 1 ms, doubling
# up to 8 ms. A full ring is SLOTS frames ahead of the slowest consumer, so the longer sleeps
# cost no throughput; looking every millisecond (a file read as fast as possible) cost the
# source ~1,000 wake-ups a second of CPU the stages downstream need.
RING_WAIT_S = (0.001, 0.008)


class Outbound:
    """The outputs of one worker.

    Args:
        ctx: the worker's ZeroMQ context.
        plans: one per consumer stage.
        stop: set when the worker must stop (a blocked send gives up).
        label: the worker's name, for logs and ring names.
    """

    def __init__(self, ctx: zmq.Context, plans: tuple[OutputPlan, ...], stop: threading.Event, label: str):
        self.links = [PushLink(ctx, plan, stop, label) for plan in plans]
        self.codecs = {id(link): link.plan.codec for link in self.links}  # shm falls back to raw without room
        self.stop, self.label = stop, label
        self.rings: list[FrameRing] = []  # this worker's ring (one more if the frame size grows)
        self._encoded: dict[tuple[str, bool], list] = {}

    def wait_until_connected(self) -> None:
        for link in self.links:
            link.wait_until_connected()

    def send(self, msg: Message) -> tuple[bool, int]:
        """Send a frame on every link; return (sent on at least one, links that dropped it).

        If the image came in through shared memory and a link takes it that way, that link
        gets the slot itself (the consumer releases it), and it gets it last: once a consumer
        holds the slot it may free it at any moment, so every other link reads the pixels first.
        """
        self._encoded.clear()
        held = msg.shared if msg.shared is not None and not msg.shared.released and msg.shared.array is msg.image else None
        handoff = None
        if held is not None:
            handoff = next((k for k in reversed(self.links) if k.plan.image and self.codecs[id(k)] == "shm"), None)
        sent, dropped = False, 0
        for link in [k for k in self.links if k is not handoff] + ([handoff] if handoff else []):
            if link.unreachable():  # no consumer connected (its host is gone): not worth encoding
                ok = link.drop()
            elif link is handoff:
                ok = link.send(encode(msg, "shm", shared_ref=held.ref))
                held.released = ok  # the consumer releases it now; if dropped, the caller still does
            elif link.plan.image and self.codecs[id(link)] == "shm" and msg.image is not None:
                ok = self._send_copy(msg, link)
            else:
                ok = link.send(self._frames(msg, link))
            sent, dropped = sent or ok, dropped + (not ok)
        return sent, dropped

    def broadcast(self, msg: Message) -> None:
        """Send to every worker of every link (end-of-stream)."""
        self._encoded.clear()
        for link in self.links:
            link.broadcast(self._frames(msg, link))

    def _send_copy(self, msg: Message, link: PushLink) -> bool:
        """Write the image to this worker's ring and send the reference."""
        try:
            ref = self._put(msg, link)
        except OSError as exc:  # no room for a ring (a small /dev/shm): pixels go through the socket
            log.warning("%s: no shared memory for frames (%s); sending them inline", self.label, exc)
            self.codecs[id(link)] = "raw"
            return link.send(self._frames(msg, link))
        if ref is None:
            return False
        if link.send(encode(msg, "shm", shared_ref=ref)):
            return True
        self.rings[-1].free(ref)
        return False

    def _put(self, msg: Message, link: PushLink) -> dict | None:
        """Copy the image into this worker's ring; a full ring waits (block) or drops (drop-oldest)."""
        image = msg.image
        if not self.rings or image.nbytes > self.rings[-1].ring.slot_bytes:
            self.rings.append(FrameRing(self.label, image.nbytes))
        wait = RING_WAIT_S[0]
        while not self.stop.is_set():
            ref = self.rings[-1].put(image)
            if ref is not None or link.plan.policy == "drop-oldest":
                return ref
            self.stop.wait(wait)  # every frame in flight: wait for one to be released downstream
            wait = min(2 * wait, RING_WAIT_S[1])
        return None

    def _frames(self, msg: Message, link: PushLink) -> list:
        codec, image = self.codecs[id(link)], link.plan.image
        key = (codec, image)
        if key not in self._encoded:  # encode once per form, even with several consumers
            codec = "raw" if codec == "shm" else codec  # shm links without image, or end-of-stream
            wire = msg if image else replace(msg, image=None)
            if image and codec == "raw" and msg.shared is not None and msg.shared.array is msg.image:
                # ZeroMQ reads raw buffers after send() returns, when the slot may be reused.
                wire = replace(msg, image=msg.image.copy())
            self._encoded[key] = encode(wire, image_codec=codec)
        return self._encoded[key]

    def finish(self, timeout_s: float) -> None:
        """After end-of-stream: wait until the consumers took everything and hung up."""
        for link in self.links:
            link.wait_for_consumers(timeout_s)

    def close(self) -> None:
        for link in self.links:
            link.close()
        for ring in self.rings:
            ring.close()

"""Frames in shared memory, for links between processes on one machine.

Through a socket, every hop of a 600 KB frame costs a copy into the kernel and one out of it,
and wakes ZeroMQ's I/O threads on both sides: about 0.3 ms of CPU a stage a frame. Over a
``codec: shm`` link the pixels stay in a ring of slots in a file under ``/dev/shm`` and the
message carries a reference ``{"ring", "slot", "gen"}``.

Ownership moves with the message: whoever holds the frame last (the stage that drops it, a
sink, or a stage whose consumers do not use pixels) releases its slot; the worker that wrote
the frame is the only one that allocates slots of its ring, so no lock is needed. A frame
sent to two consumers that both use pixels is written once more for the second. A slot
whose holder vanished (a worker killed with frames in its queue) is reclaimed after
``RECLAIM_S``; its generation number changes, so a reader that still held it finds out
(``intact``) instead of using overwritten pixels.

``/dev/shm`` is shared by every local user, so a ring must not be one they prepared: the writer
creates its file exclusively (no symlink followed, mode 0600) under a name with a random part,
and a reader maps only a regular file of its own uid that nobody else may read or write.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import re
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import MessageError

log = logging.getLogger(__name__)

ROOT = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
PREFIX = "emopipe-"
MAGIC = b"EMOSHM01"
SLOTS = 32  # frames of one writer in flight at most; a full ring holds the writer back
RECLAIM_S = 30.0
MAX_RINGS = 64  # rings one reader maps at most (one per upstream worker that writes frames)
_NAME = re.compile(r"emopipe-[A-Za-z0-9_.-]{1,100}")
_HEAD = 64


class _Ring:
    """The mapped file: a header, per-slot state/generation/time, then the slots.

    Takes over ``fd`` and closes it once mapped.
    """

    def __init__(self, path: Path, fd: int, slots: int, slot_bytes: int):
        self.path, self.slots, self.slot_bytes = path, slots, slot_bytes
        self.size = _data_offset(slots) + slots * slot_bytes
        self.map = mmap.mmap(fd, self.size)
        os.close(fd)
        self.busy = np.frombuffer(self.map, np.uint8, slots, _HEAD)
        self.gen = np.frombuffer(self.map, np.uint64, slots, _HEAD + _pad(slots))
        self.since = np.frombuffer(self.map, np.float64, slots, _HEAD + _pad(slots) + 8 * slots)
        self.data = np.frombuffer(self.map, np.uint8, slots * slot_bytes, _data_offset(slots))

    def slot(self, index: int, nbytes: int) -> np.ndarray:
        start = index * self.slot_bytes
        return self.data[start : start + nbytes]


def _pad(slots: int) -> int:
    return (slots + 7) // 8 * 8


def _data_offset(slots: int) -> int:
    return (_HEAD + _pad(slots) + 16 * slots + 63) // 64 * 64


@dataclass
class SharedImage:
    """Where a message's image lives: its ring reference and the array read from it."""

    ref: dict[str, Any]
    array: np.ndarray
    released: bool = False


class FrameRing:
    """The ring one worker writes its outgoing frames to (only this worker allocates slots)."""

    def __init__(self, label: str, slot_bytes: int, slots: int = SLOTS):
        # The pid first, for remove_rings; the random part so that nobody can plant a file there.
        safe_label = re.sub(r"[^A-Za-z0-9_.-]", "_", label)
        name = f"{PREFIX}{os.getpid()}-{safe_label}-{slot_bytes}-{secrets.token_hex(8)}"
        path = ROOT / name
        fd = create_ring_file(path, _data_offset(slots) + slots * slot_bytes)
        try:
            os.pwrite(fd, MAGIC + np.array([slots, slot_bytes], np.uint64).tobytes(), 0)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self.name = name
        self.ring = _Ring(path, fd, slots, slot_bytes)
        self._next = 0

    def put(self, image: np.ndarray) -> dict[str, Any] | None:
        """Copy ``image`` into a free slot and return its reference, or None if every slot is held."""
        ring = self.ring
        if image.nbytes > ring.slot_bytes:
            raise ValueError(f"image of {image.nbytes} bytes does not fit slots of {ring.slot_bytes}")
        now = time.monotonic()
        for k in range(ring.slots):
            i = (self._next + k) % ring.slots
            if ring.busy[i] and now - ring.since[i] < RECLAIM_S:
                continue
            if ring.busy[i]:
                log.warning("shared memory %s: slot %d held for %.0f s, reclaimed", self.name, i, now - ring.since[i])
            ring.gen[i] += 1
            ring.since[i] = now
            ring.busy[i] = 1
            ring.slot(i, image.nbytes)[:] = np.ascontiguousarray(image).reshape(-1)
            self._next = (i + 1) % ring.slots
            return {"ring": self.name, "slot": i, "gen": int(ring.gen[i])}
        return None

    def free(self, ref: dict[str, Any]) -> None:
        """Give back a slot that was never sent."""
        if int(self.ring.gen[ref["slot"]]) == ref["gen"]:
            self.ring.busy[ref["slot"]] = 0

    def close(self) -> None:
        """Unlink the file; readers that still map it keep their mapping until they close."""
        self.ring.path.unlink(missing_ok=True)
        with contextlib.suppress(BufferError):  # arrays still view it: the mapping goes with the process
            self.ring.map.close()


class SharedFrames:
    """A worker's view of the rings its upstream workers write: map, read, check, release."""

    def __init__(self) -> None:
        self._rings: dict[str, _Ring] = {}

    def image(self, spec: dict[str, Any], shape: tuple[int, ...], where: str) -> SharedImage:
        """The image a ``codec: shm`` spec refers to, read-only, or MessageError."""
        name, slot, gen = spec.get("ring"), spec.get("slot"), spec.get("gen")
        if not (isinstance(name, str) and _NAME.fullmatch(name)) or not isinstance(slot, int) or not isinstance(gen, int):
            raise MessageError(f"{where}: bad shared-memory reference {spec!r}")
        ring = self._ring(name, where)
        nbytes = math.prod(shape)
        if not 0 <= slot < ring.slots or nbytes > ring.slot_bytes:
            raise MessageError(f"{where}: slot {slot} / {nbytes} bytes outside ring {name} ({ring.slots} x {ring.slot_bytes})")
        if int(ring.gen[slot]) != gen:
            raise MessageError(f"{where}: shared-memory slot {name}/{slot} was overwritten (held longer than {RECLAIM_S:.0f} s)")
        array = ring.slot(slot, nbytes).reshape(shape)
        array.flags.writeable = False  # shared with the stages downstream
        return SharedImage({"ring": name, "slot": slot, "gen": gen}, array)

    def intact(self, shared: SharedImage) -> bool:
        """Whether the slot still holds the frame (it was not reclaimed while in use)."""
        ring = self._rings.get(shared.ref["ring"])
        return ring is not None and int(ring.gen[shared.ref["slot"]]) == shared.ref["gen"]

    def release(self, shared: SharedImage | None) -> None:
        """Give the slot back to its writer (no-op if already released or handed on)."""
        if shared is None or shared.released:
            return
        shared.released = True
        if self.intact(shared):
            self._rings[shared.ref["ring"]].busy[shared.ref["slot"]] = 0

    def _ring(self, name: str, where: str) -> _Ring:
        ring = self._rings.get(name)
        if ring is not None:
            return ring
        if len(self._rings) >= MAX_RINGS:
            raise MessageError(f"{where}: more than {MAX_RINGS} shared-memory rings")
        path = ROOT / name
        fd, size = _open_own(path, where)
        head = os.pread(fd, 24, 0)
        slots, slot_bytes = (int(v) for v in np.frombuffer(head[8:24], np.uint64)) if len(head) == 24 else (0, 0)
        if head[:8] != MAGIC or not 0 < slots <= 4096 or size != _data_offset(slots) + slots * slot_bytes:
            os.close(fd)
            raise MessageError(f"{where}: {path} is not a frame ring")
        self._rings[name] = ring = _Ring(path, fd, slots, slot_bytes)
        return ring


def create_ring_file(path: Path, size: int) -> int:
    """Create ``path`` (mode 0600) with ``size`` bytes reserved and return its fd.

    Raises:
        FileExistsError: something is already there (a file or a symlink, which is not followed).
        OSError: no room for ``size`` bytes; the file is removed again.
    """
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_RDWR, 0o600)
    try:
        # Reserve the pages now: on a full tmpfs (Docker's 64 MB /dev/shm) this fails here,
        # with an error, instead of a SIGBUS when a slot is first written.
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # macOS: sized, not reserved
            os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def _open_own(path: Path, where: str) -> tuple[int, int]:
    """Open a ring file for mapping and return its fd and size, or MessageError.

    Only a regular file of this uid without group/other permissions: anything else may be
    read or rewritten by another user. The checks are on the open fd, so the file cannot be
    swapped between check and use.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError as exc:
        raise MessageError(f"{where}: cannot open shared memory {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    reason = None
    if not stat.S_ISREG(st.st_mode):
        reason = "not a regular file"
    elif st.st_uid != os.geteuid():
        reason = f"owned by uid {st.st_uid}, not {os.geteuid()}"
    elif st.st_mode & 0o077:
        reason = f"mode {stat.S_IMODE(st.st_mode):04o} lets other users in"
    if reason:
        os.close(fd)
        raise MessageError(f"{where}: refused shared memory {path}: {reason}")
    return fd, st.st_size


def remove_rings(pids: set[int]) -> None:
    """Delete rings left by these (crashed) worker processes."""
    for pid in pids:
        for path in ROOT.glob(f"{PREFIX}{pid}-*"):
            path.unlink(missing_ok=True)

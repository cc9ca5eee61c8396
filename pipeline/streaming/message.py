"""The one wire format: ``encode(msg) -> list[bytes]`` and ``decode(frames) -> Message``.

A message is a ZeroMQ multipart: frame 0 is a small msgpack header, the following frames are
raw array buffers (the image, segmentation label maps), sent without copying. Links between
machines can JPEG-encode the image instead; links on one machine can leave it in shared
memory and send a reference (``pipeline.streaming.shm``). End-of-stream travels in-band as a message of
kind ``eos``. Decoding never trusts the sender: sizes are bounded and every buffer must match
the shape and dtype its header claims, otherwise ``MessageError`` names what is wrong.
No pickle anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import msgpack
import numpy as np

from pipeline.errors import MessageError

if TYPE_CHECKING:
    from pipeline.streaming.shm import SharedFrames, SharedImage

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20  # 1 MiB of msgpack is far more than any real header
MAX_BUFFER_BYTES = 64 << 20  # a 4K BGR frame is 24 MiB
MAX_FACES = 256
ALLOWED_DTYPES = frozenset({"uint8", "uint16", "int32", "float32"})

FRAME, EOS = "frame", "eos"


@dataclass
class Message:
    """One video frame and everything the stages learned about it, or an end-of-stream marker.

    Attributes:
        kind: ``"frame"`` or ``"eos"``.
        stream: source id; several capture stages may feed one pipeline.
        seq: frame number within the stream, from 0. For ``eos``: the number of frames sent.
        ts: capture time (``time.time()``), the start of the end-to-end latency.
        stamps: ``stage name -> time`` when each stage finished with the frame.
        image: BGR uint8 (H, W, 3), or None once a stage no longer needs it.
        faces: one dict per face: ``box`` [x, y, w, h], and as stages add them ``seg``
            (uint8 label map), ``probs`` (list of floats), ``emotion``, ``confidence``, ``track``.
        meta: free-form JSON-like data (source fps, frame size, ...).
        shared: set by the runner when ``image`` is read from shared memory; not sent as is.

    An image read from shared memory is read-only and valid while the stage processes the
    message: a stage that keeps pixels for later (or draws on them) copies them.
    """

    kind: str = FRAME
    stream: str = "0"
    seq: int = 0
    ts: float = 0.0
    stamps: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    shared: SharedImage | None = field(default=None, repr=False, compare=False)

    @property
    def is_eos(self) -> bool:
        return self.kind == EOS

    @classmethod
    def eos(cls, stream: str, count: int) -> Message:
        """End-of-stream after ``count`` frames of ``stream``."""
        return cls(kind=EOS, stream=stream, seq=count)


def _array_spec(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": array.dtype.name}


def encode(
    msg: Message, image_codec: str = "raw", jpeg_quality: int = 90, shared_ref: dict[str, Any] | None = None
) -> list[bytes | memoryview]:
    """Serialise a message into multipart frames.

    Args:
        msg: the message.
        image_codec: ``raw`` (zero-copy buffer), ``jpeg`` (about 10x smaller, for links
            between machines) or ``shm`` (a reference to shared memory, ``shared_ref``).
        jpeg_quality: 1..100, with ``jpeg``.
        shared_ref: with ``shm``: where the image is (``pipeline.streaming.shm.FrameRing.put``).
    """
    buffers: list[bytes | memoryview] = []

    def add(array: np.ndarray) -> dict[str, Any]:
        array = np.ascontiguousarray(array)
        buffers.append(memoryview(array).cast("B"))
        return {"buf": len(buffers), **_array_spec(array)}

    image = None
    if msg.image is not None:
        if image_codec == "shm":
            if shared_ref is None:
                raise ValueError("image_codec 'shm' needs shared_ref")
            image = {**shared_ref, "codec": "shm", **_array_spec(msg.image)}
        elif image_codec == "jpeg":
            ok, jpg = cv2.imencode(".jpg", msg.image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise MessageError(f"stream {msg.stream} frame {msg.seq}: JPEG encoding failed")
            buffers.append(jpg.tobytes())
            image = {"buf": len(buffers), "codec": "jpeg", **_array_spec(msg.image)}
        else:
            image = {**add(msg.image), "codec": "raw"}
    faces = []
    for face in msg.faces:
        entry = dict(face)
        if isinstance(entry.get("seg"), np.ndarray):
            entry["seg"] = add(entry["seg"])
        faces.append(entry)
    header = {
        "v": FORMAT_VERSION,
        "kind": msg.kind,
        "stream": msg.stream,
        "seq": msg.seq,
        "ts": msg.ts,
        "stamps": msg.stamps,
        "image": image,
        "faces": faces,
        "meta": msg.meta,
    }
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def _array(spec: Any, frames: Sequence, where: str) -> np.ndarray:
    if not isinstance(spec, dict):
        raise MessageError(f"{where}: array spec must be a map, got {type(spec).__name__}")
    try:
        index, shape, dtype = int(spec["buf"]), tuple(int(s) for s in spec["shape"]), str(spec["dtype"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"{where}: bad array spec {spec!r}") from exc
    if dtype not in ALLOWED_DTYPES:
        raise MessageError(f"{where}: dtype {dtype!r} not allowed ({', '.join(sorted(ALLOWED_DTYPES))})")
    if not 1 <= len(shape) <= 3 or any(s <= 0 for s in shape):
        raise MessageError(f"{where}: bad shape {list(shape)}")
    if not 1 <= index < len(frames):
        raise MessageError(f"{where}: buffer {index} missing (message has {len(frames) - 1} buffers)")
    buf = memoryview(frames[index].buffer if hasattr(frames[index], "buffer") else frames[index])
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if spec.get("codec") == "jpeg":
        if buf.nbytes > MAX_BUFFER_BYTES:
            raise MessageError(f"{where}: JPEG of {buf.nbytes} bytes exceeds {MAX_BUFFER_BYTES}")
        image = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.shape != shape:
            raise MessageError(f"{where}: JPEG does not decode to shape {list(shape)}")
        return image
    if nbytes != buf.nbytes or nbytes > MAX_BUFFER_BYTES:
        raise MessageError(f"{where}: buffer has {buf.nbytes} bytes, shape {list(shape)} {dtype} needs {nbytes}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def decode(frames: Sequence[bytes | memoryview | Any], shared: SharedFrames | None = None) -> Message:
    """Parse multipart frames (bytes or zmq.Frame) into a Message, or raise MessageError.

    ``shared`` maps images sent by reference; without it such a message is refused.
    """
    if not frames:
        raise MessageError("empty message")
    head = frames[0].bytes if hasattr(frames[0], "bytes") else bytes(frames[0])
    if len(head) > MAX_HEADER_BYTES:
        raise MessageError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(
            head,
            raw=False,
            strict_map_key=True,
            max_bin_len=1 << 16,
            max_str_len=1 << 16,
            max_array_len=1 << 16,
            max_map_len=1 << 12,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise MessageError(f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise MessageError(f"header must be a map, got {type(header).__name__}")
    if header.get("v") != FORMAT_VERSION:
        raise MessageError(f"format version {header.get('v')!r}, expected {FORMAT_VERSION}")
    kind = header.get("kind")
    if kind not in (FRAME, EOS):
        raise MessageError(f"kind {kind!r}, expected {FRAME!r} or {EOS!r}")
    try:
        msg = Message(
            kind=kind,
            stream=str(header["stream"]),
            seq=int(header["seq"]),
            ts=float(header["ts"]),
            stamps=dict(header.get("stamps") or {}),
            meta=dict(header.get("meta") or {}),
        )
        faces = list(header.get("faces") or [])
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"bad header field: {exc!r}") from exc
    where = f"stream {msg.stream} frame {msg.seq}"
    if len(faces) > MAX_FACES:
        raise MessageError(f"{where}: {len(faces)} faces exceeds {MAX_FACES}")
    for i, face in enumerate(faces):
        if not isinstance(face, dict) or not _is_box(face.get("box")):
            raise MessageError(f"{where} faces[{i}]: needs a box [x, y, w, h] of integers")
        if face.get("seg") is not None:
            face["seg"] = _array(face["seg"], frames, f"{where} faces[{i}].seg")
    # The image last: a shared-memory slot is taken only by a message that is otherwise valid.
    spec = header.get("image")
    if isinstance(spec, dict) and spec.get("codec") == "shm":
        if shared is None:
            raise MessageError(f"{where} image: sent through shared memory on a link that is not codec: shm")
        if spec.get("dtype") != "uint8" or not _is_shape(spec.get("shape")):
            raise MessageError(f"{where} image: bad shared-memory image spec {spec!r}")
        msg.shared = shared.image(spec, tuple(spec["shape"]), f"{where} image")
        msg.image = msg.shared.array
    elif spec is not None:
        msg.image = _array(spec, frames, f"{where} image")
    if msg.image is not None and (msg.image.ndim != 3 or msg.image.shape[2] != 3 or msg.image.dtype != np.uint8):
        raise MessageError(f"{where} image: expected uint8 (H, W, 3), got {msg.image.dtype} {msg.image.shape}")
    msg.faces = faces
    return msg


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)


def _is_box(box: Any) -> bool:
    return isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)

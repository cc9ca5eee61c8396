"""The one wire format: ``encode(msg) -> list[bytes]`` and ``decode(frames) -> Message``.

A message is a ZeroMQ multipart: frame 0 is a small msgpack header, the following frames are
raw array buffers (the image, arrays inside stage fields), sent without copying. Links between
machines can JPEG-encode the image instead; links on one machine can leave it in shared
memory and send a reference (``pipeline.streaming.shm``). End-of-stream travels in-band as a
message of kind ``eos``.

What stages add to a frame lives in ``Message.fields`` under a name registered with
``register_field`` together with its codec; the framework knows no field by itself (the face
records of this project are registered by ``pipeline.vision.record``). Decoding never trusts
the sender: sizes are bounded, every number is checked for range, every buffer must match the
shape and dtype its header claims, and whatever is wrong raises ``MessageError`` naming it.
No pickle anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import msgpack
import numpy as np

from pipeline.errors import MessageError

if TYPE_CHECKING:
    from pipeline.streaming.shm import SharedFrames, SharedImage

FORMAT_VERSION = 3  # 3: media_ts beside ts
MAX_HEADER_BYTES = 1 << 20  # 1 MiB of msgpack is far more than any real header
MAX_BUFFER_BYTES = 64 << 20  # a 4K BGR frame is 24 MiB
MAX_SIDE = 1 << 15  # of any array dimension
MAX_SEQ = 1 << 53  # frame numbers stay exact as floats in analytics
MAX_STAMPS = 64
ALLOWED_DTYPES = frozenset({"uint8", "uint16", "int32", "float32"})

FRAME, EOS = "frame", "eos"

AddArray = Callable[[np.ndarray], dict]
ReadArray = Callable[[Any, str], np.ndarray]


class FieldCodec(Protocol):
    """How one kind of stage output crosses the wire (see ``register_field``)."""

    def to_wire(self, value: Any, add_array: AddArray) -> Any:
        """msgpack-able data; arrays go through ``add_array``, which returns their spec."""

    def from_wire(self, data: Any, read_array: ReadArray, where: str) -> Any:
        """The value back from untrusted ``data``; raise ``ValueError`` naming what is wrong."""


_FIELDS: dict[str, FieldCodec] = {}


def register_field(name: str, codec: FieldCodec) -> None:
    """Let messages carry ``fields[name]``; the module that defines the value type calls this."""
    _FIELDS[name] = codec


@dataclass
class Message:
    """One video frame and everything the stages learned about it, or an end-of-stream marker.

    Attributes:
        kind: ``"frame"`` or ``"eos"``.
        stream: source id; several sources may feed one pipeline.
        seq: frame number within the stream, from 0. For ``eos``: the number of frames sent.
        ts: capture time (``time.time()``), the start of the end-to-end latency.
        media_ts: the frame's place in its source, in seconds: the container's timestamp (or
            frame index / fps) for files and image folders, time since the run started for
            live sources. Analytics measure durations with it, so pacing does not change them.
        stamps: ``stage name -> time`` when each stage finished with the frame.
        image: BGR uint8 (H, W, 3), or None once no stage downstream needs it.
        fields: what stages added, by registered field name.
        meta: small JSON-like facts about the frame (source fps, ...).
        shared: set by the runner when ``image`` is read from shared memory; not sent as is.

    An image read from shared memory is read-only and valid while the stage processes the
    message: a stage that keeps pixels for later (or draws on them) copies them.
    """

    kind: str = FRAME
    stream: str = "0"
    seq: int = 0
    ts: float = 0.0
    media_ts: float = 0.0
    stamps: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    shared: SharedImage | None = field(default=None, repr=False, compare=False)

    @property
    def is_eos(self) -> bool:
        return self.kind == EOS

    @property
    def where(self) -> str:
        """``stream S frame N``: this frame's place, for error messages."""
        return f"stream {self.stream} frame {self.seq}"

    @classmethod
    def eos(cls, stream: str, count: int, sender: str) -> Message:
        """End-of-stream after ``count`` frames of ``stream``, signed by the worker ``sender``."""
        return cls(kind=EOS, stream=stream, seq=count, meta={"from": sender})

    @property
    def sender(self) -> str | None:
        """Which worker sent this end-of-stream (``stage:index``)."""
        sender = self.meta.get("from")
        return sender if isinstance(sender, str) else None


_DTYPE_NAMES = {np.dtype(name): name for name in ALLOWED_DTYPES}  # dtype.name is slow to compute


def _array_spec(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": _DTYPE_NAMES.get(array.dtype) or array.dtype.name}


def encode(
    msg: Message, image_codec: str = "raw", jpeg_quality: int = 90, shared_ref: dict[str, Any] | None = None
) -> list[bytes | memoryview]:
    """Serialise a message into multipart frames.

    Args:
        msg: the message.
        image_codec: ``raw`` (zero-copy buffer), ``jpeg`` (about 10x smaller, for links
            between machines) or ``shm`` (a reference to shared memory, ``shared_ref``).
        jpeg_quality: 1..100, with ``jpeg``.
        shared_ref: with ``shm``: where the image is (``FrameRing.put``).
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
                raise MessageError(f"{msg.where}: JPEG encoding failed")
            buffers.append(jpg.tobytes())
            image = {"buf": len(buffers), "codec": "jpeg", **_array_spec(msg.image)}
        else:
            image = {**add(msg.image), "codec": "raw"}
    header = {
        "v": FORMAT_VERSION,
        "kind": msg.kind,
        "stream": msg.stream,
        "seq": msg.seq,
        "ts": msg.ts,
        "media_ts": msg.media_ts,
        "stamps": msg.stamps,
        "image": image,
        "fields": {name: _FIELDS[name].to_wire(value, add) for name, value in msg.fields.items()},
        "meta": msg.meta,
    }
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def decode(frames: Sequence[bytes | memoryview | Any], shared: SharedFrames | None = None) -> Message:
    """Parse multipart frames (bytes or zmq.Frame) into a Message, or raise MessageError.

    ``shared`` maps images sent by reference; without it such a message is refused. No other
    exception escapes: whatever a hostile or broken sender puts in, the caller gets a
    ``MessageError`` it can count and log.
    """
    try:
        return _decode(frames, shared)
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure is a malformed message too
        raise MessageError(f"malformed message: {exc!r}") from exc


def _decode(frames: Sequence, shared: SharedFrames | None) -> Message:
    header = _header(frames)
    msg = Message(
        kind=header["kind"],
        stream=_text(header.get("stream"), "stream"),
        seq=_integer(header.get("seq"), "seq", 0, MAX_SEQ),
        ts=_number(header.get("ts"), "ts"),
        media_ts=_number(header.get("media_ts"), "media_ts"),
        stamps=_stamps(header.get("stamps")),
        meta=_map(header.get("meta"), "meta"),
    )
    read = _array_reader(frames)
    fields = _map(header.get("fields"), "fields")
    for name, data in fields.items():
        codec = _FIELDS.get(name)
        if codec is None:
            raise MessageError(f"{msg.where}: unknown field {name!r} (known: {', '.join(sorted(_FIELDS)) or 'none'})")
        try:
            msg.fields[name] = codec.from_wire(data, read, f"{msg.where} {name}")
        except (ValueError, TypeError, KeyError) as exc:
            raise MessageError(f"{msg.where} {name}: {exc}") from exc
    # The image last: a shared-memory slot is taken only by a message that is otherwise valid.
    _read_image(msg, header.get("image"), read, shared)
    return msg


def _header(frames: Sequence) -> dict[str, Any]:
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
    if header.get("kind") not in (FRAME, EOS):
        raise MessageError(f"kind {header.get('kind')!r}, expected {FRAME!r} or {EOS!r}")
    return header


def _array_reader(frames: Sequence) -> ReadArray:
    def read(spec: Any, where: str) -> np.ndarray:
        if not isinstance(spec, dict):
            raise MessageError(f"{where}: array spec must be a map, got {type(spec).__name__}")
        shape = _shape(spec.get("shape"), where)
        dtype = spec.get("dtype")
        if dtype not in ALLOWED_DTYPES:
            raise MessageError(f"{where}: dtype {dtype!r} not allowed ({', '.join(sorted(ALLOWED_DTYPES))})")
        index = _integer(spec.get("buf"), f"{where} buf", 1, MAX_STAMPS << 10)
        if index >= len(frames):
            raise MessageError(f"{where}: buffer {index} missing (message has {len(frames) - 1} buffers)")
        buf = memoryview(frames[index].buffer if hasattr(frames[index], "buffer") else frames[index])
        if buf.nbytes > MAX_BUFFER_BYTES:
            raise MessageError(f"{where}: buffer of {buf.nbytes} bytes exceeds {MAX_BUFFER_BYTES}")
        if spec.get("codec") == "jpeg":
            return _jpeg(buf, shape, where)
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if nbytes != buf.nbytes:
            raise MessageError(f"{where}: buffer has {buf.nbytes} bytes, shape {list(shape)} {dtype} needs {nbytes}")
        return np.frombuffer(buf, dtype=dtype).reshape(shape)

    return read


def _jpeg(buf: memoryview, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        image = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR) if buf.nbytes else None
    except cv2.error as exc:
        raise MessageError(f"{where}: not a JPEG: {exc}") from exc
    if image is None or image.shape != shape:
        raise MessageError(f"{where}: JPEG does not decode to shape {list(shape)}")
    return image


def _read_image(msg: Message, spec: Any, read: ReadArray, shared: SharedFrames | None) -> None:
    where = f"{msg.where} image"
    if spec is None:
        return
    if isinstance(spec, dict) and spec.get("codec") == "shm":
        if shared is None:
            raise MessageError(f"{where}: sent through shared memory on a link that is not codec: shm")
        shape = _shape(spec.get("shape"), where)
        if spec.get("dtype") != "uint8" or len(shape) != 3:
            raise MessageError(f"{where}: bad shared-memory image spec {spec!r}")
        msg.shared = shared.image(spec, shape, where)
        msg.image = msg.shared.array
    else:
        msg.image = read(spec, where)
    if msg.image.ndim != 3 or msg.image.shape[2] != 3 or msg.image.dtype != np.uint8:
        if msg.shared is not None:
            shared.release(msg.shared)
        raise MessageError(f"{where}: expected uint8 (H, W, 3), got {msg.image.dtype} {msg.image.shape}")


# --- checked readers of header values ------------------------------------------------------
def _integer(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MessageError(f"{what}: expected an integer in {low}..{high}, got {value!r}"[:300])
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MessageError(f"{what}: expected a finite number, got {value!r}"[:300])
    return float(value)


def _text(value: Any, what: str, limit: int = 128) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise MessageError(f"{what}: expected a string of 1..{limit} characters, got {value!r}"[:300])
    return value


def _map(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MessageError(f"{what}: expected a map, got {type(value).__name__}")
    return value


def _stamps(value: Any) -> dict[str, float]:
    stamps = _map(value, "stamps")
    if len(stamps) > MAX_STAMPS:
        raise MessageError(f"stamps: {len(stamps)} entries exceed {MAX_STAMPS}")
    return {_text(k, "stamps key"): _number(v, f"stamps[{k!r}]") for k, v in stamps.items()}


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 3:
        raise MessageError(f"{where}: bad shape {value!r}"[:300])
    return tuple(_integer(v, f"{where} shape", 1, MAX_SIDE) for v in value)

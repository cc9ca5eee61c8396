"""Frames through shared memory: slots, ownership, reclaiming, bad references, other users' files, a threaded tee."""

import os

import cv2
import msgpack
import numpy as np
import pytest
import yaml

from pipeline.errors import MessageError
from pipeline.streaming import shm
from pipeline.streaming.launcher import ThreadLauncher
from pipeline.streaming.message import FORMAT_VERSION, Message, decode, encode
from pipeline.streaming.shm import FrameRing, SharedFrames, remove_rings
from pipeline.streaming.topology import load_topology
from tests.pipeline.streaming.test_launcher import make_video


def image(value: int) -> np.ndarray:
    return np.full((12, 16, 3), value, np.uint8)


@pytest.fixture
def ring():
    ring = FrameRing("test", image(0).nbytes, slots=4)
    yield ring
    ring.close()


def send(ring: FrameRing, value: int, seq: int = 0) -> list:
    msg = Message(seq=seq, image=image(value))
    return encode(msg, "shm", shared_ref=ring.put(msg.image))


def test_image_travels_by_reference_and_comes_back_read_only(ring):
    frames = send(ring, 7)
    assert len(frames) == 1  # no pixel buffer: only the header
    msg = decode(frames, SharedFrames())
    assert np.array_equal(msg.image, image(7))
    assert not msg.image.flags.writeable


def test_a_full_ring_refuses_until_a_slot_is_released(ring):
    shared = SharedFrames()
    held = [decode(send(ring, i, seq=i), shared) for i in range(4)]
    assert ring.put(image(9)) is None
    shared.release(held[1].shared)
    assert ring.put(image(9)) == {"ring": ring.name, "slot": 1, "gen": 2}
    assert np.array_equal(held[2].image, image(2))  # the others are untouched


def test_a_slot_held_too_long_is_reclaimed_and_its_old_holder_finds_out(ring, monkeypatch):
    shared = SharedFrames()
    held = [decode(send(ring, i), shared) for i in range(4)]
    assert ring.put(image(5)) is None
    monkeypatch.setattr(shm, "RECLAIM_S", 0.0)
    assert ring.put(image(5)) is not None
    assert not shared.intact(held[0].shared)
    with pytest.raises(MessageError, match="was overwritten"):
        decode(encode(Message(image=image(0)), "shm", shared_ref=held[0].shared.ref), shared)
    shared.release(held[0].shared)  # a stale release leaves the new frame alone
    assert ring.ring.busy[0] == 1


def test_a_link_that_is_not_shm_refuses_references(ring):
    with pytest.raises(MessageError, match="not codec: shm"):
        decode(send(ring, 1))


def header(image: dict) -> list[bytes]:
    return [
        msgpack.packb({"v": FORMAT_VERSION, "kind": "frame", "stream": "s", "seq": 3, "ts": 0.0, "media_ts": 0.0, "image": image})
    ]


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ({"ring": "../../etc/passwd", "slot": 0, "gen": 1}, "bad shared-memory reference"),
        ({"ring": "emopipe-0-gone", "slot": 0, "gen": 1}, "cannot open shared memory"),
        ({"slot": 99, "gen": 1}, "slot 99"),
        ({"slot": 0, "gen": 1, "shape": [100, 100, 3]}, "30000 bytes"),
        ({"slot": 0, "gen": 1, "dtype": "float32"}, "bad shared-memory image spec"),
    ],
)
def test_bad_references_are_message_errors_naming_the_frame(ring, ref, fragment):
    spec = {"ring": ring.name, "codec": "shm", "shape": [12, 16, 3], "dtype": "uint8", **ref}
    with pytest.raises(MessageError, match="frame 3") as err:
        decode(header(spec), SharedFrames())
    assert fragment in str(err.value)


def test_a_file_that_is_not_a_ring_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "ROOT", tmp_path)
    (tmp_path / "emopipe-1-fake").write_bytes(b"x" * 200)
    (tmp_path / "emopipe-1-fake").chmod(0o600)  # one of ours, only not a ring
    with pytest.raises(MessageError, match="is not a frame ring"):
        spec = {"ring": "emopipe-1-fake", "slot": 0, "gen": 1, "codec": "shm", "shape": [1, 1, 3], "dtype": "uint8"}
        decode(header(spec), SharedFrames())


def test_closing_unlinks_and_leftovers_of_dead_workers_are_removed():
    ring = FrameRing("gone", 64)
    path = shm.ROOT / ring.name
    assert path.exists()
    ring.close()
    assert not path.exists()
    leftover = shm.ROOT / f"{shm.PREFIX}999999999-x-64"
    leftover.write_bytes(b"")
    remove_rings({999999999})
    assert not leftover.exists()


def predictable_name(label: str, slot_bytes: int) -> str:
    """The name a ring used to get: another user could plant a file there in advance."""
    return f"{shm.PREFIX}{os.getpid()}-{label}-{slot_bytes}"


def test_a_planted_symlink_is_never_followed(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "ROOT", tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / predictable_name("test", image(0).nbytes)).symlink_to(victim)
    ring = FrameRing("test", image(0).nbytes, slots=4)
    ring.put(image(7))
    ring.close()
    assert victim.read_bytes() == b"precious"
    link = tmp_path / "emopipe-link"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):
        shm.create_ring_file(link, 4096)
    assert victim.read_bytes() == b"precious"


def test_rings_are_created_private_and_a_planted_file_is_not_adopted(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "ROOT", tmp_path)
    planted = tmp_path / predictable_name("test", 64)
    planted.write_bytes(b"mine")
    planted.chmod(0o666)
    old_umask = os.umask(0)  # the mode must come from the code, not from the umask
    try:
        ring = FrameRing("test", 64)
    finally:
        os.umask(old_umask)
    assert (tmp_path / ring.name).stat().st_mode & 0o777 == 0o600
    assert planted.read_bytes() == b"mine"
    ring.close()


def test_two_rings_of_one_stage_get_different_names_that_remove_rings_finds(tmp_path, monkeypatch):
    monkeypatch.setattr(shm, "ROOT", tmp_path)
    rings = [FrameRing("detect", 64), FrameRing("detect", 64)]
    assert rings[0].name != rings[1].name
    remove_rings({os.getpid()})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("attack", ["mode 0666", "another uid", "symlink"])
def test_a_reader_refuses_a_ring_another_user_can_reach(tmp_path, monkeypatch, attack):
    monkeypatch.setattr(shm, "ROOT", tmp_path)
    ring = FrameRing("test", image(0).nbytes, slots=4)
    ref = ring.put(image(7))
    path = tmp_path / ring.name
    if attack == "mode 0666":
        path.chmod(0o666)
        fragment = "mode 0666"
    elif attack == "another uid":
        if os.geteuid() != 0:
            pytest.skip("giving a file to another uid needs root")
        os.chown(path, 65534, 65534)
        fragment = "owned by uid 65534"
    else:
        (tmp_path / "emopipe-1-link").symlink_to(path)
        ref["ring"] = "emopipe-1-link"
        fragment = "cannot open shared memory"
    with pytest.raises(MessageError, match=fragment) as err:
        decode(encode(Message(seq=3, image=image(7)), "shm", shared_ref=ref), SharedFrames())
    assert ref["ring"] in str(err.value)
    ring.close()


def topology_on_clip(tmp_path, frames: int, step: int, consumers: list[dict]):
    """capture (a clip whose frame i has brightness i * step) -> detect -> consumers."""
    clip = tmp_path / "clip.mp4"
    make_video(clip, frames, step)
    stages = [
        {"name": "capture", "type": "capture", "params": {"source": str(clip), "pacing": "max"}},
        {"name": "detect", "type": "detect", "inputs": ["capture"]},
        *({"inputs": ["detect"], **consumer} for consumer in consumers),
    ]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"name": "shm", "stages": stages}))
    return load_topology(tmp_path / "t.yaml", tmp_path / "rt")


def test_two_renderers_fed_from_one_detector_both_get_every_frame(tmp_path):
    # capture writes each frame once; detect hands its slot to one renderer and copies it for the other.
    # 60 frames: more than a ring's slots, so slots must come back.
    renderers = [{"name": n, "type": "render", "params": {"filename": f"{n}.mp4"}} for n in ("a", "b")]
    topology = topology_on_clip(tmp_path, 60, 4, renderers)
    assert {topology.codec(n, topology.stages[n].inputs[0]) for n in ("detect", "a", "b")} == {"shm"}
    result = ThreadLauncher(topology, {"out": str(tmp_path / "out")}).run()
    assert result.code == 0
    assert [result.stages[n]["frames_in"] for n in ("a", "b")] == [60, 60]
    assert sum(row["errors"] for row in result.stages.values()) == 0
    videos = sorted((tmp_path / "out").glob("*.mp4"))
    assert [v.name for v in videos] == ["a.mp4", "b.mp4"]
    for video in videos:
        cap = cv2.VideoCapture(str(video))
        brightness = []
        while (frame := cap.read()[1]) is not None:
            brightness.append(float(frame[24, 2].mean()))
        assert len(brightness) == 60
        assert np.corrcoef(brightness, np.arange(60) * 4)[0, 1] > 0.99  # the right pixels, in order
    assert not list(shm.ROOT.glob(f"{shm.PREFIX}{os.getpid()}-*"))


def test_without_room_in_shared_memory_frames_go_through_the_socket(tmp_path, monkeypatch, caplog):
    import pipeline.streaming.outbound

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.streaming.outbound, "FrameRing", no_room)
    topology = topology_on_clip(tmp_path, 20, 10, [{"name": "log", "type": "log"}])
    result = ThreadLauncher(topology, {"out": str(tmp_path / "out")}).run()
    assert result.code == 0 and result.stages["log"]["frames_in"] == 20
    assert "no shared memory for frames" in caplog.text

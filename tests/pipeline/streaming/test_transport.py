"""Links over real sockets: CurveZMQ keys decide who may send and who may receive; waits say why."""

import contextlib
import logging
import re
import threading
import time

import numpy as np
import pytest
import yaml
import zmq
from zmq.utils.monitor import recv_monitor_message

from pipeline.streaming import transport
from pipeline.streaming.keys import CurveClient, CurveServer, new_key_pair
from pipeline.streaming.launcher import ThreadLauncher
from pipeline.streaming.message import Message, encode
from pipeline.streaming.plan import InputPlan, OutputPlan
from pipeline.streaming.shm import SharedFrames
from pipeline.streaming.topology import load_topology
from pipeline.streaming.transport import PullInput, PushLink
from tests.pipeline.streaming.test_launcher import logged_frames, make_video

FRAME = encode(Message(stream="capture", seq=7, ts=1.0, image=np.zeros((8, 8, 3), np.uint8)))
EOS = encode(Message.eos("capture", 0, "capture:0"))


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)  # a failed test must not leave term() waiting for its sockets


@pytest.fixture
def endpoint(free_ports):
    return f"tcp://127.0.0.1:{free_ports(1)}"


@pytest.fixture
def hosts():
    """Key pairs of the compute host (server), the camera host (listed client) and an intruder."""
    return {name: zmq.curve_keypair() for name in ("compute", "camera", "intruder")}


def bound(ctx, endpoint: str, server: tuple[bytes, bytes], clients: dict[str, bytes]) -> tuple[PullInput, list[str]]:
    plan = InputPlan(endpoint, 4, False, False, None, CurveServer(*server, {k: name for name, k in clients.items()}))
    errors: list[str] = []
    return PullInput(ctx, plan, SharedFrames(), errors.append, lambda m: None, "segment"), errors


def link(ctx, endpoint: str, own: tuple[bytes, bytes], server: bytes, stop: threading.Event, **plan) -> PushLink:
    curve = CurveClient(*own, server, "camera", "compute")
    defaults = {"consumer": "segment", "endpoints": (endpoint,), "policy": "block", "hwm": 4, "codec": "raw", "image": True}
    return PushLink(ctx, OutputPlan(**{**defaults, **plan, "curve": curve}), stop)


def received(inp: PullInput, seconds: float) -> list[Message]:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        msg = inp.next(50)
        if msg is not None:
            out.append(msg)
    return out


def stop_after(seconds: float) -> threading.Event:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return stop


def intrude(ctx, endpoint: str, keys: tuple[bytes, bytes] | None, server: bytes, seconds: float) -> set[int]:
    """Push frames and end-of-stream for ``seconds``; return the connection events seen."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    if keys:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = *keys, server
    monitor = sock.get_monitor_socket()
    sock.connect(endpoint)
    events, deadline = set(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        for frames in (FRAME, EOS):
            with contextlib.suppress(zmq.Again):
                sock.send_multipart(frames, flags=zmq.NOBLOCK)
        while monitor.poll(20):
            events.add(recv_monitor_message(monitor)["event"])
    sock.disable_monitor()
    monitor.close(linger=0)
    sock.close(linger=0)
    return events


def test_only_a_listed_client_key_gets_frames_and_end_of_stream_through(ctx, endpoint, hosts, caplog):
    inp, errors = bound(ctx, endpoint, hosts["compute"], {"camera": hosts["camera"][0]})
    try:
        server = hosts["compute"][0]
        with caplog.at_level(logging.WARNING):
            unknown = intrude(ctx, endpoint, hosts["intruder"], server, 1.0)
            plain = intrude(ctx, endpoint, None, server, 0.5)
        assert received(inp, 0.3) == [] and errors == []
        assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in unknown and zmq.EVENT_HANDSHAKE_SUCCEEDED not in unknown
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in plain
        assert "segment: refused a peer with an unknown key" in caplog.text

        camera = link(ctx, endpoint, hosts["camera"], server, stop_after(5))
        camera.wait_until_connected("detect")
        assert all(camera._connected)
        assert camera.send(FRAME)
        camera.broadcast(encode(Message.eos("capture", 1, "capture:0")))
        got = received(inp, 0.5)
        camera.close()
    finally:
        inp.close()
    assert [(m.kind, m.seq) for m in got] == [("frame", 7), ("eos", 1)]


def test_a_producer_sends_nothing_to_a_server_without_the_expected_key(ctx, endpoint, hosts):
    impostor = zmq.curve_keypair()
    inp, _ = bound(ctx, endpoint, impostor, {"camera": hosts["camera"][0]})
    camera = link(ctx, endpoint, hosts["camera"], hosts["compute"][0], stop_after(1.0), policy="drop-oldest")
    try:
        camera.wait_until_connected("detect")
        assert camera._connected == [False]
        assert camera.send(FRAME) is False  # no authenticated peer: nothing is queued for it
        assert received(inp, 0.5) == []
    finally:
        camera.close()
        inp.close()


def test_a_producer_names_a_consumer_no_host_started(ctx, endpoint, hosts, monkeypatch, caplog):
    monkeypatch.setattr(transport, "WAIT_FIRST_LOG_S", 0.2)
    classify = link(ctx, endpoint, hosts["camera"], hosts["compute"][0], stop_after(0.8), consumer="track", local=False)
    try:
        with caplog.at_level(logging.INFO):
            classify.wait_until_connected("classify")
    finally:
        classify.close()
    assert f"classify: waiting for track at {endpoint}: is a host running --stages ...,track?" in caplog.text


def test_a_producer_whose_key_is_refused_says_so(ctx, endpoint, hosts, monkeypatch, caplog):
    monkeypatch.setattr(transport, "WAIT_FIRST_LOG_S", 0.5)
    inp, _ = bound(ctx, endpoint, hosts["compute"], {"camera": hosts["camera"][0]})
    detect = link(ctx, endpoint, hosts["intruder"], hosts["compute"][0], stop_after(1.2))
    try:
        with caplog.at_level(logging.INFO):
            detect.wait_until_connected("detect")
    finally:
        detect.close()
        inp.close()
    assert f"detect: segment at {endpoint} refused this host's key: copy the current camera.key" in caplog.text


def test_a_pipeline_with_keys_runs_over_curve_links(tmp_path, free_ports):
    make_video(tmp_path / "clip.mp4", 30)
    for host in ("camera", "compute"):
        new_key_pair(tmp_path / "keys", host)
    port = free_ports(1)
    config = {
        "name": "secure",
        "keys": str(tmp_path / "keys"),
        "stages": [
            {"name": "capture", "type": "capture", "host": "camera", "params": {"source": str(tmp_path / "clip.mp4"),
                                                                                "pacing": "max"}},
            {"name": "detect", "type": "detect", "host": "compute", "inputs": ["capture"],
             "endpoint": f"tcp://127.0.0.1:{port}", "bind": f"tcp://0.0.0.0:{port}"},
            {"name": "log", "type": "log", "inputs": ["detect"]},
        ],
    }  # fmt: skip
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config))
    topology = load_topology(tmp_path / "t.yaml", tmp_path / "rt")
    launcher = ThreadLauncher(topology, {"out": str(tmp_path / "out")})
    plans = {plan.stage: plan for plan in launcher.plans}
    assert plans["capture"].outputs[0].curve is not None and plans["detect"].input.curve is not None
    result = launcher.run()
    assert result.code == 0
    assert logged_frames(tmp_path) == list(range(30))


def plain_input(ctx, endpoint: str, leaky: bool = True) -> PullInput:
    plan = InputPlan(endpoint, 4, leaky, False, None, producers=("detect",), remote=True)
    return PullInput(ctx, plan, SharedFrames(), lambda e: None, lambda m: None, "segment")


def plain_link(ctx, endpoint: str, stop: threading.Event, policy: str = "drop-oldest") -> PushLink:
    plan = OutputPlan("segment", (endpoint,), policy, 4, "raw", True, local=False)
    return PushLink(ctx, plan, stop, "detect")


def sends(link: PushLink, seconds: float, inp: PullInput | None = None) -> list[bool]:
    """Send for ``seconds`` (the consumer, if any, taking what arrives); what each send returned."""
    results, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        results.append(link.send(FRAME))
        if inp is not None:
            received(inp, 0.01)
        time.sleep(0.01)
    return results


def test_a_drop_oldest_producer_whose_consumer_is_gone_keeps_dropping_and_says_so(ctx, endpoint, monkeypatch, caplog):
    monkeypatch.setattr(transport, "PEER_TIMEOUT_S", 0.2)  # far shorter than the outage: still no LinkError
    stop = threading.Event()
    detect, inp = plain_link(ctx, endpoint, stop), plain_input(ctx, endpoint)
    try:
        detect.wait_until_connected()
        with caplog.at_level(logging.INFO):
            assert all(sends(detect, 0.3, inp))
            inp.close()  # the consumer's host is gone
            gone = sends(detect, 1.0)
            assert detect.unreachable()
            inp = plain_input(ctx, endpoint)  # and back
            back = sends(detect, 2.0, inp)
            assert back[-1] and not detect.unreachable()
    finally:
        detect.close()
        inp.close()
    assert not any(gone[len(gone) // 2 :]) and detect.dropped >= len(gone) // 2
    assert f"detect: lost segment at {endpoint} (the worker, its host or the link is gone); dropping its frames" in caplog.text
    assert re.search(rf"detect: segment at {endpoint} is back after [\d.]+ s; \d+ frames dropped on this link", caplog.text)


def test_a_block_producer_whose_consumer_is_gone_waits_for_it_and_says_so(ctx, endpoint, caplog):
    stop = threading.Event()
    detect, inp = plain_link(ctx, endpoint, stop, policy="block"), plain_input(ctx, endpoint, leaky=False)
    try:
        detect.wait_until_connected()
        with caplog.at_level(logging.INFO):
            assert detect.send(FRAME) and received(inp, 0.2)
            inp.close()
            # A frame sent in the instant between a peer's close and ZeroMQ noticing it goes down the
            # dead pipe: a lost host is noticed long before the next frame, so let it be noticed here.
            time.sleep(0.5)
            back = threading.Timer(1.0, lambda: later.append(plain_input(ctx, endpoint, leaky=False)))
            later: list[PullInput] = []
            back.start()
            started = time.monotonic()
            assert detect.send(FRAME)  # waits for the consumer to come back, then delivers
            waited = time.monotonic() - started
            back.join()
            assert [m.seq for m in received(later[0], 0.5)] == [7]
            detect.wait_until_connected()  # reads the reconnection event if the send did not need to
    finally:
        detect.close()
        for consumer in (inp, *later):
            consumer.close()
    assert waited >= 0.5
    assert f"detect: lost segment at {endpoint} (the worker, its host or the link is gone); holding frames" in caplog.text
    assert re.search(rf"detect: segment at {endpoint} is back after [\d.]+ s; 0 frames dropped", caplog.text)


def test_a_consumer_says_when_a_producer_is_lost_and_back_but_not_for_a_refused_peer(ctx, endpoint, hosts, caplog):
    server = hosts["compute"][0]
    plan = InputPlan(endpoint, 4, False, False, None, CurveServer(*hosts["compute"], {hosts["camera"][0]: "camera"}),
                     remote=True)  # fmt: skip
    inp = PullInput(ctx, plan, SharedFrames(), lambda e: None, lambda m: None, "segment")
    try:
        with caplog.at_level(logging.INFO):
            intrude(ctx, endpoint, hosts["intruder"], server, 0.5)
            intrude(ctx, endpoint, None, server, 0.3)
            received(inp, 0.3)
            assert "lost the connection" not in caplog.text and inp.peers.connected == 0
            for _ in range(2):  # connected, gone; connected again, gone
                camera = link(ctx, endpoint, hosts["camera"], server, stop_after(5))
                camera.wait_until_connected("detect")
                received(inp, 0.3)
                assert inp.peers.connected == 1
                camera.close()
                received(inp, 0.3)
                assert inp.peers.connected == 0
    finally:
        inp.close()
    assert caplog.text.count("segment: lost the connection from a producer at") == 2
    assert re.search(rf"segment: a producer connected again at {endpoint} after [\d.]+ s", caplog.text)


def test_connected_links_that_carry_nothing_for_a_while_are_told_on_both_sides(ctx, endpoint, monkeypatch, caplog):
    monkeypatch.setattr(transport, "STALL_LOG_S", 0.5)
    big = encode(Message(stream="capture", seq=8, ts=1.0, image=np.zeros((1000, 1000, 3), np.uint8)))
    stop = threading.Event()
    detect, inp = plain_link(ctx, endpoint, stop, policy="block"), plain_input(ctx, endpoint, leaky=False)
    sender = threading.Thread(target=lambda: [detect.send(big) for _ in range(30)])
    try:
        detect.wait_until_connected()
        with caplog.at_level(logging.INFO):
            assert detect.send(FRAME) and received(inp, 0.3)
            assert received(inp, 1.0) == []  # connected, and silent: the link is down, or detect's source
            sender.start()  # segment takes nothing: queues and socket buffers fill, then detect waits
            time.sleep(1.5)
            assert sender.is_alive()
            assert len(received(inp, 3.0)) == 30  # segment takes them all, late
            sender.join(2.0)
    finally:
        stop.set()
        sender.join(2.0)
        detect.close()
        inp.close()
    assert "segment: nothing from detect for 0 s though connected" in caplog.text
    assert re.search(r"segment: frames from detect again after [\d.]+ s", caplog.text)
    assert f"detect: segment at {endpoint} has taken no frame for 0 s though connected" in caplog.text
    assert re.search(r"detect: segment takes frames again after [\d.]+ s", caplog.text)


def _push_batch(ctx, endpoint: str, server: bytes, keys: list[tuple[bytes, bytes]]) -> list[zmq.Socket]:
    """Connect one PUSH socket per key pair and push a forged frame and end-of-stream through each."""
    batch = []
    for public, secret in keys:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server
        sock.connect(endpoint)
        for frames in (FRAME, EOS):
            with contextlib.suppress(zmq.Again):
                sock.send_multipart(frames, flags=zmq.NOBLOCK)
        batch.append(sock)
    return batch


@pytest.mark.slow
def test_ten_thousand_attempts_with_unknown_keys_get_no_frame_in(ctx, endpoint, hosts):
    """10,000 connections, each with a key pair of its own, push forged frames and end-of-stream."""
    inp, errors = bound(ctx, endpoint, hosts["compute"], {"camera": hosts["camera"][0]})
    server, attempts, got, control = hosts["compute"][0], 0, [], []
    try:
        while attempts < 10_000:
            batch = _push_batch(ctx, endpoint, server, [zmq.curve_keypair() for _ in range(100)])  # handshakes in parallel
            got += received(inp, 0.05)
            for sock in batch:
                sock.close(linger=0)
            attempts += len(batch)
        got += received(inp, 0.5)
        # The same pushes with the listed key get through in the same time: the refusals above are the keys'.
        batch = _push_batch(ctx, endpoint, server, [hosts["camera"]] * 5)
        control = received(inp, 0.5)
        for sock in batch:
            sock.close(linger=0)
    finally:
        inp.close()
    assert attempts == 10_000 and got == [] and errors == []
    assert [m.seq for m in control if not m.is_eos] == [7] * 5

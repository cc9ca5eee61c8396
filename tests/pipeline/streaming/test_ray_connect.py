"""How the Ray launcher connects: a Ray Client connection whose server died as the head started it
(Ray issue #63202) is tried again, a bounded number of times; any other refusal is not.

``ray.init`` is replaced here because the race cannot be made to happen on demand; the real
connection through Ray Client runs in tests/cluster/test_ray_launcher.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

ray_launcher = pytest.importorskip("pipeline.streaming.ray_launcher", reason="ray is not installed (extra 'cluster')")

from pipeline.errors import PipelineError  # noqa: E402

# What ray.init raised on the two-node test cluster, once per form of the race
DIED = "Initialization failure from server:\n  ...\nRuntimeError: Starting Ray client server failed. See its .err file"
ZOMBIE = (
    'Initialization failure from server:\n  File "proxier.py", line 396, in start_specific_server\n'
    "psutil.ZombieProcess: PID still exists but it's a zombie (pid=22333)"
)


def connect_with(monkeypatch, outcomes: list[Exception | None]) -> tuple[SimpleNamespace, list[str]]:
    """Run ``_connect`` where ``ray.init`` raises each of ``outcomes`` in turn (None: it connects)."""
    calls: list[str] = []

    def init(address, **_):
        calls.append(address)
        outcome = outcomes[len(calls) - 1]
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(ray_launcher.ray, "init", init)
    launcher = SimpleNamespace(address="ray://10.0.0.1:10001", _ship=lambda: None, _connected=False)
    ray_launcher.RayLauncher._connect(launcher)
    return launcher, calls


@pytest.mark.parametrize("message", [DIED, ZOMBIE])
def test_a_client_server_that_died_starting_is_tried_again(monkeypatch, caplog, message):
    launcher, calls = connect_with(monkeypatch, [ConnectionAbortedError(message), None])
    assert launcher._connected and len(calls) == 2
    assert "Ray issue #63202); trying again (2 of 4)" in caplog.text


def test_the_retries_are_bounded_and_the_error_says_what_to_change(monkeypatch):
    with pytest.raises(PipelineError, match=r"failed to start a server for this driver 4 times.*GRPC_ENABLE_FORK_SUPPORT=0"):
        connect_with(monkeypatch, [ConnectionAbortedError(DIED)] * 4 + [None])


def test_no_cluster_at_the_address_is_not_tried_again(monkeypatch):
    with pytest.raises(PipelineError, match="no Ray cluster there") as error:
        connect_with(monkeypatch, [ConnectionError("could not connect to 10.0.0.1:10001"), None])
    assert "could not connect" in str(error.value)

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
# Not the race: the working_dir could not be set up on the head (it fails the same way every time)
RUNTIME_ENV = (
    'Initialization failure from server:\n  File "proxier.py", line 765, in start_specific_server\n'
    "RuntimeError: Failed to create runtime_env for Ray client server, it is caused by: no space left"
)
SHIPPED = {"working_dir": "/home/me/emotion-pipeline", "excludes": [".git"]}


def connect_with(monkeypatch, outcomes: list[Exception | None]) -> tuple[SimpleNamespace, list[dict]]:
    """Run ``_connect`` where ``ray.init`` raises each of ``outcomes`` in turn (None: it connects).

    Returns the launcher and the runtime_env each call got, as it got it. Like the real
    ``ray.init``, this one rewrites the dict: ``working_dir`` becomes the uploaded package's URI.
    """
    calls: list[dict] = []

    def init(address, runtime_env, **_):
        calls.append(dict(runtime_env))
        runtime_env["working_dir"] = "gcs://_ray_pkg_0123.zip"
        runtime_env.pop("excludes", None)
        outcome = outcomes[len(calls) - 1]
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(ray_launcher.ray, "init", init)
    launcher = SimpleNamespace(address="ray://10.0.0.1:10001", _ship=lambda: dict(SHIPPED), _connected=False)
    ray_launcher.RayLauncher._connect(launcher)
    return launcher, calls


@pytest.mark.parametrize("message", [DIED, ZOMBIE])
def test_a_client_server_that_died_starting_is_tried_again(monkeypatch, caplog, message):
    launcher, calls = connect_with(monkeypatch, [ConnectionAbortedError(message), None])
    assert launcher._connected and len(calls) == 2
    assert "Ray issue #63202); trying again (2 of 4)" in caplog.text
    assert calls[1] == SHIPPED  # the checkout itself again, not what Ray made of it the first time


def test_the_retries_are_bounded_and_the_error_says_what_to_change(monkeypatch):
    with pytest.raises(PipelineError, match="failed to start a server for this driver 4 times") as error:
        connect_with(monkeypatch, [ConnectionAbortedError(DIED)] * 4 + [None])
    assert "the last: RuntimeError: Starting Ray client server failed" in str(error.value)
    assert "GRPC_ENABLE_FORK_SUPPORT=0" in str(error.value)


def test_a_runtime_env_that_cannot_be_set_up_is_not_tried_again(monkeypatch):
    with pytest.raises(PipelineError, match="Failed to create runtime_env") as error:
        connect_with(monkeypatch, [ConnectionAbortedError(RUNTIME_ENV), None])
    assert "#63202" not in str(error.value)


def test_no_cluster_at_the_address_is_not_tried_again(monkeypatch):
    with pytest.raises(PipelineError, match="no Ray cluster there") as error:
        connect_with(monkeypatch, [ConnectionError("could not connect to 10.0.0.1:10001"), None])
    assert "could not connect" in str(error.value)

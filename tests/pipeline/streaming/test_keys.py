"""Key pairs on disk: made private, loaded back, refused when missing or readable by others."""

import stat

import pytest

from pipeline.errors import ConfigError
from pipeline.streaming.keys import is_loopback, key_pair, new_key_pair, public_key


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_pair_has_a_private_secret_and_a_readable_public_key(tmp_path):
    public, secret = new_key_pair(tmp_path / "keys", "camera")
    assert (public.name, secret.name) == ("camera.key", "camera.key_secret")
    assert mode(secret) == 0o600 and mode(public) == 0o644
    pub, sec = key_pair(tmp_path / "keys", "camera")
    assert public_key(tmp_path / "keys", "camera") == pub and len(pub) == len(sec) == 40


def test_an_existing_pair_is_replaced_only_with_force(tmp_path):
    new_key_pair(tmp_path, "camera")
    old = public_key(tmp_path, "camera")
    with pytest.raises(ConfigError, match="exists; rotate it with --force"):
        new_key_pair(tmp_path, "camera")
    assert public_key(tmp_path, "camera") == old
    new_key_pair(tmp_path, "camera", force=True)
    assert public_key(tmp_path, "camera") != old


def test_a_secret_key_other_users_can_read_is_refused(tmp_path):
    _, secret = new_key_pair(tmp_path, "camera")
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match=r"camera.key_secret: other users can read this secret key \(mode 0640\)"):
        key_pair(tmp_path, "camera")


def test_a_missing_key_names_the_file_and_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"compute.key: no such key file: copy compute.key from host compute"):
        public_key(tmp_path, "compute")
    with pytest.raises(ConfigError, match=r"camera.key_secret: no such key file: make it on this host"):
        key_pair(tmp_path, "camera")


def test_a_public_key_file_is_not_a_key_pair(tmp_path):
    new_key_pair(tmp_path, "compute")
    (tmp_path / "compute.key").rename(tmp_path / "other.key_secret")
    (tmp_path / "other.key_secret").chmod(0o600)
    with pytest.raises(ConfigError, match="no secret-key line"):
        key_pair(tmp_path, "other")


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.0.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://10.77.1.2:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://camera.example:5555", False),
    ],
)
def test_only_literal_loopback_addresses_stay_on_the_machine(endpoint, loopback):
    assert is_loopback(endpoint) is loopback

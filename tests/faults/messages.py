"""Hostile and broken messages: random bytes, random msgpack, and crafted headers that break one field each."""

from __future__ import annotations

import random

import msgpack

from pipeline.streaming.message import FORMAT_VERSION

# Each breaks one thing the decoder must check (the probe of the fault issue found most of them).
CRAFTED_HEADERS: list[dict] = [
    {"seq": float("inf")},
    {"seq": 2**64 - 1},
    {"seq": -5},
    {"ts": float("nan")},
    {"stamps": {"x": "y"}},
    {"stamps": {str(i): 1.0 for i in range(100)}},
    {"stream": ""},
    {"stream": 7},
    {"meta": [1, 2]},
    {"fields": {"faces": [{"box": [1, 2]}]}},
    {"fields": {"faces": [{"box": [0, 0, 2**63, 1]}]}},
    {"fields": {"faces": [{"box": [0, 0, 5, 5], "probs": [float("nan")] * 7}]}},
    {"fields": {"faces": [{"box": [0, 0, 5, 5], "track": 2**63}]}},
    {"fields": {"faces": [{"box": [0, 0, 5, 5]}] * 300}},
    {"fields": {"faces": [{"box": [0, 0, 5, 5], "seg": {"buf": 9, "shape": [48, 48], "dtype": "uint8"}}]}},
    {"fields": {"nobody": 1}},
    {"image": {"buf": 1, "shape": [float("inf"), 2, 3], "dtype": "uint8"}},
    {"image": {"buf": 1, "shape": [2**32, 2**32, 3], "dtype": "uint8"}},
    {"image": {"buf": 1, "shape": [2, 2, 3], "dtype": "uint8", "codec": "jpeg"}},
    {"image": {"buf": 1, "shape": [2, 2, 3], "dtype": "object"}},
    {"image": {"codec": "shm", "ring": "../../etc/passwd", "slot": 0, "gen": 0, "shape": [2, 2, 3], "dtype": "uint8"}},
    {"image": {"codec": "shm", "ring": "emopipe-1-x-1-abcd", "slot": 0, "gen": 0, "shape": [2, 2, 3], "dtype": "uint8"}},
    {"image": "raw"},
    {"kind": "eos", "stream": "capture", "seq": 3, "meta": {"from": "nobody:0"}},  # an end-of-stream from no producer
    {"v": 1},
    {"kind": "video"},
]


def header(**changes) -> dict:
    base = {
        "v": FORMAT_VERSION,
        "kind": "frame",
        "stream": "capture",
        "seq": 0,
        "ts": 1.0,
        "media_ts": 0.0,
        "image": None,
        "fields": {},
    }
    base.update(changes)
    return base


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bytes", "none", "bool"] + (["list", "map"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.0, -1.5, float("inf"), float("-inf"), float("nan"), 1e308, rng.random()])
    if kind == "str":
        return rng.choice(["", "capture", "faces", "eos", "frame", "x" * rng.randint(0, 300)])
    if kind == "bytes":
        return rng.randbytes(rng.randint(0, 64))
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice(["box", "seg", "probs", "buf", "shape", "dtype", "codec", "from", "x"]): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}  # fmt: skip


def random_message(rng: random.Random) -> list[bytes]:
    """One broken message: raw bytes, random msgpack, a header with random fields, or a crafted one."""
    roll = rng.random()
    if roll < 0.15:
        return [rng.randbytes(rng.randint(0, 200))]
    if roll < 0.3:
        return [msgpack.packb(_random_value(rng))]
    if roll < 0.7:
        key = rng.choice(["seq", "ts", "media_ts", "stamps", "stream", "meta", "fields", "image", "kind", "v"])
        frames = [msgpack.packb(header(**{key: _random_value(rng)}))]
    else:
        frames = [msgpack.packb(header(**rng.choice(CRAFTED_HEADERS)))]
    return frames + [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(0, 2))]

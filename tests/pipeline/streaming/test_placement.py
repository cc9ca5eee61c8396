"""Placement on a cluster, without Ray: what a stage asks of a node, refusals by stage name,
endpoints resolved from where the workers landed (ipc:// on one node, tcp:// across), and the
CurveZMQ keys of the links that cross nodes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
import zmq

from pipeline.errors import ConfigError
from pipeline.streaming.keys import WorkerKeys, new_key_pair, public_key
from pipeline.streaming.placement import (
    DEFAULT_CPUS,
    RESOURCE_SHARE,
    Site,
    check_placement,
    check_shm_links,
    resolve_endpoints,
    stage_needs,
    wanted_port,
)
from pipeline.streaming.plan import compile_plans, own_secret
from pipeline.streaming.topology import load_topology

CAMERA = {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 2.0, "camera": 1.0},
          "Labels": {"role": "camera", "ray.io/node-id": "a"}}  # fmt: skip
COMPUTE = {"Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 2.0}, "Labels": {"role": "compute"}}


def topology(tmp_path, keys: str | None = None, **changes):
    """capture -> detect (2 workers) -> log, with ``changes`` per stage name (and a key directory)."""
    stages = [
        {"name": "capture", "type": "capture", "params": {"source": "0"}, "placement": "camera"},
        {"name": "detect", "type": "detect", "inputs": ["capture"], "workers": 2, "cpus": 0.5},
        {"name": "log", "type": "log", "inputs": ["detect"], "placement": ["role=compute"]},
    ]
    for stage in stages:
        stage.update(changes.get(stage["name"], {}))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"name": "t", "stages": stages, **({"keys": keys} if keys else {})}))
    return load_topology(tmp_path / "t.yaml", tmp_path / "rt")


def sites(**nodes: str) -> dict[str, Site]:
    """Worker id -> a site on node ``a`` or ``b`` (ports 7000 + position), with a public key of its own."""
    ips = {"a": "10.0.0.1", "b": "10.0.0.2"}
    return {
        wid.replace("_", ":"): Site(n, ips[n], 7000 + i, f"/tmp/run-{n}", zmq.curve_keypair()[0])
        for i, (wid, n) in enumerate(nodes.items())
    }


def worker_keys(placed: dict[str, Site]) -> WorkerKeys:
    return WorkerKeys({wid: site.public for wid, site in placed.items()})


def test_a_stage_asks_for_its_cpus_a_share_of_its_resources_and_its_labels(tmp_path):
    topo = topology(tmp_path)
    assert stage_needs(topo.stages["capture"]) == ({"CPU": DEFAULT_CPUS, "camera": RESOURCE_SHARE}, {})
    assert stage_needs(topo.stages["detect"]) == ({"CPU": 0.5}, {})
    assert stage_needs(topo.stages["log"]) == ({"CPU": DEFAULT_CPUS}, {"role": "compute"})


def test_placements_some_node_satisfies_pass(tmp_path):
    check_placement(topology(tmp_path), [CAMERA, COMPUTE])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"log": {"placement": "gpu"}}, "stages[2] (log).placement: no node of the Ray cluster has resource 'gpu' and 0.25 CPU"),
        ({"log": {"placement": "role=storage"}}, "stages[2] (log).placement: no node of the Ray cluster has label role=storage"),
        ({"detect": {"cpus": 4}}, "stages[1] (detect).placement: no node of the Ray cluster has 4 CPU"),
    ],
)
def test_a_placement_no_node_satisfies_names_the_stage_and_lists_the_nodes(tmp_path, change, expected):
    with pytest.raises(ConfigError) as err:
        check_placement(topology(tmp_path, **change), [CAMERA, COMPUTE])
    assert str(err.value).startswith(expected)
    assert "10.0.0.1 {'CPU': 2.0, 'camera': 1.0} labels {'role': 'camera'}" in str(err.value)


def test_a_dead_node_does_not_count(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\[0\] \(capture\).placement: .*resource 'camera'"):
        check_placement(topology(tmp_path), [{**CAMERA, "Alive": False}, COMPUTE])


@pytest.mark.parametrize("bad", ["", "1camera", "zone=a b", "a=b=c"])
def test_a_malformed_placement_is_refused_with_its_place_in_the_file(tmp_path, bad):
    with pytest.raises(ConfigError, match=r"stages\[2\] \(log\)\.placement: must be a resource name"):
        topology(tmp_path, log={"placement": bad})


def test_workers_fed_only_from_their_own_node_get_ipc_and_the_others_tcp(tmp_path):
    topo = topology(tmp_path)
    placed = sites(capture_0="a", detect_0="a", detect_1="b", log_0="b")
    endpoints = resolve_endpoints(topo, placed)
    assert endpoints["detect"] == ["ipc:///tmp/run-a/detect-0", "tcp://10.0.0.2:7002"]
    assert endpoints["log"] == ["tcp://10.0.0.2:7003"]  # one producer on each node: tcp for both
    assert "capture" not in endpoints
    plans = {p.id: p for p in compile_plans(topo, None, endpoints)}
    capture_out = plans["capture:0"].outputs[0]
    assert capture_out.endpoints == ("ipc:///tmp/run-a/detect-0", "tcp://10.0.0.2:7002")
    assert capture_out.codec == "raw"  # not every worker of detect can map this node's memory
    assert plans["detect:1"].input.bind == "tcp://10.0.0.2:7002" and not plans["detect:1"].input.shm


def test_a_pipeline_on_one_node_keeps_shared_memory(tmp_path):
    topo = topology(tmp_path)
    endpoints = resolve_endpoints(topo, sites(capture_0="a", detect_0="a", detect_1="a", log_0="a"))
    plans = {p.id: p for p in compile_plans(topo, None, endpoints)}
    assert plans["capture:0"].outputs[0].codec == "shm"
    assert plans["log:0"].input.bind == "ipc:///tmp/run-a/log-0" and plans["log:0"].input.shm


def test_a_shm_link_across_nodes_is_refused(tmp_path):
    topo = topology(tmp_path, detect={"inputs": [{"from": "capture", "codec": "shm"}]})
    endpoints = resolve_endpoints(topo, sites(capture_0="a", detect_0="b", detect_1="b", log_0="b"))
    with pytest.raises(ConfigError, match=r"stages\[1\] \(detect\).inputs\[0\].codec: shm needs capture and detect on one node"):
        check_shm_links(topo, endpoints)


def test_a_port_in_the_file_is_kept_and_its_host_ignored(tmp_path):
    topo = topology(tmp_path, detect={"endpoint": "tcp://camera-host:6000", "insecure": True})
    assert [wanted_port(topo.stages["detect"], i) for i in (0, 1)] == [6000, 6001]
    assert wanted_port(topo.stages["log"], 0) == 0  # any free port


def test_links_between_ray_nodes_are_curve_with_each_workers_own_keys(tmp_path):
    topo, placed = topology(tmp_path), sites(capture_0="a", detect_0="a", detect_1="b", log_0="b")
    public = {wid: site.public for wid, site in placed.items()}
    plans = {p.id: p for p in compile_plans(topo, None, resolve_endpoints(topo, placed), worker_keys(placed))}
    assert plans["detect:0"].input.curve is None  # fed on its own node: ipc://, no keys
    assert plans["detect:1"].input.curve.clients == {public["capture:0"]: "capture:0"}
    assert plans["log:0"].input.curve.clients == {public["detect:0"]: "detect:0", public["detect:1"]: "detect:1"}
    to_detect = plans["capture:0"].outputs[0].curve
    assert to_detect.public == public["capture:0"] and to_detect.server_key(1) == public["detect:1"]
    assert plans["detect:1"].outputs[0].curve.server == public["log:0"]
    assert all(c.secret == b"" for c in _curves(plans.values())), "a secret key in a plan the driver made"


def test_a_worker_puts_its_own_secret_key_into_its_plan_and_refuses_a_plan_for_another_key(tmp_path):
    placed = sites(capture_0="a", detect_0="b", detect_1="b", log_0="a")  # every link crosses
    pairs = {wid: zmq.curve_keypair() for wid in placed}
    placed = {wid: replace(site, public=pairs[wid][0]) for wid, site in placed.items()}
    topo = topology(tmp_path)
    plans = {p.id: p for p in compile_plans(topo, None, resolve_endpoints(topo, placed), worker_keys(placed))}
    for wid, plan in plans.items():
        assert {c.secret for c in _curves([own_secret(plan, *pairs[wid])])} == {pairs[wid][1]}
        assert pairs[wid][1] not in repr(own_secret(plan, *pairs[wid])).encode()
    with pytest.raises(ValueError, match=r"detect\[1\]: its plan names another public key"):
        own_secret(plans["detect:1"], *zmq.curve_keypair())


def _curves(plans) -> list:
    return [c for p in plans for c in [p.input.curve if p.input else None, *(o.curve for o in p.outputs)] if c is not None]


def test_a_stage_that_says_insecure_stays_plain_between_ray_nodes(tmp_path):
    topo, placed = topology(tmp_path, log={"insecure": True}), sites(capture_0="a", detect_0="a", detect_1="a", log_0="b")
    plans = {p.id: p for p in compile_plans(topo, None, resolve_endpoints(topo, placed), worker_keys(placed))}
    assert plans["log:0"].input.bind == "tcp://10.0.0.2:7003" and plans["log:0"].input.curve is None
    assert plans["detect:0"].outputs[0].curve is None


def test_a_key_directory_gives_the_ray_links_its_hosts_pairs_and_needs_host_on_each_stage(tmp_path):
    for host in ("camera", "compute"):
        new_key_pair(tmp_path / "keys", host)
    hosts = {"capture": {"host": "camera"}, "detect": {"host": "camera"}, "log": {"host": "compute"}}
    topo = topology(tmp_path, **hosts, keys=str(tmp_path / "keys"))
    placed = sites(capture_0="a", detect_0="a", detect_1="a", log_0="b")
    endpoints = resolve_endpoints(topo, placed)
    plans = {p.id: p for p in compile_plans(topo, None, endpoints, worker_keys(placed))}  # the directory wins
    assert plans["log:0"].input.curve.clients == {public_key(tmp_path / "keys", "camera"): "camera"}
    assert plans["detect:0"].outputs[0].curve.server == public_key(tmp_path / "keys", "compute")
    topo = topology(tmp_path, keys=str(tmp_path / "keys"), capture={"host": "camera"}, detect={"host": "camera"})
    with pytest.raises(ConfigError, match=r"stages\[2\] \(log\)\.host: required: .* secured with"):
        compile_plans(topo, None, endpoints)

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.streaming.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path: Path, stages: list[dict], **top) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump({"name": "t", **top, "stages": stages}))
    return path


def chain(model_dir: Path | None = None, **changes) -> list[dict]:
    """capture -> detect -> segment -> classify -> log, with per-stage changes."""
    stages = [
        {"name": "capture", "type": "capture", "params": {"source": "0"}},
        {"name": "detect", "type": "detect", "inputs": ["capture"]},
        {"name": "segment", "type": "segment", "inputs": ["detect"]},
        {"name": "classify", "type": "classify", "inputs": ["segment"], "params": {"model": str(model_dir)} if model_dir else {}},
        {"name": "log", "type": "log", "inputs": ["classify"]},
    ]
    for stage in stages:
        stage.update(changes.get(stage["name"], {}))
    return stages


def error_of(tmp_path, stages, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        load_topology(write(tmp_path, stages), tmp_path, **kw)
    return str(err.value)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path, model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name models/default relative to the project
    topology = load_topology(path, tmp_path)
    assert topology.classes[topology.order[0]].is_source


def test_k_zero_names_the_yaml_path_and_the_bound(tmp_path, model_dir):
    message = error_of(tmp_path, chain(model_dir, segment={"params": {"k": 0}}))
    assert "stages[2] (segment).params.k: must be >= 2, got 0" in message


def test_unknown_stage_type_lists_the_registered_ones(tmp_path, model_dir):
    message = error_of(tmp_path, chain(model_dir, detect={"type": "mtcnn"}))
    assert "stages[1] (detect).type: unknown stage type 'mtcnn'" in message and "capture" in message


def test_missing_input_is_reported(tmp_path, model_dir):
    stages = chain(model_dir)
    del stages[2]["inputs"]
    assert "stages[2] (segment).inputs: required" in error_of(tmp_path, stages)


def test_dangling_input_names_the_known_stages(tmp_path, model_dir):
    message = error_of(tmp_path, chain(model_dir, segment={"inputs": ["detector"]}))
    assert "stages[2] (segment).inputs[0]: no stage named 'detector'" in message


def test_unknown_param_key_is_rejected(tmp_path, model_dir):
    message = error_of(tmp_path, chain(model_dir, detect={"params": {"scale": 1.2}}))
    assert "stages[1] (detect).params.scale: unknown key" in message


def test_unknown_stage_key_is_rejected(tmp_path, model_dir):
    message = error_of(tmp_path, chain(model_dir, detect={"worker": 2}))
    assert "stages[1] (detect).worker" in message


def test_wrong_type_is_reported(tmp_path, model_dir):
    message = error_of(tmp_path, chain(model_dir, detect={"workers": "two"}))
    assert "stages[1] (detect).workers" in message and "'two'" in message


def test_cycle_is_reported(tmp_path, model_dir):
    message = error_of(tmp_path, chain(model_dir, detect={"inputs": ["capture", "classify"]}))
    assert "cycle" in message and "detect" in message


def test_classify_without_a_detector_upstream_is_refused(tmp_path, model_dir):
    stages = chain(model_dir, classify={"inputs": ["capture"]})
    del stages[1:3]
    message = error_of(tmp_path, stages)
    assert "(classify).inputs: a classify stage needs box" in message


def test_endpoint_clash_is_reported(tmp_path, model_dir):
    stages = chain(
        model_dir, detect={"endpoint": "tcp://127.0.0.1:6000", "workers": 2}, segment={"endpoint": "tcp://127.0.0.1:6001"}
    )
    assert "(segment).endpoint: tcp://127.0.0.1:6001 clashes with stage 'detect'" in error_of(tmp_path, stages)


def test_ordered_sink_cannot_have_several_workers(tmp_path, model_dir):
    message = error_of(tmp_path, chain(model_dir, log={"workers": 2}))
    assert "(log).workers: must be 1" in message


def test_missing_source_file_is_a_config_error(tmp_path, model_dir):
    message = error_of(tmp_path, chain(model_dir), source=str(tmp_path / "nope.mp4"))
    assert "stages[0] (capture).params.source: no such file or folder" in message


def test_overrides_reach_params_and_stage_fields(tmp_path, model_dir):
    topology = load_topology(
        write(tmp_path, chain(model_dir)), tmp_path, overrides=["detect.workers=3", "segment.k=6", "detect.scale_factor=1.3"]
    )
    assert topology.stages["detect"].workers == 3
    assert topology.params["segment"].k == 6 and topology.params["detect"].scale_factor == 1.3
    assert len(topology.endpoints("detect")) == 3


def test_a_stage_nice_overrides_the_pipeline_nice_and_bad_values_are_named(tmp_path, model_dir):
    from pipeline.streaming.plan import compile_plans

    topology = load_topology(write(tmp_path, chain(model_dir, detect={"nice": 0}), nice=5), tmp_path)
    assert {plan.stage: plan.nice for plan in compile_plans(topology, ["capture", "detect", "log"])} == {
        "capture": 5, "detect": 0, "log": 5,
    }  # fmt: skip
    assert "stages[1] (detect).nice" in error_of(tmp_path, chain(model_dir, detect={"nice": 20}))
    with pytest.raises(ConfigError, match="nice"):
        load_topology(write(tmp_path, chain(model_dir), nice=-1), tmp_path)


def test_bad_override_is_reported(tmp_path, model_dir):
    assert "--set 'nosuch.k=1'" in error_of(tmp_path, chain(model_dir), overrides=["nosuch.k=1"])


def test_eos_accounting_follows_worker_counts(tmp_path, model_dir):
    topology = load_topology(write(tmp_path, chain(model_dir, detect={"workers": 3})), tmp_path)
    assert topology.expected_eos("detect", "capture") == 1
    assert topology.expected_eos("segment", "capture") == 3


def test_invalid_yaml_is_reported_with_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stages: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_topology(path, tmp_path)


def test_only_stages_behind_parallel_workers_reorder(tmp_path, model_dir):
    single = load_topology(write(tmp_path, chain(model_dir)), tmp_path)
    assert not any(single.out_of_order.values())  # a chain of single workers is FIFO all the way
    stages = chain(model_dir, detect={"workers": 2}) + [{"name": "track", "type": "track", "inputs": ["classify"]}]
    stages[-2]["inputs"] = ["track"]  # capture -> detect x2 -> segment -> classify -> track -> log
    scaled = load_topology(write(tmp_path, stages), tmp_path)
    assert scaled.out_of_order == {
        "capture": False, "detect": False, "segment": True, "classify": True, "track": True, "log": False,
    }  # fmt: skip


def test_links_carry_the_image_only_where_a_stage_downstream_uses_it(tmp_path, model_dir):
    topology = load_topology(write(tmp_path, chain(model_dir)), tmp_path)
    assert topology.needs_image == {"capture": True, "detect": True, "segment": True, "classify": True, "log": False}


def test_images_go_through_shared_memory_on_one_machine_and_inline_over_tcp(tmp_path, model_dir):
    raw = {"inputs": [{"from": "segment", "codec": "raw"}]}
    stages = chain(model_dir, segment={"endpoint": "tcp://127.0.0.1:6001"}, classify=raw)
    topology = load_topology(write(tmp_path, stages), tmp_path)
    assert [topology.codec(s.name, s.inputs[0]) for s in topology.config.stages[1:]] == ["shm", "raw", "raw", "shm"]


def test_shared_memory_over_tcp_is_refused(tmp_path, model_dir):
    stages = chain(model_dir, segment={"endpoint": "tcp://127.0.0.1:6001", "inputs": [{"from": "detect", "codec": "shm"}]})
    assert "(segment).inputs[0].codec: shm needs both stages on one machine" in error_of(tmp_path, stages)


def with_segmentation(model_dir: Path, tmp_path: Path, enabled: bool) -> Path:
    """A copy of the model whose metadata says it was (or was not) trained with the K-means channel."""
    copy = tmp_path / f"model-seg-{enabled}"
    shutil.copytree(model_dir, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["channels"] = 2 if enabled else 1
    meta["segmentation"] = {"enabled": enabled, "k": 4 if enabled else 0, "function": "pipeline.vision.faces.segment_face",
                            "version": 2 if enabled else None}  # fmt: skip
    (copy / "model.json").write_text(json.dumps(meta))
    return copy


def test_a_model_trained_with_segmentation_needs_a_segment_stage_upstream(tmp_path, model_dir):
    for enabled in (True, False):
        stages = chain(with_segmentation(model_dir, tmp_path, enabled))
        del stages[2]  # capture -> detect -> classify -> log
        stages[2]["inputs"] = ["detect"]
        if enabled:
            assert "stages[2] (classify).inputs: a classify stage needs seg from upstream" in error_of(tmp_path, stages)
        else:
            assert load_topology(write(tmp_path, stages), tmp_path).order == ["capture", "detect", "classify", "log"]


def test_a_tcp_bind_other_machines_reach_needs_keys_or_insecure(tmp_path, model_dir):
    exposed = {"endpoint": "tcp://10.77.1.2:5556", "bind": "tcp://0.0.0.0:5556"}
    message = error_of(tmp_path, chain(model_dir, segment=exposed))
    assert message.endswith(
        "stages[2] (segment).bind: tcp://0.0.0.0:5556 is reachable from other machines: "
        "name a key directory (keys: DIR) or say insecure: true"
    )
    message = error_of(tmp_path, chain(model_dir, segment={"endpoint": "tcp://10.77.1.2:5556"}))
    assert "stages[2] (segment).endpoint: tcp://10.77.1.2:5556 is reachable from other machines" in message
    assert load_topology(write(tmp_path, chain(model_dir, segment={**exposed, "insecure": True})), tmp_path)
    assert load_topology(write(tmp_path, chain(model_dir, segment={"endpoint": "tcp://127.0.0.1:5556"})), tmp_path)


def test_a_secured_link_names_the_host_of_both_ends(tmp_path, model_dir):
    stages = chain(model_dir, segment={"endpoint": "tcp://0.0.0.0:5556", "host": "compute"})
    path = write(tmp_path, stages, keys="keys")
    with pytest.raises(ConfigError, match=r"stages\[1\] \(detect\)\.host: required: this stage sends to segment over a tcp://"):
        load_topology(path, tmp_path)
    stages[1]["host"] = "camera"
    topology = load_topology(write(tmp_path, stages, keys="keys"), tmp_path)
    assert topology.link_keys("segment") == Path("keys") and topology.link_keys("classify") is None  # ipc://


def test_a_stage_can_name_its_own_key_directory_or_opt_out(tmp_path, model_dir):
    secured = {"endpoint": "tcp://0.0.0.0:5556", "host": "compute"}
    stages = chain(model_dir, segment={**secured, "keys": "other"}, detect={"host": "camera"})
    assert load_topology(write(tmp_path, stages, keys="keys"), tmp_path).link_keys("segment") == Path("other")
    stages = chain(model_dir, segment={**secured, "insecure": True})
    assert load_topology(write(tmp_path, stages, keys="keys"), tmp_path).link_keys("segment") is None


def test_set_names_a_top_level_key_directory(tmp_path, model_dir):
    stages = chain(model_dir, segment={"endpoint": "tcp://0.0.0.0:5556", "host": "compute"}, detect={"host": "camera"})
    topology = load_topology(write(tmp_path, stages), tmp_path, overrides=[f"keys={tmp_path / 'k'}"])
    assert topology.link_keys("segment") == tmp_path / "k"
    message = error_of(tmp_path, stages, overrides=["segment=1"])
    assert "expected stage.key=value (or top-level keys=..., name=..., nice=...)" in message


def test_missing_key_files_are_named_when_this_host_compiles_its_workers(tmp_path, model_dir):
    from pipeline.streaming.keys import new_key_pair
    from pipeline.streaming.plan import compile_plans

    stages = chain(model_dir, segment={"endpoint": "tcp://0.0.0.0:5556", "host": "compute"}, detect={"host": "camera"})
    topology = load_topology(write(tmp_path, stages, keys=str(tmp_path / "keys")), tmp_path)
    new_key_pair(tmp_path / "keys", "compute")
    assert compile_plans(topology, ["classify", "log"])  # no tcp:// link there: no key needed
    with pytest.raises(ConfigError, match=r"stages\[2\] \(segment\): .*camera.key: no such key file: copy camera.key"):
        compile_plans(topology, ["segment"])
    with pytest.raises(ConfigError, match=r"stages\[1\] \(detect\): .*camera.key_secret: no such key file: make it"):
        compile_plans(topology, ["detect"])
    new_key_pair(tmp_path / "keys", "camera")
    plans = {plan.stage: plan for plan in compile_plans(topology)}
    assert set(plans["segment"].input.curve.clients.values()) == {"camera"}
    assert plans["detect"].outputs[0].curve.server == plans["segment"].input.curve.public


def test_two_host_recipes_start_every_stage(model_dir, monkeypatch):
    """Each --stages recipe in the README and in configs/distributed.yaml covers every stage once."""
    monkeypatch.chdir(ROOT)
    stages = set(load_topology(ROOT / "configs" / "distributed.yaml", ROOT).stages)
    for doc in (ROOT / "README.md", ROOT / "configs" / "distributed.yaml"):
        started = re.findall(r"run configs/distributed\.yaml --stages ([\w,]+)", doc.read_text())
        assert started, f"{doc.name}: no two-host recipe found"
        for i in range(0, len(started), 2):
            halves = [set(s.split(",")) for s in started[i : i + 2]]
            assert halves[0] | halves[1] == stages and not halves[0] & halves[1], (doc.name, halves)


def test_only_inputs_fed_from_another_run_watch_their_producers(tmp_path, model_dir):
    from pipeline.streaming.plan import compile_plans

    topology = load_topology(write(tmp_path, chain(model_dir)), tmp_path)
    compute = {plan.stage: plan for plan in compile_plans(topology, ["segment", "classify", "log"])}
    assert compute["segment"].input.remote and compute["segment"].input.producers == ("detect",)
    assert not compute["classify"].input.remote and not compute["log"].input.remote
    assert not any(plan.input and plan.input.remote for plan in compile_plans(topology))

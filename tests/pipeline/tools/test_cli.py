"""The command line: errors are one line naming the place, with a named exit code, before anything starts."""

import sys

import pytest
from click.testing import CliRunner

from pipeline.errors import ExitCode, PipelineError
from pipeline.tools.cli import _train_out, main
from tests.conftest import ROOT


def test_a_config_error_is_one_line_with_the_place_and_exit_code_2():
    result = CliRunner().invoke(main, ["validate", str(ROOT / "configs" / "local.yaml"), "--set", "segment.k=0"])
    assert result.exit_code == ExitCode.CONFIG
    assert "stages[2] (segment).params.k: must be >= 2, got 0" in result.output
    assert "Traceback" not in result.output


def test_a_yaml_file_that_is_not_text_is_refused_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: x\nstages: [\xff\xfe]\n")
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == ExitCode.CONFIG
    assert f"{bad}: not UTF-8 text" in result.output


def test_an_unwritable_output_folder_fails_before_any_worker_starts(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    result = CliRunner().invoke(main, ["run", str(ROOT / "configs" / "local.yaml"), "--out", str(blocked / "out")])
    assert result.exit_code == ExitCode.CONFIG
    assert f"--out {blocked / 'out'}: cannot write there" in result.output
    assert "started" not in result.output


def test_train_never_writes_over_the_shipped_model_unasked(tmp_path):
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(ROOT / "models" / "default")])
    assert result.exit_code == ExitCode.CONFIG
    assert "that is the shipped model; pass --replace-default" in result.output
    assert _train_out(str(ROOT / "models" / "default"), True, False) == str(ROOT / "models" / "default")


def test_train_refuses_an_unknown_segmentation_mode_clearly(tmp_path):
    from pipeline.vision.model import SEGMENTATION_MODES
    from train.train import TrainConfig

    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--segmentation", "gate"])
    assert result.exit_code == ExitCode.CONFIG
    assert "'gate' is not one of 'off', 'on', 'attention'" in result.output
    option = next(p for p in main.commands["train"].params if p.name == "segmentation")
    assert tuple(option.type.choices) == SEGMENTATION_MODES
    with pytest.raises(ValueError, match="segmentation: must be one of off, on, attention, got 'gate'"):
        TrainConfig(data=str(tmp_path), out=str(tmp_path), segmentation="gate")
    assert TrainConfig(data=str(tmp_path), out=str(tmp_path), segmentation="attention").channels == 2


def test_train_writes_to_a_new_folder_under_runs_by_default():
    assert _train_out(None, False, False).startswith("runs/train-")
    with pytest.raises(PipelineError, match="name it with --out"):
        _train_out(None, False, True)


def test_keys_new_makes_a_pair_per_host_and_keeps_existing_ones(tmp_path):
    result = CliRunner().invoke(main, ["keys", "new", str(tmp_path / "keys"), "camera", "compute"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "camera.key", "camera.key_secret", "compute.key", "compute.key_secret"
    ]  # fmt: skip
    again = CliRunner().invoke(main, ["keys", "new", str(tmp_path / "keys"), "camera"])
    assert again.exit_code == ExitCode.CONFIG and "exists; rotate it with --force" in again.output
    assert CliRunner().invoke(main, ["keys", "new", str(tmp_path / "keys"), "camera", "--force"]).exit_code == 0
    bad = CliRunner().invoke(main, ["keys", "new", str(tmp_path / "keys"), "../up"])
    assert bad.exit_code == ExitCode.CONFIG and "is not a host name" in bad.output


def test_a_run_without_its_key_files_fails_before_any_worker_starts(tmp_path):
    result = CliRunner().invoke(
        main,
        ["run", str(ROOT / "configs" / "distributed.yaml"), "--stages", "capture,detect", "--source", "0",
         "--set", f"keys={tmp_path / 'none'}", "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == ExitCode.CONFIG
    assert "stages[1] (detect): " in result.output and "camera.key_secret: no such key file" in result.output
    assert "started" not in result.output


def test_the_ray_launcher_places_every_stage_so_stages_is_refused(tmp_path):
    args = ["run", str(ROOT / "configs" / "ray.yaml"), "--launcher", "ray", "--stages", "capture", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == ExitCode.CONFIG
    assert "--stages: not with --launcher ray" in result.output


def test_the_ray_launcher_without_ray_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where the extra is not installed
    monkeypatch.delitem(sys.modules, "pipeline.streaming.ray_launcher", raising=False)
    result = CliRunner().invoke(main, ["run", str(ROOT / "configs" / "ray.yaml"), "--launcher", "ray", "--out", str(tmp_path)])
    assert result.exit_code == ExitCode.CONFIG
    assert "--launcher ray needs Ray" in result.output and "pip install -e '.[cluster]'" in result.output

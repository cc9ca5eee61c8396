"""The command line: errors are one line naming the place, with a named exit code, before anything starts."""

import sys

from click.testing import CliRunner

from pipeline.errors import ExitCode
from pipeline.tools.cli import main
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

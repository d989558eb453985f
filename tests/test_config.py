"""The config check shared by `liger plan` and the Snakefile (liger/config.py): one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from liger.config import ConfigError, check_config, read_config, run_dirs
from tests.conftest import ROOT

SMOKE = ROOT / "config" / "smoke.yaml"


def _set(*keys, value):
    """An edit of the smoke config: set config[k1][k2]... = value."""
    def edit(config: dict) -> None:
        for key in keys[:-1]:
            config = config[key]
        config[keys[-1]] = value
    return edit


def _pop(*keys):
    def edit(config: dict) -> None:
        for key in keys[:-1]:
            config = config[key]
        config.pop(keys[-1])
    return edit


# (edit of config/smoke.yaml, what the one-line error says after "FILE: "); tests/test_pipeline.py runs some of
# them through the Snakefile.
BAD = {
    "unknown key": (_set("trian", value={}), "trian: unknown key; the keys here are "),
    "negative lr": (_set("train", "lr", value=-0.1), "train.lr: -0.1 is out of range; give a value > 0"),
    "unknown method": (_set("methods", "liger_gla", "method", value="liger_xyz"),
                       "methods.liger_gla.method: 'liger_xyz' is not one of liger_gla, "),
    "wrong type": (_set("train", "lr", value="fast"), "train.lr: 'fast' is not of type number; give a number"),
    "model without a source": (_pop("models", "smollm2-135m", "embedded"),
                               "models.smollm2-135m: needs exactly one source"),
    "unknown method option": (_set("methods", "liger_gla", "windw", value=3), "methods.liger_gla.windw: unknown key"),
    "options without a method": (_set("methods", "x", value={"window": 32, "control": True}),
                                 "methods.x: options ['window'] but no `method`; add `method: liger_gla`"),
    "window 0": (_set("methods", "liger_gla", "window", value=0),
                 "methods.liger_gla.window: 0 is out of range; give a value >= 1"),
    "no run": (_pop("run"), "(top level): `run` is missing; add it"),
    "run published": (_set("run", value="published"), "run: 'published' is reserved"),
    "run with a slash": (_set("run", value="a/b"), "run: 'a/b' does not match"),
    "weights_of no row": (_set("methods", "x", value={"weights_of": "nope"}),
                          "methods.x.weights_of: 'nope' is not a converted method of `methods`"),
    "weights_of base": (_set("methods", "x", value={"weights_of": "base"}),
                        "methods.x.weights_of: 'base' is not a converted method"),
    "weights_of with options": (_set("methods", "x", value={"weights_of": "lolcats", "window": 8}),
                                "methods.x: a `weights_of` row takes only layer_options and control"),
    "profile of an untrained row": (_set("profile", "methods", value=["base_window"]),
                                    "profile.methods: ['base_window'] are not trained Liger methods"),
}


def bad_config(tmp_path: Path, case: str) -> Path:
    """config/smoke.yaml with one of BAD's edits, written to tmp_path/bad.yaml."""
    config = yaml.safe_load(SMOKE.read_text())
    BAD[case][0](config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_shipped_configs_pass_and_write_apart():
    runs = {}
    for path in sorted((ROOT / "config").glob("*.yaml")):
        config = read_config(path)
        check_config(config, str(path))
        runs[path.name] = run_dirs(config)
    assert runs["smoke.yaml"]["results"] == "results/smoke"
    folders = [d for dirs in runs.values() for d in dirs.values()]
    assert len(set(folders)) == len(folders) and not any(d.startswith("results/published") for d in folders)


@pytest.mark.parametrize("case", list(BAD))
def test_plan_refuses_a_bad_config_in_one_line(tmp_path, capsys, case):
    from liger.cli import main

    path = bad_config(tmp_path, case)
    assert main(["plan", "--configfile", str(path)]) == 2
    out, err = capsys.readouterr()
    assert not out and err.count("\n") == 1, err
    assert err.startswith(f"liger plan: error: {path}: {BAD[case][1]}"), err


@pytest.mark.parametrize("text,message", [
    ("", "the file is empty; a config needs run, models"),
    ("run: x\nmodels:\n  a: 1\n b: 2\n", "line 4, column 2: not valid YAML ("),
    ("run: [x\n", "line 2, column 1: not valid YAML ("),
    ("- a\n- b\n", "the top level is a list, not a mapping of keys"),
])
def test_plan_names_the_file_and_line_of_unreadable_yaml(tmp_path, capsys, text, message):
    from liger.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="^" + str(path).replace(".", r"\.") + ": " + message.replace("(", r"\(")):
        read_config(path)
    assert main(["plan", "--configfile", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"liger plan: error: {path}: {message}" + err.split(message, 1)[1] and err.count("\n") == 1
    assert main(["plan", "--configfile", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read it" in capsys.readouterr().err


def test_several_problems_say_how_many_more():
    config = yaml.safe_load(SMOKE.read_text())
    config["train"]["lr"], config["eval"]["limit"] = -1, 0
    with pytest.raises(ConfigError, match=r"^c\.yaml: eval\.limit: 0 is out of range.*\(1 more problem"):
        check_config(config, "c.yaml")


def test_the_window_minimum_is_the_layers():
    """The schema's minimum window is what the layers accept: 1 (0 left a layer with no window keys)."""
    from liger.errors import LigerError
    from liger.methods.liger import LigerOptions

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["methods"]["additionalProperties"]["properties"]["window"]["minimum"] == 1
    LigerOptions(window=1)
    with pytest.raises(LigerError, match="window"):
        LigerOptions(window=0)

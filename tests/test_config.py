"""The pipeline's vocabulary and the config check shared by `liger plan` and the Snakefile (liger/pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from liger.pipeline import (
    BASE,
    TRAINED,
    UNTRAINED,
    WEIGHTS_OF,
    ConfigError,
    check_config,
    liger_options,
    load_config,
    read_config,
    rows,
    run_dirs,
    stage_train,
    windows,
)
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
                                "methods.x: a `weights_of` row takes only layer_options, control and about"),
    "profile of an untrained row": (_set("profile", "methods", value=["base_window"]),
                                    "profile.methods: ['base_window'] are not trained Liger methods"),
    "unknown task": (_set("eval", "tasks", value=["piqa", "squad"]),
                     "eval.tasks.1: 'squad' is not one of piqa, arc_easy, arc_challenge, hellaswag, winogrande, mmlu"),
    "no tasks": (_pop("eval", "tasks"), "eval: `tasks` is missing; add it"),
    "train on an untrained row": (_set("methods", "base_window", "train", value={"epochs": 4}),
                                  "methods.base_window.train: this row trains nothing"),
    "unknown row train key": (_set("methods", "liger_gla", "train", value={"epoch": 4}),
                              "methods.liger_gla.train.epoch: unknown key"),
    "weights_of with finetune": (_set("methods", "x", value={"weights_of": "lolcats", "finetune": True}),
                                 "methods.x: a `weights_of` row takes only layer_options, control and about (it has "
                                 "['finetune'])"),
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


def test_a_config_that_gives_only_the_required_keys_gets_the_schemas_defaults(tmp_path):
    """The schema holds the defaults: a config of required keys alone runs `liger plan`, and what the rules read
    comes filled in; a LoLCATs stage gets no training default (its recipe has its own)."""
    from liger.plan import plan

    path = tmp_path / "min.yaml"
    path.write_text(yaml.safe_dump({"run": "min", "models": {"m": {"embedded": "smollm2-135m"}},
                                    "data": {"source": "alpaca.json"}, "methods": {"base": {}, "lolcats": {
                                        "method": "lolcats"}}, "train": {}, "eval": {"tasks": ["piqa"]}}))
    config = load_config(path)
    assert config["probes"]["passkey"]["seeds"] == 5 and config["profile"]["new_tokens"] == 128
    assert config["train"] == {"epochs": 2, "max_tokens": None, "max_steps": None, "micro_batch": 1, "grad_accum": 8}
    assert config["data"]["seq_len"] == 1024 and config["resources"]["gpus"] == 0 and config["reuse"] is None
    assert config["methods"]["lolcats"]["finetune"] and config["lolcats_train"] == {"transfer": {}, "lora": {}}
    assert stage_train(config, "lolcats", "transfer") == {"epochs": 2, "max_tokens": None, "max_steps": None,
                                                          "micro_batch": 1, "grad_accum": 8}
    assert plan(config, workdir=tmp_path)["jobs"]["transfer"] == 1


def test_row_kinds_and_windows_of_the_shipped_configs():
    smoke = load_config(SMOKE)
    assert rows(smoke, BASE) == ["base"] and rows(smoke, UNTRAINED) == ["base_window"]
    assert rows(smoke, TRAINED) == ["liger_gla", "window_only", "lolcats"] and rows(smoke, WEIGHTS_OF) == [
        "lolcats_sliding"]
    assert windows(smoke) == [15, 64]  # lolcats' `window: 16` (16 keys with the query's own) and the Liger default
    assert windows(load_config(ROOT / "config" / "config.yaml")) == [64]  # liger_gla_no_window has none


def test_a_row_of_its_own_training_keys_trains_beside_the_recipe(tmp_path):
    """An extra row (more epochs, LoRA on o too) takes its `train` keys over `train` and its method's recipe; the
    other rows and the plan's token count of the recipe's rows stay as they were."""
    from liger.plan import plan

    config = yaml.safe_load(SMOKE.read_text())
    config["methods"]["liger_gla_4ep"] = {"method": "liger_gla", "train": {"epochs": 4, "lora_targets": [
        "q_proj", "k_proj", "v_proj", "o_proj"]}}
    config["methods"]["lolcats_4ep"] = {"method": "lolcats", "window": 16, "train": {"epochs": 4}}
    check_config(config, "c.yaml")
    assert stage_train(config, "liger_gla_4ep", "lora") == {**config["train"], "epochs": 4,
                                                            "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert stage_train(config, "liger_gla", "lora") == config["train"]
    for stage in ("transfer", "lora"):
        assert stage_train(config, "lolcats_4ep", stage) == stage_train(config, "lolcats", stage) | {"epochs": 4}
    assert "train" not in liger_options(config["methods"]["liger_gla_4ep"])
    def alone(row: str) -> dict:
        return check_config(yaml.safe_load(SMOKE.read_text()) | {"methods": {"base": {}, row: config["methods"][row]},
                                                                  "report": {}}, "c.yaml")

    base, more = plan(alone("liger_gla"), workdir=tmp_path), plan(alone("liger_gla_4ep"), workdir=tmp_path)
    assert more["seconds"]["training"] == pytest.approx(base["seconds"]["training"])  # both cut by max_steps: 2
    config["methods"]["liger_gla_4ep"]["train"]["max_steps"] = 4
    more = plan(alone("liger_gla_4ep"), workdir=tmp_path)
    assert more["seconds"]["training"] == pytest.approx(2 * base["seconds"]["training"])


def test_plan_scales_an_embedded_model_by_its_own_size():
    """The 1.5B embedded model's work is scaled by its parameter count, not counted as the 135M default's."""
    from liger.models import EMBEDDED
    from liger.plan import _params

    small, large = _params({"embedded": "smollm2-135m"}), _params({"embedded": "qwen2.5-coder-1.5b"})
    assert small == EMBEDDED["smollm2-135m"].params
    assert 12 < large / small < 14
    assert _params({"hf_id": "meta-llama/Meta-Llama-3-8B"}) == 8e9

"""The pipeline's vocabulary and the config check shared by `liger plan` and the Snakefile (liger/pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from liger.pipeline import (
    BASE,
    PAPER_CSV,
    TRAINED,
    UNTRAINED,
    WEIGHTS_OF,
    ConfigError,
    ablations,
    check_config,
    kind,
    layer_options,
    liger_options,
    load_config,
    model_layers,
    paper_methods,
    read_config,
    rows,
    run_dirs,
    softmax_every,
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


def _all(*edits):
    def edit(config: dict) -> None:
        for one in edits:
            one(config)
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
                                "methods.x: a `weights_of` row takes only layer_options, control, about, paper_row"),
    "profile of an untrained row": (_set("profile", "methods", value=["base_window"]),
                                    "profile.methods: ['base_window'] are not trained Liger methods"),
    "unknown task": (_set("eval", "tasks", value=["piqa", "squad"]),
                     "eval.tasks.1: 'squad' is not one of piqa, arc_easy, arc_challenge, hellaswag, winogrande, mmlu"),
    "no tasks": (_pop("eval", "tasks"), "eval: `tasks` is missing; add it"),
    "train on an untrained row": (_set("methods", "base_window", "train", value={"epochs": 4}),
                                  "methods.base_window.train: this row trains nothing"),
    "unknown row train key": (_set("methods", "liger_gla", "train", value={"epoch": 4}),
                              "methods.liger_gla.train.epoch: unknown key"),
    "paper_row unknown": (_set("methods", "liger_gla", "paper_row", value="Liger-GLB"),
                          "methods.liger_gla.paper_row: 'Liger-GLB' is not a Llama-3-8B row of "
                          "config/paper_results.csv; pick one of Base (Transformer); SUPRA; "),
    "reference without paper_row": (_set("methods", "window_only", "paper_row", value="Liger-GLA w/o GLA (SWA only)"),
                                    "methods.liger_gla.paper_row: the ablation table compares every row with the "
                                    "reference 'liger_gla'; give it its paper row"),
    "ablation paper model unknown": (_all(_set("report", "ablation_paper_model", value="SmolLM2-135M"),
                                          _set("methods", "liger_gla", "paper_row", value="Liger-GLA")),
                                     "report.ablation_paper_model: 'SmolLM2-135M' has no rows in "
                                     "config/paper_results.csv"),
    "softmax_every 1": (_set("methods", "liger_gla", "softmax_every", value=1),
                        "methods.liger_gla.softmax_every: 1 is out of range; give a value >= 2"),
    "softmax_every beyond the depth": (_set("methods", "liger_gla", "softmax_every", value=31),
                                       "methods.liger_gla.softmax_every: 31 keeps no layer of smollm2-135m (30 "
                                       "layers) as softmax attention; give a value <= 30"),
    "softmax_every and softmax_layers": (_set("methods", "liger_gla", value={"method": "liger_gla", "softmax_every": 6,
                                                                              "softmax_layers": [1]}),
                                         "methods.liger_gla: both softmax_every and softmax_layers; keep one"),
    "softmax_every without a method": (_set("methods", "x", value={"softmax_every": 6}),
                                       "methods.x: options ['softmax_every'] but no `method`"),
    "wrong depth of an embedded model": (_set("models", "smollm2-135m", "layers", value=32),
                                         "models.smollm2-135m.layers: 32 but the embedded smollm2-135m has 30"),
    "layer_options on the base": (_set("methods", "base", "layer_options", value={"window": 8}),
                                  "methods.base.layer_options: the base model has no layer options"),
    "layer_options not runtime": (_set("methods", "liger_gla", "layer_options", value={"query_block": 64}),
                                  "methods.liger_gla.layer_options: ['query_block'] are not runtime options of "
                                  "liger_gla (those are window, chunk_size)"),
    "weights_of layer_options not runtime": (_set("methods", "x", value={"weights_of": "lolcats",
                                                                          "layer_options": {"chunk_size": 8}}),
                                             "methods.x.layer_options: ['chunk_size'] are not runtime options of "
                                             "lolcats (those are window, window_shape, query_block)"),
    "weights_of with finetune": (_set("methods", "x", value={"weights_of": "lolcats", "finetune": True}),
                                 "methods.x: a `weights_of` row takes only layer_options, control, about, "
                                 "paper_row (it has ['finetune'])"),
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


ABLATIONS = ROOT / "config" / "ablations-135m.yaml"


def test_softmax_every_keeps_one_layer_in_n_of_each_models_depth():
    """`softmax_every: 6` is the last layer of each group of 6, from each model's own depth (embedded models: known;
    a hub model: its `layers`); the jobs get the list, never the key."""
    assert softmax_every(6, 30) == [5, 11, 17, 23, 29] and softmax_every(6, 28) == [5, 11, 17, 23]
    assert softmax_every(4, 8) == [3, 7] and softmax_every(30, 30) == [29]
    config = load_config(ABLATIONS)
    row = config["methods"]["liger_gla_h"]
    assert layer_options(row, model_layers(config, "smollm2-135m")) == {
        "method": "liger_gla", "hybrid": "liger_attention", "softmax_layers": [5, 11, 17, 23, 29]}
    config["models"] |= {"qwen": {"embedded": "qwen2.5-coder-1.5b"}, "llama": {"hf_id": "meta-llama/Meta-Llama-3-8B",
                                                                               "layers": 32}}
    check_config(config, "c.yaml")
    assert layer_options(row, model_layers(config, "qwen"))["softmax_layers"] == [5, 11, 17, 23]
    assert layer_options(row, model_layers(config, "llama"))["softmax_layers"] == [5, 11, 17, 23, 29]
    assert layer_options(config["methods"]["liger_gla"], None) == {"method": "liger_gla", "hybrid": "liger_attention"}
    config["models"]["llama"].pop("layers")
    with pytest.raises(ConfigError, match=r"^c\.yaml: models\.llama\.layers: methods\.liger_gla_h\.softmax_every needs "
                                          "the model's depth; add `layers: N`"):
        check_config(config, "c.yaml")


def test_the_1_5b_ablations_are_the_135m_rows_on_the_1_5b_recipe_and_reuse_restores_the_shared_ones():
    """The 1.5B ablation run has the 135M ablation rows on the main 1.5B run's model, recipe, data and benchmarks;
    the rows both 1.5B runs fine-tune have the same layer options and training there, so `reuse` of the main run's
    published fine-tunes (matched by model and row name) restores exactly what the ablation run would train."""
    small, large = load_config(ABLATIONS), load_config(ROOT / "config" / "ablations-qwen2.5-coder-1.5b.yaml")
    main = load_config(ROOT / "config" / "qwen2.5-coder-1.5b.yaml")
    assert large["methods"] == small["methods"]
    for key in ("models", "data", "train", "eval", "probes"):
        assert large[key] == main[key], key
    assert ablations(large) == ablations(small) and large["report"] == small["report"]
    depth = model_layers(large, "qwen2.5-coder-1.5b")
    assert layer_options(large["methods"]["liger_gla_h"], depth)["softmax_layers"] == [5, 11, 17, 23]
    shared = [name for name, entry in large["methods"].items() if name in main["methods"] and kind(entry) == TRAINED]
    assert shared == ["liger_gla", "liger_hgrn2", "liger_gsa", "liger_gla_no_window", "window_only"]
    for name in shared:
        assert layer_options(large["methods"][name], depth) == layer_options(main["methods"][name], depth), name
        assert stage_train(large, name, "finetune") == stage_train(main, name, "finetune"), name


def test_the_embedded_models_depths_are_their_configs():
    from liger.models import EMBEDDED
    from liger.shapes import SHAPES

    assert EMBEDDED["smollm2-135m"].layers == SHAPES["smollm2-135m"]["num_hidden_layers"] == 30
    for name, spec in EMBEDDED.items():  # where the base model has been fetched, its config says the same
        found = ROOT / "resources" / "models" / name / "config.json"
        if found.exists():
            import json

            assert json.loads(found.read_text())["num_hidden_layers"] == spec.layers, name


def test_the_ablation_config_names_a_paper_row_for_each_row_and_only_it_has_them():
    """Every row of config/ablations-135m.yaml sits beside a Llama-3-8B row of the paper (the schema check says the
    names exist), each beside its own; with them every ablation the paper reports on Llama-3-8B (Tables 3, 8, 10,
    12) is a row; the other configs write no ablation table."""
    config = load_config(ABLATIONS)
    rows_of = ablations(config)
    assert list(rows_of) == list(config["methods"]) and config["run"] == "ablations"
    assert len(set(rows_of.values())) == len(rows_of)
    known = paper_methods("Llama-3-8B", PAPER_CSV)
    assert set(rows_of.values()) <= set(known)
    tables = {m for m in known if any(f"Table {t}" in s for t in ("8", "10", "12") for s in _sources(m))}
    assert len(tables) >= 9 and tables | {"Liger-GLA-H (inter-layer hybrid w/ softmax attn blocks)"} <= set(
        rows_of.values())
    for name in ("config.yaml", "smoke.yaml", "paper.yaml", "qwen2.5-coder-1.5b.yaml"):
        assert ablations(load_config(ROOT / "config" / name)) == {}, name


def _sources(method: str) -> list[str]:
    import csv

    with open(PAPER_CSV, newline="") as f:
        return [r["source"] for r in csv.DictReader(f) if r["model"] == "Llama-3-8B" and r["method"] == method]


def test_the_ablation_config_builds_its_dag(tmp_path):
    """`snakemake -n` on config/ablations-135m.yaml: eleven fine-tunes and one conversion in its own run folder, the
    hybrid trained with its layer list, the untrained row's validation loss scored by its evaluation, the report
    asked for the ablation table with every row's paper row."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "-n", "-p", "--cores", "1", "--configfile", str(ABLATIONS)],
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    table = out[out.index("job "):out.index("total")]
    counts = {line.split()[0]: int(line.split()[1]) for line in table.splitlines()[2:] if line.strip()}
    assert (counts["finetune"], counts["convert"], counts["evaluate"]) == (11, 1, 13), counts
    hybrid = next(line for line in out.splitlines() if "liger finetune" in line and "/liger_gla_h " in line)
    assert '"softmax_layers": [5, 11, 17, 23, 29]' in hybrid and "softmax_every" not in out.split("Job stats")[0]
    scored = [line for line in out.splitlines() if "liger evaluate --model" in line]  # only the untrained row's
    val = [line for line in scored if "--val-data resources/ablations/data/smollm2-135m " in line]  # loss is scored
    assert len(val) == 1 and "/converted/smollm2-135m/no_lora/model " in val[0] and len(scored) == 13
    report = next(line for line in out.splitlines() if "liger report --model" in line)
    flag = json.loads(report.split("--ablations '", 1)[1].split("'", 1)[0])
    assert flag == ablations(load_config(ABLATIONS)) and "--ablation-paper-model Llama-3-8B" in report
    assert "results/ablations/smollm2-135m/ablations.csv" in out
    assert "results/ablations/plots/smollm2-135m_ablations.png" in out

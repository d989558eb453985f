# Shared values and helpers of the rules.
import json
import re
import os
import shlex
import sys
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

# The pipeline's vocabulary and the config check shared with `liger plan`; torch-free, as is the method registry it
# asks what a method needs (liger.methods).
from liger import pipeline
from liger import shapes as liger_shapes

try:  # also fills in the schema's defaults: the rules read every key directly
    pipeline.check_config(config, " + ".join(map(str, workflow.configfiles)) or "--config")
except pipeline.ConfigError as e:
    raise WorkflowError(str(e)) from None

# A run writes only under results/RUN, resources/RUN and logs/RUN (liger/pipeline.py run_dirs): every path of a
# run's files has the wildcard {run}, which matches this config's `run` alone. Base models are shared by all runs.
RUN = config["run"]
# The rules' interpreter: with --use-conda / --sdm conda the `python` of the rule's env, else the one running
# Snakemake (its venv has the stack; the `python` on PATH may be another one, without torch).
PYTHON = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else shlex.quote(
    sys.executable)
LIGER = f"{PYTHON} -m liger"

MODELS = list(config["models"])
METHODS = list(config["methods"])
# Rows that score another row's model with other runtime layer settings (`liger evaluate --layer-options`), e.g.
# LoLCATs' terraced model evaluated with the sliding window: {method: the row whose weights}.
WEIGHTS_OF = {m: e["weights_of"] for m, e in config["methods"].items() if "weights_of" in e}


def liger_options(method: str, model: str | None = None, shape: str | None = None) -> dict:
    """The options a method row's layers are converted with on `model` (or the named `shape`), `softmax_every`
    expanded into that model's `softmax_layers` (empty for the untouched base)."""
    layers = SHAPE_LAYERS[shape] if shape else pipeline.model_layers(config, model) if model else None
    return pipeline.layer_options(config["methods"][method], layers)


TRAINED = pipeline.rows(config, pipeline.TRAINED)  # converted and fine-tuned
UNTRAINED = pipeline.rows(config, pipeline.UNTRAINED)  # converted only (base_window)
ABLATIONS = pipeline.ablations(config)  # {row: its paper_row}: the ablation table's rows (none: no table)
ABLATION_OUTPUTS = {
    "ablations": report("results/{run}/{model}/ablations.csv", category="tables"),
    "ablations_markdown": "results/{run}/{model}/ablations.md",
    "ablation_plot": report("results/{run}/plots/{model}_ablations.png", category="ablations"),
} if ABLATIONS else {}
WINDOWS = pipeline.windows(config)  # the windows of the rows that have a window branch
PROBE_FILES = [pipeline.ROW_FILES[job] for job in ("metrics", "passkey", "position_loss")]  # per row, in rule all
# Rows trained in two stages, attention transfer then LoRA (LoLCATs)
TRANSFERRED = [m for m in TRAINED if "transfer" in pipeline.stages(config["methods"][m])]
GPUS = config["resources"]["gpus"]
PROFILE = config["profile"]
# Liger methods in the efficiency profile (default: every trained one but the controls: speed is the methods' claim)
PROFILED = pipeline.profiled(config)
SHAPES = PROFILE["shapes"]  # random-weight model shapes profiled as well (liger.shapes)
SHAPE_LAYERS = {name: shape["num_hidden_layers"] for name, shape in liger_shapes.SHAPES.items()}
PAPER_CSV = os.path.join(workflow.basedir, "config", "paper_results.csv")
ENV = "../../envs/liger.yaml"


def one_of(names: list) -> str:
    """A wildcard constraint matching exactly these names."""
    return "|".join(map(re.escape, names)) if names else "NONE"


wildcard_constraints:
    run=re.escape(RUN),
    model=one_of(MODELS),
    method=one_of(METHODS),
    shape=one_of(SHAPES),


def data_source():
    """The instruction data: $LIGER_ALPACA (a local mirror) wins over config data.source."""
    return os.environ.get("LIGER_ALPACA") or config["data"]["source"]


def eval_data_dir():
    """Benchmark mirrors: $LIGER_EVAL_DATA wins over config eval.data_dir (None: lm-eval's hub datasets)."""
    return os.environ.get("LIGER_EVAL_DATA") or config["eval"]["data_dir"]


def flags(section: dict) -> str:
    """A config section as command-line flags: {lora_r: 8, lora_targets: [q, k]} -> --lora-r 8 --lora-targets q,k."""
    out = []
    for key, value in section.items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value))
        out += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(out)


def row_file(name: str) -> str:
    """The pattern of a row's file, results/{run}/{model}/{method}/NAME."""
    return f"results/{{run}}/{{model}}/{{method}}/{name}"


def stage_folder(stage: str, name: str | None = None) -> str:
    """The pattern of a training stage's folder (its model/, summary.json, train_log.csv), or of its file `name`."""
    folder = f"resources/{{run}}/{pipeline.STAGES[stage].folder}/{{model}}/{{method}}"
    return os.path.join(folder, name) if name else folder


def stage_dir(wc, stage):
    """This row's folder of `stage`."""
    return stage_folder(stage).format(run=wc.run, model=wc.model, method=wc.method)


def previous_stage(wc, stage):
    """The stage this row trains before `stage` (its model is where `stage` starts), or None for the first."""
    order = pipeline.stages(config["methods"][wc.method])
    return order[order.index(stage) - 1] if order.index(stage) else None


# Published runs' folders (finetuned/ and transferred/ laid out as under resources/RUN/), a list or comma-separated.
REUSE = pipeline.reuse_dirs(config)


def reused_run(wc, stage):
    """This model and method's published run of `stage`, the first `reuse` folder that has it, or None."""
    runs = [os.path.join(r, pipeline.STAGES[stage].folder, wc.model, wc.method) for r in REUSE]
    return next((run for run in runs if os.path.isfile(os.path.join(run, "summary.json"))), None)


def packed_data(wc):
    """The run's packed data for this model (rule prepare_data)."""
    return f"resources/{wc.run}/data/{wc.model}"


def packed_data_ready(wc):
    """The file that says the packed data is complete (rule prepare_data's output)."""
    return f"{packed_data(wc)}/meta.json"


def stage_inputs(wc, stage):
    """A training stage's inputs: the model it starts from and the packed data, or the published run it restores."""
    before = previous_stage(wc, stage)
    start = f"{stage_dir(wc, before)}/summary.json" if before else f"resources/models/{wc.model}/config.json"
    run = reused_run(wc, stage)
    if run:
        return {"model": start, "run": os.path.join(run, "summary.json")}
    return {"model": start, "data": packed_data_ready(wc)}


def stage_command(wc, stage):
    """`liger finetune` / `liger transfer`, or `liger restore` of the published run under `reuse`."""
    out, before = stage_dir(wc, stage), previous_stage(wc, stage)
    model = f"{stage_dir(wc, before)}/model" if before else f"resources/models/{wc.model}"
    run = reused_run(wc, stage)
    if run:
        return f"{LIGER} restore --model {model} --run {shlex.quote(run)} --out {out}"
    options = shlex.quote(json.dumps(liger_options(wc.method, wc.model)))
    train = flags(pipeline.stage_train(config, wc.method, stage))
    return (f"{LIGER} {pipeline.STAGES[stage].command} --model {model} --data {packed_data(wc)} "
            f"--out {out} --options {options} {train}")


def weights(wc):
    """The wildcards of the row whose model a row is measured on (a `weights_of` row: that row's)."""
    return SimpleNamespace(run=wc.run, model=wc.model, method=WEIGHTS_OF.get(wc.method, wc.method))


def evaluated_model(wc):
    """The folder a method's row is measured on: the fine-tuned Liger model (LoRA merged), the converted but
    untrained model (finetune: false), the untouched base model, or for a `weights_of` row that row's model."""
    wc = weights(wc)
    if wc.method in TRAINED:
        return f"{stage_dir(wc, 'lora')}/model"
    if wc.method in UNTRAINED:
        return f"resources/{wc.run}/converted/{wc.model}/{wc.method}/model"
    return f"resources/models/{wc.model}"


def model_ready(wc):
    """The file that says `evaluated_model` is complete (the rule that makes it)."""
    wc = weights(wc)
    if wc.method in TRAINED:
        return f"{stage_dir(wc, 'lora')}/summary.json"
    return f"{evaluated_model(wc)}/config.json"


def val_data(wc):
    """An untrained row of the ablation table is also scored on the run's validation chunks (its Val loss there,
    as a trained row's comes from its fine-tune); the data folder, or None."""
    return packed_data(wc) if wc.method in UNTRAINED and wc.method in ABLATIONS else None


def val_data_ready(wc):
    """The file that says `val_data` is complete, or nothing."""
    return [packed_data_ready(wc)] if val_data(wc) else []


def layer_flag(wc):
    """`--layer-options JSON` of a `weights_of` row that sets them, else nothing."""
    layer = config["methods"][wc.method].get("layer_options")
    return flags({"layer_options": json.dumps(layer) if layer else None})


def eval_flags(wc):
    e = config["eval"]
    opts = flags({"tasks": e["tasks"], "data_dir": eval_data_dir(), "limit": e["limit"],
                  "batch_size": e["batch_size"], "mmlu_batch_size": e["mmlu_batch_size"], "val_data": val_data(wc)})
    return f"{opts} {layer_flag(wc)}"


def run_note():
    """Where the data came from, said in every report."""
    src, ev = data_source(), eval_data_dir()
    mirror = " (the original Stanford Alpaca, not the cleaned set the paper used)" if "alpaca_data" in src else ""
    return (f"Instruction data: {src}{mirror}. Benchmarks: {ev or 'the Hugging Face hub (lm-eval defaults)'}."
            f" Config: data seq_len {config['data']['seq_len']}, limit {config['data']['limit']};"
            f" eval limit {config['eval']['limit']}.")

# Shared values and helpers of the rules.
import importlib.util
import json
import re
import os
import shlex
import sys
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

from liger import methods as method_registry  # torch-free: the conversion methods and their training stages


# liger/config.py, loaded by path: the config check shared with `liger plan`, without importing the package (torch,
# transformers) into Snakemake.
_spec = importlib.util.spec_from_file_location("liger_config", os.path.join(workflow.basedir, "liger", "config.py"))
liger_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(liger_config)
try:
    liger_config.check_config(config, " + ".join(map(str, workflow.configfiles)) or "--config")
except liger_config.ConfigError as e:
    raise WorkflowError(str(e)) from None

# A run writes only under results/RUN, resources/RUN and logs/RUN (liger/config.py run_dirs): every path of a
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
# LoLCATs' terraced window evaluated as the sliding window it decodes with: {method: the row whose weights}.
WEIGHTS_OF = {m: e["weights_of"] for m, e in config["methods"].items() if "weights_of" in e}


def liger_options(method: str) -> dict:
    """The Liger options of a method entry (empty for the untouched base)."""
    return liger_config.liger_options(config["methods"][method])


def is_finetuned(method: str) -> bool:
    return liger_config.is_finetuned(config["methods"][method])


TRAINED = [m for m in METHODS if is_finetuned(m)]  # converted and fine-tuned
UNTRAINED = [m for m in METHODS if liger_options(m) and not is_finetuned(m)]  # converted only (base_window)
CONTROLS = [m for m in METHODS if config["methods"][m].get("control")]
# Window sizes of the rows that have a window branch, for `liger coverage --windows`, which counts the keys before
# the query: 64 is the Liger methods' default window (65 keys, its own included). An explicit `window` (keys, its
# own included, every method) is passed as written: coverage's count is one less (left to coverage's convention).
WINDOWS = sorted({liger_options(m).get("window", 64) for m in METHODS
                  if liger_options(m) and liger_options(m).get("hybrid", "liger_attention") != "none"}) or [64]
PROBES = config.get("probes", {})
PROBE_FILES = ["metrics.json", "passkey.csv", "position_loss.json"]  # per model and method, in rule all
# Rows whose method trains in two stages, attention transfer then LoRA (LoLCATs)
LOLCATS = [m for m in TRAINED if "transfer" in method_registry.stages(liger_options(m).get("method"))]
# TrainConfig fields that a LoLCATs variant's recipe sets (liger.methods.RECIPE_FIELDS, tested equal): config `train`
# gives them to the Liger methods only; `lolcats_train: {transfer: ..., lora: ...}` overrides the recipe.
RECIPE_FIELDS = ("lr", "weight_decay", "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                 "eval_every")
GPUS = config.get("resources", {}).get("gpus", 0)
PROFILE = liger_config.PROFILE | config.get("profile", {})
# Liger methods in the efficiency profile (default: every trained one but the controls: speed is the methods' claim)
PROFILED = PROFILE.get("methods", [m for m in TRAINED if m not in CONTROLS])
SHAPES = PROFILE.get("shapes", [])  # random-weight model shapes profiled as well (liger.shapes)
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
    return os.environ.get("LIGER_EVAL_DATA") or config["eval"].get("data_dir")


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


def train_flags(method, stage="lora"):
    """The training flags of a method's stage: config `train`, or for lolcats its shared keys plus overrides."""
    if method not in LOLCATS:
        return flags(config["train"])
    shared = {k: v for k, v in config["train"].items() if k not in RECIPE_FIELDS}
    return flags({**shared, **config.get("lolcats_train", {}).get(stage, {})})


# Published runs' folders (finetuned/ and transferred/ laid out as under resources/RUN/), a list or comma-separated.
REUSE = liger_config.reuse_dirs(config)


def reused_run(wc, stage_dir):
    """This model and method's published run, the first `reuse` folder that has it (stage_dir: finetuned |
    transferred), or None."""
    runs = [os.path.join(r, stage_dir, wc.model, wc.method) for r in REUSE]
    return next((run for run in runs if os.path.isfile(os.path.join(run, "summary.json"))), None)


def stage_inputs(wc, stage_dir):
    """A training stage's inputs: the model it starts from and the packed data, or the published run it restores."""
    if stage_dir == "transferred" or wc.method not in LOLCATS:
        start = f"resources/models/{wc.model}/config.json"
    else:
        start = f"resources/{wc.run}/transferred/{wc.model}/{wc.method}/summary.json"
    run = reused_run(wc, stage_dir)
    if run:
        return {"model": start, "run": os.path.join(run, "summary.json")}
    return {"model": start, "data": f"resources/{wc.run}/data/{wc.model}/meta.json"}


def stage_command(wc, stage_dir):
    """`liger finetune` / `liger transfer`, or `liger restore` of the published run under `reuse`."""
    out = f"resources/{wc.run}/{stage_dir}/{wc.model}/{wc.method}"
    model = f"resources/models/{wc.model}" if stage_dir == "transferred" else finetune_input(wc)
    run = reused_run(wc, stage_dir)
    if run:
        return f"{LIGER} restore --model {model} --run {shlex.quote(run)} --out {out}"
    command = "transfer" if stage_dir == "transferred" else "finetune"
    options = shlex.quote(json.dumps(liger_options(wc.method)))
    train = train_flags(wc.method, "transfer" if stage_dir == "transferred" else "lora")
    return (f"{LIGER} {command} --model {model} --data resources/{wc.run}/data/{wc.model} --out {out} "
            f"--options {options} {train}")


def finetune_input(wc):
    """Stage 2 of lolcats starts from its stage-1 model; the Liger methods from the base model."""
    if wc.method in LOLCATS:
        return f"resources/{wc.run}/transferred/{wc.model}/{wc.method}/model"
    return f"resources/models/{wc.model}"


def weights(wc):
    """The wildcards of the row whose model a row is measured on (a `weights_of` row: that row's)."""
    return SimpleNamespace(run=wc.run, model=wc.model, method=WEIGHTS_OF.get(wc.method, wc.method))


def evaluated_model(wc):
    """The folder a method's row is measured on: the fine-tuned Liger model (LoRA merged), the converted but
    untrained model (finetune: false), the untouched base model, or for a `weights_of` row that row's model."""
    wc = weights(wc)
    if wc.method in TRAINED:
        return f"resources/{wc.run}/finetuned/{wc.model}/{wc.method}/model"
    if wc.method in UNTRAINED:
        return f"resources/{wc.run}/converted/{wc.model}/{wc.method}/model"
    return f"resources/models/{wc.model}"


def model_ready(wc):
    """The file that says `evaluated_model` is complete (the rule that makes it)."""
    wc = weights(wc)
    if wc.method in TRAINED:
        return f"resources/{wc.run}/finetuned/{wc.model}/{wc.method}/summary.json"
    return f"{evaluated_model(wc)}/config.json"


def layer_flag(wc):
    """`--layer-options JSON` of a `weights_of` row that sets them, else nothing."""
    layer = config["methods"][wc.method].get("layer_options")
    return flags({"layer_options": json.dumps(layer) if layer else None})


def eval_flags(wc):
    e = config["eval"]
    opts = flags({"tasks": e["tasks"], "data_dir": eval_data_dir(), "limit": e.get("limit"),
                  "batch_size": e.get("batch_size"), "mmlu_batch_size": e.get("mmlu_batch_size")})
    return f"{opts} {layer_flag(wc)}"


def run_note():
    """Where the data came from, said in every report."""
    src, ev = data_source(), eval_data_dir()
    mirror = " (the original Stanford Alpaca, not the cleaned set the paper used)" if "alpaca_data" in src else ""
    return (f"Instruction data: {src}{mirror}. Benchmarks: {ev or 'the Hugging Face hub (lm-eval defaults)'}."
            f" Config: data seq_len {config['data'].get('seq_len', 1024)}, limit {config['data'].get('limit')};"
            f" eval limit {config['eval'].get('limit')}.")

# Shared values and helpers of the rules.
import json
import re
import os
import shlex
from types import SimpleNamespace

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

from liger import methods as method_registry  # torch-free: the conversion methods and their training stages


def check_config(config: dict, schema_path: str) -> None:
    """Validate the config; one short line per violation, naming the key path."""
    with open(schema_path) as f:
        validator = jsonschema.Draft202012Validator(yaml.safe_load(f))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for e in errors:
            problem = e.message
            if e.validator == "oneOf":
                problem = "needs exactly one source: `embedded: NAME` or `hf_id: ORG/NAME`"
            lines.append(f"  {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {problem}")
        raise WorkflowError("config validation failed (config/README.md documents every key):\n" + "\n".join(lines))


check_config(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))

MODELS = list(config["models"])
METHODS = list(config["methods"])
PIPELINE_KEYS = ("finetune", "control", "weights_of", "layer_options")  # pipeline keys; the others: Liger options
# Rows that score another row's model with other runtime layer settings (`liger evaluate --layer-options`), e.g.
# LoLCATs' terraced window evaluated as the sliding window it decodes with: {method: the row whose weights}.
WEIGHTS_OF = {m: e["weights_of"] for m, e in config["methods"].items() if "weights_of" in e}


def liger_options(method: str) -> dict:
    """The Liger options of a method entry (empty for the untouched base)."""
    return {k: v for k, v in config["methods"][method].items() if k not in PIPELINE_KEYS}


def is_finetuned(method: str) -> bool:
    return bool(liger_options(method)) and config["methods"][method].get("finetune", True)


for _m, _of in WEIGHTS_OF.items():
    _other = sorted(set(config["methods"][_m]) - {"weights_of", "layer_options", "control"})
    if _of not in METHODS or _of in WEIGHTS_OF or not config["methods"][_of]:
        raise WorkflowError(f"methods.{_m}.weights_of: {_of!r} is not a converted method of `methods`")
    if _other:
        raise WorkflowError(f"methods.{_m}: a `weights_of` row takes only layer_options and control (it has "
                            f"{_other})")

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
# TrainConfig fields that a LoLCATs variant's recipe sets (liger.train.RECIPE_FIELDS, tested equal): config `train`
# gives them to the Liger methods only; `lolcats_train: {transfer: ..., lora: ...}` overrides the recipe.
RECIPE_FIELDS = ("lr", "weight_decay", "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                 "eval_every")
GPUS = config.get("resources", {}).get("gpus", 0)
PROFILE = config.get("profile", {})
# Liger methods in the efficiency profile (default: every trained one but the controls: speed is the methods' claim)
PROFILED = PROFILE.get("methods", [m for m in TRAINED if m not in CONTROLS])
SHAPES = PROFILE.get("shapes", [])  # random-weight model shapes profiled as well (liger.shapes)
if set(PROFILED) - set(TRAINED):
    raise WorkflowError(f"profile.methods: {sorted(set(PROFILED) - set(TRAINED))} are not Liger methods of "
                        f"`methods` (those are: {', '.join(TRAINED)})")
PAPER_CSV = os.path.join(workflow.basedir, "config", "paper_results.csv")
ENV = "../../envs/liger.yaml"


def one_of(names: list) -> str:
    """A wildcard constraint matching exactly these names."""
    return "|".join(map(re.escape, names)) if names else "NONE"


wildcard_constraints:
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


# Published runs' folders (finetuned/ and transferred/ laid out as under resources/), a list or comma-separated.
_reuse = config.get("reuse") or []
REUSE = [r.strip() for r in (_reuse.split(",") if isinstance(_reuse, str) else _reuse) if r.strip()]


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
        start = f"resources/transferred/{wc.model}/{wc.method}/summary.json"
    run = reused_run(wc, stage_dir)
    if run:
        return {"model": start, "run": os.path.join(run, "summary.json")}
    return {"model": start, "data": f"resources/data/{wc.model}/meta.json"}


def stage_command(wc, stage_dir):
    """`liger finetune` / `liger transfer`, or `liger restore` of the published run under `reuse`."""
    out = f"resources/{stage_dir}/{wc.model}/{wc.method}"
    model = f"resources/models/{wc.model}" if stage_dir == "transferred" else finetune_input(wc)
    run = reused_run(wc, stage_dir)
    if run:
        return f"python -m liger restore --model {model} --run {shlex.quote(run)} --out {out}"
    command = "transfer" if stage_dir == "transferred" else "finetune"
    options = shlex.quote(json.dumps(liger_options(wc.method)))
    train = train_flags(wc.method, "transfer" if stage_dir == "transferred" else "lora")
    return (f"python -m liger {command} --model {model} --data resources/data/{wc.model} --out {out} "
            f"--options {options} {train}")


def finetune_input(wc):
    """Stage 2 of lolcats starts from its stage-1 model; the Liger methods from the base model."""
    if wc.method in LOLCATS:
        return f"resources/transferred/{wc.model}/{wc.method}/model"
    return f"resources/models/{wc.model}"


def weights(wc):
    """The wildcards of the row whose model a row is measured on (a `weights_of` row: that row's)."""
    return SimpleNamespace(model=wc.model, method=WEIGHTS_OF.get(wc.method, wc.method))


def evaluated_model(wc):
    """The folder a method's row is measured on: the fine-tuned Liger model (LoRA merged), the converted but
    untrained model (finetune: false), the untouched base model, or for a `weights_of` row that row's model."""
    wc = weights(wc)
    if wc.method in TRAINED:
        return f"resources/finetuned/{wc.model}/{wc.method}/model"
    if wc.method in UNTRAINED:
        return f"resources/converted/{wc.model}/{wc.method}/model"
    return f"resources/models/{wc.model}"


def model_ready(wc):
    """The file that says `evaluated_model` is complete (the rule that makes it)."""
    wc = weights(wc)
    if wc.method in TRAINED:
        return f"resources/finetuned/{wc.model}/{wc.method}/summary.json"
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

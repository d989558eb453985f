"""The pipeline's vocabulary and its config check, in one torch-free module.

What a row of `methods` is (its kind, role, layer options, training stages, window), the training keys a stage
takes, the paper's tasks with their metrics and shots, and the files a row's jobs write; then reading a config
file and checking it (workflow/schemas/config.schema.yaml, then what a schema cannot say). What a method needs
(its training stages, their recipes) is the method registry's answer (`liger.methods`), not a list kept here. The
Snakefile (workflow/rules/common.smk) and `liger plan` import this module: it needs yaml, jsonschema and the
torch-free registry, not torch. Every config problem is one line, `FILE: key: what is wrong and what to do`. The
config's defaults live in the schema alone: `check_config` fills them in, so the functions here and the rules read
every key directly. docs/pipeline.md describes the pipeline.
"""

from __future__ import annotations

import copy
import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from liger import methods as registry
from liger.errors import LigerError
from liger.models import EMBEDDED

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DOCS = "config/README.md"
# The paper's published rows (config/README.md): the main table's and the ablation table's `paper_row`s.
PAPER_CSV = ROOT / "config" / "paper_results.csv"
# results/published/ holds the committed reproduction: no run may write there.
PUBLISHED = "published"

# ----------------------------------------------------------------------------------------- rows

# A row's keys that are the pipeline's; its other keys are options of its layer.
PIPELINE_KEYS = ("finetune", "control", "about", "weights_of", "layer_options", "train", "paper_row")
# The keys a `weights_of` row may have besides it: it trains nothing and converts nothing of its own.
WEIGHTS_OF_KEYS = ("layer_options", "control", "about", "paper_row")
# The kinds of row: the untouched model; converted and fine-tuned; converted only (`finetune: false`); another
# row's model scored with other runtime layer options (`weights_of`).
BASE, TRAINED, UNTRAINED, WEIGHTS_OF = "base", "trained", "untrained", "weights_of"
# Windows here are in `liger coverage`'s count, the keys before the query. A row that sets none: the Liger methods'
# default window, 65 keys with the query's own (liger.methods.liger); a row's explicit `window` counts the query's own
# too (every method), so it is one more than its count here.
METHOD_WINDOW = 64


def liger_options(entry: Mapping) -> dict:
    """The layer options of a method row (empty for the untouched base)."""
    return {k: v for k, v in entry.items() if k not in PIPELINE_KEYS}


def softmax_every(every: int, layers: int) -> list[int]:
    """The layers an inter-layer hybrid keeps as softmax attention: one in every `every`, the last of each group
    (every 6 of 30 layers: 5, 11, 17, 23, 29)."""
    return list(range(every - 1, layers, every))


def model_layers(config: Mapping, model: str) -> int | None:
    """A base model's depth (num_hidden_layers): its `layers` key, else the embedded model's; None when unknown."""
    entry = config["models"][model]
    if "layers" in entry:
        return entry["layers"]
    return EMBEDDED[entry["embedded"]].layers if "embedded" in entry else None


def layer_options(entry: Mapping, layers: int | None) -> dict:
    """The options a row's layers are converted with, for a model of `layers` layers: `liger_options`, its
    `softmax_every` expanded into `softmax_layers` (what the jobs get; their models record the list)."""
    options = liger_options(entry)
    if "softmax_every" in options:
        if layers is None:
            raise ConfigError("softmax_every needs the model's depth; give the model `layers: N` (config/README.md)")
        options["softmax_layers"] = softmax_every(options.pop("softmax_every"), layers)
    return options


def kind(entry: Mapping) -> str:
    """BASE, TRAINED, UNTRAINED or WEIGHTS_OF."""
    if "weights_of" in entry:
        return WEIGHTS_OF
    if not liger_options(entry):
        return BASE
    return TRAINED if entry["finetune"] else UNTRAINED


def is_finetuned(entry: Mapping) -> bool:
    """A converted row that is trained (`finetune: false` rows are converted only)."""
    return kind(entry) == TRAINED


def rows(config: Mapping, *kinds: str) -> list[str]:
    """The names of the rows of these kinds, in the config's order."""
    return [name for name, entry in config["methods"].items() if kind(entry) in kinds]


def controls(config: Mapping) -> list[str]:
    """The rows marked `control: true`."""
    return [name for name, entry in config["methods"].items() if entry["control"]]


def profiled(config: Mapping) -> list[str]:
    """The rows in the efficiency profile: `profile.methods`, by default every trained row but the controls."""
    default = [m for m in rows(config, TRAINED) if m not in controls(config)]
    return config["profile"].get("methods", default)


def window(entry: Mapping) -> int | None:
    """The keys before the query that a row's window branch sees (for a terraced window: at least), or None when it
    has none (the base, `hybrid: none`, `weights_of`)."""
    options = liger_options(entry)
    if not options or options.get("hybrid") == "none":
        return None
    return options["window"] - 1 if "window" in options else METHOD_WINDOW


def windows(config: Mapping) -> list[int]:
    """The rows' windows, smallest first ([METHOD_WINDOW] when no row has one)."""
    found = {window(entry) for entry in config["methods"].values()} - {None}
    return sorted(found) or [METHOD_WINDOW]


def ablations(config: Mapping) -> dict[str, str]:
    """The ablation table's rows, in the config's order: {row: its `paper_row`} (none: no ablation table)."""
    return {name: entry["paper_row"] for name, entry in config["methods"].items() if "paper_row" in entry}


def report_roles(config: Mapping) -> dict[str, str | None]:
    """What `liger report` is told of a config's rows, as its flags' values (None: leave the flag out): the base row
    (the first unconverted one), the reference and window-only rows (`report`), the control rows and what each shows
    (`about`), the ablation table's rows and the paper model they are of, and the methods' window."""
    bases, table = rows(config, BASE), ablations(config)
    about = {m: e["about"] for m, e in config["methods"].items() if "about" in e}
    return {"base": bases[0] if bases else None, "reference": config["report"]["reference"],
            "window_only": config["report"]["window_only"], "controls": ",".join(controls(config)) or None,
            "about": json.dumps(about) if about else None, "ablations": json.dumps(table) if table else None,
            "ablation_paper_model": config["report"]["ablation_paper_model"] if table else None,
            "window": str(windows(config)[0])}


def paper_methods(model: str, paper_csv: Path = PAPER_CSV) -> list[str]:
    """The `method` names of `model`'s rows in the paper CSV, in its order."""
    with open(paper_csv, newline="") as f:
        return [row["method"] for row in csv.DictReader(f) if row["model"] == model]


def paper_val_ppl(source: str) -> float | None:
    """The validation perplexity a paper row's `source` cites ("... val PPL 3.16 ..."), if any."""
    found = re.search(r"val PPL (\d+(?:\.\d+)?)", source)
    return float(found.group(1)) if found else None


# ----------------------------------------------------------------------------------------- training stages


@dataclass(frozen=True)
class Stage:
    """One training stage: the `liger` command that runs it, its folder under resources/RUN/ (model, summary.json,
    train_log.csv), the copies of its summary and log in the row's results folder, and its name in the tables."""

    command: str
    folder: str
    summary: str
    log: str
    label: str


STAGES = {
    "transfer": Stage("transfer", "transferred", "transfer_summary.json", "transfer_log.csv", "attention transfer"),
    "lora": Stage("finetune", "finetuned", "train_summary.json", "train_log.csv", "LoRA"),
}
# The family whose recipe is the trainer's default, so that `train` sets all of it (liger.methods.liger RECIPE).
LIGER_FAMILY = "liger"


def stages(entry: Mapping) -> tuple[str, ...]:
    """A converted row's training stages, in order, as its method registers them (liger.methods): LoRA
    fine-tuning, after an attention transfer for LoLCATs (docs/lolcats.md)."""
    return registry.stages(entry["method"])


def stage_train(config: Mapping, name: str, stage: str) -> dict:
    """The training keys of row `name`'s `stage`: all of `train` for a row of the Liger family; for a row that
    trains on its method's own recipes (LoLCATs) the keys of `train` no recipe sets (registry.RECIPE_FIELDS), then
    `lolcats_train[stage]`; last, the row's own `train` keys (an extra row beside the recipe's, e.g. more epochs)."""
    entry = config["methods"][name]
    if registry.get(entry["method"]).family == LIGER_FAMILY:
        return dict(config["train"]) | entry.get("train", {})
    shared = {k: v for k, v in config["train"].items() if k not in registry.RECIPE_FIELDS}
    return shared | config["lolcats_train"][stage] | entry.get("train", {})


# ----------------------------------------------------------------------------------------- tasks and files


@dataclass(frozen=True)
class Task:
    """One of the paper's benchmarks: its column in the tables, the lm-eval metric the paper reports, its shots,
    and the items of its evaluated split (lm-eval's datasets and the offline mirrors agree)."""

    header: str
    metric: str
    shots: int
    items: int


TASKS = {
    "piqa": Task("PiQA", "acc", 0, 1838),
    "arc_easy": Task("ARC-e", "acc", 0, 2376),
    "arc_challenge": Task("ARC-c", "acc_norm", 0, 1172),
    "hellaswag": Task("HellaSwag", "acc_norm", 0, 10042),
    "winogrande": Task("WinoGrande", "acc", 0, 1267),
    "mmlu": Task("MMLU", "acc", 5, 14042),
}
PAPER_TASKS = tuple(TASKS)
PAPER_METRIC = {name: task.metric for name, task in TASKS.items()}

# What a row's jobs write in results/RUN/MODEL/ROW/ (with the stages' copies, STAGES), by job.
ROW_FILES = {"metrics": "metrics.json", "passkey": "passkey.csv", "position_loss": "position_loss.json",
             "position_loss_csv": "position_loss.csv"}


# ----------------------------------------------------------------------------------------- the config file


class ConfigError(LigerError, ValueError):
    """A config problem, said on one line: `FILE: key: what is wrong and what to do` (the CLI prints it so)."""


def read_config(path: Path) -> dict:
    """A config file's mapping; a missing file, broken YAML (with its line) or an empty file is a ConfigError."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror}); give an existing config, e.g. config/smoke.yaml") \
            from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: {where}not valid YAML ({what}); fix the syntax there") from None
    if config is None:
        raise ConfigError(f"{path}: the file is empty; a config needs run, models, data, methods, train and eval "
                          f"({DOCS})")
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level is a {type(config).__name__}, not a mapping of keys; start from "
                          "config/smoke.yaml")
    return config


def check_config(config: dict, source: str, schema: Path = SCHEMA) -> dict:
    """Check `config` and fill in the schema's defaults (in place, as Snakemake's `validate` does); returns it.

    Raises ConfigError naming `source` and the key of the first problem (and how many more there are).
    """
    problems = schema_problems(config, schema)
    if not problems:
        from snakemake.utils import validate

        given = copy.deepcopy(config)
        validate(config, str(schema), set_default=True)
        problems = row_problems(config, given)
    if problems:
        more = f" ({len(problems) - 1} more problem(s) after this one)" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {problems[0]}{more}")
    return config


def load_config(path: Path) -> dict:
    """A config file, checked, with the schema's defaults filled in (`read_config`, then `check_config`)."""
    return check_config(read_config(path), str(path))


def schema_problems(config: dict, schema: Path = SCHEMA) -> list[str]:
    """`key: what is wrong and what to do` for each violation of the schema, in key order."""
    validator = jsonschema.Draft202012Validator(yaml.safe_load(schema.read_text()))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [_describe(e) for e in errors]


def _describe(e: jsonschema.ValidationError) -> str:
    key = ".".join(map(str, e.absolute_path)) or "(top level)"
    value, arg = e.instance, e.validator_value
    if e.validator == "additionalProperties":
        known = sorted(e.schema.get("properties", {}))
        for extra in sorted(set(value) - set(known)):
            name = f"{key}.{extra}" if e.absolute_path else extra
            return f"{name}: unknown key; the keys here are {', '.join(known)} ({DOCS})"
    if e.validator == "required":
        missing = next(k for k in arg if k not in value)
        return f"{key}: `{missing}` is missing; add it ({DOCS})"
    if e.validator == "oneOf" and e.absolute_path and e.absolute_path[0] == "models":
        return f"{key}: needs exactly one source: `embedded: NAME` or `hf_id: ORG/NAME`"
    if e.validator == "type":
        kinds = " or ".join(arg) if isinstance(arg, list) else arg
        return f"{key}: {value!r} is not of type {kinds}; give a {kinds}"
    if e.validator == "enum":
        return f"{key}: {value!r} is not one of {', '.join(map(str, arg))}; pick one"
    if e.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        bound = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[e.validator]
        return f"{key}: {value!r} is out of range; give a value {bound} {arg}"
    return f"{key}: {e.message}; see {DOCS}"


def row_problems(config: dict, given: dict) -> list[str]:
    """What the schema cannot say: the run name, the tasks, each method row's shape and method (one of the
    registry's), the rows `report` names, and `profile.methods`.
    `config` has the schema's defaults; `given` is the config as written."""
    problems = []
    if config["run"] == PUBLISHED:
        problems.append(f"run: {PUBLISHED!r} is reserved: results/{PUBLISHED}/ holds the committed reproduction; "
                        "pick another name")
    problems += [f"eval.tasks.{i}: {task!r} is not one of {', '.join(TASKS)}; pick one"
                 for i, task in enumerate(config["eval"]["tasks"]) if task not in TASKS]
    methods = config["methods"]
    for name, entry in methods.items():
        if "weights_of" in entry:
            of = entry["weights_of"]
            other = sorted(set(given["methods"][name]) - {"weights_of", *WEIGHTS_OF_KEYS})
            if of not in methods or "weights_of" in methods[of] or not liger_options(methods[of]):
                problems.append(f"methods.{name}.weights_of: {of!r} is not a converted method of `methods`; name a "
                                "row that has a `method`")
            elif other:
                problems.append(f"methods.{name}: a `weights_of` row takes only {', '.join(WEIGHTS_OF_KEYS)} (it "
                                f"has {other}); move the other keys to the row it scores")
        elif "train" in entry and kind(entry) != TRAINED:
            problems.append(f"methods.{name}.train: this row trains nothing (no `method`, or `finetune: false`); "
                            "remove `train` or make it a trained row")
        elif "method" in entry and entry["method"] not in registry.names():
            problems.append(f"methods.{name}.method: {entry['method']!r} is not one of {', '.join(registry.names())}; "
                            "pick one")
        elif liger_options(entry) and "method" not in entry:
            first, *others = registry.names()
            problems.append(f"methods.{name}: options {sorted(liger_options(entry))} but no `method`; add `method: "
                            f"{first}` (or {', '.join(others)}), or leave the row empty for the base")
    for role in ("reference", "window_only"):
        name = config["report"][role]
        if name is not None and name not in methods:
            problems.append(f"report.{role}: {name!r} is not a row of `methods`; name one")
    problems += _softmax_every_problems(config)
    problems += _layer_options_problems(methods)
    problems += _ablation_problems(config)
    trained = rows(config, TRAINED)
    stray = sorted(set(config["profile"].get("methods", [])) - set(trained))
    if stray:
        problems.append(f"profile.methods: {stray} are not trained Liger methods of `methods`; pick from "
                        f"{', '.join(trained)}")
    return problems


def reference_row(config: Mapping) -> str | None:
    """The row the report compares the others with: `report.reference`, else the first converted row that is not
    a control."""
    converted = [m for m in rows(config, TRAINED, UNTRAINED, WEIGHTS_OF) if m not in controls(config)]
    return config["report"]["reference"] or next(iter(converted), None)


def _softmax_every_problems(config: dict) -> list[str]:
    """A `softmax_every` row: not with `softmax_layers`, and each model's depth known and above it."""
    problems = []
    for name, entry in config["methods"].items():
        if "softmax_every" not in entry:
            continue
        every = entry["softmax_every"]
        if "softmax_layers" in entry:
            problems.append(f"methods.{name}: both softmax_every and softmax_layers; keep one")
        for model in config["models"]:
            layers = model_layers(config, model)
            if layers is None:
                problems.append(f"models.{model}.layers: methods.{name}.softmax_every needs the model's depth; add "
                                "`layers: N` (num_hidden_layers of its config.json)")
            elif every > layers:
                problems.append(f"methods.{name}.softmax_every: {every} keeps no layer of {model} ({layers} layers) "
                                f"as softmax attention; give a value <= {layers}")
    for model, entry in config["models"].items():
        if "layers" in entry and "embedded" in entry and entry["layers"] != EMBEDDED[entry["embedded"]].layers:
            problems.append(f"models.{model}.layers: {entry['layers']} but the embedded {entry['embedded']} has "
                            f"{EMBEDDED[entry['embedded']].layers}; remove the key")
    return problems


def _layer_options_problems(methods: Mapping) -> list[str]:
    """Each row's `layer_options`: on a converted row (its own model) or a `weights_of` row (that row's model), and
    only runtime options of that model's method, so a wrong key stops the run before anything trains."""
    problems = []
    for name, entry in methods.items():
        layer = entry.get("layer_options")
        if not layer:
            continue
        scored = methods.get(entry["weights_of"], {}) if "weights_of" in entry else entry
        method = scored.get("method")
        if method not in registry.names():
            if "weights_of" not in entry:  # a bad `weights_of` or `method` has its own message
                problems.append(f"methods.{name}.layer_options: the base model has no layer options; remove them "
                                "or give the row a `method`")
            continue
        spec = registry.get(method)
        bad = spec.not_runtime(layer)
        if bad:
            problems.append(f"methods.{name}.layer_options: {bad} are not runtime options of {method} (those are "
                            f"{', '.join(spec.runtime_options) or 'none'}); set the others as the row's options")
    return problems


def _ablation_problems(config: dict) -> list[str]:
    """Each `paper_row` names a row of the paper CSV for `report.ablation_paper_model`, and the reference the
    ablation table compares the rows with has one."""
    rows_of = ablations(config)
    if not rows_of:
        return []
    model = config["report"]["ablation_paper_model"]
    known = paper_methods(model)
    if not known:
        return [f"report.ablation_paper_model: {model!r} has no rows in config/paper_results.csv; name a model of "
                "its `model` column (the paper's ablations: Llama-3-8B)"]
    problems = [f"methods.{name}.paper_row: {row!r} is not a {model} row of config/paper_results.csv; pick one of "
                f"{'; '.join(known)}" for name, row in rows_of.items() if row not in known]
    reference = reference_row(config)
    if reference is not None and reference not in rows_of:
        problems.append(f"methods.{reference}.paper_row: the ablation table compares every row with the reference "
                        f"{reference!r}; give it its paper row (e.g. Liger-GLA)")
    return problems


def run_dirs(config: dict) -> dict[str, str]:
    """Where a run writes, each folder its own: results/RUN (tables, plots, reports), resources/RUN (data and
    trained, converted models), logs/RUN. Base models (resources/models/MODEL) are shared by every run."""
    return {folder: f"{folder}/{config['run']}" for folder in ("results", "resources", "logs")}


def reuse_dirs(config: dict) -> list[str]:
    """The published runs' folders of `reuse` (a list, or comma-separated): finetuned/ and transferred/ laid out as
    under resources/RUN/."""
    reuse = config["reuse"] or []
    return [r.strip() for r in (reuse.split(",") if isinstance(reuse, str) else reuse) if r.strip()]

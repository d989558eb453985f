"""The pipeline's config: read a config file, check it, and say where its run writes.

One check for `liger plan` and the Snakefile: workflow/schemas/config.schema.yaml, then what a schema cannot say
(a method row's options need its `method`, `weights_of` rows, `profile.methods`). Every problem is one line,
`FILE: key: what is wrong and what to do`. This module needs only yaml and jsonschema: the Snakefile loads it by
path, without importing the package (which imports torch and transformers).
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
DOCS = "config/README.md"
# Method keys of the pipeline; a row's other keys are options of its layer.
PIPELINE_KEYS = ("finetune", "control", "weights_of", "layer_options")
# results/published/ holds the committed reproduction: no run may write there.
PUBLISHED = "published"
# What the rules use for the probes' and the profile's keys a config leaves out (config/README.md).
PASSKEY = {"lengths": [256, 512, 1024, 2048, 4096, 8192], "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "seeds": 5,
           "new_tokens": 10}
POSITION_LOSS = {"seq_len": 8192, "sequences": 8}
PROFILE = {"lengths": [1024, 2048, 4096, 8192, 16384, 32768], "new_tokens": 128, "batch_size": 1}


class ConfigError(ValueError):
    """A config problem, said on one line: `FILE: key: what is wrong and what to do`."""


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


def check_config(config: dict, source: str, schema: Path = SCHEMA) -> None:
    """Raise ConfigError naming `source` and the key of the first problem (and how many more there are)."""
    problems = schema_problems(config, schema) or row_problems(config)
    if problems:
        more = f" ({len(problems) - 1} more problem(s) after this one)" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {problems[0]}{more}")


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


def liger_options(entry: dict) -> dict:
    """The layer options of a method row (empty for the untouched base)."""
    return {k: v for k, v in entry.items() if k not in PIPELINE_KEYS}


def is_finetuned(entry: dict) -> bool:
    """A converted row that is trained (`finetune: false` rows are converted only)."""
    return bool(liger_options(entry)) and entry.get("finetune", True)


def row_problems(config: dict) -> list[str]:
    """What the schema cannot say: the run name, each method row's shape, and `profile.methods`."""
    problems = []
    if config["run"] == PUBLISHED:
        problems.append(f"run: {PUBLISHED!r} is reserved: results/{PUBLISHED}/ holds the committed reproduction; "
                        "pick another name")
    methods = config["methods"]
    for name, entry in methods.items():
        if "weights_of" in entry:
            of, other = entry["weights_of"], sorted(set(entry) - {"weights_of", "layer_options", "control"})
            if of not in methods or "weights_of" in methods[of] or not liger_options(methods[of]):
                problems.append(f"methods.{name}.weights_of: {of!r} is not a converted method of `methods`; name a "
                                "row that has a `method`")
            elif other:
                problems.append(f"methods.{name}: a `weights_of` row takes only layer_options and control (it has "
                                f"{other}); move the other keys to the row it scores")
        elif liger_options(entry) and "method" not in entry:
            problems.append(f"methods.{name}: options {sorted(liger_options(entry))} but no `method`; add `method: "
                            "liger_gla` (or liger_hgrn2, liger_gsa, lolcats), or leave the row empty for the base")
    trained = [m for m, entry in methods.items() if is_finetuned(entry)]
    stray = sorted(set(config.get("profile", {}).get("methods", [])) - set(trained))
    if stray:
        problems.append(f"profile.methods: {stray} are not trained Liger methods of `methods`; pick from "
                        f"{', '.join(trained)}")
    return problems


def run_dirs(config: dict) -> dict[str, str]:
    """Where a run writes, each folder its own: results/RUN (tables, plots, reports), resources/RUN (data and
    trained, converted models), logs/RUN. Base models (resources/models/MODEL) are shared by every run."""
    return {kind: f"{kind}/{config['run']}" for kind in ("results", "resources", "logs")}


def reuse_dirs(config: dict) -> list[str]:
    """The published runs' folders of `reuse` (a list, or comma-separated): finetuned/ and transferred/ laid out as
    under resources/RUN/."""
    reuse = config.get("reuse") or []
    return [r.strip() for r in (reuse.split(",") if isinstance(reuse, str) else reuse) if r.strip()]

"""lm-eval's tasks for the paper's benchmarks: the local task files on the offline mirrors, their checks, and loading.

`loaded_tasks` gives lm-eval's TaskManager and tasks, either lm-eval's own (the Hugging Face hub) or, with a
mirror folder, the configs of this package (`write_local_tasks`: `data_files` made absolute, the 57 MMLU subject
tasks generated). While they are loaded each prompt template is compiled once (`_templates_compiled_once`).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from datasets.exceptions import DatasetsError

from liger.errors import LigerError
from liger.records import read_jsonl
from liger.tasks import TASKS_DIR
from liger.tasks.utils import MMLU_SUBJECTS, mmlu_description


def lm_eval_name(task: str, local: bool) -> str:
    """The lm-eval task/group name of a paper task: `liger_<task>` for the local tasks, else lm-eval's own."""
    return f"liger_{task}" if local else task


def leaf_task_names(task: str, local: bool) -> list[str]:
    """The lm-eval leaf tasks that score a paper task: MMLU's 57 subjects, else the task itself."""
    if task == "mmlu":
        return [f"{'liger_' if local else ''}mmlu_{s}" for s in MMLU_SUBJECTS]
    return [lm_eval_name(task, local)]


# ----------------------------------------------------------------------------------------------------- local task files


class _YamlLoader(yaml.SafeLoader):
    """Reads task YAMLs without resolving `!function` references (kept as their dotted names)."""


_YamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _read_yaml(path: Path) -> dict:
    with path.open() as f:
        return yaml.load(f, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)


def _task_file(task: str) -> Path:
    """The local task config that names a paper task's data files (MMLU: the subjects' template)."""
    return TASKS_DIR / ("_liger_mmlu_template.yaml" if task == "mmlu" else f"liger_{task}.yaml")


def data_files(task: str) -> dict[str, str]:
    """The mirror files a local task reads: split -> path relative to the data folder."""
    return dict(_read_yaml(_task_file(task))["dataset_kwargs"]["data_files"])


def write_local_tasks(data_dir: str | Path, out_dir: str | Path) -> Path:
    """Write lm-eval task configs reading the mirrors in `data_dir` into `out_dir` (an lm-eval include path).

    Each config of `liger/tasks/` is included with its `data_files` made absolute under `data_dir`; the 57
    MMLU subject tasks (`liger_mmlu_<subject>`, tagged `liger_mmlu_<category>_tasks`) are generated from the
    template with the official description and a filter on the mirror's `subject` field.
    """
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def absolute(files: dict[str, str]) -> dict[str, str]:
        return {split: str(data_dir / rel) for split, rel in files.items()}

    for path in sorted(TASKS_DIR.glob("*.yaml")):
        cfg = _read_yaml(path)
        if "task" not in cfg and "group" not in cfg:
            continue  # a template, only included
        lines = [f"include: {json.dumps(str(path))}"]
        if "data_files" in (cfg.get("dataset_kwargs") or {}):
            kwargs = {**cfg["dataset_kwargs"], "data_files": absolute(cfg["dataset_kwargs"]["data_files"])}
            lines.append(f"dataset_kwargs: {json.dumps(kwargs)}")
        (out_dir / path.name).write_text("\n".join(lines) + "\n")

    template = _task_file("mmlu")
    mmlu_files = json.dumps({"data_files": absolute(data_files("mmlu"))})
    for subject, category in MMLU_SUBJECTS.items():
        (out_dir / f"liger_mmlu_{subject}.yaml").write_text(
            f"include: {json.dumps(str(template))}\n"
            f"task: liger_mmlu_{subject}\n"
            f"task_alias: {subject}\n"
            f"tag: liger_mmlu_{category}_tasks\n"
            f"description: {json.dumps(mmlu_description(subject))}\n"
            f"process_docs: !function liger.tasks.utils.mmlu_process_docs_{subject}\n"
            f"dataset_kwargs: {mmlu_files}\n"
        )
    return out_dir


# -------------------------------------------------------------------------------------------------------- mirror checks


def check_data(data_dir: str | Path, tasks: Sequence[str]) -> None:
    """LigerError unless `data_dir` holds every file the tasks read, each one JSON object per line (named by file
    and line before lm-eval reads them), and, for MMLU, records of every subject."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise LigerError(f"--data-dir {data_dir}: not a folder (it should hold the offline mirrors, piqa/ ... mmlu/)")
    for task in tasks:
        for rel in data_files(task).values():
            if not (data_dir / rel).is_file():
                raise LigerError(f"task {task}: missing data file {data_dir / rel} (the offline mirror of {task})")
    for task in tasks:
        for split, rel in data_files(task).items():
            found = {record.get("subject") for record in _mirror_records(task, data_dir / rel)}
            missing = sorted(set(MMLU_SUBJECTS) - found) if task == "mmlu" else []
            if missing:
                raise LigerError(
                    f"task mmlu: {data_dir / rel} ({split}) has no records of {len(missing)} subject(s): "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                )


def _mirror_records(task: str, path: Path) -> Iterator[dict]:
    """The records of a mirror file; a LigerError naming the file and 1-based line of one that is not a JSON object."""
    try:
        for lineno, record in read_jsonl(path):
            if not isinstance(record, dict):
                raise LigerError(f"{path}: line {lineno} is a JSON {type(record).__name__}, not a record (an object): "
                                 "fix or remove that line")
            yield record
    except LigerError as e:
        raise LigerError(f"task {task}: {e} (or copy the mirror again)") from None


# -------------------------------------------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _no_download_counts(active: bool) -> Iterator[None]:
    """Stop `datasets` from pinging the hub (a download counter, up to 3 s each) for every JSON load."""
    import datasets

    saved = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = saved and not active
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = saved


@contextlib.contextmanager
def _templates_compiled_once() -> Iterator[None]:
    """Compile each Jinja prompt template once while the context lasts, not once per document rendered.

    lm-eval renders `doc_to_text`, `doc_to_choice` and `doc_to_target` templates with `lm_eval.utils.apply_template`,
    which compiles the template source again at every call (`env.from_string`, uncached): most of the time of building
    MMLU's 5-shot contexts (six renders an item). The same environment compiles the same source once: same text.
    """
    from lm_eval import utils as lm_utils

    env = lm_utils.env
    if "from_string" in vars(env):  # already inside this context
        yield
        return
    compile_template = env.from_string
    compiled: dict[str, Any] = {}

    def from_string(source: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(source, str):
            return compile_template(source, *args, **kwargs)
        if source not in compiled:
            compiled[source] = compile_template(source)
        return compiled[source]

    env.from_string = from_string  # this instance only; the class's method is untouched
    try:
        yield
    finally:
        del env.from_string


@contextlib.contextmanager
def loaded_tasks(task_list: Sequence[str], data_dir: str | Path | None,
                 compile_once: bool = True) -> Iterator[tuple[Any, dict, dict]]:
    """lm-eval's TaskManager, the top task or group of each paper task, and the leaf tasks by name.

    `data_dir`: the offline mirrors (the local tasks, written to a temporary include folder that lives as
    long as the context); None: lm-eval's own tasks on the Hugging Face hub. Within the context lm-eval compiles
    each prompt template once (`_templates_compiled_once`) unless `compile_once` is false (lm-eval as shipped).
    """
    from lm_eval.tasks import TaskManager

    local = data_dir is not None
    with (
        tempfile.TemporaryDirectory(prefix="liger-tasks-") as tmp,
        _no_download_counts(local),
        _templates_compiled_once() if compile_once else contextlib.nullcontext(),
    ):
        if local:
            manager = TaskManager(include_path=write_local_tasks(data_dir, tmp), include_defaults=False)
        else:
            manager = TaskManager()
        names = [lm_eval_name(t, local) for t in task_list]
        try:
            loaded = manager.load(names)
        except (ConnectionError, OSError, ValueError, DatasetsError) as e:
            where = f"the mirrors in {data_dir}" if local else "the Hugging Face hub (offline: pass --data-dir)"
            raise LigerError(f"could not load the task data from {where}: {e}") from e
        groups, leaves = loaded["groups"], loaded["tasks"]
        top = {t: groups[n] if n in groups else leaves[n] for t, n in zip(task_list, names, strict=True)}
        yield manager, top, leaves

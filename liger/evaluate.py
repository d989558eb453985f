"""Benchmark evaluation with lm-eval: the paper's six tasks on a base or Liger model.

`evaluate()` (CLI: `python -m liger evaluate`) scores PiQA, ARC-e, ARC-c, HellaSwag, WinoGrande (0-shot) and
MMLU (5-shot) with `lm_eval.simple_evaluate` and the lm-eval model `liger` defined here (`LigerLM`: an
`HFLM` around a model loaded by `liger.load`). Prompts and metrics are lm-eval 0.4.13's. Two data sources:
lm-eval's own tasks (the Hugging Face hub) or, with `data_dir`, the local tasks of `liger/tasks/` reading
the offline JSONL mirrors (same prompts; checked by tests/test_evaluate.py against the official YAMLs).
lm-eval's own work around the model is cut without changing a request: each prompt template compiled once, the
MMLU mirror cut by subject once, the text requests share tokenized once (tested against lm-eval's unmodified path).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from datasets.exceptions import DatasetsError
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

from liger.convert import add_layer_options_arg, layer_config, load, saved_conversion
from liger.data import read_jsonl
from liger.device import resolve_device, resolve_dtype
from liger.errors import LigerError
from liger.fileio import write_json_atomic
from liger.loglik import continuation_logprobs
from liger.paired import record as record_items
from liger.pipeline import PAPER_METRIC, PAPER_TASKS  # the paper's tasks and the metric each reports
from liger.provenance import versions
from liger.tasks import TASKS_DIR
from liger.tasks.utils import MMLU_CATEGORIES, MMLU_SUBJECTS, mmlu_description

log = logging.getLogger(__name__)

METRICS = ("acc", "acc_norm")
# The local task config that names each task's data files (relative to the mirror folder).
_LOCAL_YAML = {t: f"liger_{t}.yaml" for t in PAPER_TASKS if t != "mmlu"} | {"mmlu": "_liger_mmlu_template.yaml"}
MMLU_AGGREGATION = (
    "lm-eval 0.4.13 `mmlu` group acc: aggregate_metric_list weight_by_size=true, pooled over all 57 leaf "
    "subjects, i.e. the sample-weighted mean (accuracy over all items), not the mean of subject accuracies"
)


def lm_eval_name(task: str, local: bool) -> str:
    """The lm-eval task/group name of a paper task: `liger_<task>` for the local tasks, else lm-eval's own."""
    return f"liger_{task}" if local else task


def default_batch_tokens(device: str) -> int:
    """Padded tokens per forward of the log-likelihood path (the head runs only at scored tokens, so the body's
    activations bound the memory)."""
    return 65536 if device.startswith("cuda") else 8192


def _load_tokenizer(model_path: Path, adapter: Path | None):
    from transformers import AutoTokenizer

    for folder in [model_path, adapter]:
        if folder is not None and any((Path(folder) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(folder)
    raise LigerError(f"{model_path}: no tokenizer (tokenizer.json / tokenizer_config.json) beside the model")


# Splicing a string's tokens from the string before it (`encode_sharing_prefixes`): at least this many leading
# characters shared, and the cut at least this many characters before the two strings differ (and at least half
# the first from the start).
_MIN_SHARED, _CUT_MARGIN = 128, 32
_CHECK_FIRST, _CHECK_EVERY = 16, 256  # spliced strings also encoded whole and compared: the first ones, then 1 in N


def _shared_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings (binary search on C-speed slice comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut(text: str, end: int) -> int:
    """The last word or line start of `text` at or before `end` (0: none): a single space between two non-space
    characters, or a non-space character after a newline."""
    while end > 0:
        r = max(text.rfind(" ", 0, end + 1), text.rfind("\n", 0, end) + 1)
        if r <= 0:
            return 0
        if text[r] == " " and r + 1 < len(text) and not text[r - 1].isspace() and not text[r + 1].isspace():
            return r
        if text[r - 1] == "\n" and not text[r].isspace():
            return r
        end = r - 1
    return 0


def encode_sharing_prefixes(tokenizer: Any, strings: Sequence[str], **kwargs: Any) -> dict[str, list[int]]:
    """`tokenizer(strings, **kwargs)["input_ids"]` by string, without tokenizing again the text strings share.

    Multiple-choice requests are mostly shared text (MMLU: each 5-shot context once alone and once per choice,
    the few-shot examples in every item of a subject), and tokenizing it all took minutes. In sorted order, a string
    sharing at least `_MIN_SHARED` leading characters with the one before it is cut at a word or line start at
    least `_CUT_MARGIN` characters before they differ: its tokens are the previous string's up to the cut, then
    those of its own text from the cut. The splice is kept only where the tokenizer shows the cut is a clean
    token boundary: the previous string's text from the cut, encoded alone, gives exactly the tail of its tokens,
    and both texts from the cut start with the same token. Otherwise (or sharing less) a string is encoded whole.
    A sample of spliced strings is also encoded whole: any difference drops the splicing altogether.
    """
    order = sorted(set(strings))
    cuts = [0] * len(order)
    for i in range(1, len(order)):
        shared = _shared_prefix(order[i - 1], order[i])
        if shared >= _MIN_SHARED and (r := _cut(order[i], shared - _CUT_MARGIN)) >= _MIN_SHARED // 2:
            cuts[i] = r

    def encode(texts: list[str], **kw: Any) -> dict[str, list[int]]:
        texts = list(dict.fromkeys(texts))
        if not texts:
            return {}
        ids = tokenizer(texts, return_attention_mask=False, **kw)["input_ids"]
        return dict(zip(texts, ids, strict=True))

    whole = encode([s for s, r in zip(order, cuts, strict=True) if not r], **kwargs)
    tails = encode([t for i, r in enumerate(cuts) if r for t in (order[i - 1][r:], order[i][r:])],
                   **{**kwargs, "add_special_tokens": False})  # fmt: skip
    out: dict[str, list[int] | None] = {}
    spliced, refused = [], []
    for i, (text, r) in enumerate(zip(order, cuts, strict=True)):
        if not r:
            out[text] = whole[text]
            continue
        before, own, previous = tails[order[i - 1][r:]], tails[text[r:]], out[order[i - 1]]
        keep = len(previous) - len(before) if previous is not None else -1
        if keep >= 0 and before and own and before[0] == own[0] and previous[keep:] == before:
            out[text] = previous[:keep] + own
            spliced.append(text)
        else:  # encoded whole below (and so is the next string, if it was to be spliced from this one)
            out[text] = None
            refused.append(text)
    out |= encode(refused, **kwargs)
    checked = spliced[:_CHECK_FIRST] + spliced[_CHECK_FIRST::_CHECK_EVERY]
    if checked and encode(checked, **kwargs) != {t: out[t] for t in checked}:
        log.warning(
            "tokenizer %s: spliced prefixes differ from whole encodings; encoding every string whole",
            type(tokenizer).__name__,
        )
        return encode(order, **kwargs)
    return out


@register_model("liger")
class LigerLM(HFLM):
    """lm-eval model `liger`: a base or Liger checkpoint loaded with `liger.load` (a LoRA adapter merged).

    `pretrained` is the model folder; the tokenizer is read from it (or from the adapter folder). Other
    keyword arguments are HFLM's (e.g. max_length, add_bos_token). Log-likelihood batches are right-padded
    by lm-eval (fine for causal models); the tokenizer pads left for generation.
    """

    def __init__(
        self,
        pretrained: str | Path,
        adapter: str | Path | None = None,
        layer_options: dict | None = None,
        device: str | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        batch_size: int | str | None = None,
        max_batch_size: int | None = 64,
        batch_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        model_path = Path(pretrained)
        adapter = Path(adapter) if adapter else None
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        model = load(model_path, adapter=adapter, layer_options=layer_options, dtype=torch_dtype).to(dev).eval()
        tokenizer = _load_tokenizer(model_path, adapter)
        tokenizer.padding_side = "left"
        super().__init__(
            pretrained=model,
            tokenizer=tokenizer,
            backend="causal",
            batch_size=batch_size if batch_size is not None else 1,
            max_batch_size=max_batch_size,
            **kwargs,
        )
        self.batch_size_per_gpu = batch_size  # rows per forward of `_loglikelihood_tokens`; None: no cap
        self.model_path, self.adapter_path = model_path, adapter
        self.batch_tokens = batch_tokens or default_batch_tokens(dev)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        """HFLM's `tok_encode`, answered from the batch encoded by `loglikelihood` when it has the string."""
        cached = getattr(self, "_encoded", {}).get(string)
        if cached is not None and add_special_tokens is None and not left_truncate_len and not kwargs:
            return list(cached)
        return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's own loglikelihood, with the strings its `_encode_pair` will ask for encoded in one batch.

        MMLU's four choices share one long 5-shot context; encoding request by request on one core made
        tokenizing take minutes on the GPU machine. The token ids are lm-eval's (tested).
        """
        strings = []
        for context, continuation in (req.args for req in requests):
            if context:  # _encode_pair moves the context's trailing spaces to the continuation
                strings += [context.rstrip(), context + continuation]
        bos = self.tokenizer.decode(self.prefix_token_id)
        plain = [s for s in dict.fromkeys(strings) if not has_bos_prefix(s, bos)]  # BOS-prefixed: the usual path
        self._encoded = encode_sharing_prefixes(self.tokenizer, plain, **_add_special_kwargs(None, self.add_bos_token))
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._encoded = {}

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        """lm-eval's answers (log-probability sum, greedy match) with the head only at scored tokens
        (`liger.loglik`): each distinct input once, batched by `batch_tokens`, at most `batch_size` rows."""
        rows = override_bs or self.batch_size_per_gpu
        answers = continuation_logprobs(
            self.model, [(context, continuation) for _, context, continuation in requests], self.max_length,
            max_batch_tokens=self.batch_tokens, max_rows=int(rows) if rows else None,
            progress=not disable_tqdm,
        )  # fmt: skip
        for (request, _, _), answer in zip(requests, answers, strict=True):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return answers

    def get_model_info(self) -> dict:
        """Local model information (HFLM's would query the hub)."""
        return {
            "model_path": str(self.model_path),
            "adapter": str(self.adapter_path) if self.adapter_path else None,
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.dtype),
        }


# ----------------------------------------------------------------------------------------- input checks


def check_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Paper task names from a list or a comma-separated string; a LigerError naming the valid ones."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    names = [n.removeprefix("liger_") for n in names if n]
    unknown = [n for n in names if n not in PAPER_TASKS]
    if unknown or not names:
        raise LigerError(
            f"unknown task(s) {', '.join(map(repr, unknown)) or '(none given)'}; valid tasks: {', '.join(PAPER_TASKS)}"
        )
    return list(dict.fromkeys(names))


class _YamlLoader(yaml.SafeLoader):
    """Reads task YAMLs without resolving `!function` references (kept as their dotted names)."""


_YamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _read_yaml(path: Path) -> dict:
    with path.open() as f:
        return yaml.load(f, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader subclass)


def data_files(task: str) -> dict[str, str]:
    """The mirror files a local task reads: split -> path relative to the data folder."""
    return dict(_read_yaml(TASKS_DIR / _LOCAL_YAML[task])["dataset_kwargs"]["data_files"])


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


# ----------------------------------------------------------------------------------------- local tasks


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

    template = TASKS_DIR / _LOCAL_YAML["mmlu"]
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


# ----------------------------------------------------------------------------------------- results


def _metrics(entry: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for m in METRICS:
        if f"{m},none" in entry:
            out[m] = float(entry[f"{m},none"])
            err = entry.get(f"{m}_stderr,none")
            out[f"{m}_stderr"] = float(err) if isinstance(err, int | float) else None
    return out


def _task_report(task: str, raw: dict, samples: dict, local: bool, mmlu_limit: int | None) -> dict:
    """A paper task's entry of the metrics report from lm-eval's results and logged samples (`samples`: leaf
    task -> samples; only each item's paper metric is kept, as `items`, see `liger.paired`)."""
    name = lm_eval_name(task, local)
    results, n_samples = raw["results"], raw["n-samples"]
    entry: dict[str, Any] = {"lm_eval_task": name}
    if task != "mmlu":
        entry |= {"n": n_samples[name]["effective"], "n_total": n_samples[name]["original"],
                  "num_fewshot": raw["n-shot"][name]}  # fmt: skip
    else:
        leaves = {s: f"{'liger_' if local else ''}mmlu_{s}" for s in MMLU_SUBJECTS}
        entry |= {
            "n": sum(n_samples[leaf]["effective"] for leaf in leaves.values()),
            "n_total": sum(n_samples[leaf]["original"] for leaf in leaves.values()),
            "num_fewshot": raw["n-shot"][leaves["abstract_algebra"]],
            "limit_per_subject": mmlu_limit,
            "aggregation": MMLU_AGGREGATION,
        }
    metrics = _metrics(results[name])
    entry["metrics"] = metrics
    entry["paper_metric"] = PAPER_METRIC[task]
    entry["value"] = metrics.get(PAPER_METRIC[task])
    entry["items"] = record_items(task, PAPER_METRIC[task], [samples[leaf] for leaf in leaf_task_names(task, local)])
    if task == "mmlu":
        entry["categories"] = {
            cat: _metrics(results[f"{name}_{cat}"]) | {"n": sum(n_samples[leaves[s]]["effective"] for s in subs)}
            for cat, subs in MMLU_CATEGORIES.items()
        }
        entry["subjects"] = {
            s: _metrics(results[leaf]) | {"n": n_samples[leaf]["effective"]} for s, leaf in leaves.items()
        }
    return entry


def chance_level(task_objs: Sequence[Any], limit: int | None) -> float:
    """Accuracy of uniform guessing on the evaluated items: the mean over items of 1 / number of choices."""
    inverse = []
    for task in task_objs:
        docs = list(task.eval_docs)
        for doc in docs[:limit] if limit is not None else docs:
            inverse.append(1 / len(task.doc_to_choice(doc)))
    return sum(inverse) / len(inverse)


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


def leaf_task_names(task: str, local: bool) -> list[str]:
    """The lm-eval leaf tasks that score a paper task: MMLU's 57 subjects, else the task itself."""
    if task == "mmlu":
        return [f"{'liger_' if local else ''}mmlu_{s}" for s in MMLU_SUBJECTS]
    return [lm_eval_name(task, local)]


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


def _liger_options(model_path: Path, layer_options: dict | None = None) -> dict | str:
    """The conversion the model is evaluated with ("base": none), `layer_options` applied (checked early)."""
    if layer_options:
        return layer_config(model_path, layer_options).liger
    return saved_conversion(model_path) or "base"


# ----------------------------------------------------------------------------------------- evaluate


def evaluate(
    model_path: str | Path,
    out_json: str | Path,
    *,
    adapter: str | Path | None = None,
    tasks: str | Sequence[str] = PAPER_TASKS,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    mmlu_batch_size: int | None = None,
    batch_tokens: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    num_fewshot_mmlu: int = 5,
    seed: int = 0,
    layer_options: dict | None = None,
) -> dict:
    """Score a saved model (base or Liger; `adapter` merged) on the paper's tasks; write and return the report.

    `data_dir`: the offline mirrors (local tasks `liger_*`); None uses lm-eval's own tasks (the hub).
    `limit`: at most N items per task for smoke runs; MMLU's is spread over its 57 subjects (ceil(N/57)
    each, lm-eval's per-task limit). MMLU runs `num_fewshot_mmlu`-shot, the others 0-shot. All lm-eval
    seeds are `seed`. `layer_options` evaluates a converted model's weights with other runtime layer settings
    (`liger.convert.RUNTIME_OPTIONS`, e.g. {"window_shape": "sliding"}). `batch_size`: at most that many requests'
    inputs per forward (None: no cap); `mmlu_batch_size` (default `batch_size`) is MMLU's alone; `batch_tokens`:
    padded tokens per forward (None: `default_batch_tokens`). Input errors raise LigerError before the model loads.
    """
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    task_list = check_tasks(tasks)
    model_path = Path(model_path)
    out_json = Path(out_json)
    if not (model_path / "config.json").is_file():
        raise LigerError(f"--model {model_path}: no config.json; not a saved model folder")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise LigerError(f"--adapter {adapter}: no adapter_config.json; not a saved LoRA adapter")
    if limit is not None and limit < 1:
        raise LigerError(f"--limit {limit}: must be a positive number of items")
    if num_fewshot_mmlu < 0:
        raise LigerError(f"num_fewshot_mmlu={num_fewshot_mmlu}: must be >= 0")
    liger_options = _liger_options(model_path, layer_options)
    local = data_dir is not None
    if local:
        check_data(data_dir, task_list)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    for flag, value in (("--batch-size", batch_size), ("--mmlu-batch-size", mmlu_batch_size),
                        ("--batch-tokens", batch_tokens)):
        if value is not None and int(value) < 1:
            raise LigerError(f"{flag} {value}: must be >= 1")
    sizes = {"mmlu": mmlu_batch_size if mmlu_batch_size is not None else batch_size}
    mmlu_limit = math.ceil(limit / len(MMLU_SUBJECTS)) if limit is not None else None

    # Each run's reports are saved as it finishes: a rerun with the same settings (an interrupted job) skips them.
    partial = out_json.with_name(out_json.name + ".partial")
    settings = {"model": _fingerprint(model_path), "adapter": _fingerprint(Path(adapter)) if adapter else None,
                "data_dir": str(Path(data_dir).resolve()) if local else None, "limit": limit,
                "num_fewshot_mmlu": num_fewshot_mmlu, "seed": seed, "dtype": str(torch_dtype),
                "layer_options": layer_options or None}  # fmt: skip
    reports: dict[str, dict] = _resumed(partial, settings, task_list)
    resumed = set(reports)
    runs = []  # (paper tasks, num_fewshot, limit): MMLU is the one few-shot task
    zero_shot = [t for t in task_list if t != "mmlu" and t not in reports]
    if zero_shot:
        runs.append((zero_shot, 0, limit))
    if "mmlu" in task_list and "mmlu" not in reports:
        runs.append((["mmlu"], num_fewshot_mmlu, mmlu_limit))

    with loaded_tasks(task_list, data_dir) as (manager, top, leaves):
        lm = LigerLM(model_path, adapter=adapter, layer_options=layer_options, device=dev, dtype=torch_dtype,
                     batch_tokens=batch_tokens) if runs else None  # fmt: skip
        seeds = dict(random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        for run_tasks, shots, run_limit in runs:
            given = sizes.get(run_tasks[0], batch_size)
            bs = int(given) if given is not None else None
            lm.batch_size_per_gpu = bs
            log.info("lm-eval: %s, %d-shot, at most %s rows and %d tokens a batch, limit %s", ",".join(run_tasks),
                     shots, bs or "any", lm.batch_tokens, run_limit)
            run_start = time.perf_counter()
            raw = simple_evaluate(
                model=lm, tasks=[top[t] for t in run_tasks], num_fewshot=shots, limit=run_limit,
                task_manager=manager, log_samples=True, **seeds,
            )  # fmt: skip
            samples = raw.pop("samples")  # per-item outcomes are kept; the rest (contexts, responses) dropped here
            run_s = round(time.perf_counter() - run_start, 2)
            for t in run_tasks:
                chance = chance_level([leaves[n] for n in leaf_task_names(t, local)], run_limit)
                reports[t] = _task_report(t, raw, samples, local, mmlu_limit) | {
                    "batch_size": bs, "batch_tokens": lm.batch_tokens, "chance": chance, "run_wall_time_s": run_s}
            write_json_atomic(partial, {"settings": settings, "tasks": reports})

    report = {
        "model": str(model_path),
        "adapter": str(adapter) if adapter is not None else None,
        "liger": liger_options,
        "layer_options": layer_options or None,
        "data_source": {"kind": "local", "data_dir": str(Path(data_dir).resolve())} if local else {"kind": "hub"},
        "tasks": {t: reports[t] for t in task_list},
        "paper_metrics": {t: reports[t]["value"] for t in task_list},
        "chance": {t: reports[t]["chance"] for t in task_list},
        "limit": limit,
        "batch_size": int(batch_size) if batch_size is not None else "default",
        "device": dev,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "seed": seed,
        "num_fewshot_mmlu": num_fewshot_mmlu,
        "versions": versions("lm_eval", "torch", "transformers", "liger"),
        "wall_time_s": round(time.perf_counter() - start, 2),  # this process's; resumed runs add their own
        "resumed": sorted(resumed),
    }
    write_json_atomic(out_json, report)
    partial.unlink(missing_ok=True)
    return report


def _fingerprint(folder: Path) -> list[list]:
    """A model folder's files, each with its size and SHA-256: changes when the model does, not when the same files
    are written again (a restored adapter, a model rebuilt on another machine)."""
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    return [[str(f.relative_to(folder)), f.stat().st_size, _sha256(f)] for f in files]


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _resumed(partial: Path, settings: dict, task_list: Sequence[str]) -> dict[str, dict]:
    """The task reports an interrupted run of the same settings saved in `partial` (none if it differs; a task
    saved without per-item outcomes, by an older version, is scored again)."""
    if not partial.is_file():
        return {}
    try:
        saved = json.loads(partial.read_text())
        if saved["settings"] != settings:
            log.warning("%s: saved by a run with other settings; starting over", partial)
            return {}
        done = {t: r for t, r in saved["tasks"].items() if t in task_list and "items" in r}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        log.warning("%s: unreadable; starting over", partial)
        return {}
    if done:
        log.info("resuming: %s scored by an earlier run (%s)", ", ".join(done), partial)
    return done


def _cli(args: argparse.Namespace) -> int:
    report = evaluate(
        args.model, args.out, adapter=args.adapter, tasks=args.tasks, data_dir=args.data_dir, limit=args.limit,
        batch_size=args.batch_size, mmlu_batch_size=args.mmlu_batch_size, batch_tokens=args.batch_tokens,
        device=args.device, dtype=args.dtype,
        num_fewshot_mmlu=args.num_fewshot_mmlu, seed=args.seed, layer_options=args.layer_options,
    )  # fmt: skip
    for task, entry in report["tasks"].items():
        value = entry["value"]
        shown = f"{100 * value:.1f}" if value is not None else "n/a"
        print(f"{task:14s} {entry['paper_metric']:8s} {shown:>6s}  (n={entry['n']}, {entry['num_fewshot']}-shot)")
    print(f"{args.out}: written ({report['wall_time_s']:.0f} s)")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a base or Liger model on the paper's benchmarks with lm-eval",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--model", required=True, type=Path, help="saved model folder (base or Liger)")
    p.add_argument("--adapter", type=Path, help="LoRA adapter folder, merged before evaluation")
    p.add_argument("--tasks", default=",".join(PAPER_TASKS), help=f"comma-separated (default {','.join(PAPER_TASKS)})")
    p.add_argument("--data-dir", type=Path, help="offline mirrors folder (piqa/, arc_easy/, ...); default: the hub")
    p.add_argument("--limit", type=int, help="at most N items per task (smoke runs; MMLU: ceil(N/57) per subject)")
    p.add_argument("--batch-size", type=int, help="at most N requests' inputs per forward (default: no cap)")
    p.add_argument("--mmlu-batch-size", type=int, help="MMLU's --batch-size (default: --batch-size)")
    p.add_argument("--batch-tokens", type=int, help="at most N padded tokens per forward (default: 65536 on CUDA, "
                   "8192 on CPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    p.add_argument("--num-fewshot-mmlu", type=int, default=5, help="MMLU shots (default 5, as the paper)")
    p.add_argument("--seed", type=int, default=0, help="lm-eval seeds (default 0)")
    add_layer_options_arg(p)
    p.add_argument("--out", required=True, type=Path, help="output JSON file")
    p.set_defaults(func=_cli)

"""Benchmark evaluation (liger.evaluate, liger.eval_model, liger.tasks.loading): local lm-eval tasks vs the
official templates, the `liger` lm-eval model's log-likelihoods vs a plain forward pass, end-to-end runs on tiny
mirrors, and input errors.

The tiny mirrors copy the first records of the benchmark mirrors at SHARED_DATA (tests/conftest.py; set by
LIGER_SHARED_DATA) when they exist, hand-written records otherwise.
The fast tests use a byte-level BPE tokenizer trained here (vocab 512) and tiny random Llamas, so they need
neither the network nor the embedded SmolLM2; the slow test runs SmolLM2 on the real mirrors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import liger
from liger.device import resolve_device, resolve_dtype
from liger.errors import LigerError
from liger.eval_model import LigerLM, default_batch_tokens
from liger.evaluate import PAPER_METRIC, PAPER_TASKS, evaluate
from liger.tasks.loading import write_local_tasks
from liger.tasks.utils import MMLU_CATEGORIES, MMLU_SUBJECTS
from tests.conftest import ROOT, SHARED_DATA, SMOLLM2, tiny_model

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"
# paper task -> (official YAML, {split: mirror file}); the official task's other splits are set to null.
OFFICIAL = {
    "piqa": ("piqa/piqa.yaml", {"validation": "piqa/validation.jsonl"}),
    "arc_easy": ("arc/arc_easy.yaml", {"test": "arc_easy/test.jsonl"}),
    "arc_challenge": ("arc/arc_challenge.yaml", {"test": "arc_challenge/test.jsonl"}),
    "hellaswag": ("hellaswag/hellaswag.yaml", {"validation": "hellaswag/validation.jsonl"}),
    "winogrande": ("winogrande/default.yaml", {"validation": "winogrande/validation.jsonl"}),
}
ROOT_MODELS = ROOT / "resources" / "models"
N_RECORDS = 4  # per simple task in the tiny mirror
N_MMLU_TEST = 2  # per subject


# ----------------------------------------------------------------------------------------- tiny mirrors


def _handwritten(rel: str, n: int) -> list[dict]:
    """Records in the mirror layout, for machines without the mirrors at SHARED_DATA."""
    make = {
        "piqa/validation.jsonl": lambda i: {
            "goal": f"How do I keep bread fresh for {i + 2} days?", "sol1": "Wrap it in a cloth bag.",
            "sol2": "Leave it open on a radiator.", "label": i % 2},
        "arc_easy/test.jsonl": lambda i: {
            "id": f"Easy_{i}", "question": f"Which of these is a source of light (case {i})?",
            "choices": {"text": ["the Sun", "a rock", "a chair", "water"], "label": ["A", "B", "C", "D"]},
            "answerKey": "A"},
        "arc_challenge/test.jsonl": lambda i: {
            "id": f"Challenge_{i}", "question": f"What makes a compass needle point north (case {i})?",
            "choices": {"text": ["gravity", "Earth's magnetic field", "wind"], "label": ["1", "2", "3"]},
            "answerKey": "2"},
        "hellaswag/validation.jsonl": lambda i: {
            "ind": i, "activity_label": "Making tea", "ctx_a": f"A man boils water [title] in kettle {i}.",
            "ctx_b": "he", "ctx": f"A man boils water [title] in kettle {i}. he",
            "endings": ["pours it over the leaves.", "throws the kettle away.", "sings [step] loudly.", "sleeps."],
            "source_id": f"wikihow~{i}", "split": "val", "split_type": "indomain", "label": str(i % 4)},
        "winogrande/validation.jsonl": lambda i: {
            "sentence": f"The trophy did not fit in the case {i} because the _ was too big.",
            "option1": "trophy", "option2": "case", "answer": "1" if i % 2 == 0 else "2"},
    }[rel]  # fmt: skip
    return [make(i) for i in range(n)]


def _first_records(rel: str, n: int) -> list[dict]:
    path = SHARED_DATA / rel
    if not path.is_file():
        return _handwritten(rel, n)
    with path.open() as f:
        return [json.loads(next(f)) for _ in range(n)]


def _mmlu_records(split: str, per_subject: int, real: bool) -> list[dict]:
    """The first `per_subject` records of every subject (real ones when available), in mirror order."""
    path = SHARED_DATA / "mmlu" / f"{split}.jsonl"
    if real and path.is_file():
        out, count = [], dict.fromkeys(MMLU_SUBJECTS, 0)
        with path.open() as f:
            for line in f:
                rec = json.loads(line)
                if count[rec["subject"]] < per_subject:
                    count[rec["subject"]] += 1
                    out.append(rec)
        return out
    return [
        {"question": f"{split} question {i} on {s.replace('_', ' ')}: which letter comes first?", "subject": s,
         "choices": ["a", "b", "c", "d"], "answer": i % 4}
        for s in MMLU_SUBJECTS for i in range(per_subject)
    ]  # fmt: skip


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _write_mirror(root: Path, real_mmlu: bool) -> Path:
    for _, files in OFFICIAL.values():
        for rel in files.values():
            _write_jsonl(root / rel, _first_records(rel, N_RECORDS))
    _write_jsonl(root / "mmlu/test.jsonl", _mmlu_records("test", N_MMLU_TEST, real_mmlu))
    _write_jsonl(root / "mmlu/dev.jsonl", _mmlu_records("dev", 5, real_mmlu))
    return root


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Path:
    """Tiny mirror with the real first records of every task (MMLU too: the 5-shot prompts are long)."""
    return _write_mirror(tmp_path_factory.mktemp("mirror"), real_mmlu=True)


@pytest.fixture(scope="session")
def short_mirror(tmp_path_factory) -> Path:
    """Tiny mirror for model runs: real first records of the five 0-shot tasks, short hand-written MMLU."""
    return _write_mirror(tmp_path_factory.mktemp("short_mirror"), real_mmlu=False)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    """Keep the `datasets` cache of the JSON mirrors out of the user's cache; no hub pings per JSON load."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf_datasets")
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)


# ----------------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, short_mirror) -> Path:
    """A byte-level BPE tokenizer (vocab 512) trained on the tiny mirror: any string encodes, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator([p.read_text() for p in sorted(short_mirror.rglob("*.jsonl"))], trainer)
    special = "<|endoftext|>"
    out = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=special, pad_token=special).save_pretrained(out)
    return out


def _tiny_llama():
    return tiny_model("llama", vocab_size=512, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=16384, bos_token_id=0, eos_token_id=0)  # fmt: skip


def _save(model, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, tokenizer_dir) -> Path:
    return _save(_tiny_llama(), tokenizer_dir, tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def liger_dir(tmp_path_factory, tokenizer_dir) -> Path:
    model = liger.linearize(_tiny_llama(), "liger_gla", window=4)
    return _save(model, tokenizer_dir, tmp_path_factory.mktemp("liger"))


# ----------------------------------------------------------------------------------------- templates


def _official_tasks(
    root: Path, mirror: Path, subjects: Sequence[str] = tuple(MMLU_SUBJECTS)
) -> tuple[object, dict[str, object]]:
    """lm-eval's official tasks (their own YAMLs) with the dataset replaced by the same local records, and their
    TaskManager.

    MMLU: the official per-subject tasks on per-subject files split here in plain Python.
    """
    from lm_eval.tasks import TaskManager

    root.mkdir(parents=True, exist_ok=True)
    names = {}
    for task, (official, files) in OFFICIAL.items():
        splits = dict.fromkeys(["training_split", "validation_split", "test_split"])
        splits |= {f"{split}_split": split for split in files}
        cfg = {"include": str(LM_EVAL_TASKS / official), "task": f"official_{task}", "dataset_path": "json",
               "dataset_name": None, "dataset_kwargs": {"data_files": {s: str(mirror / r) for s, r in files.items()}},
               **splits}  # fmt: skip
        (root / f"official_{task}.yaml").write_text(yaml.safe_dump(cfg))
        names[task] = f"official_{task}"
    records = {}
    for split in ("test", "dev"):
        with (mirror / "mmlu" / f"{split}.jsonl").open() as f:
            records[split] = list(map(json.loads, f))
    for subject in subjects:
        files = {split: root / "mmlu" / f"{subject}_{split}.jsonl" for split in ("test", "dev")}
        for split, path in files.items():
            _write_jsonl(path, [r for r in records[split] if r["subject"] == subject])
        files = {split: str(path) for split, path in files.items()}
        cfg = {"include": str(LM_EVAL_TASKS / "mmlu/default" / f"mmlu_{subject}.yaml"), "task": f"official_{subject}",
               "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}}  # fmt: skip
        (root / f"official_mmlu_{subject}.yaml").write_text(yaml.safe_dump(cfg))
        names[subject] = f"official_{subject}"
    manager = TaskManager(include_path=root, include_defaults=False)
    loaded = manager.load(list(names.values()))["tasks"]
    return manager, {key: loaded[name] for key, name in names.items()}


def _local_tasks(root: Path, mirror: Path) -> dict[str, object]:
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=write_local_tasks(mirror, root), include_defaults=False).load(
        [f"liger_{t}" for t in PAPER_TASKS]
    )["tasks"]
    return {t: loaded[f"liger_{t}"] for t in OFFICIAL} | {s: loaded[f"liger_mmlu_{s}"] for s in MMLU_SUBJECTS}


def _render(task, doc: dict, shots: int) -> dict:
    ctx = task.fewshot_context(doc, shots)
    return {
        "text": task.doc_to_text(doc),
        "choice": task.doc_to_choice(doc),
        "target": task.doc_to_target(doc),
        "context": ctx,
        "requests": [inst.args for inst in task.construct_requests(doc, ctx, metadata=("t", 0, 1))],
    }


def test_local_tasks_render_like_the_official_templates(mirror, tmp_path):
    """First 3 items of each task (MMLU: of every subject): prompt, choices, target, full context, requests."""
    _, official = _official_tasks(tmp_path / "official", mirror)
    local = _local_tasks(tmp_path / "local", mirror)
    fields = ["output_type", "target_delimiter", "fewshot_delimiter", "description", "should_decontaminate",
              "doc_to_decontamination_query", "metric_list"]  # fmt: skip
    for key, off in official.items():
        loc = local[key]
        shots = 5 if key in MMLU_SUBJECTS else 0
        for name in fields:
            assert getattr(loc.config, name) == getattr(off.config, name), (key, name)
        assert loc.config.fewshot_config.sampler == off.config.fewshot_config.sampler, key
        off_docs, loc_docs = list(off.eval_docs), list(loc.eval_docs)
        assert len(loc_docs) == len(off_docs) >= 2, key
        for off_doc, loc_doc in zip(off_docs[:3], loc_docs[:3], strict=True):
            assert loc_doc == off_doc, key
            for seeded in (off, loc):
                seeded.set_fewshot_seed(1234)
            assert _render(loc, loc_doc, shots) == _render(off, off_doc, shots), key
        if shots:  # the 5-shot context starts with the official description and holds the 5 dev examples
            ctx = loc.fewshot_context(loc_docs[0], shots)
            assert ctx.startswith(
                f"The following are multiple choice questions (with answers) about {key.replace('_', ' ')}."
            )
            assert ctx.count("\nAnswer:") == 6


def test_mmlu_subjects_and_categories_match_lm_eval():
    official = {}
    for path in sorted((LM_EVAL_TASKS / "mmlu/default").glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        official[cfg["dataset_name"]] = cfg["tag"].removeprefix("mmlu_").removesuffix("_tasks")
    assert MMLU_SUBJECTS == dict(sorted(official.items()))
    assert sum(len(s) for s in MMLU_CATEGORIES.values()) == 57


# ----------------------------------------------------------------------------------------- the lm-eval model


def test_liger_loglikelihood_equals_forward_pass(liger_dir):
    """lm-eval's batched, right-padded log-likelihoods of a Liger model == a plain unpadded forward (fp32)."""
    from lm_eval.api.instance import Instance
    from transformers import AutoTokenizer

    lm = LigerLM(liger_dir, device="cpu", batch_size=3)
    assert liger.options_of(lm.model).method == "liger_gla" and lm.model.dtype == torch.float32
    pairs = [
        ("Question: How do I keep bread fresh?\nAnswer:", " Wrap it in a cloth bag."),
        ("A man boils water. he", " pours it over the leaves and waits for a few minutes before drinking."),
        ("Hi", " there"),
        ("The trophy did not fit in the case because the trophy", " was too big."),
        ("Which of these is a source of light?\nA. the Sun\nB. a rock\nAnswer:", " A"),
        ("Which of these is a source of light?\nA. the Sun\nB. a rock\nAnswer:", " B"),
        ("Tell me a long story about a cat who lived on a boat and sailed around the world", ", the end."),
    ]
    requests = [Instance("loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    got = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    model = liger.load(liger_dir)
    tok = AutoTokenizer.from_pretrained(liger_dir)
    lengths = set()
    for (ctx, cont), ll in zip(pairs, got, strict=True):
        ctx_ids, ids = tok(ctx)["input_ids"], tok(ctx + cont)["input_ids"]
        assert ids[: len(ctx_ids)] == ctx_ids
        lengths.add(len(ids))
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        ref = sum(logprobs[i - 1, ids[i]].item() for i in range(len(ctx_ids), len(ids)))
        assert ll == pytest.approx(ref, abs=1e-4), (ctx, cont)
    assert len(lengths) >= 5 and max(lengths) > 4 * 4  # padded batches, sequences well past the window


def _token_requests(model, seed: int) -> list:
    """(strings, context ids, continuation ids) as lm-eval hands them to `_loglikelihood_tokens`: random lengths
    (some past a 40-token max_length), a context shared by one-token and longer continuations, and continuations
    that are the model's own greedy tokens."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    pairs = [(ids(int(torch.randint(1, 60, (1,), generator=g))), ids(int(torch.randint(1, 12, (1,), generator=g))))
             for _ in range(24)]  # fmt: skip
    shared = ids(30)
    pairs += [(shared, [t]) for t in ids(4)] + [(shared, ids(3))]
    for context in (ids(8), ids(45)):
        greedy = []
        with torch.no_grad():
            for _ in range(3):
                greedy.append(int(model(torch.tensor([context + greedy])).logits[0, -1].argmax()))
        pairs.append((context, greedy))
    return [((f"c{i}", f"x{i}"), c, x) for i, (c, x) in enumerate(pairs)]


def _forward_reference(model, context: list[int], continuation: list[int], max_length: int) -> tuple[float, bool]:
    """One unpadded forward of lm-eval's input for a request: the answer by definition."""
    full = (context + continuation)[-(max_length + 1):]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([full[:-1]])).logits[0].double(), dim=-1)
    rows = logprobs[-len(continuation):]
    target = torch.tensor(continuation)
    return float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


@pytest.mark.parametrize("which", ["base", "liger"])
def test_head_at_scored_tokens_equals_lm_evals_loglikelihood(which, base_dir, liger_dir):
    """LigerLM's log-likelihood path (`liger.loglik`: distinct inputs once, head only at scored tokens, token-budget
    batches, a row cap) gives lm-eval's `HFLM._loglikelihood_tokens` answers and an unpadded forward's: log-probs
    within 1e-4 (fp32), the same greedy flags, with lm-eval's truncation from the left."""
    from lm_eval.models.huggingface import HFLM

    lm = LigerLM(base_dir if which == "base" else liger_dir, device="cpu", batch_size=5, batch_tokens=200)
    lm._max_length = 40
    requests = _token_requests(lm.model, seed=1)
    ours = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    theirs = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    assert len(ours) == len(theirs) == len(requests)
    for (_, context, continuation), (ll, greedy), (ref, ref_greedy) in zip(requests, ours, theirs, strict=True):
        assert ll == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy
        assert (ll, greedy) == pytest.approx(_forward_reference(lm.model, context, continuation, 40), abs=1e-4)
    assert sum(g for _, g in theirs) >= 2 and any(len(c) + len(x) > 41 for _, c, x in requests)


def test_loglik_scores_an_input_shared_by_two_splits_once_and_right(base_dir):
    """Two requests with the same model input split differently (context ending earlier, longer continuation):
    each gets its own positions. (lm-eval 0.4.13's one-token cache reads the first, not the last, position of the
    group's longest continuation for the one-token request here, so the reference is the unpadded forward.)"""
    lm = LigerLM(base_dir, device="cpu")
    tokens = list(range(3, 33))
    requests = [(("a", "b"), tokens, [40]), (("c", "d"), tokens[:-2], tokens[-2:] + [41])]
    for (_, context, continuation), answer in zip(requests, lm._loglikelihood_tokens(requests, True), strict=True):
        assert answer == pytest.approx(_forward_reference(lm.model, context, continuation, lm.max_length), abs=1e-4)


def test_loglik_batches_respect_the_token_budget_and_row_cap():
    from liger.loglik import _batches

    lengths = [5, 40, 12, 12, 3, 40, 7]
    for tokens, rows in [(40, None), (100, 3), (1000, None), (10, 2)]:
        batches = _batches(lengths, tokens, rows)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            widths = [lengths[i] for i in b]
            assert widths == sorted(widths, reverse=True)
            assert len(b) == 1 or (max(widths) * len(b) <= tokens and (rows is None or len(b) <= rows))
        # every batch but the last holds a power of two rows, or the row cap: few batch sizes
        assert all(len(b) & (len(b) - 1) == 0 or len(b) == rows for b in batches[:-1])
    many = [300 - n // 8 for n in range(2000)]  # 250 lengths, each its own share of the budget
    sizes = [len(b) for b in _batches(many, 65536, None)]
    assert set(sizes[:-1]) == {128, 256, 512} and sum(sizes) == 2000  # the budget alone: 7 sizes here


def test_batched_encoding_equals_lm_evals_per_request_encoding(base_dir, mirror, monkeypatch):
    """LigerLM encodes all requests in one batch; the token ids must be exactly lm-eval's `_encode_pair`'s."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = LigerLM(base_dir, device="cpu", batch_size=2)
    mmlu = [json.loads(line) for line in (mirror / "mmlu" / "dev.jsonl").read_text().splitlines()[:3]]
    pairs = [(f"{d['question']}\nAnswer:", f" {c}") for d in mmlu for c in d["choices"]]
    pairs += [("Context with trailing spaces   ", "next"), ("", "no context at all"), ("   ", "only spaces")]
    requests = [Instance("loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    seen = []
    monkeypatch.setattr(LigerLM, "_loglikelihood_tokens", lambda self, reqs, disable_tqdm=False: seen.append(reqs))
    lm.loglikelihood(requests, disable_tqdm=True)
    monkeypatch.setattr(LigerLM, "tok_encode", HFLM.tok_encode)  # lm-eval's own encoding, request by request
    lm.loglikelihood(requests, disable_tqdm=True)
    assert len(seen) == 2 and seen[0] == seen[1] and len(seen[0]) == len(pairs)


@pytest.fixture(scope="module")
def request_strings(mirror, tmp_path_factory) -> list[str]:
    """The strings `LigerLM.loglikelihood` encodes for the tiny mirror's requests (MMLU 5-shot, every subject; the
    0-shot tasks), and a few hard cases: trailing spaces, a continuation glued to the last word, no spaces at all."""
    tasks = _local_tasks(tmp_path_factory.mktemp("tasks"), mirror)
    pairs = []
    for key, task in tasks.items():
        for doc in list(task.eval_docs)[:2]:
            ctx = task.fewshot_context(doc, 5 if key in MMLU_SUBJECTS else 0)
            pairs += [inst.args for inst in task.construct_requests(doc, ctx, metadata=("t", 0, 1))]
    long_ctx = pairs[-1][0]  # an MMLU 5-shot context
    pairs += [(long_ctx + "   ", "next"), (long_ctx[:-7], "Answers"), (long_ctx[:-7] + "An", "swer: A"),
              ("x" * 700, "y"), ("x" * 700, "xy"), (long_ctx.replace(" ", "\n\n"), " A")]  # fmt: skip
    return [s for ctx, cont in pairs for s in (ctx.rstrip(), ctx + cont)]


def _tokenizer(kind: str, mirror: Path, tokenizer_dir: Path):
    """A fast tokenizer: the tests' byte-level BPE, one without pre-tokenizer (merges across words and lines), a
    SentencePiece-like one (Metaspace), or a real model's from resources/models (skipped when absent)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if kind == "bpe":
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    if kind in ("smollm2-135m", "qwen2.5-coder-1.5b"):
        folder = ROOT_MODELS / kind
        if not (folder / "tokenizer.json").is_file():
            pytest.skip(f"needs {folder}")
        return AutoTokenizer.from_pretrained(folder)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "no_pretokenizer":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # metaspace
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>"], initial_alphabet=alphabet,
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator([p.read_text() for p in sorted(mirror.rglob("*.jsonl"))], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.mark.parametrize("kind", ["bpe", "no_pretokenizer", "metaspace", "smollm2-135m", "qwen2.5-coder-1.5b"])
def test_prefix_sharing_encoding_equals_whole_encoding(kind, request_strings, mirror, tokenizer_dir, caplog):
    """`encode_sharing_prefixes` gives every string the tokenizer's own ids for it (with and without special tokens),
    on the requests of real 5-shot MMLU prompts and 0-shot tasks, its own checks refusing the splices that would be
    wrong (the whole-encoding sample never has to step in); splicing does save work for the byte-level BPE."""
    from liger.eval_model import encode_sharing_prefixes

    tok = _tokenizer(kind, mirror, tokenizer_dir)
    strings = request_strings
    asked = []
    caplog.set_level(logging.WARNING, logger="liger.eval_model")

    def counting(texts, **kwargs):
        asked.extend(texts)
        return tok(texts, **kwargs)

    for special in (False, True):
        whole = dict(zip(strings, tok(strings, add_special_tokens=special)["input_ids"], strict=True))
        asked.clear()
        assert encode_sharing_prefixes(counting, strings, add_special_tokens=special) == whole, (kind, special)
    total = sum(map(len, set(strings)))
    assert len(whole) > 500 and total > 300_000
    assert "differ from whole encodings" not in caplog.text
    if kind == "bpe":
        assert sum(map(len, asked)) < total / 3


def test_prefix_sharing_falls_back_when_a_splice_is_wrong():
    """A tokenizer whose first token depends on the whole text (no splice can see it): the sampled whole encodings
    differ from the spliced ones, and every string is encoded whole."""
    from liger.eval_model import encode_sharing_prefixes

    def tok(texts, add_special_tokens=True, return_attention_mask=False):
        return {"input_ids": [[len(t) % 7] * add_special_tokens + [ord(c) for c in t] for t in texts]}

    base = "shared words and lines\n" * 40
    strings = [base + f"item {i} is here" for i in range(200)]
    assert encode_sharing_prefixes(tok, strings) == dict(zip(strings, tok(strings)["input_ids"], strict=True))
    plain = encode_sharing_prefixes(tok, strings, add_special_tokens=False)  # without the first token: splices hold
    assert plain == dict(zip(strings, tok(strings, add_special_tokens=False)["input_ids"], strict=True))


# ----------------------------------------------------------------------------------------- end to end


def _check_report(report: dict, tasks: list[str], n: int | None) -> None:
    assert list(report["tasks"]) == tasks
    for task, entry in report["tasks"].items():
        assert entry["paper_metric"] == PAPER_METRIC[task]
        assert entry["value"] == entry["metrics"][PAPER_METRIC[task]] == report["paper_metrics"][task]
        assert 0 <= entry["value"] <= 1
        expected = {"acc", "acc_stderr"} | (
            set() if task in ("winogrande", "mmlu") else {"acc_norm", "acc_norm_stderr"}
        )
        assert set(entry["metrics"]) == expected, task
        assert entry["num_fewshot"] == (report["num_fewshot_mmlu"] if task == "mmlu" else 0)
        if task != "mmlu" and n is not None:
            assert entry["n"] == n
        _check_items(task, entry)
    assert report["dtype"] == ("bfloat16" if report["device"].startswith("cuda") else "float32")
    assert set(report["versions"]) >= {"lm_eval", "torch", "transformers"} and report["wall_time_s"] > 0


def _check_items(task: str, entry: dict) -> None:
    """The per-item outcomes are lm-eval's: their mean is the reported metric, exactly (MMLU: each subject's,
    in the recorded order; the pooled value is lm-eval's size-weighted mean of those, to rounding)."""
    items = entry["items"]
    outcomes = items["outcomes"]
    assert len(outcomes) == entry["n"] and set(outcomes) <= {"0", "1"} and len(items["docs_sha256"]) == 64
    mean = outcomes.count("1") / len(outcomes)
    assert mean == entry["value"] if task != "mmlu" else mean == pytest.approx(entry["value"], rel=1e-12, abs=0)
    if task == "mmlu":
        start = 0
        for subject in MMLU_SUBJECTS:  # alphabetical, the recorded order
            size, acc = entry["subjects"][subject]["n"], entry["subjects"][subject]["acc"]
            assert outcomes[start:start + size].count("1") / size == acc, subject
            start += size
        assert start == len(outcomes)


def test_evaluate_local_end_to_end(base_dir, short_mirror, tmp_path):
    out = tmp_path / "res" / "eval.json"
    report = evaluate(base_dir, out, data_dir=short_mirror, limit=3, batch_size=4, mmlu_batch_size=2, device="cpu")
    assert json.loads(out.read_text()) == report
    assert not [p for p in out.parent.iterdir() if p != out]  # atomic write leaves nothing else
    _check_report(report, list(PAPER_TASKS), n=3)
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["batch_size"] == 4
    assert {t: e["batch_size"] for t, e in report["tasks"].items()} == {t: 2 if t == "mmlu" else 4 for t in PAPER_TASKS}
    assert report["liger"] == "base" and report["adapter"] is None and report["limit"] == 3
    assert report["data_source"] == {"kind": "local", "data_dir": str(short_mirror.resolve())}
    mmlu = report["tasks"]["mmlu"]
    assert mmlu["lm_eval_task"] == "liger_mmlu" and mmlu["limit_per_subject"] == 1
    assert mmlu["n"] == 57 and mmlu["n_total"] == 57 * N_MMLU_TEST and mmlu["num_fewshot"] == 5
    assert set(mmlu["subjects"]) == set(MMLU_SUBJECTS) and set(mmlu["categories"]) == set(MMLU_CATEGORIES)
    # the headline is the sample-weighted mean over subjects (== over all items)
    subjects = mmlu["subjects"].values()
    pooled = sum(s["acc"] * s["n"] for s in subjects) / sum(s["n"] for s in subjects)
    assert mmlu["value"] == pytest.approx(pooled)
    assert sum(c["n"] for c in mmlu["categories"].values()) == 57
    # liger coverage lists the same items in the same order: its digests are the recorded ones (liger.by_length)
    from liger.coverage import coverage

    table, items = coverage(base_dir, data_dir=short_mirror, limit=3)
    recorded = {t: e["items"]["docs_sha256"] for t, e in report["tasks"].items()}
    assert dict(zip(table["task"], table["docs_sha256"], strict=True)) == recorded
    assert items.groupby("task", sort=False).size().to_dict() == {t: e["n"] for t, e in report["tasks"].items()}
    # chance levels from the evaluated items themselves: 1 / number of choices, averaged
    arc = [json.loads(line) for line in (short_mirror / "arc_challenge" / "test.jsonl").read_text().splitlines()][:3]
    want = {"piqa": 0.5, "winogrande": 0.5, "hellaswag": 0.25, "mmlu": 0.25,
            "arc_challenge": sum(1 / len(d["choices"]["text"]) for d in arc) / len(arc)}
    assert report["chance"] == pytest.approx(report["chance"] | want)
    assert all(report["tasks"][t]["chance"] == report["chance"][t] for t in PAPER_TASKS)


@pytest.mark.skipif(not (SHARED_DATA / "mmlu/test.jsonl").is_file(), reason="needs the mirrors at SHARED_DATA")
def test_fast_path_equals_lm_evals_own_path_on_real_mirrors(base_dir, tmp_path, monkeypatch):
    """On the real mirrors, first 10 items of the five 0-shot tasks and of three MMLU subjects (5-shot): `evaluate`'s
    path (the local tasks of `loaded_tasks`, templates compiled once, MMLU cut by subject once, `LigerLM`'s
    prefix-sharing tokenization) and lm-eval's own (its official YAMLs on the same records, templates compiled per
    render, `HFLM`'s request-by-request tokenization) send the same requests (context, continuation, token ids) in
    the same order and get the same metrics."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from liger.tasks.loading import loaded_tasks

    subjects = ["abstract_algebra", "high_school_european_history", "world_religions"]  # short to long prompts
    lm = LigerLM(base_dir, device="cpu")
    score, sent = LigerLM._loglikelihood_tokens, []

    def recorded(self, requests, disable_tqdm=False, override_bs=None):
        sent.extend((args, list(context), list(continuation)) for args, context, continuation in requests)
        return score(self, requests, disable_tqdm=True)

    monkeypatch.setattr(LigerLM, "_loglikelihood_tokens", recorded)

    def run(manager, tasks: dict) -> tuple[list, dict]:
        sent.clear()
        metrics = {}
        for keys, shots in ((list(OFFICIAL), 0), (subjects, 5)):
            raw = simple_evaluate(model=lm, tasks=[tasks[k] for k in keys], num_fewshot=shots, limit=10,
                                  task_manager=manager, log_samples=False, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0)  # fmt: skip
            for key in keys:
                entry = raw["results"][tasks[key].config.task]
                metrics[key] = {m: v for m, v in entry.items() if "," in m}
        return list(sent), metrics

    with loaded_tasks([*OFFICIAL, "mmlu"], SHARED_DATA) as (manager, _, leaves):
        local = {t: leaves[f"liger_{t}"] for t in OFFICIAL} | {s: leaves[f"liger_mmlu_{s}"] for s in subjects}
        fast = run(manager, local)
    with monkeypatch.context() as m:  # lm-eval's own encoding, request by request
        m.setattr(LigerLM, "loglikelihood", HFLM.loglikelihood)
        m.setattr(LigerLM, "tok_encode", HFLM.tok_encode)
        reference = run(*_official_tasks(tmp_path / "official", SHARED_DATA, subjects))
    assert len(fast[0]) == len(reference[0]) > 200
    assert sum(len(args[0]) > 5000 for args, _, _ in fast[0]) >= 40  # long 5-shot prompts among them
    assert fast[0] == reference[0]
    assert fast[1] == reference[1] and all(m["acc,none"] > 0 for m in fast[1].values())


def test_interrupted_evaluation_resumes_without_rescoring(base_dir, short_mirror, tmp_path, monkeypatch):
    import lm_eval

    model = shutil.copytree(base_dir, tmp_path / "model")  # rebuilt below

    kwargs = dict(tasks="piqa,mmlu", data_dir=short_mirror, limit=2, batch_size=2, device="cpu")
    fresh = evaluate(model, tmp_path / "fresh.json", **kwargs)
    real, calls = lm_eval.simple_evaluate, []

    def interrupted(**kw):  # MMLU's run dies (device time out, a kill): the 0-shot run's scores survive
        calls.append(kw["num_fewshot"])
        if kw["num_fewshot"] == 5:
            raise KeyboardInterrupt
        return real(**kw)

    out = tmp_path / "eval.json"
    monkeypatch.setattr(lm_eval, "simple_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, out, **kwargs)
    partial = tmp_path / "eval.json.partial"
    assert not out.exists() and list(json.loads(partial.read_text())["tasks"]) == ["piqa"]
    for f in model.rglob("*"):  # the same files written again (restored on another machine): still resumes
        os.utime(f, ns=(0, 0))
    elsewhere = shutil.copytree(short_mirror, tmp_path / "mirror-elsewhere")  # the same mirrors in another folder

    calls.clear()
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: calls.append(kw["num_fewshot"]) or real(**kw))
    report = evaluate(model, out, **(kwargs | {"data_dir": elsewhere}))
    assert calls == [5] and report["resumed"] == ["piqa"] and not partial.exists()
    assert report["paper_metrics"] == fresh["paper_metrics"] and fresh["resumed"] == []
    assert report["tasks"]["piqa"]["items"] == fresh["tasks"]["piqa"]["items"]  # kept through the partial file
    # a partial file of a model rebuilt since, of other settings (another limit) or a corrupt one: start over
    monkeypatch.setattr(lm_eval, "simple_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, out, **kwargs)
    older = json.loads(partial.read_text())  # as saved before per-item outcomes were recorded: piqa scored again
    del older["tasks"]["piqa"]["items"]
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: calls.append(kw["num_fewshot"]) or real(**kw))
    partial.write_text(json.dumps(older))
    calls.clear()
    assert evaluate(model, out, **kwargs)["resumed"] == [] and calls == [0, 5] and not partial.exists()
    monkeypatch.setattr(lm_eval, "simple_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, out, **kwargs)
    with (elsewhere / "piqa" / "validation.jsonl").open("a") as f:  # other benchmark data: piqa scored again
        f.write(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}) + "\n")
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: calls.append(kw["num_fewshot"]) or real(**kw))
    calls.clear()
    assert evaluate(model, out, **(kwargs | {"data_dir": elsewhere}))["resumed"] == [] and calls == [0, 5]
    monkeypatch.setattr(lm_eval, "simple_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, out, **kwargs)
    (model / "config.json").write_text((model / "config.json").read_text() + " ")
    stale = partial.read_text()
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: calls.append(kw["num_fewshot"]) or real(**kw))
    for text in (stale, json.dumps({"settings": {"limit": 9}, "tasks": {"piqa": {}}}), "{not json"):
        partial.write_text(text)
        calls.clear()
        assert evaluate(model, out, **kwargs)["resumed"] == [] and calls == [0, 5] and not partial.exists()


def test_chance_level_counts_choices_per_item():
    from liger.evaluate import chance_level

    class Task:
        def __init__(self, sizes):
            self.eval_docs = [{"n": n} for n in sizes]

        def doc_to_choice(self, doc):
            return ["x"] * doc["n"]

    assert chance_level([Task([2, 4, 5])], None) == pytest.approx((1 / 2 + 1 / 4 + 1 / 5) / 3)
    assert chance_level([Task([2, 4, 5])], 2) == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert chance_level([Task([2]), Task([4, 4, 4])], None) == pytest.approx((1 / 2 + 3 / 4) / 4)


def test_hub_mode_matches_local_mode(base_dir, short_mirror, tmp_path, monkeypatch):
    """data_dir=None runs lm-eval's own tasks; with their hub datasets served from the same tiny mirror, the
    whole report (every metric, n, shots) equals the local tasks' one."""
    import datasets

    real_load = datasets.load_dataset
    hub = {  # (dataset_path, dataset_name) of the official tasks -> the mirror file
        ("baber/piqa", None): "piqa/validation.jsonl",
        ("allenai/ai2_arc", "ARC-Easy"): "arc_easy/test.jsonl",
        ("allenai/ai2_arc", "ARC-Challenge"): "arc_challenge/test.jsonl",
        ("Rowan/hellaswag", None): "hellaswag/validation.jsonl",
        ("allenai/winogrande", "winogrande_xl"): "winogrande/validation.jsonl",
    }
    requested = []

    def fake_load_dataset(path, name=None, **kwargs):
        if path == "json":  # the local tasks
            return real_load(path, name, **kwargs)
        requested.append(path)
        if path == "cais/mmlu":
            files = {s: str(short_mirror / "mmlu" / f"{s}.jsonl") for s in ("test", "dev")}
            return real_load("json", data_files=files).filter(lambda s: [x == name for x in s], batched=True,
                                                              input_columns="subject")  # fmt: skip
        file = str(short_mirror / hub[path, name])  # every split the official config names: the eval file
        return real_load("json", data_files=dict.fromkeys(["train", "validation", "test"], file))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    kwargs = dict(limit=2, batch_size=4, device="cpu", tasks="piqa,arc_easy,arc_challenge,hellaswag,winogrande,mmlu")
    hub_report = evaluate(base_dir, tmp_path / "hub.json", **kwargs)
    local_report = evaluate(base_dir, tmp_path / "local.json", data_dir=short_mirror, **kwargs)
    assert set(requested) == {"cais/mmlu"} | {path for path, _ in hub}
    assert hub_report["data_source"] == {"kind": "hub"}
    assert hub_report["tasks"]["mmlu"]["lm_eval_task"] == "mmlu" and hub_report["tasks"]["mmlu"]["n"] == 57
    for task, entry in hub_report["tasks"].items():
        local = local_report["tasks"][task]
        assert entry["lm_eval_task"] == task and local["lm_eval_task"] == f"liger_{task}"
        for key in ("n", "n_total", "num_fewshot", "metrics", "value", "subjects", "categories", "items"):
            assert entry.get(key) == local.get(key), (task, key)


def test_evaluate_liger_with_adapter_and_cli(liger_dir, short_mirror, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from liger.cli import main

    adapter = tmp_path / "adapter"
    peft_model = get_peft_model(liger.load(liger_dir), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(adapter)
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(liger_dir), "--adapter", str(adapter), "--tasks", "winogrande,piqa",
               "--data-dir", str(short_mirror), "--limit", "2", "--batch-size", "2", "--device", "cpu",
               "--out", str(out)])  # fmt: skip
    assert rc == 0 and "winogrande" in capsys.readouterr().out
    report = json.loads(out.read_text())
    _check_report(report, ["winogrande", "piqa"], n=2)
    assert report["adapter"] == str(adapter) and report["batch_size"] == 2
    assert report["liger"]["method"] == "liger_gla" and report["liger"]["window"] == 4


def test_evaluate_adds_the_validation_loss_of_a_prepare_data_folder(liger_dir, short_mirror, tmp_path, capsys):
    """`--val-data`: the model's mean loss over the validation chunks' target tokens, against cross-entropy by hand
    (fp32, 1e-5 relative); an unusable folder is a one-line error before the model loads."""
    from transformers import AutoTokenizer

    from liger.cli import main
    from tests.test_train import write_packed

    tok = AutoTokenizer.from_pretrained(liger_dir)
    data = write_packed(tmp_path / "data", n_val=3, seq_len=24, vocab=len(tok))
    meta = json.loads((data / "meta.json").read_text())
    meta["tokenizer"]["eos_token_id"] = tok.eos_token_id
    (data / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(liger_dir), "--tasks", "piqa", "--data-dir", str(short_mirror), "--limit",
                 "2", "--device", "cpu", "--val-data", str(data), "--out", str(out)]) == 0
    assert "validation loss" in capsys.readouterr().out
    got = json.loads(out.read_text())["val_loss"]
    ids = torch.from_numpy(np.load(data / "val_ids.npy").astype(np.int64))
    mask = torch.from_numpy(np.load(data / "val_mask.npy"))
    with torch.no_grad():
        logits = liger.load(liger_dir).eval()(input_ids=ids).logits.double()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    want = float(nll[mask[:, 1:]].mean())
    assert got["chunks"] == 3 and got["data"] == str(data)
    assert got["value"] == pytest.approx(want, rel=1e-5)
    with pytest.raises(LigerError, match="train_ids.npy: missing; the data folder must come from prepare-data"):
        evaluate(liger_dir, tmp_path / "no.json", tasks="piqa", val_data=tmp_path / "nothing")
    assert not (tmp_path / "no.json").exists()


def test_evaluate_with_other_layer_options(liger_dir, short_mirror, tmp_path, capsys):
    """`--layer-options`: the same weights scored with another runtime setting, recorded in the report."""
    from liger.cli import main

    out = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(liger_dir), "--tasks", "piqa", "--data-dir", str(short_mirror), "--limit", "2",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main([*args, "--layer-options", '{"window": 8}']) == 0
    report = json.loads(out.read_text())
    assert report["layer_options"] == {"window": 8} and report["liger"]["window"] == 8
    assert json.loads((liger_dir / "config.json").read_text())["liger"]["window"] == 4  # the folder is untouched
    for bad, message in (("window=8", "not JSON"), ("[8]", "a JSON object is needed")):
        with pytest.raises(SystemExit):
            main([*args, "--layer-options", bad])
        assert message in capsys.readouterr().err


def test_layer_options_need_a_converted_model(no_model_load, base_dir, tmp_path):
    with pytest.raises(LigerError, match="not a converted model"):
        evaluate(base_dir, tmp_path / "out.json", tasks="piqa", layer_options={"window": 8})
    assert not (tmp_path / "out.json").exists()


def test_device_dtype_and_batch_defaults():
    assert resolve_dtype("auto", "cuda") == torch.bfloat16 and resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16 and resolve_device("cpu") == "cpu"
    assert default_batch_tokens("cuda:0") == 65536 and default_batch_tokens("cpu") == 8192
    with pytest.raises(LigerError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")


# ----------------------------------------------------------------------------------------- errors


@pytest.fixture
def no_model_load(monkeypatch):
    """Input errors must come before the model is loaded."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("liger.eval_model.load", fail)


def test_unknown_task(no_model_load, tmp_path, capsys):
    with pytest.raises(LigerError, match=r"'boolq'.*valid tasks: piqa, arc_easy, arc_challenge, hellaswag"):
        evaluate(tmp_path / "model", tmp_path / "out.json", tasks=["piqa", "boolq"])
    from liger.cli import main

    assert main(["evaluate", "--model", str(tmp_path), "--tasks", "mmlu,lambada", "--out", str(tmp_path / "o")]) == 2
    assert "lambada" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_missing_mirror_file(no_model_load, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "data"
    _write_jsonl(data / "piqa/validation.jsonl", _handwritten("piqa/validation.jsonl", 2))
    with pytest.raises(LigerError, match=r"task hellaswag: missing data file .*hellaswag/validation\.jsonl"):
        evaluate(model, tmp_path / "out.json", tasks="piqa,hellaswag", data_dir=data)
    # an MMLU mirror without some subject
    records = [r for r in _mmlu_records("test", 1, real=False) if r["subject"] != "virology"]
    _write_jsonl(data / "mmlu/test.jsonl", records)
    _write_jsonl(data / "mmlu/dev.jsonl", _mmlu_records("dev", 5, real=False))
    with pytest.raises(
        LigerError, match=r"task mmlu: .*test\.jsonl \(test\) has no records of 1 subject\(s\): virology"
    ):
        evaluate(model, tmp_path / "out.json", tasks="mmlu", data_dir=data)
    (data / "mmlu/dev.jsonl").unlink()
    with pytest.raises(LigerError, match=r"task mmlu: missing data file .*mmlu/dev\.jsonl"):
        evaluate(model, tmp_path / "out.json", tasks="mmlu", data_dir=data)
    with pytest.raises(LigerError, match=r"--mmlu-batch-size 0: must be >= 1"):
        evaluate(model, tmp_path / "out.json", tasks="mmlu", mmlu_batch_size=0)
    with pytest.raises(LigerError, match=r"not a folder"):
        evaluate(model, tmp_path / "out.json", tasks="piqa", data_dir=tmp_path / "nowhere")


@pytest.mark.parametrize("task,rel", [("piqa", "piqa/validation.jsonl"), ("mmlu", "mmlu/test.jsonl")])
@pytest.mark.parametrize("bad,problem", [
    (b'{"goal": oops}', "invalid JSON at line 3 (Expecting value, column 10)"),
    (b"[1, 2]", "line 3 is a JSON list, not a record"),
    (b'{"goal": "\xff"}', "not valid UTF-8 at line 3, byte offset"),
])  # fmt: skip
def test_malformed_mirror_line_is_named(no_model_load, tmp_path, capsys, task, rel, bad, problem):
    """A bad line of a mirror file: one line naming the file and its 1-based line, before lm-eval reads it."""
    from liger.cli import main

    data = tmp_path / "data"
    if task == "mmlu":
        _write_jsonl(data / "mmlu/test.jsonl", _mmlu_records("test", 1, real=False))
        _write_jsonl(data / "mmlu/dev.jsonl", _mmlu_records("dev", 5, real=False))
    else:
        _write_jsonl(data / rel, _handwritten(rel, 4))
    lines = (data / rel).read_bytes().splitlines(keepends=True)
    (data / rel).write_bytes(b"".join([*lines[:2], bad + b"\n", *lines[3:]]))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    args = ["evaluate", "--model", str(model), "--tasks", task, "--data-dir", str(data), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"liger evaluate: error: task {task}: {data / rel}: " in err[0] and problem in err[0]
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mmlu/test.jsonl").is_file() or not (SMOLLM2 / "config.json").is_file(),
                    reason="needs the mirrors at SHARED_DATA and resources/models/smollm2-135m")  # fmt: skip
def test_smollm2_on_real_mirrors(tmp_path):
    """SmolLM2-135M base, 20 items per task (MMLU: 1 per subject, 5-shot), on the real mirrors."""
    report = evaluate(SMOLLM2, tmp_path / "eval.json", data_dir=SHARED_DATA, limit=20)
    _check_report(report, list(PAPER_TASKS), n=20)
    assert report["batch_size"] == "default"
    mmlu = report["tasks"]["mmlu"]
    assert mmlu["n"] == 57 and mmlu["n_total"] == 14042
    assert report["tasks"]["hellaswag"]["n_total"] == 10042 and report["tasks"]["piqa"]["n_total"] == 1838
    assert all(0 <= s["acc"] <= 1 for s in mmlu["subjects"].values())

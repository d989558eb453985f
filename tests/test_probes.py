"""On CPU: the control rows, window coverage, passkey retrieval, loss by position (docs/method.md#controls), and
their report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import liger
from liger.errors import LigerError
from liger.layers.liger import LigerAttention
from liger.pipeline import liger_options
from tests.conftest import ROOT, SHARED_DATA, tiny_model

CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def control_options(name: str) -> dict:
    """A control row's Liger options exactly as the default config defines them."""
    return liger_options(CONFIG["methods"][name])


@pytest.fixture(scope="module")
def tokenizer_dir(smollm2_dir) -> Path:
    return smollm2_dir


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _tiny_llama_for(tokenizer, seed: int = 0):
    return tiny_model("llama", seed=seed, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)  # fmt: skip


def _save(model, tokenizer, out: Path) -> Path:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------------- control rows


def test_config_defines_the_three_controls():
    methods = {name: {k: v for k, v in row.items() if k != "about"} for name, row in CONFIG["methods"].items()}
    assert methods["window_only"] == {"method": "liger_gla", "alpha": 1.0, "beta": 0.0, "control": True}
    assert methods["base_window"] == {**methods["window_only"], "finetune": False}
    assert methods["liger_gla_no_window"] == {"method": "liger_gla", "hybrid": "none", "control": True}
    assert CONFIG["report"] == {"reference": "liger_gla", "window_only": "window_only"}
    methods = CONFIG["methods"]
    for name in ("window_only", "base_window", "liger_gla_no_window"):
        assert yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())["methods"][name] == methods[name]


@pytest.mark.parametrize("name,window,recurrence", [("window_only", True, False), ("base_window", True, False),
                                                    ("liger_gla_no_window", False, True)])
def test_controls_build_and_run_on_a_tiny_llama(name, window, recurrence, monkeypatch):
    base = tiny_model("llama")
    model = liger.linearize(tiny_model("llama"), **control_options(name))
    opts = liger.options_of(model)
    assert (opts.uses_window, opts.uses_recurrence) == (window, recurrence)
    calls = {"recurrent": 0, "window_attention": 0}
    for branch in calls:
        original = getattr(LigerAttention, branch)

        def counted(self, *args, _branch=branch, _original=original, **kwargs):
            calls[_branch] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(LigerAttention, branch, counted)
    ids = torch.randint(0, 128, (2, 100), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    assert torch.isfinite(out.loss)
    assert calls == {"recurrent": 2 * recurrence, "window_attention": 2 * window}  # 2 layers
    out.loss.backward()  # the fine-tuned rows train q/k/v through the branch they keep
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    if name != "liger_gla_no_window":  # the window alone at weight 1 is the base model inside the window
        with torch.no_grad():
            short, long = ids[:, :65], ids
            torch.testing.assert_close(model(short).logits, base(short).logits, atol=1e-5, rtol=1e-4)
            assert not torch.allclose(model(long).logits[:, 65:], base(long).logits[:, 65:], atol=1e-3)
            torch.testing.assert_close(model(long).logits[:, :65], base(long).logits[:, :65], atol=1e-5, rtol=1e-4)


def test_base_window_decodes_like_its_parallel_forward():
    model = liger.linearize(tiny_model("llama"), **control_options("base_window"))
    ids = torch.randint(0, 128, (1, 90), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :70], use_cache=True)
        cache, steps = out.past_key_values, [out.logits[:, -1]]
        for t in range(70, 89):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 69:89], atol=1e-4, rtol=1e-4)


def test_convert_command_saves_the_untrained_control(tmp_path, tokenizer):
    from liger.cli import main

    base = _save(_tiny_llama_for(tokenizer), tokenizer, tmp_path / "base")
    options = json.dumps(control_options("base_window"))
    assert main(["convert", "--model", str(base), "--options", options, "--out", str(tmp_path / "bw")]) == 0
    model = liger.load(tmp_path / "bw")
    assert liger.options_of(model).to_dict() == liger.LigerOptions.build(**control_options("base_window")).to_dict()
    assert (tmp_path / "bw" / "tokenizer.json").exists()
    assert main(["convert", "--model", str(base), "--options", "[1]", "--out", str(tmp_path / "x")]) == 2
    assert main(["convert", "--model", str(tmp_path / "bw"), "--options", options, "--out", str(tmp_path / "y")]) == 2


# ----------------------------------------------------------------------------------------- coverage


PIQA = [{"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0},
        {"goal": "How do I keep bread fresh for a very long time in a warm kitchen without a fridge?",
         "sol1": "Wrap it tightly in a cloth bag and keep it in a cool dark cupboard.", "sol2": "Leave it on the "
         "radiator.", "label": 0},
        {"goal": "Boil water", "sol1": "Use a kettle.", "sol2": "Use a freezer.", "label": 0}]  # fmt: skip
WINOGRANDE = [{"sentence": "The trophy did not fit in the case because the _ was too big.", "option1": "trophy",
               "option2": "case", "answer": "1"},
              {"sentence": "Anna lent Maria a book because _ had finished it.", "option1": "Anna", "option2": "Maria",
               "answer": "1"}]  # fmt: skip


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_coverage_of_a_tiny_task(tmp_path, tokenizer_dir, tokenizer):
    from liger.coverage import beyond_column, coverage, markdown

    _write_jsonl(tmp_path / "piqa" / "validation.jsonl", PIQA)
    _write_jsonl(tmp_path / "winogrande" / "validation.jsonl", WINOGRANDE)
    df, items = coverage(tokenizer_dir, tasks="piqa,winogrande", data_dir=tmp_path, windows=[8, 20])
    df = df.set_index("task")
    # lm-eval's piqa request: context "Question: {goal}\nAnswer:", continuation " {solution}"
    lengths = [[len(tokenizer(f"Question: {r['goal']}\nAnswer: {r[s]}")["input_ids"]) for s in ("sol1", "sol2")]
               for r in PIQA]  # fmt: skip
    flat = [n for pair in lengths for n in pair]
    piqa = df.loc["piqa"]
    assert (piqa["items"], piqa["requests"], piqa["shots"]) == (3, 6, 0)
    assert piqa["tokens_median"] == np.median(flat) and piqa["tokens_max"] == max(flat)
    assert piqa["tokens_p90"] == pytest.approx(np.percentile(flat, 90))
    for w in (8, 20):  # an item is beyond the window when its longest request has L - 2 > window
        assert piqa[beyond_column(w)] == pytest.approx(round(100 * np.mean([max(p) - 2 > w for p in lengths]), 1))
    assert 0 < piqa[beyond_column(20)] < 100
    # winogrande (partial scoring): the option goes in the context, the rest of the sentence is the continuation
    wino = [[len(tokenizer(r["sentence"].replace("_", r[o]))["input_ids"]) for o in ("option1", "option2")]
            for r in WINOGRANDE]  # fmt: skip
    assert df.loc["winogrande", "tokens_max"] == max(n for pair in wino for n in pair)
    assert df.loc["winogrande", "requests"] == 4
    # the items table: each item's longest request, in doc_id order (the order of the recorded outcomes)
    piqa_items = items[items["task"] == "piqa"]
    assert list(piqa_items["doc_id"]) == [0, 1, 2] and list(piqa_items["tokens"]) == [max(p) for p in lengths]
    assert list(items[items["task"] == "winogrande"]["tokens"]) == [max(p) for p in wino]
    text = markdown(df.reset_index())
    assert "| piqa |" in text and "most items that outrun it" in text and "docs_sha256" not in text
    with pytest.raises(LigerError, match="unknown task"):
        coverage(tokenizer_dir, tasks="lambada", data_dir=tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "mmlu" / "dev.jsonl").exists(), reason="no MMLU mirror")
def test_mmlu_coverage_includes_the_five_shot_context(tmp_path, tokenizer_dir):
    from liger.coverage import coverage

    for split in ("test", "dev"):
        seen: dict[str, int] = {}
        keep = []
        for line in (SHARED_DATA / "mmlu" / f"{split}.jsonl").read_text().splitlines():
            subject = json.loads(line)["subject"]
            if seen.get(subject, 0) < (5 if split == "dev" else 1):
                seen[subject] = seen.get(subject, 0) + 1
                keep.append(line)
        (tmp_path / "mmlu").mkdir(exist_ok=True)
        (tmp_path / "mmlu" / f"{split}.jsonl").write_text("\n".join(keep) + "\n")
    five = coverage(tokenizer_dir, tasks="mmlu", data_dir=tmp_path, limit=57)[0].iloc[0]
    zero = coverage(tokenizer_dir, tasks="mmlu", data_dir=tmp_path, limit=57, num_fewshot_mmlu=0)[0].iloc[0]
    assert five["items"] == zero["items"] == 57 and five["requests"] == 4 * 57 and five["shots"] == 5
    assert five["tokens_median"] > 3 * zero["tokens_median"]  # five solved examples precede the question


# ----------------------------------------------------------------------------------------- passkey


def test_passkey_prompt_is_deterministic_and_holds_the_key_once_at_its_depth(tokenizer):
    from liger.passkey import INTRO, QUESTION, make_prompt

    for length in (128, 300):
        for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
            a, b = make_prompt(tokenizer, length, depth, seed=3), make_prompt(tokenizer, length, depth, seed=3)
            assert a.input_ids == b.input_ids and a.key == b.key
            assert len(a.input_ids) == length and 10_000 <= a.key <= 99_999
            text = tokenizer.decode(a.input_ids)
            assert text.count(str(a.key)) == 1 and sum(c.isdigit() for c in text) == 5
            assert text.startswith(INTRO) and text.endswith(QUESTION)
            # the key sentence sits at the filler boundary nearest to the depth (one filler sentence = 24 tokens)
            assert abs(a.filler_before / a.filler_tokens - depth) <= 12 / a.filler_tokens + 1e-9
            needle = tokenizer.decode(a.input_ids[a.needle_at : a.needle_at + 8])
            assert needle.startswith(" The pass key is")
    keys = {make_prompt(tokenizer, 128, 0.5, seed=s).key for s in range(6)}
    assert len(keys) == 6  # seeds give different keys
    first, last = make_prompt(tokenizer, 200, 0.0, 0), make_prompt(tokenizer, 200, 1.0, 0)
    assert first.filler_before == 0 and last.filler_before == last.filler_tokens
    with pytest.raises(LigerError, match="too short"):
        make_prompt(tokenizer, 40, 0.5, 0)
    with pytest.raises(LigerError, match="between 0 and 1"):
        make_prompt(tokenizer, 200, 1.5, 0)


def test_passkey_answers_and_length_cap():
    from liger.passkey import answer_is_key, usable_lengths

    assert answer_is_key(" 12345. Remember", 12345) and not answer_is_key(" 1234 5", 12345)
    assert not answer_is_key("no number", 12345) and not answer_is_key("123456", 12345)
    assert usable_lengths([256, 8192, 16384], 8192, 10) == [256, 8182]


@pytest.mark.parametrize("convert,kind", [(False, "kv"), (True, "liger")])
def test_passkey_run_uses_the_models_cache(tmp_path, tokenizer, convert, kind):
    from liger.passkey import heatmap, run_passkey, summary_table

    model = _tiny_llama_for(tokenizer)
    if convert:
        liger.linearize(model, "liger_gla")
    folder = _save(model, tokenizer, tmp_path / "m")
    df = run_passkey(folder, lengths=[96, 1000], depths=[0.0, 1.0], seeds=2, new_tokens=4, device="cpu",
                     progress=False)  # fmt: skip
    assert len(df) == 2 * 2 * 2 and set(df["cache"]) == {kind}
    assert set(df["length"]) == {96, 508} and (df["prompt_tokens"] == df["length"]).all()  # capped at 512 - 4
    assert df["correct"].dtype == bool
    heatmap(df, tmp_path / "h.png", "t")
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert list(summary_table({"m": df}).columns) == [96, 508]


# ----------------------------------------------------------------------------------------- loss by position


def test_bucket_edges_and_sums():
    from liger.position_loss import bucket_edges, bucket_table

    assert bucket_edges(8192) == [0, 64, 128, 256, 512, 1024, 2048, 4096, 8191]
    assert bucket_edges(256) == [0, 64, 128, 255] and bucket_edges(50) == [0, 49]
    losses = np.random.default_rng(0).gamma(2.0, 1.0, size=(3, 255))
    table = bucket_table(losses, bucket_edges(256))
    parts, overall = table[table["bucket"] != "all"], table[table["bucket"] == "all"].iloc[0]
    assert parts["tokens"].sum() == overall["tokens"] == losses.size
    weighted = (parts["tokens"] * parts["mean_loss"]).sum() / parts["tokens"].sum()
    assert weighted == pytest.approx(overall["mean_loss"]) and overall["mean_loss"] == pytest.approx(losses.mean())


def test_bucket_table_splits_roles_exactly_on_a_hand_made_stream():
    from liger.position_loss import bucket_table

    # two sequences, 6 predicted positions each; True: the predicted token is a response token (or EOS)
    response = np.array([[False, False, True, True, False, True], [True, False, False, False, True, True]])
    losses = np.array([[1.0, 3.0, 5.0, 7.0, 2.0, 4.0], [6.0, 8.0, 1.0, 3.0, 9.0, 5.0]])
    table = bucket_table(losses, [0, 2, 6], response).set_index("bucket")
    assert list(table.index) == ["0-2", "2-6", "all"]
    # bucket: (prompt tokens, prompt mean, response tokens, response mean), counted by hand
    expected = {"0-2": (3, (1 + 3 + 8) / 3, 1, 6.0), "2-6": (3, (2 + 1 + 3) / 3, 5, (5 + 7 + 4 + 9 + 5) / 5),
                "all": (6, (1 + 3 + 8 + 2 + 1 + 3) / 6, 6, (6 + 5 + 7 + 4 + 9 + 5) / 6)}
    for bucket, (pt, pl, rt, rl) in expected.items():
        row = table.loc[bucket]
        assert (row["prompt_tokens"], row["response_tokens"]) == (pt, rt)
        assert row["prompt_loss"] == pytest.approx(pl) and row["response_loss"] == pytest.approx(rl)
        assert row["prompt_tokens"] + row["response_tokens"] == row["tokens"]
    # a bucket without one role has no mean for it
    only_prompt = bucket_table(losses, [0, 1, 6], np.zeros_like(response)).set_index("bucket")
    assert only_prompt.loc["0-1", "response_tokens"] == 0 and pd.isna(only_prompt.loc["0-1", "response_loss"])
    assert "prompt_tokens" not in bucket_table(losses, [0, 2, 6]).columns  # no roles given: the old columns


class _CharTokenizer:
    """Hand-made tokenizer: a digit is token 2 (the test's responses are digits), any other character token 1
    (the Alpaca template and the instructions have no digits); EOS is 2."""

    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [2 if c.isdigit() else 1 for c in text]}


def test_roles_are_those_of_the_predicted_tokens(tmp_path, monkeypatch):

    import liger.device
    import liger.position_loss as pl
    from liger.records import format_prompt

    records = [{"instruction": "say a number" + "!" * i, "input": "", "output": "7" * (3 + 5 * i)} for i in range(6)]
    _write_jsonl(tmp_path / "alpaca.jsonl", records)
    # the stream, written out: each record's prompt (token 1), then its response and EOS (token 2)
    stream = np.concatenate([[1] * len(format_prompt(r)) + [2] * (len(r["output"]) + 1) for r in records])
    ids, mask, starts = pl.heldout_stream(_CharTokenizer(), records)
    assert (ids == stream).all() and (mask == (stream == 2)).all() and starts[1] == len(format_prompt(records[0])) + 4

    class FakeModel(torch.nn.Linear):
        config = type("Config", (), {"max_position_embeddings": 10_000})()

    monkeypatch.setattr(pl, "load_tokenizer", lambda *a, **k: _CharTokenizer())
    monkeypatch.setattr(liger.device, "load_for_inference", lambda *a, **k: (FakeModel(1, 1), "cpu"))
    monkeypatch.setattr(pl, "token_losses", lambda model, ids: ids[:, 1:].float())  # the loss is the predicted id
    result = pl.position_loss("m", str(tmp_path / "alpaca.jsonl"), n_val=6, seq_len=300, sequences=4,
                              first_bucket=16, device="cpu", progress=False)  # fmt: skip
    assert result["overlapping"]  # the windows wrap around the stream
    for b in result["buckets"]:  # exact: a prompt position predicts a 1, a response position a 2
        assert b["prompt_loss"] == 1.0 and b["response_loss"] in (2.0, None)
        assert b["prompt_tokens"] + 2 * b["response_tokens"] == pytest.approx(b["mean_loss"] * b["tokens"])
    seqs = pl.make_sequences(stream, starts, 300, 4)
    assert result["buckets"][-1]["response_tokens"] == int((seqs[:, 1:] == 2).sum())
    json.dumps(result, allow_nan=False)


def test_sequences_start_at_records_and_wrap():
    from liger.position_loss import make_sequences

    stream = np.arange(100)
    starts = [0, 10, 25, 60, 80]
    seqs = make_sequences(stream, starts, 30, 2)
    assert seqs[0, 0] == 0 and seqs[1, 0] == 25 and seqs.shape == (2, 30)
    wrap = make_sequences(stream, starts, 30, 5)
    assert list(wrap[:, 0]) == starts and list(wrap[4, 18:22]) == [98, 99, 0, 1]


def test_token_losses_match_the_models_loss():
    from liger.position_loss import token_losses

    model = liger.linearize(tiny_model("llama"), "liger_gla", window=8)
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0))
    per_pos = token_losses(model, ids, chunk=7)
    assert per_pos.shape == (2, 39)
    with torch.no_grad():
        assert per_pos.mean().item() == pytest.approx(model(ids, labels=ids).loss.item(), rel=1e-5)


def test_position_loss_end_to_end(tmp_path, tokenizer):
    from liger.position_loss import describe, position_loss

    records = [{"instruction": f"Write a sentence about the number {i}.", "input": "" if i % 2 else f"n={i}",
                "output": f"The number {i} is a fine number, bigger than {i - 1}."} for i in range(30)]  # fmt: skip
    _write_jsonl(tmp_path / "alpaca.jsonl", records)
    folder = _save(liger.linearize(_tiny_llama_for(tokenizer), "liger_gla"), tokenizer, tmp_path / "m")
    result = position_loss(folder, str(tmp_path / "alpaca.jsonl"), n_val=10, seq_len=2048, sequences=3,
                           device="cpu", progress=False)  # fmt: skip
    assert result["seq_len"] == 512 and result["records"] == 10 and result["tokens_read"] == 3 * 512
    assert result["overlapping"] and "overlap" in describe(result)  # 10 short records are far fewer tokens
    buckets = pd.DataFrame(result["buckets"])
    parts, overall = buckets[buckets["bucket"] != "all"], buckets[buckets["bucket"] == "all"].iloc[0]
    assert list(parts["bucket"]) == ["0-64", "64-128", "128-256", "256-511"]
    assert parts["tokens"].sum() == overall["tokens"] == 3 * 511
    assert (parts["tokens"] * parts["mean_loss"]).sum() / overall["tokens"] == pytest.approx(overall["mean_loss"])
    # the role split: counts add up per bucket, and the token-weighted means recombine within and across buckets
    assert (buckets["prompt_tokens"] + buckets["response_tokens"] == buckets["tokens"]).all()
    assert (buckets["prompt_tokens"] > 0).all() and overall["response_tokens"] > 0
    recombined = (buckets["prompt_tokens"] * buckets["prompt_loss"].fillna(0)
                  + buckets["response_tokens"] * buckets["response_loss"].fillna(0)) / buckets["tokens"]  # fmt: skip
    assert recombined.to_numpy() == pytest.approx(buckets["mean_loss"].to_numpy())
    for role in ("prompt", "response"):
        weighted = (parts[f"{role}_tokens"] * parts[f"{role}_loss"].fillna(0)).sum() / parts[f"{role}_tokens"].sum()
        assert parts[f"{role}_tokens"].sum() == overall[f"{role}_tokens"]
        assert weighted == pytest.approx(overall[f"{role}_loss"])
    json.dumps(result, allow_nan=False)  # a role absent from a bucket is null, not NaN


# ----------------------------------------------------------------------------------------- report


def _fake_results(root: Path) -> list[str]:
    tasks = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu"]
    rows = {"base": [0.70, 0.70, 0.40, 0.60, 0.60, 0.40], "liger_gla": [0.70, 0.70, 0.40, 0.55, 0.60, 0.30],
            "window_only": [0.70, 0.70, 0.40, 0.55, 0.60, 0.27], "liger_gla_no_window": [0.6, 0.5, 0.3, 0.4, 0.5, 0.25],
            "base_window": [0.65, 0.65, 0.35, 0.45, 0.55, 0.26]}  # fmt: skip
    chance = dict(zip(tasks, [0.5, 0.25, 0.25, 0.25, 0.5, 0.25], strict=True))
    for i, (method, values) in enumerate(rows.items()):
        d = root / "m" / method
        d.mkdir(parents=True)
        doc = {"paper_metrics": dict(zip(tasks, values, strict=True)), "chance": chance, "limit": None}
        (d / "metrics.json").write_text(json.dumps(doc))
        pk = pd.DataFrame({"length": [256, 256, 1024, 1024], "depth": [0.0, 1.0, 0.0, 1.0],
                           "correct": [True, True, i == 0, True]})  # fmt: skip
        pk.to_csv(d / "passkey.csv", index=False)
        buckets = [{"bucket": "0-64", "start": 0, "end": 64, "tokens": 64, "mean_loss": 3.0},
                   {"bucket": "64-127", "start": 64, "end": 127, "tokens": 63, "mean_loss": 2.5 + 0.1 * i},
                   {"bucket": "all", "start": 0, "end": 127, "tokens": 127, "mean_loss": 2.8}]  # fmt: skip
        if method in ("base", "liger_gla"):  # rerun since the split; the other rows predate it
            for b, (pt, pl) in zip(buckets, [(40, 3.3), (30, 1.0 + 2.5 * i), (70, 1.4 + 2.5 * i)], strict=True):
                b |= {"prompt_tokens": pt, "prompt_loss": pl, "response_tokens": b["tokens"] - pt,
                      "response_loss": 1.9 if b["bucket"] == "all" else None}  # fmt: skip
        run = {"sequences": 2, "seq_len": 128, "records": 5, "stream_tokens": 300, "overlapping": False}
        if method in ("base", "liger_gla"):
            run |= {"sequences": 1, "device": "cpu", "dtype": "float32"}
        (d / "position_loss.json").write_text(json.dumps({"buckets": buckets, **run}))
    pd.DataFrame([{"task": "mmlu", "shots": 5, "items": 3, "requests": 12, "tokens_median": 500.0,
                   "tokens_p90": 900.0, "tokens_max": 1000, "tokens_mean": 600.0,
                   "items beyond window 64 %": 100.0}]).to_csv(root / "m" / "coverage.csv", index=False)  # fmt: skip
    return list(rows)


def test_report_labels_controls_and_writes_the_probe_sections(tmp_path):
    from liger.report import Roles, write_model_report

    methods = _fake_results(tmp_path)
    roles = Roles(controls=["window_only", "liger_gla_no_window", "base_window"], reference="liger_gla",
                  window_only="window_only", about={"window_only": "the window alone"})
    pd.DataFrame({"task": "mmlu", "leaf": "liger_mmlu_anatomy", "doc_id": [0, 1, 2], "tokens": [100, 600, 3000]}) \
        .to_csv(tmp_path / "m" / "coverage_items.csv", index=False)
    report = write_model_report("m", methods, tmp_path, None, ROOT / "config" / "paper_results.csv",
                                roles=roles).read_text()  # fmt: skip
    table = pd.read_csv(tmp_path / "m" / "main.csv").set_index("method")
    assert list(table["role"]) == ["base", "method", "control", "control", "control", "chance"]
    # by request length: these metrics files record no items, so each row says so
    assert "## Accuracy by request length" in report and "liger_gla: no per-item outcomes recorded." in report
    assert list(pd.read_csv(tmp_path / "m" / "by_length.csv")["bucket"].unique()) == ["65-256", "513-1024", "> 2048"]
    assert (tmp_path / "plots" / "m_by_length.png").exists() and "m_by_length.png" in report
    assert table.loc["window_only", "Chance-corrected recovery %"] == pytest.approx(
        round(100 * (table.loc["window_only", "Avg"] - table.loc["chance (from the data)", "Avg"])
              / (table.loc["base", "Avg"] - table.loc["chance (from the data)", "Avg"]), 1), abs=0.15)
    assert "Within 1 point of liger_gla: window_only." in report
    assert ("Rows with role `control` say what each branch does alone: window_only (the window alone), "
            "liger_gla_no_window, base_window. `train tokens`") in report
    assert "the recurrence adds +0.5 points on average and +3.0 on MMLU" in report
    assert "## Window coverage" in report and "## Passkey retrieval" in report and "## Loss by position" in report
    assert "The base model retrieves the key in 100% of prompts" in report
    assert "Each row's lowest bucket: base 64-127 (2.50), liger_gla 64-127 (2.60)," in report
    passkey = pd.read_csv(tmp_path / "m" / "passkey.csv").set_index("method")
    assert passkey.loc["liger_gla", "1024"] == 50.0 and passkey.loc["base", "1024"] == 100.0
    losses = pd.read_csv(tmp_path / "m" / "position_loss.csv").set_index("method")
    assert losses.loc["base_window", "64-127"] == pytest.approx(2.9)
    assert (tmp_path / "plots" / "m_position_loss.png").stat().st_size > 1000
    assert "m_position_loss.png" in report
    # prompt and response: the split rows' losses, the older rows named to rerun
    assert "| liger_gla | 2.800 | 3.900 | 1.900 | 70 | 57 |" in report
    assert "| window_only | 2.800 | not split: rerun the probe | not split: rerun the probe | - | - |" in report
    assert ("Mean loss on prompt vs response tokens over all positions: base 1.40 vs 1.90; liger_gla 3.90 (+2.50 "
            "from the base) vs 1.90 (+0.00 from the base). window_only, liger_gla_no_window, base_window: not split: "
            "rerun the probe.") in report  # fmt: skip
    assert "| tokens | 40 | 30 | 70 |" in report  # the prompt tokens per bucket, the same in both split rows
    assert ("base, liger_gla: 1 sequences x 128 tokens (cpu, float32) from 5 held-out records (300 distinct tokens). "
            "window_only, liger_gla_no_window, base_window: 2 sequences x 128 tokens from") in report  # fmt: skip
    roles = pd.read_csv(tmp_path / "m" / "position_loss_roles.csv")
    assert set(roles["method"]) == {"base", "liger_gla"} and len(roles) == 2 * 2 * 3
    gla = roles[(roles["method"] == "liger_gla") & (roles["role"] == "prompt")].set_index("bucket")
    assert gla.loc["64-127", "mean_loss"] == pytest.approx(3.5) and gla.loc["all", "tokens"] == 70


def test_passkey_sentences_name_the_rows_that_never_retrieve():
    from liger.passkey import sentences

    table = pd.DataFrame({256: [100.0, 0.0, 0.0], 1024: [100.0, 50.0, 0.0]}, index=["base", "a", "b"])
    assert "Of the other rows a does best (25% on average" in sentences(table)
    assert "b never returns the key at any length" in sentences(table)
    both = pd.DataFrame({256: [100.0, 0.0, 0.0], 1024: [100.0, 0.0, 0.0]}, index=["base", "a", "b"])
    assert "a, b never return the key" in sentences(both)

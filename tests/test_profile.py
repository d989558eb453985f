"""The efficiency profile on CPU: rows per (variant, length), OOM recorded rather than raised, plots; the
static-cache baseline, the kernel table, the Table 9 protocol beside the paper, the side-by-side benchmark.
No speed is asserted."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
import torch

from liger import profile as prof
from tests.conftest import ROOT, tiny_model


def test_profile_rows_oom_and_plots(tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    real = prof.measure

    def measure(decoder, length, *args):
        if length > 32:
            raise torch.OutOfMemoryError("pretend")
        return real(decoder, length, *args)

    monkeypatch.setattr(prof, "measure", measure)
    csv = tmp_path / "p.csv"
    (tmp_path / "p.tmp").write_text("someone's file")  # beside the CSV: not a temporary file of the profile
    df = prof.profile(csv, model_dir=folder, variants=["base_eager", "liger_gla"], lengths=[16, 32, 64],
                      new_tokens=3)
    assert list(zip(df["variant"], df["length"], df["status"], strict=True)) == [
        ("base_eager", 16, "ok"), ("base_eager", 32, "ok"), ("base_eager", 64, "OOM"),
        ("liger_gla", 16, "ok"), ("liger_gla", 32, "ok"), ("liger_gla", 64, "OOM")]
    ok = df[df["status"] == "ok"]
    assert (ok["prefill_tok_s"] > 0).all() and (ok["decode_ms_p90"] >= ok["decode_ms_median"]).all()
    assert list(df["decoder"].unique()) == ["hf eager loop", "static loop, prefill chunk 4096"]
    assert df["device"].str.startswith("cpu").all()
    assert pd.read_csv(csv).shape == df.shape
    assert (tmp_path / "p.tmp").read_text() == "someone's file"
    plots = prof.plot(csv, tmp_path / "plots" / "tiny")
    assert {p.name for p in plots} == {"tiny_latency.png", "tiny_prefill.png"}  # no memory on CPU


def _tiny_folder(tmp_path):
    folder = tmp_path / "tiny"
    if not folder.exists():
        tiny_model("llama").save_pretrained(folder)
    return folder


def test_static_cache_generate_matches_the_sdpa_loop():
    """`base_static_compile` decodes the same greedy tokens as the plain SDPA loop on the same model and prompt."""
    model = tiny_model("llama")
    prompt = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    loop = prof.HFDecoder(model).run(prompt, 7, prof.Clock("cpu"))
    static = prof.StaticCompileDecoder(model, compile=False)
    clock = prof.Clock("cpu")
    assert torch.equal(static.run(prompt, 7, clock), loop)
    assert len(clock.steps) == 7 and static.name == "generate, static cache, not compiled"
    assert static.state_bytes() == 2 * 2 * (2 * 2 * (12 + 7 + 1) * 16) * 4  # layers * k,v * (B Hkv T D) * fp32


@pytest.mark.slow
def test_static_cache_generate_compiled_on_cpu():
    """The compiled path (transformers' own torch.compile of the step, forced on the CPU): the same tokens."""
    model = tiny_model("llama")
    prompt = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(2))
    loop = prof.HFDecoder(model).run(prompt, 4, prof.Clock("cpu"))
    static = prof.StaticCompileDecoder(model, compile=True)
    static.prepare(8, 4)
    assert torch.equal(static.run(prompt, 4, prof.Clock("cpu")), loop)
    assert static.name == "generate, static cache, torch.compile reduce-overhead"


def test_profile_static_compile_and_kernels(tmp_path):
    csv = tmp_path / "p.csv"
    df = prof.profile(csv, model_dir=_tiny_folder(tmp_path), variants=["base_static_compile", "liger_gla"],
                      lengths=[16], new_tokens=4, batch=2, kernels=2)
    assert list(df.columns[:len(prof.COLUMNS)]) == prof.COLUMNS and "state_gib" in df
    assert list(df["status"]) == ["ok", "ok"] and (df["state_gib"] > 0).all()
    assert df["decoder"].iloc[0] == "generate, static cache, not compiled"  # transformers compiles on CUDA only
    kernels = pd.read_csv(prof.kernels_path(csv))
    assert list(kernels.columns) == prof.KERNEL_COLUMNS
    assert set(kernels["variant"]) == {"base_static_compile", "liger_gla"} and (kernels["kind"] == "cpu op").all()
    for _, g in kernels.groupby("variant"):
        assert abs(g["share"].sum() - 1) < 1e-6 and (g["calls_per_step"] > 0).all()
        assert g.loc[g["name"] != "(other)", "ms_per_step"].is_monotonic_decreasing
    assert "## liger_gla, context 16" in prof.kernels_path(csv, ".md").read_text()


def test_table9_rows_oom_paper_and_resume(tmp_path, monkeypatch):
    paper = tmp_path / "paper.csv"
    paper.write_text("variant,paper_name,generated,seconds,memory_gb,status,source\n"
                     "base_sdpa,Llama w/ FA2,8,1.5,17.0,ok,test\nbase_sdpa,Llama w/ FA2,16,,,OOM,test\n"
                     "liger_gla,Liger-GLA,8,2.5,16.0,ok,test\n")
    real = prof.measure_total

    def measure_total(decoder, prompt_len, generated, *args):
        if generated > 8 and isinstance(decoder, prof.HFDecoder):
            raise torch.OutOfMemoryError("pretend")
        return real(decoder, prompt_len, generated, *args)

    monkeypatch.setattr(prof, "measure_total", measure_total)
    csv = tmp_path / "t.csv"
    df = prof.table9(csv, model_dir=_tiny_folder(tmp_path), variants=["base_sdpa", "liger_gla"], generated=[8, 16, 32],
                     batch=2, prompt_len=4, paper=paper)
    assert list(df.columns[:len(prof.TABLE9_COLUMNS)]) == prof.TABLE9_COLUMNS
    assert list(zip(df["variant"], df["generated"], df["status"], strict=True)) == [
        ("base_sdpa", 8, "ok"), ("base_sdpa", 16, "OOM"), ("base_sdpa", 32, "skipped"),
        ("liger_gla", 8, "ok"), ("liger_gla", 16, "ok"), ("liger_gla", 32, "ok")]
    ok = df[df["status"] == "ok"]
    assert (ok["total_s"] > 0).all() and (ok["prompt"] == 4).all() and (ok["batch"] == 2).all()
    joined = prof.join_paper(df, pd.read_csv(paper))
    assert joined["paper_s"].iloc[0] == 1.5 and joined["paper_gb"].iloc[0] == 17.0
    assert joined["paper_status"].iloc[1] == "OOM" and joined["paper_s"].iloc[3] == 2.5
    assert joined["paper_status"].iloc[[2, 4, 5]].isna().all()
    md = csv.with_suffix(".md").read_text()
    assert "| 8 | base_sdpa | hf eager loop |" in md and "| 1.50 | 17.00 |" in md and "| 16 | base_sdpa |" in md

    def no_measure(*args):
        raise AssertionError("a kept row was measured again")

    monkeypatch.setattr(prof, "measure_total", no_measure)
    again = prof.table9(csv, model_dir=_tiny_folder(tmp_path), variants=["base_sdpa", "liger_gla"],
                        generated=[8, 16], batch=2, prompt_len=4, paper=paper, resume=True)
    assert list(again["status"]) == ["ok", "OOM", "ok", "ok"]
    assert again["total_s"].iloc[0] == df["total_s"].iloc[0]
    plots = prof.plot(csv, tmp_path / "plots" / "t", paper)
    assert {p.name for p in plots} == {"t_table9_seconds.png"}  # no memory on CPU


def test_paper_table9_is_joined_from_config():
    ours = pd.DataFrame({"variant": ["liger_gla", "base_sdpa", "base_eager", "base_static_compile"],
                         "generated": [32768, 32768, 1024, 1024]})
    joined = prof.join_paper(ours, prof.read_paper_table9())
    assert joined["paper_s"].iloc[0] == 1465.52 and joined["paper_gb"].iloc[0] == 16.37
    assert joined["paper_status"].iloc[1] == "OOM" and joined["paper_s"].iloc[2] == 37.92
    assert pd.isna(joined["paper_status"].iloc[3])
    assert len(prof.read_paper_table9()) == 18


def test_bench_decode_smoke_on_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_decode", ROOT / "benchmarks" / "bench_decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = bench.main(["--model", str(_tiny_folder(tmp_path)), "--lengths", "16", "--new-tokens", "3",
                        "--md", str(tmp_path / "decode.md")])
    assert list(table["length"]) == [16]
    assert (table[["liger_gla / floor", "base_static_compile / liger_gla", "base_sdpa / liger_gla"]] > 0).all(axis=None)
    assert "base_static_compile / liger_gla" in capsys.readouterr().out
    md = (tmp_path / "decode.md").read_text()
    assert md.startswith("# Decoding: ") and "Device: " in md and "torch " in md and " UTC." in md
    assert "| length | liger_gla ms |" in md and "--md" in md  # the table and the command that wrote it


def test_a_fused_variant_converts_as_its_method_and_asks_for_the_fused_step(tmp_path, monkeypatch):
    """`liger_gla_fused` is Liger-GLA decoded with GraphDecoder(fused=True); where that cannot run (here: no CUDA
    and no Triton interpreter), a one-line error instead of a silent fallback to another decoder."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = prof.build_variant("liger_gla_fused", _tiny_folder(tmp_path), None, "cpu", torch.float32)
    assert {layer.self_attn.options.method for layer in model.get_decoder().layers} == {"liger_gla"}
    with pytest.raises(prof.LigerError, match=r"^fused=True: it (needs triton|runs on CUDA)"):
        prof.make_decoder(model, "liger_gla_fused", "graph", 1, None)


def test_bench_cold_start_smoke_on_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_cold_start", ROOT / "benchmarks" / "bench_cold_start.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    df = bench.main(["--model", str(_tiny_folder(tmp_path)), "--prompt", "8", "--train-len", "8", "--repeats", "1",
                     "--processes", "1", "--cache-dir", str(tmp_path / "triton"), "--out", str(tmp_path / "c.csv"),
                     "--md", str(tmp_path / "c.md")])
    assert list(df["process"]) == ["empty Triton cache (a new machine)"] and not df["fla"].any()
    assert list(df["preloaded"]) == [0]
    assert (df[["load_s", "prefill_first_s", "prefill_later_s", "train_first_s", "train_later_s"]] > 0).all(axis=None)
    assert len(pd.read_csv(tmp_path / "c.csv")) == 1 and "within 10 s" in capsys.readouterr().out
    assert "| empty Triton cache (a new machine) |" in (tmp_path / "c.md").read_text()


def test_bench_train_smoke_on_cpu_with_a_named_shape(monkeypatch, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(bench.SHAPES, "tiny", dict(model_type="llama", vocab_size=128, hidden_size=32,
                                                   intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                   num_key_value_heads=2, max_position_embeddings=64))
    md = tmp_path / "train.md"
    assert bench.main(["--shape", "tiny", "--seq-len", "16", "--warmup", "1", "--steps", "1", "--kernels", "1",
                       "--md", str(md)]) == 0
    out = capsys.readouterr().out
    assert "tiny shape, random weights, 16-token chunks" in out
    assert "liger_gla + Liger Attention" in out and "base (unconverted)" in out
    text = md.read_text()
    assert text.startswith("# LoRA fine-tuning throughput: tiny shape, random weights, 16-token chunks")
    assert "| liger_gla + Liger Attention |" in text and "top kernels per step" in text
    with pytest.raises(SystemExit):
        bench.main(["--shape", "tiny", "--data", "resources/anything"])
    assert "leave out --data" in capsys.readouterr().err

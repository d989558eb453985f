"""The efficiency profile on CPU: rows per (variant, length), OOM recorded rather than raised, plots."""

from __future__ import annotations

import pandas as pd
import torch

from liger import profile as prof
from tests.conftest import tiny_model


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

"""liger gates: the share of each token's write a GLA-family state keeps per step, against its formula in float64."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import liger
from liger.cli import main
from liger.gates import LONG, retention, summary
from tests.conftest import tiny_model
from tests.test_train import SEQ


def converted(method: str = "liger_gla", **options):
    return liger.linearize(tiny_model("llama").double(), method, **options)


def hidden(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def keys(attn, h: torch.Tensor) -> torch.Tensor:
    return attn.k_proj(h).view(2, 7, 2, 16)  # (B, T, kv heads, head_dim): the tiny Llama's 2 kv heads of 16


@pytest.mark.parametrize("source", ["k", "q", "v"])
def test_gla_retention_is_the_written_share_of_the_decays(source):
    model = converted(gate_source=source)
    attn, h = model.model.layers[0].self_attn, hidden()
    k = keys(attn, h)
    x = {"k": k.reshape(2, 7, 32), "v": attn.v_proj(h),
         "q": attn.q_proj(h).view(2, 7, 32, 2).mean(-1)}[source]  # q: 4 heads x 16 averaged in pairs to 2 x 16
    decay = torch.exp(F.logsigmoid(x.view(2, 7, 2, 16)) / 16)
    want = (k.softmax(-1) * decay).sum(-1)  # the softmax features sum to 1 over d
    got = retention(attn, h)
    assert got.dtype == torch.float64 and got.shape == (2, 7, 2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert ((0 < got) & (got < 1)).all()


def test_hgrn2_retention_weights_the_decays_by_its_tied_keys():
    attn, h = converted("liger_hgrn2").model.layers[0].self_attn, hidden(1)
    g = F.logsigmoid(keys(attn, h))  # HGRN2's normaliser is 1
    want = ((1 - g.exp()) * g.exp()).sum(-1) / (1 - g.exp()).sum(-1)
    torch.testing.assert_close(retention(attn, h), want, rtol=1e-12, atol=1e-12)


def test_without_a_gate_nothing_is_forgotten():
    attn = converted(gate="none").model.layers[0].self_attn
    assert (retention(attn, hidden()) == 1).all()


def test_summary_counts_a_write_never_forgotten_as_an_infinite_memory():
    row = summary(np.array([0.5, 0.9, 1.0, 1.0]), "0")
    assert row["writes"] == 4 and row["mean"] == pytest.approx(0.85) and row[f"share r >= {LONG}"] == 0.5
    assert row["median memory"] == np.inf and row["p90 memory"] == np.inf  # memories 2, 10, inf, inf
    row = summary(np.array([0.5, 0.9]), "all")
    assert row["median memory"] == pytest.approx(6.0) and row["p90 memory"] == pytest.approx(9.2)  # of 2 and 10


def test_gates_cli_writes_a_row_per_converted_layer(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "gates.csv"
    options = '{"method": "liger_gla", "softmax_layers": [1]}'  # layer 1 stays softmax attention: not in the table
    assert main(["gates", "--model", str(model_dir), "--data", str(data_dir), "--options", options, "--chunks", "2",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"layer": str})
    assert list(table["layer"]) == ["0", "all"]
    assert list(table["writes"]) == [2 * SEQ * 2] * 2  # chunks x tokens x kv heads
    layer, every = table.iloc[0], table.iloc[1]
    assert layer["mean"] == pytest.approx(every["mean"]) and 0 < layer["median"] < 1
    assert layer["median memory"] == pytest.approx(1 / (1 - layer["median"]), rel=1e-6)
    assert out.with_suffix(".md").read_text().startswith("| layer | writes | mean |")
    assert f"{out}: written" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    ([], "the model is not converted: give a converted model folder, or --options to convert it"),
    (["--options", '{"method": "liger_gsa"}'], "GSAAttention: retention covers the GLA-family layers"),
    (["--options", '{"gate": "none"}'], "needs a Liger method"),
    (["--chunks", "0"], "--chunks 0: must be >= 1"),
])
def test_gates_cli_errors_are_one_line(model_dir, data_dir, tmp_path, capsys, args, message):
    assert main(["gates", "--model", str(model_dir), "--data", str(data_dir), "--out", str(tmp_path / "g.csv"),
                 *args]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the weights' progress bar, when the model was loaded
    assert last.startswith("liger gates: error: ") and message in last
    assert not (tmp_path / "g.csv").exists()

"""Shared fixtures: tiny random models of each supported architecture, and the embedded SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIGER_SHARED_DATA", ROOT.parent / "shared" / "data"))
SMOLLM2 = ROOT / "resources" / "models" / "smollm2-135m"

ARCHS = ["llama", "mistral", "qwen2", "qwen3"]
# Liger conversions every CPU test of a converted model runs over (method, options)
LIGER_VARIANTS = [
    ("liger_gla", {}),
    ("liger_hgrn2", {}),
    ("liger_gsa", {"num_slots": 8}),
    ("liger_gla", {"hybrid": "none"}),
    ("liger_gsa", {"num_slots": 8, "hybrid": "none"}),
    ("liger_gla", {"beta": 0.0}),  # window only
    ("liger_gla", {"softmax_layers": [1]}),  # inter-layer hybrid
]

# The ablation options of the paper's Table 12 (docs/method.md#ablation-options), over each method they apply to;
# the two that add parameters are tested with those parameters moved off their init (`perturb_added`).
LIGER_ABLATIONS = [
    ("liger_gla", {"gate": "none"}),
    ("liger_gla", {"gate": "projection"}),
    ("liger_hgrn2", {"gate": "projection"}),
    ("liger_gsa", {"num_slots": 8, "gate": "projection"}),
    ("liger_gla", {"feature_map": "learnable"}),
    ("liger_hgrn2", {"feature_map": "learnable"}),
    ("liger_gsa", {"num_slots": 8, "feature_map": "learnable"}),
]

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)


def tiny_model(arch: str, seed: int = 0, **overrides):
    """A small random causal LM of the given architecture, fp32, eval mode."""
    import transformers

    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[arch]
    extra = {"head_dim": 16} if arch == "qwen3" else {}
    if arch == "qwen2":
        extra["attention_bias"] = True
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**TINY, **extra, **overrides}))
    return model.eval()


def perturb_added(model, seed: int = 0, scale: float = 0.3):
    """Add seeded noise to the parameters a Liger conversion added (identity feature maps and near-zero gate
    logits at conversion would hide a misplaced map or gate); returns the model."""
    from liger.stages import finetune_parameters

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in finetune_parameters(model):
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved without a tokenizer."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Packed chunks of random tokens (tests/test_train.py write_packed)."""
    from tests.test_train import write_packed

    return write_packed(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2 as a Hugging Face folder (fetched once; cached under resources/)."""
    from liger.models import fetch_embedded

    return fetch_embedded("smollm2-135m", SMOLLM2)


def assert_same_decoding(want, got, prompt, steps: int, tol: float, same_tokens: bool) -> None:
    """Two GraphDecoders on one model, teacher-forced on `want`'s tokens: every step's logits within `tol` of
    `want`'s relative to their largest, the greedy tokens equal when `same_tokens`; `got`'s blocks compiled."""
    want.prefill(prompt)
    got.prefill(prompt)
    for _ in range(steps):
        a, b = want.step().float(), got.step().float()
        assert ((b - a).abs().max() / a.abs().max()).item() <= tol
        assert torch.equal(got.token, want.token) or not same_tokens
        got.token.copy_(want.token)  # keep both on the same sequence
    assert got.compiled, "torch.compile fell back to the eager block (see the warning)"

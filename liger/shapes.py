"""Model shapes for shape-only runs (random weights): timing and memory do not depend on the weight values."""

from __future__ import annotations

SHAPES: dict[str, dict] = {
    # SmolLM2-135M(-Instruct): the embedded model's config
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
                         rms_norm_eps=1e-5),
    # Llama-3.2-1B, the performance issue's fine-tuning shape (its llama3 rope scaling left out: no timing depends
    # on it)
    "llama3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
                        rms_norm_eps=1e-5),
    # Llama-3-8B, the paper's efficiency figure
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False,
                      rms_norm_eps=1e-5),
}


def shape_config(shape: str):
    """The transformers config of a named shape."""
    from transformers import AutoConfig

    spec = dict(SHAPES[shape])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def random_model(shape: str, dtype=None, device=None, attn_implementation: str = "sdpa"):
    """A causal LM of a named shape with random weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = shape_config(shape)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32,
                                                 attn_implementation=attn_implementation)
    return model.eval()

"""Decoding a converted model: `LigerCache` (constant-size state per layer) and `GraphDecoder` (fast greedy
decoding: fixed-size buffers, one CUDA graph per token).

At batch 1 a decoding step is a few matrix-vector products per layer plus a state update, so Python and
kernel-launch overhead, not arithmetic, dominates HF's eager loop. `GraphDecoder` prefills through the model's
ordinary forward (in chunks, so memory does not grow with the prompt), copies each layer's recurrent state and
window into buffers of fixed size, and runs every later step as a fixed sequence of kernels that updates
those buffers in place: on CUDA it is captured once as a CUDA graph and replayed, and each Llama-family
decoder block (the same pre-norm block in every supported architecture) can be compiled with torch.compile,
once for all layers. The result equals the model's forward (tests compare them); only the speed differs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from liger import methods
from liger.cache import LigerCacheLayer, StepBuffers, cache_nbytes
from liger.errors import LigerError
from liger.layers.base import LinearizedAttention
from liger.ops import fused_step


class LigerCache(Cache):
    """A cache for a converted model: each converted layer's constant-size state, growing layers elsewhere."""

    def __init__(self, model: nn.Module) -> None:
        attns = [layer.self_attn for layer in model.get_decoder().layers]
        layers = [LigerCacheLayer(a.cached_keys) if isinstance(a, LinearizedAttention) else DynamicLayer()
                  for a in attns]
        super().__init__(layers=layers)

    def nbytes(self) -> int:
        """Bytes held by every layer's state (the growing key/value layers included)."""
        return cache_nbytes(self)


def _block_step(layer: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                buffers: StepBuffers) -> torch.Tensor:
    """One token through a pre-norm decoder block: h + attn(norm(h)), then + mlp(norm(.))."""
    h = h + layer.self_attn.step(layer.input_layernorm(h), cos, sin, buffers)
    return h + layer.mlp(layer.post_attention_layernorm(h))


class GraphDecoder:
    """Greedy decoding of a model whose every layer is converted by a method with `step_decoding` (the Liger
    methods), for a fixed batch size.

    `graph` (default: on CUDA) captures a step as a CUDA graph; `compile` (default: on CUDA) compiles the
    decoder block with torch.compile (one compilation serves every layer). `prefill_chunk` bounds the tokens
    one prefill forward sees (None: the whole prompt at once). `fused` runs the attention of each default
    Liger-GLA layer in one Triton kernel (`liger.ops.fused_step`; the same tokens), through its buffers' `fused`
    (the model is not changed: decoders with and without it can share one model).
    """

    def __init__(self, model: nn.Module, batch_size: int = 1, *, graph: bool | None = None,
                 compile: bool | None = None, prefill_chunk: int | None = 4096, fused: bool = False) -> None:
        layers = model.get_decoder().layers
        plain = [i for i, layer in enumerate(layers) if not isinstance(layer.self_attn, LinearizedAttention)]
        if plain:
            raise LigerError(f"graph decoding needs every layer converted; layers {plain} keep softmax attention "
                             "(softmax_layers): decode with model.generate instead")
        other = {type(layer.self_attn).__name__ for layer in layers
                 if not methods.get(layer.self_attn.options.method).step_decoding}
        if other:
            stepped = ", ".join(m for m in methods.names() if methods.get(m).step_decoding)
            raise LigerError(f"graph decoding needs a fixed-buffer step, which the layers of {stepped} have, not "
                             f"{', '.join(sorted(other))}: decode with model.generate instead")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise LigerError(f"prefill_chunk must be >= 1 or None, got {prefill_chunk}")
        self.model = model
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        if fused:
            attns = [layer.self_attn for layer in layers]
            if not all(getattr(a, "fusable", False) for a in attns):
                raise LigerError("fused=True needs default Liger-GLA layers (gate pooled from k, softmax feature "
                                 "maps); decode this model with fused=False")
            why = fused_step.unavailable(self.device)
            if why:
                raise LigerError(f"fused=True: {why}; decode with fused=False")
        self.fused = fused
        cuda = self.device.type == "cuda"
        self.use_graph = cuda if graph is None else graph
        if self.use_graph and not cuda:
            raise LigerError("CUDA graphs need the model on a CUDA device; use graph=False on CPU")
        self.compiled = cuda if compile is None else compile
        self.block: Callable[..., torch.Tensor] = torch.compile(_block_step, dynamic=False) if self.compiled \
            else _block_step
        self.prefill_chunk = prefill_chunk
        self.buffers: list[StepBuffers] | None = None
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.logits: torch.Tensor | None = None
        self._graph: torch.cuda.CUDAGraph | None = None

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prompt (left padding allowed) and load the buffers; returns the last position's logits (B, V)."""
        B, T = input_ids.shape
        if B != self.batch_size or T == 0:
            raise LigerError(f"prompt of shape {tuple(input_ids.shape)}; this decoder takes batch "
                             f"{self.batch_size} and at least one token")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = LigerCache(self.model)
        step = self.prefill_chunk or T
        for start in range(0, T, step):
            end = min(T, start + step)
            logits = self.model(input_ids[:, start:end], attention_mask=attention_mask[:, :end],
                                position_ids=positions[:, start:end], past_key_values=cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1]
        layers: list[LigerCacheLayer] = list(cache.layers)
        if self.buffers is None:
            self.buffers = [StepBuffers.from_layer(layer, fused=self.fused) for layer in layers]
        else:
            for buf, layer in zip(self.buffers, layers, strict=True):
                buf.load_(layer)
        self.position.copy_(positions[:, -1:] + 1)
        self.token.copy_(logits.argmax(-1, keepdim=True))
        return logits

    def _step(self) -> None:
        """Feed `self.token` at `self.position`; leaves the logits and the greedy next token in place."""
        backbone = self.model.get_decoder()
        h = backbone.embed_tokens(self.token)
        cos, sin = backbone.rotary_emb(h, self.position)
        for layer, buffers in zip(backbone.layers, self.buffers, strict=True):
            h = self.block(layer, h, cos, sin, buffers)
        logits = self.model.lm_head(backbone.norm(h))[:, -1]
        if self.logits is None:
            self.logits = torch.empty_like(logits)
        self.logits.copy_(logits)
        self.token.copy_(logits.argmax(-1, keepdim=True))
        self.position.add_(1)

    def _capture(self) -> None:
        # Warm up on a side stream (compilation, autotuning, lazy allocations) on copies of the buffers, then
        # capture one step; the replays run exactly these kernels on exactly these buffers.
        saved = [b.snapshot() for b in self.buffers] + [self.token.clone(), self.position.clone()]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            try:
                self._step()
            except Exception as e:  # a compiler failure costs speed, not the run
                if not self.compiled:
                    raise
                warnings.warn(f"torch.compile of the decoder block failed ({type(e).__name__}: {e}); "
                              "decoding with the eager block", stacklevel=3)
                self.block, self.compiled = _block_step, False
                self._restore(saved)
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self._restore(saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self._restore(saved)
        self._graph = graph

    def _restore(self, saved: list) -> None:
        *states, token, position = saved
        for buffers, state in zip(self.buffers, states, strict=True):
            buffers.restore_(state)
        self.token.copy_(token)
        self.position.copy_(position)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Decode one token: feeds the current greedy token, returns the new logits (B, V) (a reused buffer)."""
        if self.buffers is None:
            raise LigerError("call prefill() before step()")
        if not self.use_graph:
            self._step()
        else:
            if self._graph is None:
                self._capture()
            self._graph.replay()
        return self.logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy continuation: (B, T + max_new_tokens) token ids, as `model.generate(do_sample=False)`."""
        self.prefill(input_ids, attention_mask)
        out = [self.token.clone()]
        for _ in range(max_new_tokens - 1):
            self.step()
            out.append(self.token.clone())
        return torch.cat([input_ids, *out[:max_new_tokens]], dim=1)

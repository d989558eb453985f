"""Constant-memory decoding state of one converted layer: the method's state plus the last keys and values.

`LigerCacheLayer` is a transformers cache layer, so it lives inside any `Cache` (the `DynamicCache` that
`generate` makes, or `liger.decode.LigerCache`): a converted layer swaps it in for the plain layer at its index
on first use. Layers kept as softmax attention (inter-layer hybrid) keep ordinary growing key/value layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer


def flat_tensors(x: Any) -> list[torch.Tensor]:
    """The tensors of a tensor or a nested tuple/list, in order (None and Python numbers hold none)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in flat_tensors(item)]
    return []


def tensor_nbytes(x: Any) -> int:
    """Bytes held by the tensors of `x` (as `flat_tensors`)."""
    return sum(t.numel() * t.element_size() for t in flat_tensors(x))


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by every layer of a transformers cache: a converted layer's state and window, or the key/value
    tensors of an ordinary (growing or static) layer."""
    return sum(layer.nbytes() if isinstance(layer, LigerCacheLayer) else
               tensor_nbytes([getattr(layer, "keys", None), getattr(layer, "values", None)]) for layer in cache.layers)


def _map(x: Any, fn) -> Any:
    """`fn` applied to every tensor of `x` (as `flat_tensors`); anything else is kept as it is."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_map(item, fn) for item in x)
    return x


@dataclass
class StepBuffers:
    """Fixed-size decoding buffers of one converted layer, updated in place by its `step` (liger.decode).

    state: the recurrent state (a tensor, or a tuple for GSA; None without the recurrent branch); win_k, win_v
    (B, kept, Hkv, D) and win_mask (B, kept): a ring buffer of the last keys and values (None without the
    window branch); slot: the ring's next write position (a one-element long tensor); fused: the step runs as one
    kernel (`GraphDecoder(fused=True)`, `liger.ops.fused_step`), a setting of the decoder that owns the buffers.
    """

    state: Any
    win_k: torch.Tensor | None
    win_v: torch.Tensor | None
    win_mask: torch.Tensor | None
    slot: torch.Tensor
    fused: bool = False

    @classmethod
    def from_layer(cls, layer: LigerCacheLayer, fused: bool = False) -> StepBuffers:
        """Copies of a cache layer's state and window (oldest slot first, so the ring starts at slot 0)."""
        def own(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().clone().contiguous()

        state = _map(layer.state, own)
        device = next((t.device for t in flat_tensors([layer.state, layer.win_k])), None)
        return cls(state, own(layer.win_k), own(layer.win_v), own(layer.win_mask),
                   torch.zeros(1, dtype=torch.long, device=device), fused)

    def load_(self, layer: LigerCacheLayer) -> None:
        """Overwrite the buffers in place with a cache layer's state and window (same shapes)."""
        new = flat_tensors([layer.state, layer.win_k, layer.win_v, layer.win_mask])
        old = flat_tensors([self.state, self.win_k, self.win_v, self.win_mask])
        if [t.shape for t in new] != [t.shape for t in old]:
            raise ValueError("the prefill's state does not have the buffers' shapes (another batch size?)")
        for dst, src in zip(old, new, strict=True):
            dst.copy_(src)
        self.slot.zero_()

    def _all(self) -> list[torch.Tensor]:
        return flat_tensors([self.state, self.win_k, self.win_v, self.win_mask, self.slot])

    def nbytes(self) -> int:
        """Bytes of the state, window and ring position."""
        return tensor_nbytes(self._all())

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of every buffer, for `restore_`."""
        return [t.clone() for t in self._all()]

    def restore_(self, snapshot: list[torch.Tensor]) -> None:
        for dst, src in zip(self._all(), snapshot, strict=True):
            dst.copy_(src)


class LigerCacheLayer(CacheLayerMixin):
    """The method's state (a tensor or a tuple of tensors, and of Python numbers that are the same for every row)
    and the last `kept` rotary keys and values."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, kept: int) -> None:
        super().__init__()
        self.kept = kept
        self.state: Any = None
        self.win_k: torch.Tensor | None = None  # (B, kept, Hkv, D)
        self.win_v: torch.Tensor | None = None
        self.win_mask: torch.Tensor | None = None  # (B, kept) bool: slot holds a real token
        self.seen = 0

    def extend_window(
        self, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys/values/mask of the kept ones followed by the new tokens; keeps the last `kept` of them."""
        B, T = k.shape[:2]
        if self.win_k is None:
            self.win_k = k.new_zeros(B, self.kept, *k.shape[2:])
            self.win_v = v.new_zeros(B, self.kept, *v.shape[2:])
            self.win_mask = torch.zeros(B, self.kept, dtype=torch.bool, device=k.device)
        new_mask = valid if valid is not None else torch.ones(B, T, dtype=torch.bool, device=k.device)
        keys = torch.cat([self.win_k, k], dim=1)
        values = torch.cat([self.win_v, v], dim=1)
        mask = torch.cat([self.win_mask, new_mask], dim=1)
        start = keys.shape[1] - self.kept
        self.win_k, self.win_v, self.win_mask = keys[:, start:], values[:, start:], mask[:, start:]
        return keys, values, mask

    def nbytes(self) -> int:
        return tensor_nbytes([self.state, self.win_k, self.win_v, self.win_mask])

    # the transformers cache-layer interface
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise TypeError("a Liger layer keeps its own state; it has no growing key/value cache to update")

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        q = query_length if isinstance(query_length, int) else query_length.shape[0]
        return self.seen + q, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    get_max_cache_shape = get_max_length  # the name in transformers 5.17

    def _apply(self, fn) -> None:
        self.state = _map(self.state, fn)
        self.win_k, self.win_v, self.win_mask = _map([self.win_k, self.win_v, self.win_mask], fn)

    def reset(self) -> None:
        self.state = self.win_k = self.win_v = self.win_mask = None
        self.seen = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices])

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a recurrent state cannot be cropped (assisted decoding is not supported)")

    def offload(self) -> None:
        pass

    def prefetch(self) -> None:
        pass


def liger_cache_layer(cache: Cache | None, layer_idx: int, kept: int) -> LigerCacheLayer | None:
    """The converted layer's state at `layer_idx` of `cache` (keeping `kept` keys), swapped in for whatever plain
    layer was there."""
    if cache is None:
        return None
    layers = cache.layers
    while len(layers) <= layer_idx:
        layers.append(DynamicLayer())
    layer = layers[layer_idx]
    if not isinstance(layer, LigerCacheLayer):
        if layer.get_seq_length() > 0:
            raise ValueError(f"layer {layer_idx} of the cache already holds softmax keys/values; start a new cache")
        layer = layers[layer_idx] = LigerCacheLayer(kept)
    return layer

"""LoLCATs (Zhang et al., arXiv 2410.10254), the Liger paper's main baseline, as a method of `liger.linearize`.

Each attention layer keeps its q/k/v/o projections and rotary embedding and gains a Hedgehog feature map per
head for q and for k (separate weights) and a learnable window factor per head; its output is the hybrid of
`liger.ops.hybrid` (a softmax window and linear attention over older keys, one shared normaliser). The two
training stages are `liger.transfer` (attention transfer) and `liger.train.finetune` (LoRA). The specification,
with sources for every default, is LOLCATS.md; `variant="liger"` selects the Liger authors' re-run (its
section 7).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from liger.attention import LigerAttention, PaddingContext, repeat_heads, rotate
from liger.cache import LigerCacheLayer, liger_cache_layer
from liger.errors import LigerError
from liger.ops.hybrid import SHAPES, absorb, hybrid_attention

VARIANTS = ("original", "liger")
INITS = ("identity", "normal", "kaiming")
INIT_WINDOW_FACTOR = -2.1972245773362196  # logit(0.1): gamma = 0.1 at the start (LC config init_window_factor)
FEATURE_EPS = 1e-12  # clamp of the Hedgehog features (LC feature_map.py SoftmaxDim)
# Per variant: window shape, feature width (None: 64 capped at the head dim), feature-map init, whether stage 1
# trains the window factors, and the eps of the shared denominator (LOLCATS.md section 6 and 7, items 1-6).
VARIANT_DEFAULTS = {
    "original": dict(window_shape="terraced", feature_dim=None, feature_init="identity", train_window_factor=True,
                     eps=0.0),
    "liger": dict(window_shape="sliding", feature_dim=128, feature_init="normal", train_window_factor=False,
                  eps=1e-6),
}
# The training recipe of each stage (LOLCATS.md sections 3, 4, 6; section 7 items 7-9 for the re-run): the
# TrainConfig fields that differ from the Liger fine-tune (liger.train.RECIPE_FIELDS). No gradient clipping in
# either code base.
_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
RECIPES = {
    "original": {
        "transfer": dict(lr=1e-2, weight_decay=0.0, max_grad_norm=0.0, eval_every=100),
        "lora": dict(lr=1e-4, weight_decay=0.0, max_grad_norm=0.0, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                     lora_targets=_QKVO, eval_every=100),
    },
    "liger": {
        "transfer": dict(lr=1e-2, weight_decay=0.01, max_grad_norm=0.0, eval_every=200),
        "lora": dict(lr=1e-4, weight_decay=0.01, max_grad_norm=0.0, lora_r=8, lora_alpha=8, lora_dropout=0.0,
                     lora_targets=_QKVO[:3], eval_every=200),
    },
}
MSE_FACTOR = 1000.0  # stage-1 loss: 1000 x the mean over layers of the MSE (LC xent0_mse1000 config)


@dataclass
class LolcatsOptions:
    """Settings of the LoLCATs layer. `None` means the variant's default (VARIANT_DEFAULTS)."""

    method: str = "lolcats"
    variant: str = "original"  # original (LoLCATs' code and paper) | liger (the Liger authors' re-run)
    window: int = 64  # softmax keys per query, its own included (LoLCATs' convention, not Liger's `window`)
    window_shape: str | None = None  # terraced (original) | sliding (liger); only sliding decodes exactly
    feature_dim: int | None = None  # f: Hedgehog projection width, 2f features (original 64 capped at the head dim)
    feature_init: str | None = None  # identity (original, --lk_zero_init) | normal (N(0, 0.02), liger) | kaiming
    init_window_factor: float = INIT_WINDOW_FACTOR
    train_window_factor: bool | None = None  # stage 1 trains the window factors (original) or keeps them (liger)
    eps: float | None = None  # added to the shared denominator (original 0, liger 1e-6)
    softmax_layers: list[int] = field(default_factory=list)  # layers kept as softmax attention
    chunk_size: int = 1024  # queries per block of the parallel form: memory O(chunk * (chunk + 2 window))

    def __post_init__(self) -> None:
        if self.method != "lolcats":
            raise LigerError(f"LolcatsOptions is for method 'lolcats', not {self.method!r}")
        if self.variant not in VARIANTS:
            raise LigerError(f"variant={self.variant!r} is not one of {', '.join(VARIANTS)}")
        for name, value in VARIANT_DEFAULTS[self.variant].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.window_shape not in SHAPES:
            raise LigerError(f"window_shape={self.window_shape!r} is not one of {', '.join(SHAPES)}")
        if self.feature_init not in INITS:
            raise LigerError(f"feature_init={self.feature_init!r} is not one of {', '.join(INITS)}")
        if self.window < 1 or self.chunk_size < 1 or (self.feature_dim is not None and self.feature_dim < 1):
            raise LigerError("window, chunk_size and feature_dim must be >= 1")
        if self.eps < 0:
            raise LigerError(f"eps must be >= 0, got {self.eps}")
        self.train_window_factor = bool(self.train_window_factor)
        self.softmax_layers = sorted(int(i) for i in self.softmax_layers)

    @classmethod
    def build(cls, method: str = "lolcats", **options) -> LolcatsOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise LigerError(f"unknown LoLCATs option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(method=method, **options)

    def to_dict(self) -> dict:
        return asdict(self)

    def features(self, head_dim: int) -> int:
        """f for a model of this head dimension."""
        return self.feature_dim if self.feature_dim is not None else min(64, head_dim)


def recipe(variant: str, stage: str) -> dict:
    """The TrainConfig overrides of one stage ("transfer" or "lora") of a variant (copies: safe to edit)."""
    if variant not in RECIPES:
        raise LigerError(f"variant={variant!r} is not one of {', '.join(VARIANTS)}")
    return {k: list(v) if isinstance(v, list) else v for k, v in RECIPES[variant][stage].items()}


class HedgehogFeatureMap(nn.Module):
    """phi(x) = max([softmax(x W_h), softmax(-x W_h)], 1e-12) per head h: (B, T, H, D) -> (B, T, H, 2F), fp32."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, feature_dim, device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        u = torch.einsum("bthd,hdf->bthf", x.to(dt), self.weight.to(dt))
        return torch.cat([u.softmax(dim=-1), (-u).softmax(dim=-1)], dim=-1).clamp(min=FEATURE_EPS)

    def extra_repr(self) -> str:
        h, d, f = self.weight.shape
        return f"heads={h}, head_dim={d}, features=2x{f}"


@torch.no_grad()
def init_feature_maps(fq: HedgehogFeatureMap, fk: HedgehogFeatureMap, how: str) -> None:
    """identity: W_h = eye(D, F) for q and k (LC zero_init_ without skip connection, as every README run);
    normal: N(0, 0.02) drawn for q and k independently (the re-run's HF init, LOLCATS.md 7.3);
    kaiming: kaiming_uniform_ on the (H, D, F) tensor of q, k a copy of it (LC's constructor default)."""
    w = fq.weight
    if how == "identity":
        w.copy_(torch.eye(w.shape[1], w.shape[2], dtype=w.dtype, device=w.device).expand_as(w))
        fk.weight.copy_(w)
    elif how == "normal":
        w.normal_(0.0, 0.02)
        fk.weight.normal_(0.0, 0.02)
    else:
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        fk.weight.copy_(w)


def added_parameters(config, options: LolcatsOptions) -> int:
    """Parameters the conversion adds: per converted layer 2 H D F (the two feature maps) + H (window factors)."""
    H = config.num_attention_heads
    D = getattr(config, "head_dim", None) or config.hidden_size // H
    converted = config.num_hidden_layers - len(options.softmax_layers)
    return converted * (2 * H * D * options.features(D) + H)


class LolcatsAttention(LigerAttention):
    """Drop-in replacement for a Llama-family attention module; the LoLCATs layer of LOLCATS.md section 2.

    `transfer = True` (stage 1) computes the softmax teacher and the hybrid student, keeps their MSE in
    `transfer_mse` and returns the teacher's output, so every layer sees the original hidden states.
    """

    supports_step = False  # liger.decode's fixed-buffer step is the Liger layer's; LoLCATs decodes via generate


    def __init__(self, attn: nn.Module, options: LolcatsOptions, padding: PaddingContext) -> None:
        super().__init__(attn, options, padding)
        H, D = self.num_heads, self.head_dim
        f = options.features(D)
        device = attn.q_proj.weight.device
        self.feature_map_q = HedgehogFeatureMap(H, D, f, device=device)
        self.feature_map_k = HedgehogFeatureMap(H, D, f, device=device)
        self.window_factors = nn.Parameter(torch.full((H,), float(options.init_window_factor), device=device,
                                                      dtype=torch.float32))
        if device.type != "meta":
            init_feature_maps(self.feature_map_q, self.feature_map_k, options.feature_init)
        self.transfer = False
        self.transfer_mse: torch.Tensor | None = None

    def extra_repr(self) -> str:
        o = self.options
        return f"lolcats {o.variant}, window={o.window} ({o.window_shape}), eps={o.eps}"

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, past_key_values=None,
                **kwargs) -> tuple[torch.Tensor, None]:
        """The LigerAttention call contract: (output, None)."""
        B, T, _ = hidden_states.shape
        q, k, v = self.project(hidden_states)
        cos, sin = position_embeddings
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # the feature maps act on the rotated q and k
        valid = self.padding.token_mask(T)
        cache = liger_cache_layer(past_key_values, self.layer_idx, self.options.window)
        if self.transfer:
            y = self.attention_transfer(q, k, v, valid)
        elif cache is None or cache.seen == 0:
            y = self.parallel(q, k, v, valid, cache)
        else:
            y = self.continued(q, k, v, valid, cache)
        if cache is not None:
            cache.seen += T
        return self.o_proj(y.to(v.dtype).reshape(B, T, -1)), None

    def _kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys and values expanded to the query heads (before the feature map, LOLCATS.md 2.1) and phi_k(k)."""
        n_rep = self.num_heads // self.num_kv_heads
        k, v = repeat_heads(k, n_rep), repeat_heads(v, n_rep)
        return k, v, self.feature_map_k(k)

    def _hybrid(self, q, k, v, fq, fk, qpos, kpos, key_mask, state, shape, offset=0) -> torch.Tensor:
        o = self.options
        return hybrid_attention(q, k, v, fq, fk, torch.sigmoid(self.window_factors), window=o.window, qpos=qpos,
                                kpos=kpos, shape=shape, offset=offset, scale=self.scaling, eps=o.eps,
                                key_mask=key_mask, state=state)

    def parallel(self, q, k, v, valid, cache: LigerCacheLayer | None) -> torch.Tensor:
        """The hybrid over a whole sequence (no earlier state), in query blocks of `chunk_size`; then, with a
        cache, its decoding state: the last `window` keys and values, and (S, z) over every older key."""
        o = self.options
        B, T = q.shape[:2]
        kr, vr, fk = self._kv(k, v)
        fq = self.feature_map_q(q)
        pos = torch.arange(T, device=q.device)
        offset = 0
        if o.window_shape == "terraced":  # blocks end at each sequence's last real token (right padding: per row)
            last = T if valid is None else (valid * torch.arange(1, T + 1, device=q.device)).amax(dim=1)
            offset = (-last) % o.window
        outs, state, absorbed = [], None, 0
        for s in range(0, T, o.chunk_size):
            e = min(T, s + o.chunk_size)
            first = max(0, s - 2 * o.window)  # every key before it is in L(p) of every query p >= s (both shapes)
            if first > absorbed:
                mask = valid[:, absorbed:first] if valid is not None else None
                state = absorb(state, fk[:, absorbed:first], vr[:, absorbed:first], mask)
                absorbed = first
            outs.append(self._hybrid(q[:, s:e], kr[:, first:e], vr[:, first:e], fq[:, s:e], fk[:, first:e],
                                     pos[s:e], pos[first:e], valid[:, first:e] if valid is not None else None,
                                     state, o.window_shape, offset))
        if cache is not None:
            cache.extend_window(k, v, valid)
            old = max(0, T - o.window)
            cache.state = absorb(None, fk[:, :old], vr[:, :old], valid[:, :old] if valid is not None else None)
        return torch.cat(outs, dim=1)

    def continued(self, q, k, v, valid, cache: LigerCacheLayer) -> torch.Tensor:
        """New tokens after a cached prefix, `chunk_size` at a time: softmax over the cached window and the new
        keys, linear attention through (S, z) and over the window keys that fell out of a query's window. Always
        the sliding window (the state holds exactly its split), so decoding equals the sliding parallel form."""
        o = self.options
        outs = []
        for s in range(0, q.shape[1], o.chunk_size):
            e = min(q.shape[1], s + o.chunk_size)
            keys, values, mask = cache.extend_window(k[:, s:e], v[:, s:e], valid[:, s:e] if valid is not None else None)
            kr, vr, fk = self._kv(keys, values)
            n, t = keys.shape[1], e - s
            kpos = torch.arange(n, device=q.device)
            outs.append(self._hybrid(q[:, s:e], kr, vr, self.feature_map_q(q[:, s:e]), fk, kpos[n - t:], kpos, mask,
                                     cache.state, "sliding"))
            old = n - o.window  # keys now older than the kept window: into the state
            cache.state = absorb(cache.state, fk[:, :old], vr[:, :old], mask[:, :old])
        return torch.cat(outs, dim=1)

    def attention_transfer(self, q, k, v, valid) -> torch.Tensor:
        """Stage 1: the MSE between the hybrid's and softmax attention's head outputs; returns softmax's."""
        if valid is not None:
            raise LigerError("attention transfer takes unpadded sequences (the packed training chunks)")
        n_rep = self.num_heads // self.num_kv_heads
        with torch.no_grad():
            teacher = nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), repeat_heads(k, n_rep).transpose(1, 2), repeat_heads(v, n_rep).transpose(1, 2),
                is_causal=True, scale=self.scaling,
            ).transpose(1, 2)
        student = self.parallel(q, k, v, None, None)
        self.transfer_mse = nn.functional.mse_loss(student, teacher.to(student.dtype))
        return teacher

"""Options of one Liger conversion: the method and its settings, with the paper's defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from liger.errors import LigerError

METHODS = ("liger_gla", "liger_hgrn2", "liger_gsa")
ALL_METHODS = (*METHODS, "lolcats")  # the Liger methods and the LoLCATs baseline (liger.lolcats)
HYBRIDS = ("liger_attention", "none")
FEATURE_MAPS = ("softmax", "none")
GATE_SOURCES = ("k", "q", "v")


@dataclass
class LigerOptions:
    """Settings of the Liger layer (LIGER.md sections 1-3). `None` means the method's default."""

    method: str = "liger_gla"
    hybrid: str = "liger_attention"  # intra-layer hybrid: sliding-window softmax attention beside the recurrence
    window: int = 64  # the query at t sees keys t-window .. t (flash-attn window_size=(window, 0))
    alpha: float = 0.5  # weight of the sliding-window branch
    beta: float = 0.5  # weight of the recurrent branch (0: window only)
    gate_normalizer: float | None = None  # g = logsigmoid(Pool(k)) / normalizer; 16 for GLA/GSA, 1 for HGRN2
    feature_map: str | None = None  # softmax over the head dim (GLA, HGRN2); none for GSA
    gate_source: str = "k"  # the projection pooled into the gate (the paper's ablation also tries q and v)
    num_slots: int = 64  # GSA slots per head
    softmax_layers: list[int] = field(default_factory=list)  # inter-layer hybrid: layers kept as softmax attention
    chunk_size: int = 16  # chunk length of the PyTorch chunked recurrence
    impl: str = "auto"  # recurrence implementation: auto | chunk | recurrent | fla

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LigerError(f"unknown Liger method {self.method!r}; choose one of {', '.join(ALL_METHODS)}")
        if self.gate_normalizer is None:
            self.gate_normalizer = 1.0 if self.method == "liger_hgrn2" else 16.0
        if self.feature_map is None:
            self.feature_map = "none" if self.method == "liger_gsa" else "softmax"
        for name, value, allowed in [
            ("hybrid", self.hybrid, HYBRIDS),
            ("feature_map", self.feature_map, FEATURE_MAPS),
            ("gate_source", self.gate_source, GATE_SOURCES),
            ("impl", self.impl, ("auto", "chunk", "recurrent", "fla")),
        ]:
            if value not in allowed:
                raise LigerError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if self.window < 1 or self.num_slots < 1 or self.chunk_size < 1 or self.gate_normalizer <= 0:
            raise LigerError("window, num_slots and chunk_size must be >= 1, gate_normalizer > 0")
        if self.hybrid == "none" and self.beta == 0:
            raise LigerError("hybrid=none with beta=0 leaves no branch: the layer would output zeros")
        self.softmax_layers = sorted(int(i) for i in self.softmax_layers)

    @classmethod
    def build(cls, method: str, **options) -> LigerOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise LigerError(f"unknown Liger option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(method=method, **options)

    @classmethod
    def from_dict(cls, d: dict) -> LigerOptions:
        d = dict(d)
        return cls.build(d.pop("method"), **d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def uses_window(self) -> bool:
        return self.hybrid == "liger_attention" and self.alpha != 0

    @property
    def uses_recurrence(self) -> bool:
        return self.beta != 0 or self.hybrid == "none"


def build_options(method: str | None = None, **options):
    """The options of one conversion: `LigerOptions`, or `liger.lolcats.LolcatsOptions` for method lolcats."""
    if method is None:
        raise LigerError(f"options {options} name no method: add \"method\" (one of {', '.join(ALL_METHODS)})")
    if method == "lolcats":
        from liger.lolcats import LolcatsOptions

        return LolcatsOptions.build(method, **options)
    return LigerOptions.build(method, **options)


def options_from_dict(d: dict):
    """`build_options` from a dict holding "method" (a converted model's config entry)."""
    d = dict(d)
    return build_options(d.pop("method", None), **d)

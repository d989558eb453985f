"""The lm-eval model `liger` (`LigerLM`): a base or Liger checkpoint scored by lm-eval's log-likelihood requests.

`LigerLM` is lm-eval 0.4.13's `HFLM` around a model loaded by `liger.load`, with two cuts that change no request:
the text its requests share is tokenized once (`encode_sharing_prefixes`, tested against lm-eval's request-by-request
encoding), and the output head runs only at scored tokens (`liger.loglik`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

from liger.convert import load
from liger.device import resolve_device, resolve_dtype
from liger.errors import LigerError
from liger.loglik import continuation_logprobs
from liger.models import load_tokenizer

log = logging.getLogger(__name__)


def default_batch_tokens(device: str) -> int:
    """Padded tokens per forward of the log-likelihood path (the head runs only at scored tokens, so the body's
    activations bound the memory)."""
    return 65536 if device.startswith("cuda") else 8192


def _load_tokenizer(model_path: Path, adapter: Path | None):
    """The model folder's tokenizer, else the adapter folder's (`liger.models.load_tokenizer`)."""
    for folder in [model_path, adapter]:
        if folder is not None and (tokenizer := load_tokenizer(folder, required=False)) is not None:
            return tokenizer
    raise LigerError(f"{model_path}: no tokenizer (tokenizer.json / tokenizer_config.json) beside the model")


# Splicing a string's tokens from the string before it (`encode_sharing_prefixes`): at least this many leading
# characters shared, and the cut at least this many characters before the two strings differ (and at least half
# the first from the start).
_MIN_SHARED, _CUT_MARGIN = 128, 32
_CHECK_FIRST, _CHECK_EVERY = 16, 256  # spliced strings also encoded whole and compared: the first ones, then 1 in N


def _shared_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings (binary search on C-speed slice comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut(text: str, end: int) -> int:
    """The last word or line start of `text` at or before `end` (0: none): a single space between two non-space
    characters, or a non-space character after a newline."""
    while end > 0:
        r = max(text.rfind(" ", 0, end + 1), text.rfind("\n", 0, end) + 1)
        if r <= 0:
            return 0
        if text[r] == " " and r + 1 < len(text) and not text[r - 1].isspace() and not text[r + 1].isspace():
            return r
        if text[r - 1] == "\n" and not text[r].isspace():
            return r
        end = r - 1
    return 0


def encode_sharing_prefixes(tokenizer: Any, strings: Sequence[str], **kwargs: Any) -> dict[str, list[int]]:
    """`tokenizer(strings, **kwargs)["input_ids"]` by string, without tokenizing again the text strings share.

    Multiple-choice requests are mostly shared text (MMLU: each 5-shot context once alone and once per choice,
    the few-shot examples in every item of a subject), and tokenizing it all took minutes. In sorted order, a string
    sharing at least `_MIN_SHARED` leading characters with the one before it is cut at a word or line start at
    least `_CUT_MARGIN` characters before they differ: its tokens are the previous string's up to the cut, then
    those of its own text from the cut. The splice is kept only where the tokenizer shows the cut is a clean
    token boundary: the previous string's text from the cut, encoded alone, gives exactly the tail of its tokens,
    and both texts from the cut start with the same token. Otherwise (or sharing less) a string is encoded whole.
    A sample of spliced strings is also encoded whole: any difference drops the splicing altogether.
    """
    order = sorted(set(strings))
    cuts = [0] * len(order)
    for i in range(1, len(order)):
        shared = _shared_prefix(order[i - 1], order[i])
        if shared >= _MIN_SHARED and (r := _cut(order[i], shared - _CUT_MARGIN)) >= _MIN_SHARED // 2:
            cuts[i] = r

    def encode(texts: list[str], **kw: Any) -> dict[str, list[int]]:
        texts = list(dict.fromkeys(texts))
        if not texts:
            return {}
        ids = tokenizer(texts, return_attention_mask=False, **kw)["input_ids"]
        return dict(zip(texts, ids, strict=True))

    whole = encode([s for s, r in zip(order, cuts, strict=True) if not r], **kwargs)
    tails = encode([t for i, r in enumerate(cuts) if r for t in (order[i - 1][r:], order[i][r:])],
                   **{**kwargs, "add_special_tokens": False})  # fmt: skip
    out: dict[str, list[int] | None] = {}
    spliced, refused = [], []
    for i, (text, r) in enumerate(zip(order, cuts, strict=True)):
        if not r:
            out[text] = whole[text]
            continue
        before, own, previous = tails[order[i - 1][r:]], tails[text[r:]], out[order[i - 1]]
        keep = len(previous) - len(before) if previous is not None else -1
        if keep >= 0 and before and own and before[0] == own[0] and previous[keep:] == before:
            out[text] = previous[:keep] + own
            spliced.append(text)
        else:  # encoded whole below (and so is the next string, if it was to be spliced from this one)
            out[text] = None
            refused.append(text)
    out |= encode(refused, **kwargs)
    checked = spliced[:_CHECK_FIRST] + spliced[_CHECK_FIRST::_CHECK_EVERY]
    if checked and encode(checked, **kwargs) != {t: out[t] for t in checked}:
        log.warning(
            "tokenizer %s: spliced prefixes differ from whole encodings; encoding every string whole",
            type(tokenizer).__name__,
        )
        return encode(order, **kwargs)
    return out


@register_model("liger")
class LigerLM(HFLM):
    """lm-eval model `liger`: a base or Liger checkpoint loaded with `liger.load` (a LoRA adapter merged).

    `pretrained` is the model folder; the tokenizer is read from it (or from the adapter folder). Other
    keyword arguments are HFLM's (e.g. max_length, add_bos_token). Log-likelihood batches are right-padded
    by lm-eval (fine for causal models); the tokenizer pads left for generation.
    """

    def __init__(
        self,
        pretrained: str | Path,
        adapter: str | Path | None = None,
        layer_options: dict | None = None,
        device: str | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        batch_size: int | str | None = None,
        max_batch_size: int | None = 64,
        batch_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        model_path = Path(pretrained)
        adapter = Path(adapter) if adapter else None
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        model = load(model_path, adapter=adapter, layer_options=layer_options, dtype=torch_dtype).to(dev).eval()
        tokenizer = _load_tokenizer(model_path, adapter)
        tokenizer.padding_side = "left"
        super().__init__(
            pretrained=model,
            tokenizer=tokenizer,
            backend="causal",
            batch_size=batch_size if batch_size is not None else 1,
            max_batch_size=max_batch_size,
            **kwargs,
        )
        self.batch_size_per_gpu = batch_size  # rows per forward of `_loglikelihood_tokens`; None: no cap
        self.model_path, self.adapter_path = model_path, adapter
        self.batch_tokens = batch_tokens or default_batch_tokens(dev)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        """HFLM's `tok_encode`, answered from the batch encoded by `loglikelihood` when it has the string."""
        cached = getattr(self, "_encoded", {}).get(string)
        if cached is not None and add_special_tokens is None and not left_truncate_len and not kwargs:
            return list(cached)
        return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's own loglikelihood, with the strings its `_encode_pair` will ask for encoded in one batch.

        MMLU's four choices share one long 5-shot context; encoding request by request on one core made
        tokenizing take minutes on the GPU machine. The token ids are lm-eval's (tested).
        """
        strings = []
        for context, continuation in (req.args for req in requests):
            if context:  # _encode_pair moves the context's trailing spaces to the continuation
                strings += [context.rstrip(), context + continuation]
        bos = self.tokenizer.decode(self.prefix_token_id)
        plain = [s for s in dict.fromkeys(strings) if not has_bos_prefix(s, bos)]  # BOS-prefixed: the usual path
        self._encoded = encode_sharing_prefixes(self.tokenizer, plain, **_add_special_kwargs(None, self.add_bos_token))
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._encoded = {}

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        """lm-eval's answers (log-probability sum, greedy match) with the head only at scored tokens
        (`liger.loglik`): each distinct input once, batched by `batch_tokens`, at most `batch_size` rows."""
        rows = override_bs or self.batch_size_per_gpu
        answers = continuation_logprobs(
            self.model, [(context, continuation) for _, context, continuation in requests], self.max_length,
            max_batch_tokens=self.batch_tokens, max_rows=int(rows) if rows else None,
            progress=not disable_tqdm,
        )  # fmt: skip
        for (request, _, _), answer in zip(requests, answers, strict=True):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return answers

    def get_model_info(self) -> dict:
        """Local model information (HFLM's would query the hub)."""
        return {
            "model_path": str(self.model_path),
            "adapter": str(self.adapter_path) if self.adapter_path else None,
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.dtype),
        }

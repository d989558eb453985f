"""Log-likelihoods of continuations with the output head only where a continuation token is scored.

lm-eval's `HFLM` computes the full vocabulary log-softmax at every position of every request, keeps it for the
batch, and runs requests that share an input once only when the continuation is one token. Multiple-choice
benchmarks need far less: the log-probability of each continuation token and whether it is the argmax. Here
the model body runs once per distinct input (padded on the right, longest first, batched by a token budget),
the head runs only on the hidden states of the scored positions, and the log-softmax is taken in float32 over
chunks of those positions. Inputs and truncation are lm-eval's (`(context + continuation)[-(max_length + 1):][:-1]`);
tests/test_evaluate.py checks the answers against `HFLM._loglikelihood_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class _Input:
    """One distinct model input and the requests scored on it."""

    tokens: list[int]
    requests: list[int]  # indices into the request list
    n_positions: int = 0  # the last n positions, whose next-token distributions are scored


def _distinct_inputs(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int) -> list[_Input]:
    """The distinct model inputs of (context, continuation) token pairs (lm-eval's truncation from the left)."""
    by_tokens: dict[tuple[int, ...], _Input] = {}
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ValueError(f"request {i}: empty context or continuation (lm-eval adds the prefix token)")
        if len(continuation) > max_length:
            raise ValueError(f"request {i}: continuation of {len(continuation)} tokens exceeds max_length {max_length}")
        key = tuple((list(context) + list(continuation))[-(max_length + 1):][:-1])
        x = by_tokens.setdefault(key, _Input(list(key), []))
        x.requests.append(i)
        x.n_positions = max(x.n_positions, len(continuation))
    return list(by_tokens.values())


def _batches(lengths: Sequence[int], max_tokens: int, max_rows: int | None) -> list[list[int]]:
    """Indices sorted by length, longest first, cut into batches whose padded size stays within `max_tokens`.

    Every batch but the last holds a power of two rows (or `max_rows`): fla's kernels autotune anew at each batch
    size they meet (`chunk_local_cumsum`'s key holds B), and a token budget alone gives a different size for
    nearly every input length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cap = 0
    for i in order:
        if batches and len(batches[-1]) < cap:
            batches[-1].append(i)
            continue
        fit = max(1, max_tokens // lengths[i])
        cap = min(1 << (fit.bit_length() - 1), max_rows or fit)
        batches.append([i])
    return batches


def body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A causal LM's decoder body (returns hidden states) and its output head."""
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if head is None or body is None or body is model:
        raise TypeError(f"{type(model).__name__}: no separate decoder body and output head")
    return body, head


@torch.inference_mode()
def continuation_logprobs(
    model: torch.nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int,
    max_batch_tokens: int = 32768,
    max_rows: int | None = None,
    head_chunk: int = 2048,
    progress: bool = True,
) -> list[tuple[float, bool]]:
    """(sum of log-probabilities of the continuation, whether every continuation token is the argmax) for each
    (context tokens, continuation tokens) pair, as `HFLM._loglikelihood_tokens` defines them."""
    inputs = _distinct_inputs(pairs, max_length)
    body, head = body_and_head(model)
    device = next(model.parameters()).device
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    bar = tqdm(total=len(pairs), disable=not progress, desc="log-likelihoods (head at scored tokens)")
    for batch in _batches([len(x.tokens) for x in inputs], max_batch_tokens, max_rows):
        rows = [inputs[k] for k in batch]
        ids = torch.zeros(len(rows), len(rows[0].tokens), dtype=torch.long)  # right padding: after, unseen (causal)
        for r, x in enumerate(rows):
            ids[r, : len(x.tokens)] = torch.tensor(x.tokens)
        hidden = body(input_ids=ids.to(device), use_cache=False).last_hidden_state
        # the scored positions of each row, and every (position, target token) a request asks of them
        where_r, where_c, ask_pos, ask_tok, spans = [], [], [], [], []
        for r, x in enumerate(rows):
            first = len(where_r)
            where_r += [r] * x.n_positions
            where_c += range(len(x.tokens) - x.n_positions, len(x.tokens))
            for i in x.requests:
                target = list(pairs[i][1])
                start = len(ask_pos)
                ask_pos += range(first + x.n_positions - len(target), first + x.n_positions)
                ask_tok += target
                spans.append((i, start, len(ask_pos)))
        selected = hidden[torch.tensor(where_r, device=device), torch.tensor(where_c, device=device)]
        pos = torch.tensor(ask_pos, device=device)
        tok = torch.tensor(ask_tok, device=device)
        logp = torch.empty(len(ask_pos), device=device)
        hit = torch.empty(len(ask_pos), dtype=torch.bool, device=device)
        for start in range(0, selected.shape[0], head_chunk):
            logits = head(selected[start:start + head_chunk]).float()
            lse, top = torch.logsumexp(logits, dim=-1), logits.argmax(dim=-1)
            mine = ((pos >= start) & (pos < start + head_chunk)).nonzero().squeeze(-1)
            local = pos[mine] - start
            logp[mine] = logits[local, tok[mine]] - lse[local]
            hit[mine] = top[local] == tok[mine]
        logp, hit = logp.double().cpu(), hit.cpu()
        for i, a, b in spans:
            out[i] = (float(logp[a:b].sum()), bool(hit[a:b].all()))
        bar.update(len(spans))
    bar.close()
    return out

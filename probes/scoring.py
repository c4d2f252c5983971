"""Teacher-forced scoring and greedy generation, fast on a CPU (imports torch; only the probes'
model-facing code imports this module).

Scoring (`score_groups`): a *group* is one context and the candidate continuations to rank after
it. The contexts of a batch share a prefix (the few-shot examples of a relation, the chat template's
system turn): it is encoded once and its KV cache repeated over the batch. Each row then holds the
rest of one context followed by all its candidates; a 4D attention mask lets every candidate see the
context and only itself (a small tree), with the position ids of a plain sequence, so a row costs
len(context rest) + sum(len(candidates)) tokens instead of n_candidates * len(context). The numbers
agree with lm-evaluation-harness `HFLM.loglikelihood` on the same requests (tests/probes/test_lm_eval_agreement.py).

Tokenization follows lm-eval's `_encode_pair`: trailing spaces move from the context to the
continuation, the whole string is encoded and the continuation is what follows the context's tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

Group = tuple[tuple[int, ...], list[tuple[int, ...]]]  # (context ids, [candidate ids, ...])


def pick_device() -> tuple[str, Any]:
    """(device, dtype): bf16 on a CUDA GPU, fp32 on the CPU."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` as written: no BOS/EOS added (chat renders carry their own specials)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """lm-eval's causal `_encode_pair`: (context ids, continuation ids)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return tuple(whole[: len(ctx)]), tuple(whole[len(ctx) :])


def build_groups(
    tokenizer: Any, contexts: Sequence[str], candidates: Sequence[Sequence[str]]
) -> tuple[list[Group], list[list[tuple[int, int]]]]:
    """Encode each (context, candidate) pair; pairs whose context ids agree share a group (almost
    always one group per context). Returns the groups and, per context, the (group, index) of each
    candidate's score."""
    groups: list[Group] = []
    where: list[list[tuple[int, int]]] = []
    for context, cands in zip(contexts, candidates):
        by_ctx: dict[tuple[int, ...], int] = {}
        places = []
        for cand in cands:
            ctx_ids, cont_ids = encode_pair(tokenizer, context, cand)
            g = by_ctx.get(ctx_ids)
            if g is None:
                g = by_ctx[ctx_ids] = len(groups)
                groups.append((ctx_ids, []))
            groups[g][1].append(cont_ids)
            places.append((g, len(groups[g][1]) - 1))
        where.append(places)
    return groups, where


def _lcp(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def _batches(groups: Sequence[Group], order: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Consecutive runs of `order` (sorted by context). A batch ends when it is full, or when adding
    a group would shorten the shared prefix by more tokens (times the rows already in) than the
    group itself costs on its own, or when it shares less than half of its context with the group
    before it (sorted order puts a context with its own few-shot examples next to a relation's
    common ones: the common run then starts a batch of its own, with its long prefix cached once)."""
    out: list[list[int]] = []
    cur: list[int] = []
    lcp = longest = 0
    for i in order:
        ctx, conts = groups[i]
        n = len(ctx) + sum(len(c) for c in conts)
        if cur:
            new_lcp = min(lcp, _lcp([groups[cur[0]][0], ctx]))
            prev = groups[cur[-1]][0]
            rows = len(cur) + 1
            if (
                rows > max_rows
                or rows * (max(longest, n) - new_lcp) > max_tokens
                or (lcp - new_lcp) * len(cur) > n
                or 2 * _lcp([prev, ctx]) < min(len(prev), len(ctx))
            ):
                out.append(cur)
                cur = []
            else:
                lcp = new_lcp
        if not cur:
            lcp, longest = len(ctx), 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def _parts(model: Any) -> tuple[Any, Any]:
    """(decoder, output head) of a causal LM or a PeftModel around one: the head is applied only to
    the positions that predict a candidate token (a full logits tensor is most of the memory)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings()
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    # What some families' forward() does after the output layer (transformers' modeling code):
    # Cohere multiplies by logit_scale, Granite divides by logits_scaling, Gemma 2/3 soft-cap.
    scale = getattr(config, "logit_scale", None)
    divide = getattr(config, "logits_scaling", None)
    cap = getattr(config, "final_logit_softcapping", None)
    if not (scale or divide or cap):
        return inner.get_decoder(), head

    def scaled_head(hidden: Any) -> Any:
        logits = head(hidden)
        if scale:
            logits = logits * scale
        if divide:
            logits = logits / divide
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return inner.get_decoder(), scaled_head


def _prefix_cache(model: Any, prefix: Sequence[int], rows: int, device: str) -> Any:
    if not prefix:
        return None
    out = _parts(model)[0](input_ids=torch.tensor([list(prefix)], device=device), use_cache=True)
    cache = out.cache
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return cache


@torch.inference_mode()
def score_groups(
    model: Any, groups: Sequence[Group], *, max_tokens: int = 4096, max_rows: int = 64
) -> list[list[float]]:
    """Sum of log-probabilities of each candidate's tokens after its group's context.

    Groups are sorted by context so that neighbours share long prefixes; a batch holds at most
    `max_rows` rows and `max_tokens` padded tokens."""
    device = next(model.parameters()).device
    results: list[list[float]] = [[0.0] * len(conts) for _, conts in groups]
    order = sorted(range(len(groups)), key=lambda i: groups[i][0])
    for batch in _batches(groups, order, max_tokens, max_rows):
        for i in batch:
            if not groups[i][0]:
                raise ValueError("a context must have at least one token (lm-eval puts a BOS/EOS there)")
        contexts = [groups[i][0] for i in batch]
        prefix_len = min(_lcp(contexts), min(len(c) for c in contexts) - 1)
        rows, segs, poss = [], [], []
        for i in batch:
            ctx, conts = groups[i]
            rest = list(ctx[prefix_len:])
            row, seg = list(rest), [0] * len(rest)
            pos = list(range(prefix_len, prefix_len + len(rest)))
            for c, cand in enumerate(conts):
                row += list(cand)
                seg += [c + 1] * len(cand)
                pos += list(range(prefix_len + len(rest), prefix_len + len(rest) + len(cand)))
            rows.append(row)
            segs.append(seg)
            poss.append(pos)
        width = max(len(r) for r in rows)
        n = len(rows)
        ids = torch.zeros((n, width), dtype=torch.long)
        seg_t = torch.full((n, width), -1, dtype=torch.long)
        pos_t = torch.full((n, width), prefix_len, dtype=torch.long)
        for b, (r, s, p) in enumerate(zip(rows, segs, poss)):
            ids[b, : len(r)] = torch.tensor(r)
            seg_t[b, : len(s)] = torch.tensor(s)
            pos_t[b, : len(p)] = torch.tensor(p)
        q = torch.arange(width)
        causal = q[None, :, None] >= q[None, None, :]  # (1, Q, K): key k <= query i
        seg_q, seg_k = seg_t[:, :, None], seg_t[:, None, :]
        allowed = causal & (seg_k != -1) & ((seg_k == 0) | (seg_k == seg_q))
        allowed |= torch.eye(width, dtype=torch.bool)[None]  # pads see themselves: no empty softmax row
        allowed = torch.cat([torch.ones((n, width, prefix_len), dtype=torch.bool), allowed], dim=2)
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        cache = _prefix_cache(model, contexts[0][:prefix_len], n, device)
        decoder, head = _parts(model)
        hidden = decoder(
            input_ids=ids.to(device),
            attention_mask=mask[:, None].to(device),
            position_ids=pos_t.to(device),
            cache=cache,
            use_cache=cache is not None,
        ).last_hidden_state
        # gather the positions that predict candidate tokens, then one log_softmax over them
        rb, rp, tgt, owner = [], [], [], []
        for b, i in enumerate(batch):
            ctx, conts = groups[i]
            last_ctx = len(ctx) - prefix_len - 1  # predicts every candidate's first token
            start = last_ctx + 1
            for c, cand in enumerate(conts):
                for t, tok in enumerate(cand):
                    rb.append(b)
                    rp.append(last_ctx if t == 0 else start + t - 1)
                    tgt.append(tok)
                    owner.append((i, c))
                start += len(cand)
        if not tgt:
            continue
        picked = head(hidden[torch.tensor(rb, device=device), torch.tensor(rp, device=device)]).float()
        logp = torch.log_softmax(picked, dim=-1).gather(1, torch.tensor(tgt, device=device)[:, None])[:, 0].tolist()
        for (i, c), lp in zip(owner, logp):
            results[i][c] += lp
    return results


def loglikelihood(model: Any, tokenizer: Any, requests: Sequence[tuple[str, str]], **kw: Any) -> list[float]:
    """lm-eval's `loglikelihood` contract: log P(continuation | context) for each (context,
    continuation) pair; requests sharing a context text share one group."""
    contexts: dict[str, list[int]] = {}
    cands: list[list[str]] = []
    ctx_list: list[str] = []
    place: list[tuple[int, int]] = []
    for context, cont in requests:
        k = contexts.get(context)
        if k is None:
            k = contexts[context] = len(ctx_list)
            ctx_list.append(context)
            cands.append([])
        cands[k].append(cont)
        place.append((k, len(cands[k]) - 1))
    groups, where = build_groups(tokenizer, ctx_list, cands)
    scores = score_groups(model, groups, **kw)
    return [scores[where[k][j][0]][where[k][j][1]] for k, j in place]


@torch.inference_mode()
def greedy(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: set[int],
    max_rows: int = 32,
    max_tokens: int = 4096,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts, batched: the batch's shared prefix is encoded once,
    the rest is right-padded (pads masked, true position ids), and a row stops at a token in
    `stop_ids` (kept) or after `max_new_tokens`."""
    device = next(model.parameters()).device
    outs: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: tuple(prompts[i]))
    decoder, head = _parts(model)
    for batch in _batches([(tuple(p), []) for p in prompts], order, max_tokens, max_rows):
        seqs = [list(prompts[i]) for i in batch]
        prefix_len = min(_lcp(seqs), min(len(x) for x in seqs) - 1)
        n = len(seqs)
        rests = [x[prefix_len:] for x in seqs]
        width = max(len(r) for r in rests)
        ids = torch.zeros((n, width), dtype=torch.long)
        att = torch.zeros((n, prefix_len + width), dtype=torch.long)
        att[:, :prefix_len] = 1
        pos = torch.zeros((n, width), dtype=torch.long)
        for b, r in enumerate(rests):
            ids[b, : len(r)] = torch.tensor(r)
            att[b, prefix_len : prefix_len + len(r)] = 1
            pos[b] = torch.arange(prefix_len, prefix_len + width)
        cache = _prefix_cache(model, seqs[0][:prefix_len], n, device)
        out = decoder(
            input_ids=ids.to(device),
            attention_mask=att.to(device),
            position_ids=pos.to(device),
            cache=cache,
            use_cache=True,
        )
        cache = out.cache
        last = torch.tensor([len(r) - 1 for r in rests])
        nxt = head(out.last_hidden_state[torch.arange(n), last.to(device)]).argmax(-1).cpu()
        next_pos = torch.tensor([prefix_len + len(r) for r in rests])
        done = torch.zeros(n, dtype=torch.bool)
        for step in range(max_new_tokens):
            for b in range(n):
                if not done[b]:
                    tok = int(nxt[b])
                    outs[batch[b]].append(tok)
                    if tok in stop_ids:
                        done[b] = True
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            att = torch.cat([att, torch.ones((n, 1), dtype=torch.long)], dim=1)
            out = decoder(
                input_ids=nxt[:, None].to(device),
                attention_mask=att.to(device),
                position_ids=next_pos[:, None].to(device),
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            nxt = head(out.last_hidden_state[:, -1]).argmax(-1).cpu()
            next_pos += 1
    return outs


@torch.inference_mode()
def token_logps(
    model: Any, seqs: Sequence[Sequence[int]], *, max_tokens: int = 4096, max_rows: int = 32, extra: Sequence[int] = ()
) -> list[tuple[list[float], list[float]]]:
    """Teacher-forced log P(token t | tokens < t) for t = 1..len-1 of each sequence (right-padded
    batches), and per position the summed probability of the `extra` token ids (e.g. end-of-turn)."""
    device = next(model.parameters()).device
    decoder, head = _parts(model)
    out: list[tuple[list[float], list[float]]] = [([], []) for _ in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batch: list[int] = []

    def flush() -> None:
        width = max(len(seqs[i]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        for b, i in enumerate(batch):
            ids[b, : len(seqs[i])] = torch.tensor(list(seqs[i]))
            att[b, : len(seqs[i])] = 1
        hidden = decoder(input_ids=ids.to(device), attention_mask=att.to(device)).last_hidden_state
        for b, i in enumerate(batch):
            n = len(seqs[i])
            logp = torch.log_softmax(head(hidden[b, : n - 1]).float(), dim=-1)
            tgt = ids[b, 1:n].to(device)
            lp = logp.gather(1, tgt[:, None])[:, 0].tolist()
            ex = logp[:, list(extra)].exp().sum(-1).tolist() if extra else [0.0] * (n - 1)
            out[i] = (lp, ex)

    for i in order:
        if batch and (len(batch) + 1 > max_rows or (len(batch) + 1) * len(seqs[i]) > max_tokens):
            flush()
            batch = []
        batch.append(i)
    if batch:
        flush()
    return out


@torch.inference_mode()
def log_softmax_all(model: Any, seq: Sequence[int], vocab: int) -> Any:
    """(len-1, vocab) next-token log-probabilities over the first `vocab` ids (drift on neutral text)."""
    device = next(model.parameters()).device
    decoder, head = _parts(model)
    hidden = decoder(input_ids=torch.tensor([list(seq)], device=device)).last_hidden_state[0, :-1]
    return torch.log_softmax(head(hidden).float()[:, :vocab], dim=-1).cpu()

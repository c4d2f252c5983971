"""The checks `sftdata audit` runs: plain functions that yield Findings and never raise on bad data.

Each check function declares the ids it can emit with `@emits(...)` (sftdata.catalogue holds every
id's severity, explanation and fix); the audit reads those declarations to skip what --select/--ignore
leave nothing to do for. What runs where (sftdata.audit drives it in one streaming pass):

  once per tokenizer   check_pad_token, check_template, check_embeddings (only with model weights)
  per conversation     check_roles, check_special_strings
  per tokenized        check_double_bos, check_mask, check_length

Findings that tokenizing itself notices (template.render-error, template.not-prefix-preserving,
template.generation-prompt-mismatch, mask.boundary-mismatch for a token straddling a boundary) come
from sftdata.masks on each Tokenized (masks.EMITS); format.* findings about records come from
sftdata.formats.read (formats.EMITS).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftdata import masks
from sftdata.catalogue import emits, finding
from sftdata.records import Conversation, Finding, Tokenized

log = logging.getLogger(__name__)

# ============================================================================================
# The catalogue
# ============================================================================================


# ============================================================================================
# What the checks need to know about a tokenizer (computed once)
# ============================================================================================

# Strings shaped like control tokens of some model family. Matches that are single tokens of the
# vocabulary at hand are fine (or tokens.special-in-content); the rest are tokens.unknown-special.
_SPECIAL_LOOKING = re.compile(
    r"<\|[^<>|\s]{1,48}\|>"  # <|im_end|>, <|foo|>
    r"|</?[a-z]+(?:_[a-z0-9]+)+>"  # <special_token_1>, <end_of_turn> (filtered by keywords below)
    r"|</?(?:pad|unk|eos|bos|eot|think|unused\d+)>"  # not <mask>/<sep>: fill-mask tasks use them as text
    r"|\[/?(?:INST|SYS|TOOL_CALLS|AVAILABLE_TOOLS|TOOL_RESULTS)\]|<</?SYS>>"
)
_TOKEN_WORDS = frozenset(
    "special token turn sep tool call think unused reserved extra fim eot eos bos pad unk sys inst im".split()
)
_TRAINED_RUN = re.compile(rb"\x01+")
_PH = "\ue000{}\ue001"  # placeholders no template alters (private-use code points)


def _probe(tokenizer: Any, template: str, messages: list[dict[str, Any]], **kw: Any) -> str | None:
    try:
        return masks.render(tokenizer, messages, template=template, **kw)
    except masks.TemplateError:
        return None


@dataclass(frozen=True)
class TokenizerInfo:
    """What the checks need from a tokenizer, computed once by tokenizer_info()."""

    name: str
    bos_id: int | None
    eos_ids: frozenset[int]  # tokenizer eos + generation_config.json eos_token_id
    generation_eos_ids: tuple[int, ...]  # from generation_config.json (empty when absent)
    pad_id: int | None
    special_ids: frozenset[int]  # added tokens marked special: control tokens
    special_pattern: re.Pattern[str] | None  # matches any special token's text
    special_first_chars: str  # a content without any of these chars holds no special token
    context_length: int | None  # model_max_length when it is a real limit
    generation_prompt: str | None  # what add_generation_prompt=True appends (None: it does not extend the prompt)
    assistant_header: str | None  # what the training render puts between the prompt and the answer
    answer_prefix: str  # the part of that header after the generation prompt (Qwen3: an empty think block)
    model_dir: str | None
    decode: Callable[[Sequence[int]], str]  # ids -> text, special tokens kept
    count_pieces: Callable[[str], int]  # how many tokens a string becomes
    is_token: Callable[[str], bool]  # is this string one token of the vocabulary


def _byte_level_decoder(backend: Any, table: list[bytes] | None = None) -> Callable[[Sequence[int]], str] | None:
    """A table decoder for byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM): bytes per id, joined.
    Several times faster than backend.decode for short sequences, and exact."""
    table = table if table is not None else masks.byte_level_table(backend)
    if table is None:
        return None
    get = table.__getitem__

    def decode(ids: Sequence[int]) -> str:
        try:
            return b"".join(map(get, ids)).decode("utf-8", errors="replace")
        except IndexError:
            return backend.decode(list(ids), skip_special_tokens=False)

    return decode


def read_generation_eos(model_dir: str | None) -> tuple[int, ...]:
    """eos_token_id from generation_config.json in `model_dir` (an int or a list), if present."""
    if not model_dir:
        return ()
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        log.warning("%s: unreadable (%s); generation EOS ids not used", path, e)
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, int))
    return ()


def tokenizer_info(
    tokenizer: Any, model_dir: str | None = None, prepared: masks.Tokenizer | None = None
) -> TokenizerInfo:
    """What the checks need from `tokenizer`; `prepared` (masks.prepare(tokenizer)) lends its byte table."""
    backend = tokenizer.backend_tokenizer
    generation_eos = read_generation_eos(model_dir)
    eos = tokenizer.eos_token_id
    specials = {tok.content: i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special and tok.content}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):  # special even when not "added"
        text = getattr(tokenizer, name, None)
        if isinstance(text, str) and text and backend.token_to_id(text) is not None:
            specials.setdefault(text, backend.token_to_id(text))
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))) if specials else None
    limit = getattr(tokenizer, "model_max_length", None)
    piece_cache: dict[str, int] = {}

    def count_pieces(text: str) -> int:
        if text not in piece_cache:
            if len(piece_cache) > 10_000:
                piece_cache.clear()
            piece_cache[text] = len(backend.encode(text, add_special_tokens=False).ids)
        return piece_cache[text]

    def slow_decode(ids: Sequence[int]) -> str:
        return backend.decode(list(ids), skip_special_tokens=False)

    gen, header = _assistant_header(tokenizer)
    return TokenizerInfo(
        name=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        bos_id=tokenizer.bos_token_id,
        eos_ids=frozenset(([eos] if eos is not None else []) + list(generation_eos)),
        generation_eos_ids=generation_eos,
        pad_id=tokenizer.pad_token_id,
        special_ids=frozenset(specials.values()),
        special_pattern=pattern,
        special_first_chars="".join(sorted({s[0] for s in specials})),
        context_length=limit if isinstance(limit, int) and 0 < limit < 10_000_000 else None,
        generation_prompt=gen,
        assistant_header=header,
        answer_prefix=header[len(gen) :] if gen and header is not None and header.startswith(gen) else "",
        model_dir=model_dir,
        decode=_byte_level_decoder(backend, prepared.byte_table if prepared is not None else None) or slow_decode,
        count_pieces=count_pieces,
        is_token=lambda s: backend.token_to_id(s) is not None,
    )


def _assistant_header(tokenizer: Any) -> tuple[str | None, str | None]:
    """(generation prompt, assistant header) of the template, from a probe [user, assistant]:
    what add_generation_prompt=True appends to the prompt, and what the training render puts
    between the prompt and the answer. (None, None) without a template or when it raises."""
    try:
        template = masks.template_of(tokenizer)
    except masks.TemplateError:
        return None, None
    answer = _PH.format("a")
    user = [{"role": "user", "content": "What is 2+2?"}]
    prompt = _probe(tokenizer, template, user)
    gen = _probe(tokenizer, template, user, add_generation_prompt=True)
    full = _probe(tokenizer, template, user + [{"role": "assistant", "content": answer}])
    if prompt is None or gen is None or full is None or answer not in full or not full.startswith(prompt):
        return None, None
    return (gen[len(prompt) :] if gen.startswith(prompt) else None), full[len(prompt) : full.index(answer)]


def _token_text(tokenizer: Any, token_id: int | None) -> str:
    if token_id is None:
        return "None"
    return repr(tokenizer.convert_ids_to_tokens(int(token_id)))


def _snippet(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ============================================================================================
# Once per tokenizer
# ============================================================================================


@emits("tokens.pad-is-eos")
def check_pad_token(tokenizer: Any, info: TokenizerInfo) -> Iterator[Finding]:
    """Is the pad token one of the EOS ids?"""
    pad = info.pad_id
    if pad is not None and pad in info.eos_ids:
        yield finding(
            "tokens.pad-is-eos",
            f"the pad token {_token_text(tokenizer, pad)} (id {pad}) is also an EOS token. Safe in sftlab (labels come "
            "from the loss mask, so the end-of-turn token is still trained); dangerous in collators that set "
            "labels to -100 wherever input_ids == pad_token_id: they mask every EOS and the model never learns to stop",
            data={"pad_token_id": pad, "eos_token_ids": sorted(info.eos_ids)},
        )


@emits(
    "template.missing", "template.generation-prompt-mismatch", "template.default-system-prompt", "template.eot-not-eos"
)
def check_template(tokenizer: Any, info: TokenizerInfo) -> Iterator[Finding]:
    """The chat template, rendered on small probe conversations, once per tokenizer. The audit adds
    how many examples each one affects."""
    try:
        template = masks.template_of(tokenizer)
    except masks.TemplateError as e:
        yield finding("template.missing", e.message, hint=e.hint)
        return
    gen, header = info.generation_prompt, info.assistant_header
    if header is None:
        pass  # the probe did not render as a prefix: per-example findings from masks say more
    elif gen is None:
        yield finding(
            "template.generation-prompt-mismatch",
            "the prompt rendered with add_generation_prompt=True does not start with the prompt rendered without it",
        )
    elif gen == "" and header.strip():
        yield finding(
            "template.generation-prompt-mismatch",
            "the template ignores add_generation_prompt=True: at inference the prompt ends without the assistant "
            f"header {_snippet(header)!r} that training renders before the answer, and training learns to emit "
            "that header itself",
            data={"header": header},
        )
    elif not header.startswith(gen):
        yield finding(
            "template.generation-prompt-mismatch",
            f"add_generation_prompt=True appends {_snippet(gen)!r}, but training renders {_snippet(header)!r} before "
            "the answer: the model is trained after one header and asked to answer after another",
            data={"generation_prompt": gen, "header": header},
        )
    yield from _default_system_prompt(tokenizer, template)
    yield from _eot_not_eos(tokenizer, info)


def _default_system_prompt(tokenizer: Any, template: str) -> Iterator[Finding]:
    """Render [user, assistant] and [system, user, assistant] with placeholders: if the text before
    the user turn in the first has the shape of the second's system turn, the template added one."""
    u, a, s = _PH.format("u"), _PH.format("a"), _PH.format("s")
    without = _probe(tokenizer, template, [{"role": "user", "content": u}, {"role": "assistant", "content": a}])
    with_sys = _probe(
        tokenizer,
        template,
        [{"role": "system", "content": s}, {"role": "user", "content": u}, {"role": "assistant", "content": a}],
    )
    if without is None or with_sys is None or u not in without or u not in with_sys or s not in with_sys:
        return
    before = without[: without.index(u)]
    shape = with_sys[: with_sys.index(u)]
    pre, post = shape.split(s, 1)
    if not (before.startswith(pre) and before.endswith(post) and len(before) >= len(pre) + len(post)):
        return
    injected = before[len(pre) : len(before) - len(post)]
    if injected.strip():
        yield finding(
            "template.default-system-prompt",
            f"the template adds the system prompt {_snippet(injected, 100)!r} to every conversation that has no "
            "system message: those examples are trained with it",
            data={"system_prompt": injected},
        )


def _eot_not_eos(tokenizer: Any, info: TokenizerInfo) -> Iterator[Finding]:
    from sftdata.records import Message, Source

    probe = Conversation("probe", (Message("user", "What is 2+2?"), Message("assistant", "4")), Source("<probe>"))
    tok = masks.tokenize(probe, tokenizer)
    trained = [i for i, m in zip(tok.input_ids, tok.loss_mask) if m]
    if not trained or not info.eos_ids:
        return
    last = trained[-1]
    if last in info.eos_ids:
        return
    eos_names = ", ".join(f"{_token_text(tokenizer, e)} ({e})" for e in sorted(info.eos_ids))
    source = "tokenizer eos_token" + (
        " and generation_config.json" if info.generation_eos_ids else " (no generation_config.json found)"
    )
    if last in info.special_ids:
        what = (
            f"assistant turns end with the control token {_token_text(tokenizer, last)} (id {last}), which is not "
            "among the EOS ids generation stops at"
        )
    else:
        what = (
            f"the template closes assistant turns with no end-of-turn token (an answer's last trained token is "
            f"ordinary text, e.g. {_token_text(tokenizer, last)}), so no EOS id generation stops at is trained"
        )
    yield finding(
        "template.eot-not-eos",
        f"{what} ({source}: {eos_names}): the trained model will not stop at the end of its turn",
        data={"end_of_turn_id": last, "eos_token_ids": sorted(info.eos_ids)},
    )


# ============================================================================================
# Per conversation
# ============================================================================================


def expected_trained(conv: Conversation, policy: str) -> list[bool]:
    """Which messages the mask policy trains (the same rule sftdata.masks applies)."""
    msgs = conv.messages
    last = max((i for i, m in enumerate(msgs) if m.role == "assistant"), default=-1)
    out = []
    for i, m in enumerate(msgs):
        if m.train is not None:
            out.append(m.train)
        elif policy == "all":
            out.append(True)
        else:
            out.append(m.role == "assistant" and (policy == "assistant" or i == last))
    return out


@emits("format.no-assistant", "format.role-order")
def check_roles(conv: Conversation, policy: str) -> Iterator[Finding]:
    """Is there an assistant turn, and are the turns in an order templates expect? Raw rows (text, plain prompt/completion) have no
    turns to check."""
    if masks.is_text_row(conv):
        return
    msgs = conv.messages
    roles = [m.role for m in msgs]
    if "assistant" not in roles and policy != "all" and not any(m.train for m in msgs):
        yield finding(
            "format.no-assistant",
            f"no assistant turn (roles: {', '.join(roles)}): nothing in this example is trained",
            conv,
        )
        return
    problems = []
    first = next((i for i, r in enumerate(roles) if r != "system"), None)
    if first is not None and roles[first] == "assistant":
        problems.append(f"starts with an assistant turn (message {first}) before any user turn")
    for i, r in enumerate(roles):
        if r == "system" and i > 0:
            problems.append(f"system message at position {i} (templates expect it first)")
        if i and r == roles[i - 1] and r in ("user", "assistant") and not (r == "assistant" and msgs[i - 1].tool_calls):
            problems.append(f"messages {i - 1} and {i} are both {r} turns")
        if r == "tool":
            j = i - 1
            while j >= 0 and roles[j] == "tool":
                j -= 1
            if j < 0 or roles[j] != "assistant" or not msgs[j].tool_calls:
                problems.append(f"tool result at message {i} follows no assistant tool call")
    if roles[-1] in ("user", "tool") and "assistant" in roles:
        problems.append(f"ends with a {roles[-1]} turn (message {len(roles) - 1}) that nothing answers")
    if problems:
        yield finding(
            "format.role-order",
            f"unexpected turn order ({', '.join(roles)}): " + "; ".join(problems[:4]),
            conv,
            data={"roles": roles},
        )


@emits("tokens.special-in-content", "tokens.unknown-special")
def check_special_strings(conv: Conversation, info: TokenizerInfo) -> Iterator[Finding]:
    """Special-token strings in message content: control tokens of this vocabulary, or
    special-looking strings it does not know (one finding each per conversation)."""
    found: list[tuple[int, int, str]] = []  # (message, char offset, token)
    unknown: list[tuple[int, int, str]] = []
    first = info.special_first_chars
    for i, m in enumerate(conv.messages):
        text = m.content
        if not text:
            continue
        if info.special_pattern is not None and any(c in text for c in first):
            for hit in info.special_pattern.finditer(text):
                found.append((i, hit.start(), hit.group()))
        if "<" in text or "[" in text:
            for hit in _SPECIAL_LOOKING.finditer(text):
                s = hit.group()
                if s.startswith("<") and not s.startswith(("<|", "<<")) and "_" in s:
                    if not _TOKEN_WORDS.intersection(s.strip("</>").split("_")):
                        continue
                if info.is_token(s):
                    continue  # a known token: fine, or special-in-content above
                unknown.append((i, hit.start(), s))
    if found:
        parts = [f"{s!r} in message {i} ({conv.messages[i].role}) at char {k}" for i, k, s in found[:3]]
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        token = found[0][2]
        escaped = token[0] + "\u200b" + token[1:]
        yield finding(
            "tokens.special-in-content",
            f"{'; '.join(parts)}{more}: tokenized as the control token itself, not as text",
            conv,
            hint=f"remove {token!r} from the content, or escape it so it no longer matches the token (e.g. "
            f"{escaped!r}, with a zero-width space); never let untrusted text reach the model as control tokens",
            data={"occurrences": [{"message": i, "char": k, "token": s} for i, k, s in found[:20]]},
        )
    if unknown:
        parts = [
            f"{s!r} in message {i} at char {k} (split into {info.count_pieces(s)} pieces)" for i, k, s in unknown[:3]
        ]
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        yield finding(
            "tokens.unknown-special",
            f"special-looking {'; '.join(parts)}{more}: not a token of this vocabulary",
            conv,
            data={"occurrences": [{"message": i, "char": k, "text": s} for i, k, s in unknown[:20]]},
        )


# ============================================================================================
# Per tokenized example
# ============================================================================================


@emits("tokens.double-bos")
def check_double_bos(conv: Conversation, tok: Tokenized, info: TokenizerInfo) -> Iterator[Finding]:
    """Does the example start with two BOS tokens?"""
    ids = tok.input_ids
    if info.bos_id is not None and len(ids) >= 2 and ids[0] == info.bos_id and ids[1] == info.bos_id:
        yield finding(
            "tokens.double-bos",
            f"the example starts with two BOS tokens (id {info.bos_id}): the data or the template already "
            "begins with the BOS string and the tokenizer adds another",
            conv,
        )


@emits("mask.no-trained-tokens", "mask.eot-not-trained", "mask.prompt-trained", "mask.boundary-mismatch")
def check_mask(
    conv: Conversation, tok: Tokenized, info: TokenizerInfo, policy: str, *, verify_text: bool = True
) -> Iterator[Finding]:
    """The loss mask of what the trainer trains (the truncated Tokenized). `verify_text=False` skips the decode-and-compare
    part (mask.prompt-trained by text, mask.boundary-mismatch)."""
    ids = tok.input_ids
    if not ids:
        return  # not rendered: template.* already says why
    msgs = conv.messages
    if tok.n_trained == 0:
        if masks.is_text_row(conv) or policy == "all" or any(m.role == "assistant" or m.train for m in msgs):
            why = (
                "truncation removed every trained token"
                if tok.truncated
                else "no message is trained under the mask policy and train flags"
            )
            yield finding("mask.no-trained-tokens", f"nothing is trained ({len(ids)} tokens, {why})", conv)
        return
    if masks.is_text_row(conv):  # raw rows: text, or plain prompt/completion (no template)
        if verify_text and conv.shape == "prompt-completion" and not tok.truncated:
            yield from _compare_turn(conv, len(msgs) - 1, [t for t, m in zip(ids, tok.loss_mask) if m], info)
        return
    mi = tok.message_index
    n = len(ids)
    by_message: dict[int, list[tuple[int, int]]] = {}
    glue_trained: list[int] = []
    for run in _TRAINED_RUN.finditer(bytes(tok.loss_mask)):
        a, b = run.span()
        first, last = mi[a], mi[b - 1]
        if first == last and first >= 0:
            by_message.setdefault(first, []).append((a, b))
            continue
        k = a  # a run over several messages or glue: split it
        while k < b:
            j = k
            while j < b and mi[j] == mi[k]:
                j += 1
            if mi[k] >= 0:
                by_message.setdefault(mi[k], []).append((k, j))
            else:
                glue_trained.append(j - k)
            k = j
    expected = expected_trained(conv, policy)
    if policy != "all":
        stray = [i for i in by_message if msgs[i].role != "assistant" and not expected[i]]
        if stray or glue_trained:
            what = [f"message {i} ({msgs[i].role})" for i in stray]
            if glue_trained:
                what.append(f"{sum(glue_trained)} template-glue tokens")
            yield finding("mask.prompt-trained", f"prompt tokens are trained: {', '.join(what)}", conv)
    straddle = any(f.check == "mask.boundary-mismatch" for f in tok.findings)
    for i, m in enumerate(msgs):
        if m.role != "assistant":
            continue
        runs = by_message.get(i)
        if not runs:
            if expected[i] and not straddle and i in mi:  # rendered but not trained
                yield finding(
                    "mask.boundary-mismatch",
                    f"assistant message {i} is rendered but none of it is trained",
                    conv,
                    data={"message": i},
                )
            continue
        end = runs[-1][1]
        if tok.truncated and end == n:
            continue  # cut by truncation: length.truncated-answer says so
        last_id = ids[end - 1]
        if last_id not in info.special_ids:
            following = info.decode(ids[end : end + 3])
            yield finding(
                "mask.eot-not-trained",
                f"assistant message {i} is trained without an end-of-turn token: its last trained token is "
                f"{info.decode([last_id])!r}, followed by {following!r} (untrained): the model never learns to stop",
                conv,
                data={"message": i},
            )
        if verify_text and not straddle:
            trained = ids[runs[0][0] : end] if len(runs) == 1 else [t for a, b in runs for t in ids[a:b]]
            yield from _compare_turn(conv, i, trained, info)


def _compare_turn(conv: Conversation, i: int, trained: Sequence[int], info: TokenizerInfo) -> Iterator[Finding]:
    m = conv.messages[i]
    if trained and trained[-1] in info.special_ids:
        trained = trained[:-1]
    text = info.decode(trained)
    content = m.content
    if text == content or text.strip() == content.strip():
        got_all = True
    else:
        flat_text, flat_content = "".join(text.split()), "".join(content.split())
        if flat_text == flat_content:
            got_all = True
        elif flat_content and flat_text.endswith(flat_content) and not (m.tool_calls or m.reasoning):
            extra = text[: len(text) - len(content.lstrip())] if text.endswith(content.lstrip()) else text[:40]
            if "".join(extra.split()) == "".join(info.answer_prefix.split()):
                return  # the template's own text after the generation prompt (Qwen3: an empty think block)
            if info.generation_prompt == "" and info.assistant_header and info.assistant_header.strip():
                yield finding(
                    "mask.prompt-trained",
                    f"assistant message {i}: the trained text starts with {_snippet(extra)!r} before the "
                    "answer: the template ignores add_generation_prompt, so its assistant header is trained",
                    conv,
                    data={"message": i},
                )
            else:
                yield finding(
                    "mask.boundary-mismatch",
                    f"assistant message {i}: {_snippet(extra)!r} before the content is trained too",
                    conv,
                    data={"message": i},
                )
            return
        elif m.tool_calls or m.reasoning:
            got_all = flat_content in flat_text
        else:
            got_all = False
        if not got_all:
            k = next((j for j, (x, y) in enumerate(zip(text, content)) if x != y), min(len(text), len(content)))
            yield finding(
                "mask.boundary-mismatch",
                f"assistant message {i}: the trained text differs from the content at char {k}: "
                f"trained {_snippet(text[k:], 40)!r}, content {_snippet(content[k:], 40)!r}",
                conv,
                data={"message": i, "char": k},
            )
            return
    dropped = []
    for call in m.tool_calls or ():
        fn = call.get("function", call) if isinstance(call, dict) else {}
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name not in text:
            dropped.append(f"the tool call to {name!r}")
    if m.reasoning and m.reasoning.strip() and "".join(m.reasoning.split())[:200] not in "".join(text.split()):
        dropped.append(f"its reasoning ({len(m.reasoning)} chars)")
    if dropped:
        yield finding(
            "mask.boundary-mismatch",
            f"assistant message {i}: the template does not render {' and '.join(dropped)}; the trained "
            f"text is {_snippet(text, 50)!r}",
            conv,
            data={"message": i},
        )


@emits("length.truncated-answer", "length.over-max")
def check_length(
    conv: Conversation, full: Tokenized, kept: Tokenized, limit: int | None, *, limit_name: str = "--max-length"
) -> Iterator[Finding]:
    """Does truncation cut trained tokens, or only untrained ones? `full` is the untruncated tokenization, `kept` what
    is trained; `limit` is --max-length (or the model's context length when that was not given)."""
    n = len(full.input_ids)
    if limit is None or n <= limit or not n:
        return
    trained_full = full.n_trained
    trained_kept = sum(full.loss_mask[:limit]) if kept is full else kept.n_trained
    lost = trained_full - trained_kept
    if lost > 0:
        yield finding(
            "length.truncated-answer",
            f"{n} tokens, over {limit_name} {limit}: truncation cuts {lost} of {trained_full} trained tokens",
            conv,
            data={"n_tokens": n, "max_length": limit, "trained_lost": lost},
        )
    else:
        yield finding(
            "length.over-max",
            f"{n} tokens, over {limit_name} {limit}; truncation cuts only untrained tokens",
            conv,
            data={"n_tokens": n, "max_length": limit},
        )


# ============================================================================================
# With model weights
# ============================================================================================


def load_input_embeddings(model_dir: str) -> Any:
    """The input embedding matrix (numpy float32) from a model directory's weights, or None.

    Reads only that tensor from *.safetensors (numpy; torch only for bf16/fp16 storage it cannot
    view, or for pytorch_model*.bin)."""
    import numpy as np

    d = Path(model_dir)
    names = (
        "model.embed_tokens.weight",
        "embed_tokens.weight",
        "transformer.wte.weight",
        "wte.weight",
        "model.embeddings.word_embeddings.weight",
        "word_embeddings.weight",
        "tok_embeddings.weight",
    )
    files = sorted(d.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="np") as st:
                keys = list(st.keys())
                key = next((k for k in names if k in keys), None) or next(
                    (k for k in keys if k.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight"))),
                    None,
                )
                if key is None:
                    continue
            try:
                with safe_open(str(f), framework="np") as st:
                    return np.asarray(st.get_tensor(key), dtype=np.float32)
            except (TypeError, ValueError):  # bf16: numpy has no such dtype
                import torch  # noqa: F401 - only here

                with safe_open(str(f), framework="pt") as st:
                    return st.get_tensor(key).float().numpy()
        return None
    bins = sorted(d.glob("pytorch_model*.bin"))
    for f in bins:
        import torch

        state = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
        key = next(
            (k for k in state if k.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight"))), None
        )
        if key is not None:
            return state[key].float().numpy()
    return None


def template_special_ids(tokenizer: Any, info: TokenizerInfo) -> list[int]:
    """Special tokens the template renders (probe conversations), plus BOS/EOS/pad."""
    from sftdata.records import Message, Source

    used: set[int] = {i for i in (info.bos_id, info.pad_id, *info.eos_ids) if i is not None}
    for turns in (
        (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"), ("assistant", "Bye")),
        (("user", "Hi"), ("assistant", "Hello")),
    ):
        conv = Conversation("probe", tuple(Message(r, c) for r, c in turns), Source("<probe>"))
        tok = masks.tokenize(conv, tokenizer)
        used.update(i for i in tok.input_ids if i in info.special_ids)
    return sorted(used)


@emits("tokens.untrained-embedding")
def check_embeddings(
    tokenizer: Any, info: TokenizerInfo, embeddings: Any, token_ids: Sequence[int]
) -> Iterator[Finding]:
    """Do the embedding rows of the special tokens the template uses look untrained? (criterion in
    the catalogue entry)"""
    import numpy as np

    E = np.asarray(embeddings, dtype=np.float32)
    rows = E.shape[0]
    specials = [i for i in info.special_ids if i < rows]
    ordinary = np.ones(rows, dtype=bool)
    ordinary[specials] = False
    if not ordinary.any():
        ordinary[:], specials = True, []
    sq = np.einsum("ij,ij->i", E, E)  # squared row norms, without a copy of E
    mean = (E.sum(axis=0) - E[specials].sum(axis=0)) / float(ordinary.sum())  # of ordinary tokens
    # |e - mean|^2 = |e|^2 - 2 e.mean + |mean|^2
    dist_sq = np.maximum(sq - 2.0 * (E @ mean) + float(mean @ mean), 0.0)
    median_norm = float(np.sqrt(np.median(sq[ordinary])))
    median_dist = float(np.sqrt(np.median(dist_sq[ordinary])))
    in_range = [i for i in token_ids if i < rows]
    problems: dict[int, str] = {}
    for i in token_ids:
        if i >= rows:
            problems[i] = f"has no embedding row (the matrix has {rows} rows)"
            continue
        norm, dist = float(np.sqrt(sq[i])), float(np.sqrt(dist_sq[i]))
        if norm < 0.1 * median_norm:
            problems[i] = f"row norm {norm:.3g} is under 10% of the median row norm {median_norm:.3g}"
        elif dist < 0.1 * median_dist:
            problems[i] = (
                f"row is at the mean embedding (distance {dist:.3g}; median distance {median_dist:.3g}): "
                "mean-initialised and never trained"
            )
    others = sorted({j for j in info.special_ids if j < rows} | set(in_range))
    for i in in_range:
        if i in problems:
            continue
        for j in others:
            if j != i and float(np.linalg.norm(E[i] - E[j])) < 1e-3 * max(median_norm, 1e-12):
                problems[i] = (
                    f"row equals the row of {_token_text(tokenizer, j)} (id {j}): initialised alike, "
                    "never trained apart"
                )
                break
    for i, why in sorted(problems.items()):
        yield finding(
            "tokens.untrained-embedding",
            f"special token {_token_text(tokenizer, i)} (id {i}), used by the template: {why}",
            data={"token_id": i},
        )

"""Tokenize with the loss mask: the single path from a Conversation to trained tokens (DESIGN.md §2).

How the mask is found, without `{% generation %}` markers:

1. Render `messages[:i+1]` for every i. Each render must extend the previous one; the characters
   message i adds are its span. For an assistant message, what `add_generation_prompt=True`
   appends to `messages[:i]` is header glue; the rest of the span up to and including the
   end-of-turn token is trained; whitespace after it is glue.
2. If the template is not prefix-preserving, fall back to diffing the full render against a copy
   with that assistant's content replaced, and report `template.not-prefix-preserving`.
3. Tokenize the full render once (no added special tokens, exactly as `apply_chat_template`
   does) and map character regions to tokens: for lossless byte-level BPE (the tokens' bytes are
   the text's bytes) by the tokens' byte lengths, without offset tracking; otherwise through the
   encoder's offsets. A token that straddles a trained/untrained boundary is reported
   (`mask.boundary-mismatch`) and left untrained.

Speed: conversations of plain text messages share a *layout* (the template output with every
content replaced by a placeholder). The layout is derived once per role sequence with the
incremental renders above; each conversation then needs one real render, which must equal the
layout with its contents filled in (else the exact per-conversation path runs). So the common case
costs one render and one batched encode, like `apply_chat_template` itself.
"""

from __future__ import annotations

import bisect
import json
import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sftdata.catalogue import emits, finding
from sftdata.records import POLICIES, Conversation, Finding, Tokenized, replace

log = logging.getLogger(__name__)

# Tokens that close a turn in the major template families. Used only to extend a trained span
# over an end-of-turn token that a template emits at the start of the *next* message.
EOT_STRINGS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|return|>",
    "<|turn_end|>",
)

_PLACEHOLDER = "\ue000{}\ue001"  # private-use code points: no template trims or alters them


class TemplateError(ValueError):
    """The chat template raised or is missing; carries the check id to report."""

    def __init__(self, check: str, message: str, hint: str):
        super().__init__(message)
        self.check, self.message, self.hint = check, message, hint


@dataclass(frozen=True)
class Region:
    """A character range of the rendered text: which message it belongs to, trained or not."""

    start: int
    end: int
    message_index: int  # -1 = template glue
    trained: bool


@dataclass(frozen=True)
class Rendered:
    """One conversation rendered, with its regions and what was noticed on the way."""

    text: str
    regions: tuple[Region, ...]
    findings: tuple[Finding, ...] = ()


# --------------------------------------------------------------------------------------------
# Rendering


def template_of(tokenizer: Any, *, tools: bool = False) -> str:
    """The chat template `apply_chat_template` would use: of several named templates, `tool_use`
    when the conversation offers tools and the tokenizer has one, else `default`."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        named = template
        template = (
            (named.get("tool_use") if tools else None) or named.get("default") or next(iter(named.values()), None)
        )
    if not template:
        raise TemplateError(
            "template.missing",
            "the tokenizer has no chat template (base models usually have none)",
            "pick the template of the model family you will serve with: copy the instruct model's "
            "chat_template into tokenizer_config.json (or chat_template.jinja), or train on `text` rows",
        )
    return template


def _special_kwargs(tokenizer: Any) -> dict[str, Any]:
    """bos_token, eos_token, ... as apply_chat_template passes them to the template."""
    return {k: v for k, v in getattr(tokenizer, "special_tokens_map", {}).items() if isinstance(v, str)}


def render(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Any = None,
    add_generation_prompt: bool = False,
    template: str | None = None,
) -> str:
    """Render like `tokenizer.apply_chat_template(..., tokenize=False)`; TemplateError if it raises."""
    template = template or template_of(tokenizer)
    compiled = _compiled(tokenizer, template)
    try:
        return compiled.render(
            messages=list(messages),
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **_special_kwargs(tokenizer),
        )
    except Exception as e:  # noqa: BLE001 - any template exception is a finding about the data/template
        raise TemplateError(
            "template.render-error",
            f"the chat template raised {type(e).__name__}: {e}",
            "the template cannot render this conversation (often: a role it does not support, such as "
            "system, or roles that do not alternate); fix the data or use a template that supports it",
        ) from e


def _compiled(tokenizer: Any, template: str) -> Any:
    """The compiled template (transformers caches it); TemplateError naming the template file and
    line when it is not valid Jinja."""
    from jinja2 import TemplateError as JinjaError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        return _compile_jinja_template(template)
    except JinjaError as e:
        line = getattr(e, "lineno", None)
        raise TemplateError(
            "template.render-error",
            f"the chat template of {template_file(tokenizer)} does not compile"
            + (f" (template line {line})" if line else "")
            + f": {type(e).__name__}: {e}",
            "fix the Jinja syntax of the template (or copy a working one from the model family's instruct model)",
        ) from None


def template_file(tokenizer: Any) -> str:
    """Where the tokenizer's chat template lives, for messages: chat_template.jinja or
    tokenizer_config.json in its directory, else the tokenizer's name."""
    from pathlib import Path

    d = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        if (d / name).is_file():
            return str(d / name)
    return str(d) if str(d) not in ("", ".") else "the tokenizer"


def _template_messages(conv: Conversation) -> list[dict[str, Any]]:
    out = []
    for m in conv.messages:
        d = m.to_dict()
        d.pop("train", None)
        if m.tool_calls:
            d["tool_calls"] = [_parsed_arguments(c) for c in m.tool_calls]
        out.append(d)
    return out


def _parsed_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """OpenAI data keeps tool-call `arguments` as a JSON string; chat templates (Qwen, Llama-3.1)
    apply `tojson` to them and expect an object, as serving stacks pass it. Parse a string that
    holds a JSON object; leave anything else as it is."""
    fn = call.get("function") if isinstance(call.get("function"), dict) else None
    args = (fn or call).get("arguments")
    if not isinstance(args, str):
        return call
    try:
        parsed = json.loads(args)
    except ValueError:
        return call
    if not isinstance(parsed, dict):
        return call
    if fn is not None:
        return {**call, "function": {**fn, "arguments": parsed}}
    return {**call, "arguments": parsed}


def _is_eot_start(text: str, pos: int, extra: tuple[str, ...]) -> str | None:
    for s in extra + EOT_STRINGS:
        if s and text.startswith(s, pos):
            return s
    return None


def _ends_with_eot(text: str, extra: tuple[str, ...]) -> bool:
    return any(s and text.endswith(s) for s in extra + EOT_STRINGS)


def _trained(policy: str, role: str, override: bool | None, is_last_assistant: bool) -> bool:
    if override is not None:
        return override
    if policy == "all":
        return True
    if role != "assistant":
        return False
    return policy == "assistant" or is_last_assistant


def _prefix_renders(
    tokenizer: Any, template: str, messages: list[dict[str, Any]], tools: Any, full: str, tails: tuple[str, ...]
) -> tuple[list[str] | None, bool]:
    """Renders of messages[:i+1] for every i, if each extends the previous one (else None), and
    whether every partial conversation could be rendered at all.

    A template that appends one end-of-text token after the *whole* conversation (Phi-3 adds
    its EOS once at the very end) is still prefix-preserving once that tail is set aside."""
    n = len(messages)
    renders: list[str] = []
    for i in range(n - 1):
        try:
            renders.append(render(tokenizer, messages[: i + 1], tools=tools, template=template))
        except TemplateError:
            # Some templates refuse partial conversations (Llama-3.1 with tools and no user turn
            # yet) while rendering the whole one fine: not a defect, derive spans by diffing.
            return None, False
    renders.append(full)
    for tail in ("",) + tuple(t for t in tails if t):
        if tail and not all(r.endswith(tail) for r in renders):
            continue
        cut = [r[: len(r) - len(tail)] for r in renders]
        if all(cut[i + 1].startswith(cut[i]) for i in range(n - 1)):
            return cut, True
    return None, True


def _locate_content(
    tokenizer: Any, template: str, messages: list[dict[str, Any]], i: int, tools: Any, rendered: str
) -> tuple[int, int] | None:
    """Where message i's content sits in `rendered` (the render of messages[:i+1] or more), found
    by rendering the same prefix with that content replaced by a placeholder: no substring
    search, which would match headers or a default system prompt first."""
    content = messages[i].get("content") or ""
    if not content:
        return None
    marked = list(messages[:i]) + [{**messages[i], "content": _PLACEHOLDER.format(i)}]
    try:
        other = render(tokenizer, marked, tools=tools, template=template)
    except TemplateError:
        return None
    k = other.find(_PLACEHOLDER.format(i))
    if k < 0 or other[:k] != rendered[:k]:
        return None
    for needle in (content, content.strip(), content.lstrip()):
        if needle and rendered.startswith(needle, k):
            return k, k + len(needle)
    return None


def _not_found(i: int, role: str, example_id: str | None, source: Any) -> Finding:
    return finding(
        "mask.boundary-mismatch",
        f"message {i} ({role}): its content does not appear verbatim in the template's render, so its "
        f"tokens could not be located; none of them is trained",
        hint="the chat template rewrites or drops this content (e.g. strips reasoning or tool calls); "
        "check the render with `sftdata show` and use a template that keeps it",
        example_id=example_id,
        source=source,
    )


@dataclass
class _Regions:
    """The regions of one render being built, and what building them needs."""

    tokenizer: Any
    template: str
    messages: list[dict[str, Any]]
    tools: Any
    full: str  # the render of the whole conversation
    policy: str
    overrides: Sequence[bool | None]
    eot_extra: tuple[str, ...]
    example_id: str | None
    source: Any
    regions: list[Region] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    last_assistant: int = -1

    def __post_init__(self) -> None:
        self.last_assistant = max((k for k, m in enumerate(self.messages) if m["role"] == "assistant"), default=-1)

    def add(self, start: int, end: int, idx: int, trained: bool | None = None) -> None:
        """Region [start, end) of message `idx` (-1: glue, trained only under policy all)."""
        if end > start:
            self.regions.append(Region(start, end, idx, self.policy == "all" if trained is None else trained))

    def trained(self, i: int) -> bool:
        return _trained(self.policy, self.messages[i]["role"], self.overrides[i], i == self.last_assistant)

    def generation_prompt_end(self, i: int, pos: int, limit: int) -> int | None:
        """End of the assistant header: what add_generation_prompt=True appends to messages[:i]."""
        if i == 0:
            return None
        try:
            gp = render(
                self.tokenizer, self.messages[:i], tools=self.tools, add_generation_prompt=True, template=self.template
            )
        except TemplateError:
            return None
        ok = self.full.startswith(gp) and pos <= len(gp) <= limit
        return len(gp) if ok else None

    def done(self, pos: int) -> Rendered:
        self.add(pos, len(self.full), -1)
        return Rendered(self.full, tuple(self.regions), tuple(self.findings))


def _regions_incremental(
    tokenizer: Any,
    template: str,
    messages: list[dict[str, Any]],
    tools: Any,
    policy: str,
    overrides: Sequence[bool | None],
    eot_extra: tuple[str, ...],
    example_id: str | None = None,
    source: Any = None,
) -> Rendered:
    """The exact per-conversation path (steps 1 and 2 of the module docstring): from the renders
    of each prefix when the template is prefix-preserving, else by diffing."""
    full = render(tokenizer, messages, tools=tools, template=template)
    renders, prefix_renders = _prefix_renders(tokenizer, template, messages, tools, full, eot_extra)
    r = _Regions(tokenizer, template, messages, tools, full, policy, overrides, eot_extra, example_id, source)
    if renders is not None:
        return _regions_by_prefix(r, renders)
    if prefix_renders:
        r.findings.append(
            finding(
                "template.not-prefix-preserving",
                "earlier turns render differently once later turns exist (the render of messages[:i+1] is not a prefix of the full render)",
                hint="multi-turn training and inference disagree for this template (e.g. it drops earlier reasoning); masks were "
                "derived by diffing; consider training on the last turn only (--policy last) or a prefix-preserving template",
                example_id=example_id,
                source=source,
            )
        )
    return _regions_by_diff(r)


def _regions_by_prefix(r: _Regions, renders: list[str]) -> Rendered:
    """Message i spans what the render of messages[:i+1] adds to that of messages[:i]."""
    full, messages = r.full, r.messages
    pos = 0
    for i, m in enumerate(messages):
        end = max(len(renders[i]), pos)
        if m["role"] != "assistant":
            found = _locate_content(r.tokenizer, r.template, messages, i, r.tools, renders[i])
            if found is None or found[0] < pos:
                if r.trained(i) and m.get("content"):
                    r.findings.append(_not_found(i, m["role"], r.example_id, r.source))
                r.add(pos, end, -1)
            else:
                r.add(pos, found[0], -1)
                r.add(found[0], found[1], i, r.trained(i))
                r.add(found[1], end, -1)
            pos = end
            continue
        body_start = r.generation_prompt_end(i, pos, end)
        if body_start is None:
            if i:
                r.findings.append(
                    finding(
                        "template.generation-prompt-mismatch",
                        f"message {i}: the prompt rendered with add_generation_prompt=True is not a prefix of the training render",
                        hint="train/inference skew: at inference the model sees a different header than in training; "
                        "use a template whose generation prompt matches its assistant header",
                        example_id=r.example_id,
                        source=r.source,
                    )
                )
            found = _locate_content(r.tokenizer, r.template, messages, i, r.tools, renders[i])
            if found is None and not m.get("tool_calls"):
                r.findings.append(_not_found(i, "assistant", r.example_id, r.source))
                r.add(pos, end, -1)
                pos = end
                continue
            body_start = found[0] if found else pos
        body_end = body_start + len(full[body_start:end].rstrip())
        # A template that emits the end-of-turn token at the start of the *next* message
        # still closes this turn with it: train it here (the model must learn to stop).
        if i + 1 < len(messages) and not _ends_with_eot(full[body_start:body_end], r.eot_extra):
            s = _is_eot_start(full, end, r.eot_extra)
            if s:
                body_end = end + len(s)
        r.add(pos, body_start, -1)
        r.add(body_start, body_end, i, r.trained(i))
        pos = body_end
        if pos < end:  # whitespace after the end-of-turn token is glue
            r.add(pos, end, -1)
            pos = end
    return r.done(pos)


def _regions_by_diff(r: _Regions) -> Rendered:
    """Not prefix-preserving: each assistant message spans where the full render differs from a
    copy with that message replaced by a placeholder."""
    full = r.full
    spans: list[tuple[int, int, int]] = []
    for i, m in enumerate(r.messages):
        if m["role"] != "assistant":
            continue
        # Replace everything the message renders (content, tool calls, reasoning) by a placeholder.
        marked = [dict(x) for x in r.messages]
        marked[i] = {"role": "assistant", "content": _PLACEHOLDER.format(i)}
        try:
            other = render(r.tokenizer, marked, tools=r.tools, template=r.template)
        except TemplateError:
            r.findings.append(_not_found(i, "assistant", r.example_id, r.source))
            continue
        a = 0
        while a < min(len(full), len(other)) and full[a] == other[a]:
            a += 1
        b = 0
        while b < min(len(full), len(other)) - a and full[-1 - b] == other[-1 - b]:
            b += 1
        start, stop = a, len(full) - b
        # The header ends where the generation prompt ends (the diff alone would leave a
        # template-inserted prefix such as Qwen3's empty think block untrained).
        header_end = r.generation_prompt_end(i, 0, start)
        if header_end is not None and header_end >= (spans[-1][1] if spans else 0):
            start = header_end
        s = _is_eot_start(full, stop, r.eot_extra)
        if s:
            stop += len(s)
        spans.append((start, stop, i))
    pos = 0
    for start, stop, i in spans:
        if start < pos:
            continue
        r.add(pos, start, -1)
        r.add(start, stop, i, r.trained(i))
        pos = stop
    return r.done(pos)


# --------------------------------------------------------------------------------------------
# Layout fast path


@dataclass(frozen=True)
class _Piece:
    text: str | None  # None = the content of message `message_index`
    message_index: int
    role_trained: str  # "glue", "content" or "body": how the policy decides training


def _layout_key(conv: Conversation) -> tuple[Any, ...] | None:
    if conv.tools is not None:  # an empty list too: templates such as Llama-3.1's render `tools=[]` differently
        return None
    key = []
    for m in conv.messages:
        if m.tool_calls or m.reasoning or m.name or m.tool_call_id or not m.content:
            return None
        key.append(m.role)
    return tuple(key)


def _derive_layout(
    tokenizer: Any, template: str, roles: tuple[str, ...], eot_extra: tuple[str, ...]
) -> list[_Piece] | None:
    """Render a placeholder conversation with every message trained, split it into pieces."""
    messages = [{"role": r, "content": _PLACEHOLDER.format(i)} for i, r in enumerate(roles)]
    rendered = _regions_incremental(tokenizer, template, messages, None, "assistant", [True] * len(roles), eot_extra)
    if rendered.findings:
        return None
    text = rendered.text
    pieces: list[_Piece] = []
    for reg in rendered.regions:
        seg = text[reg.start : reg.end]
        if reg.message_index < 0:
            pieces.append(_Piece(seg, -1, "glue"))
            continue
        ph = _PLACEHOLDER.format(reg.message_index)
        k = seg.find(ph)
        if k < 0 or seg.find(ph, k + 1) >= 0:
            return None
        role = roles[reg.message_index]
        kind = "body" if role == "assistant" else "content"
        if seg[:k]:
            pieces.append(_Piece(seg[:k], reg.message_index, kind))
        pieces.append(_Piece(None, reg.message_index, kind))
        if seg[k + len(ph) :]:
            pieces.append(_Piece(seg[k + len(ph) :], reg.message_index, kind))
    if any(_PLACEHOLDER.format(i) in (p.text or "") for p in pieces for i in range(len(roles))):
        return None
    return pieces


def _fill_layout(pieces: list[_Piece], conv: Conversation, policy: str) -> Rendered:
    msgs = conv.messages
    last_asst = max((i for i, m in enumerate(msgs) if m.role == "assistant"), default=-1)
    regions: list[Region] = []
    parts: list[str] = []
    pos = 0
    for p in pieces:
        s = msgs[p.message_index].content if p.text is None else p.text
        if p.role_trained == "glue":
            trained = policy == "all"
        else:
            m = msgs[p.message_index]
            trained = _trained(policy, m.role, m.train, p.message_index == last_asst)
        end = pos + len(s)
        if end > pos:
            if regions and regions[-1].message_index == p.message_index and regions[-1].trained == trained:
                regions[-1] = Region(regions[-1].start, end, p.message_index, trained)
            else:
                regions.append(Region(pos, end, p.message_index, trained))
        parts.append(s)
        pos = end
    return Rendered("".join(parts), tuple(regions))


# --------------------------------------------------------------------------------------------
# Tokenizing


def byte_level_table(backend: Any) -> list[bytes] | None:
    """The bytes of every token id for a byte-level BPE tokenizer (GPT-2, Llama-3, Qwen, SmolLM),
    added tokens as their UTF-8 text; None for any other kind of tokenizer."""
    from tokenizers import decoders

    if not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    # GPT-2's byte <-> unicode alphabet
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    to_byte = {c: b for b, c in zip(bs, cs)}  # code point -> byte
    vocab = backend.get_vocab(with_added_tokens=False)
    if not set("".join(vocab)) <= {chr(c) for c in cs}:  # not byte-level tokens
        return None
    size = max(backend.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
    table: list[bytes] = [b""] * size
    for token, i in vocab.items():
        table[i] = token.translate(to_byte).encode("latin-1")  # every char is now a code point < 256
    for i, added in backend.get_added_tokens_decoder().items():
        if i < size:
            table[i] = added.content.encode("utf-8")
    return table


# Byte tables per tokenizer object (building one takes ~50 ms), checked against the backend and
# its vocabulary size on every use, so a tokenizer given new tokens gets a new table.
_TABLES: weakref.WeakKeyDictionary[Any, tuple[Any, int, list[bytes] | None, Any]] = weakref.WeakKeyDictionary()


def _byte_tables(hf: Any) -> tuple[list[bytes] | None, Any]:
    """(byte_level_table, numpy byte length per id) of an HF tokenizer, cached per object."""
    import numpy as np

    backend = hf.backend_tokenizer
    size = backend.get_vocab_size(with_added_tokens=True)
    try:
        hit = _TABLES.get(hf)
    except TypeError:  # not weakly referenceable
        hit = None
    if hit is not None and hit[0] is backend and hit[1] == size:
        return hit[2], hit[3]
    table = byte_level_table(backend)
    lengths = np.fromiter(map(len, table), dtype=np.int64, count=len(table)) if table is not None else None
    try:
        _TABLES[hf] = (backend, size, table, lengths)
    except TypeError:
        pass
    return table, lengths


def _encoder(hf: Any) -> Any:
    """The backend tokenizer to encode with, as apply_chat_template encodes: without the
    truncation or padding a tokenizer.json may carry (transformers keeps them switched on in the
    backend; they would cut or pad conversations behind the mask's back). A private copy only
    when one of them is set; the user's tokenizer is never changed."""
    backend = hf.backend_tokenizer
    if backend.truncation is None and backend.padding is None:
        return backend
    key = (backend, backend.get_vocab_size(with_added_tokens=True), backend.truncation, backend.padding)
    try:
        hit = _ENCODERS.get(hf)
    except TypeError:  # not weakly referenceable
        hit = None
    if hit is not None and hit[0][0] is backend and hit[0][1:] == key[1:]:
        return hit[1]
    from tokenizers import Tokenizer as RustTokenizer

    copy = RustTokenizer.from_str(backend.to_str())  # ~90 ms: kept per tokenizer object
    copy.no_truncation()
    copy.no_padding()
    try:
        _ENCODERS[hf] = (key, copy)
    except TypeError:
        pass
    return copy


_ENCODERS: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def _special_affixes(encoder: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The ids the tokenizer's post-processor puts before and after a text (BOS, ...), which
    encoding with add_special_tokens=True adds around the text's own tokens; None when a probe
    does not show them as a plain prefix and suffix."""
    plain = encoder.encode("Hello world", add_special_tokens=False).ids
    full = encoder.encode("Hello world", add_special_tokens=True).ids
    for p in range(len(full) - len(plain) + 1):
        if full[p : p + len(plain)] == plain:
            return tuple(full[:p]), tuple(full[p + len(plain) :])
    return None


def _is_lossless(backend: Any, table: list[bytes] | None) -> bool:
    """Whether the tokens' bytes are exactly the text's UTF-8 bytes (byte-level BPE, no
    normaliser, no added prefix space, no added token that strips the whitespace around it).
    Then a token's place in the text follows from the byte lengths of the tokens before it, and
    the encoder need not track offsets (which a ByteLevel post-processor may also trim)."""
    if table is None or backend.normalizer is not None:
        return False
    if any(t.lstrip or t.rstrip for t in backend.get_added_tokens_decoder().values()):
        return False
    probes = ["Hello world", " two  spaces\n\nand lines", "\u00e9t\u00e9 \u6f22\u5b57 \U0001f600"]
    for text, enc in zip(probes, backend.encode_batch_fast(probes, add_special_tokens=False)):
        if any(i >= len(table) for i in enc.ids) or b"".join(table[i] for i in enc.ids) != text.encode("utf-8"):
            return False
    return True


@dataclass
class Tokenizer:
    """A tokenizer prepared for tokenize_batch: its template, layouts cache and EOT strings, and
    for byte-level BPE the bytes of every token."""

    hf: Any
    template: str | None
    tool_template: str | None  # differs from `template` only for tokenizers with a `tool_use` template
    template_error: TemplateError | None
    layouts: dict[tuple[Any, ...], list[_Piece] | None]
    eot_extra: tuple[str, ...]
    encoder: Any = None  # _encoder: the backend without truncation/padding
    affixes: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # _special_affixes, for text rows
    byte_table: list[bytes] | None = None  # byte_level_table
    byte_lengths: Any = None  # numpy byte length per id when encoding is lossless (_is_lossless), else None


def prepare(tokenizer: Any) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    try:
        template, tool_template, err = template_of(tokenizer), template_of(tokenizer, tools=True), None
        _compiled(tokenizer, template)
        _compiled(tokenizer, tool_template)
    except TemplateError as e:
        template, tool_template, err = None, None, e
    eos = getattr(tokenizer, "eos_token", None)
    encoder = _encoder(tokenizer)
    table, lengths = _byte_tables(tokenizer)
    lossless = _is_lossless(encoder, table)
    return Tokenizer(
        tokenizer,
        template,
        tool_template,
        err,
        {},
        (eos,) if isinstance(eos, str) else (),
        encoder,
        _special_affixes(encoder),
        table,
        lengths if lossless else None,
    )


def _render_one(t: Tokenizer, conv: Conversation, policy: str) -> Rendered:
    if t.template is None:
        raise t.template_error  # type: ignore[misc]
    key = _layout_key(conv)
    if key is not None:
        if key not in t.layouts:
            try:
                t.layouts[key] = _derive_layout(t.hf, t.template, key, t.eot_extra)
            except TemplateError:
                t.layouts[key] = None
        pieces = t.layouts[key]
        if pieces is not None:
            filled = _fill_layout(pieces, conv, policy)
            real = render(t.hf, _template_messages(conv), template=t.template)
            if real == filled.text:
                return filled
    # As apply_chat_template and TRL: `tools=[]` is passed as given (not as None), and picks the
    # `tool_use` template of a tokenizer that has one.
    template = t.tool_template if conv.tools is not None else t.template
    messages = _template_messages(conv)
    r = _regions_incremental(
        t.hf,
        template,
        messages,
        list(conv.tools) if conv.tools is not None else None,
        policy,
        [m.train for m in conv.messages],
        t.eot_extra,
        conv.id,
        conv.source,
    )
    if conv.tools == () and render(t.hf, messages, template=t.template) != r.text:
        import dataclasses

        r = dataclasses.replace(
            r,
            findings=(
                *r.findings,
                finding(
                    "template.empty-tools",
                    "`tools` is an empty list, and the chat template renders that differently from no tools (e.g. "
                    "Llama-3.1 adds its tool-use preamble); tokenized as given, as TRL's SFTTrainer and "
                    "apply_chat_template(tools=[]) do",
                    conv,
                    hint="drop the empty `tools` key (or set it to null) where the conversation offers no tools",
                ),
            ),
        )
    return r


def _check_encodable(conv: Conversation) -> None:
    """Text that cannot be UTF-8 encoded (an unpaired surrogate such as a JSON "\\ud83d" escape
    from truncated scraped text) would make the tokenizer raise for the whole batch."""
    for i, m in enumerate(conv.messages):
        for text in (m.content, m.reasoning or ""):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise TemplateError(
                    "format.parse-error",
                    f"message {i} ({m.role}) holds an unpaired surrogate {text[e.start : e.end]!r} at character {e.start}: "
                    "not valid Unicode text",
                    "the text was cut in the middle of an emoji or other astral character (a lone \\ud8xx JSON escape); "
                    "repair or drop the character",
                ) from None


def is_text_row(conv: Conversation) -> bool:
    """Rows trained without a chat template: plain `text`, and plain-string prompt/completion."""
    if conv.shape == "text":
        return len(conv.messages) == 1
    return conv.shape == "prompt-completion" and [m.role for m in conv.messages] == ["user", "assistant"]


# What tokenizing reports on a Tokenized (template errors, straddled boundaries, text it cannot encode).
EMITS = (
    "template.missing",
    "template.render-error",
    "template.not-prefix-preserving",
    "template.generation-prompt-mismatch",
    "mask.boundary-mismatch",
    "format.parse-error",
    "template.empty-tools",
)


@emits(*EMITS)
def tokenize_batch(
    conversations: Sequence[Conversation], tokenizer: Any, *, policy: str = "assistant", max_length: int | None = None
) -> list[Tokenized]:
    """Tokenize conversations with their loss masks. Never raises on bad data: a conversation the
    template cannot render comes back with no tokens and a `template.*` finding."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    t = prepare(tokenizer)
    rendered: list[Rendered | None] = []
    errors: list[Finding | None] = []
    for conv in conversations:
        try:
            _check_encodable(conv)
            r = None if is_text_row(conv) else _render_one(t, conv, policy)
            if r is not None and not r.text.strip():
                raise TemplateError(
                    "template.render-error",
                    f"the chat template of {template_file(t.hf)} renders this conversation of {len(conv.messages)} "
                    "messages as empty text: nothing would be trained or seen",
                    "the template outputs nothing for these roles; fix it (or use the model family's own template)",
                )
            rendered.append(r)
            errors.append(None)
        except TemplateError as e:
            rendered.append(None)
            errors.append(finding(e.check, e.message, conv, hint=e.hint))
    # Raw rows (text, plain prompt/completion) are encoded in the same batch, as their own text:
    # what the tokenizer's post-processor adds around it (BOS) is put back afterwards.
    raw_rows = {
        k: _raw_rendered(conv)
        for k, (conv, r, err) in enumerate(zip(conversations, rendered, errors))
        if r is None and err is None and t.affixes is not None
    }
    for k, r in raw_rows.items():
        rendered[k] = r
    texts = [r.text if r is not None else "" for r in rendered]
    encoder = t.encoder
    bounds: list[_Bounds | None] | None = None
    if t.byte_lengths is not None:
        # Lossless byte-level BPE: token places follow from their byte lengths; the encoder need
        # not track offsets (~15% faster, and immune to offsets a post-processor trims).
        ids_list = [e.ids for e in encoder.encode_batch_fast(texts, add_special_tokens=False)]
        bounds = _bounds_by_bytes(t, rendered, ids_list)
    else:
        encodings = encoder.encode_batch(texts, add_special_tokens=False)
        ids_list = [e.ids for e in encodings]
    out: list[Tokenized] = []
    for k, (conv, r, err) in enumerate(zip(conversations, rendered, errors)):
        if err is not None:
            out.append(Tokenized(conv.id, (), (), (), False, 0, 0, (err,)))
        elif r is None:
            out.append(_tokenize_text_row(t, conv, max_length))  # no plain affixes: the offsets way
        else:
            b = bounds[k] if bounds is not None else None
            if b is None:
                enc = encoder.encode(r.text, add_special_tokens=False) if bounds is not None else encodings[k]
                b = _bounds_by_offsets(r, enc.offsets)
            if k in raw_rows:
                out.append(_raw_row(t, conv, r, ids_list[k], b, max_length))
            else:
                out.append(_mask_regions(t, conv, r, ids_list[k], b, max_length))
    return out


def _raw_rendered(conv: Conversation) -> Rendered:
    """A raw row as a "render" without a template: the text itself; a `text` row is one trained
    region, a plain prompt/completion row an untrained prompt and a trained completion."""
    msgs = conv.messages
    text = "".join(m.content for m in msgs)
    if conv.shape == "text":
        return Rendered(text, (Region(0, len(text), 0, True),) if text else ())
    p = len(msgs[0].content)
    return Rendered(
        text, tuple(reg for reg in (Region(0, p, 0, False), Region(p, len(text), 1, True)) if reg.end > reg.start)
    )


_RAW_STRADDLE_HINT = "end the prompt with a space or newline so the completion starts on a token boundary"


def _raw_row(
    t: Tokenizer, conv: Conversation, r: Rendered, ids: list[int], bounds: _Bounds, max_length: int | None
) -> Tokenized:
    """A raw row's Tokenized: its text's tokens masked by region, with the special tokens the
    tokenizer adds around a text (BOS) as glue, and an EOS that closes the text, trained (as TRL
    does); an EOS the post-processor already appends is that EOS."""
    body = _mask_regions(t, conv, r, ids, bounds, None, straddle_hint=_RAW_STRADDLE_HINT)
    prefix, suffix = t.affixes  # type: ignore[misc]
    eos = t.hf.eos_token_id
    last = len(conv.messages) - 1
    all_ids = list(prefix) + list(body.input_ids) + list(suffix)
    mask = [False] * len(prefix) + list(body.loss_mask) + [False] * len(suffix)
    msg_idx = [-1] * len(prefix) + list(body.message_index) + [-1] * len(suffix)
    if suffix and eos is not None and suffix[-1] == eos:
        mask[-1], msg_idx[-1] = True, last
    elif eos is not None and (not all_ids or all_ids[-1] != eos):
        all_ids.append(eos)
        mask.append(True)
        msg_idx.append(last)
    return _finish(conv.id, all_ids, mask, msg_idx, max_length, body.findings)


@dataclass(frozen=True)
class _Bounds:
    """Where a conversation's region boundaries (chars of the render) fall among its tokens:
    `first[c]` is the first token starting at or after char c; `inside[c]` says the token before
    it reaches past c (it straddles the boundary)."""

    first: dict[int, int]
    inside: dict[int, bool]


def _boundary_chars(r: Rendered) -> list[int]:
    return sorted({reg.start for reg in r.regions} | {reg.end for reg in r.regions})


def _bounds_by_offsets(r: Rendered, offsets: list[tuple[int, int]]) -> _Bounds:
    starts = [o[0] for o in offsets]
    first, inside = {}, {}
    for c in _boundary_chars(r):
        a = bisect.bisect_left(starts, c)
        first[c] = a
        inside[c] = a > 0 and offsets[a - 1][0] < c < offsets[a - 1][1]
    return _Bounds(first, inside)


def _bounds_by_bytes(
    t: Tokenizer, rendered: Sequence[Rendered | None], ids_list: Sequence[list[int]]
) -> list[_Bounds | None]:
    """_Bounds of every rendered conversation from its tokens' byte lengths, all of a batch in
    one numpy pass. None where the bytes do not add up to the text's (never for a lossless
    tokenizer; the caller then takes the offsets path)."""
    import itertools

    import numpy as np

    lengths = t.byte_lengths
    counts = [len(ids) for ids in ids_list]
    flat = np.fromiter(itertools.chain.from_iterable(ids_list), dtype=np.int64, count=sum(counts))
    if flat.size and int(flat.max()) >= len(lengths):
        return [None] * len(ids_list)
    token_bytes = lengths[flat]
    if flat.size and int(token_bytes.min()) == 0:  # an id without text: where it sits is unknown
        return [None] * len(ids_list)
    ends = np.cumsum(token_bytes)
    starts = ends - token_bytes
    queries: list[int] = []
    plan: list[tuple[int, list[int], int] | None] = []  # (first query, boundary chars, first token)
    first_token = 0
    for r, n in zip(rendered, counts):
        if r is None or not r.regions:
            plan.append(None)
            first_token += n
            continue
        text = r.text
        chars = _boundary_chars(r)
        if text.isascii():
            positions = chars
            total = len(text)
        else:
            positions, b, prev = [], 0, 0
            for c in chars:
                b += len(text[prev:c].encode("utf-8"))
                positions.append(b)
                prev = c
            total = b + len(text[prev:].encode("utf-8"))
        base = int(starts[first_token]) if n else 0
        if not n or int(ends[first_token + n - 1]) - base != total:
            plan.append(None)
            first_token += n
            continue
        plan.append((len(queries), chars, first_token))
        queries.extend(base + p for p in positions)
        first_token += n
    q = np.asarray(queries, dtype=np.int64)
    found = np.searchsorted(starts, q, side="left")  # first token starting at or after each boundary
    inside = np.zeros(len(q), dtype=bool)  # the token before it ends past the boundary: a straddle
    has_prev = found > 0
    inside[has_prev] = ends[found[has_prev] - 1] > q[has_prev]
    found_list, inside_list = found.tolist(), inside.tolist()
    out: list[_Bounds | None] = []
    for p in plan:
        if p is None:
            out.append(None)
            continue
        at, chars, first = p
        out.append(
            _Bounds(
                {c: found_list[at + j] - first for j, c in enumerate(chars)},
                {c: inside_list[at + j] for j, c in enumerate(chars)},
            )
        )
    return out


def _token_text(t: Tokenizer, token_id: int) -> str:
    """One token as text, for messages (the same whichever way tokens were mapped)."""
    if t.byte_table is not None and token_id < len(t.byte_table):
        return t.byte_table[token_id].decode("utf-8", errors="replace")
    return t.encoder.decode([token_id], skip_special_tokens=False)


def _tokenize_text_row(t: Tokenizer, conv: Conversation, max_length: int | None) -> Tokenized:
    """Raw rows, no chat template (as TRL treats them): `text` rows train every token;
    plain-string prompt/completion rows train the completion. The tokenizer adds its own special
    tokens (BOS where it does) and EOS closes the text, trained."""
    msgs = conv.messages
    text = "".join(m.content for m in msgs)
    prompt_len = 0 if conv.shape == "text" else len(msgs[0].content)
    enc = t.encoder.encode(text, add_special_tokens=True)
    ids, offsets = list(enc.ids), list(enc.offsets)
    specials = set(t.hf.all_special_ids)
    findings: list[Finding] = []
    mask, msg_idx = [], []
    for i, (a, b) in zip(ids, offsets):
        if a == b and i in specials:  # added by the tokenizer (BOS): glue
            mask.append(False)
            msg_idx.append(-1)
            continue
        if a < prompt_len < b:
            findings.append(
                finding(
                    "mask.boundary-mismatch",
                    f"a token spans the prompt/completion boundary at character {prompt_len}; it was left untrained",
                    conv,
                    hint="end the prompt with a space or newline so the completion starts on a token boundary",
                )
            )
        trained = a >= prompt_len
        mask.append(trained)
        msg_idx.append(1 if trained and prompt_len else 0)
    eos = t.hf.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        mask.append(True)
        msg_idx.append(len(msgs) - 1)
    return _finish(conv.id, ids, mask, msg_idx, max_length, tuple(findings))


_STRADDLE_HINT = (
    "the template glues content to a header or end-of-turn token so that one token spans both; "
    "usually harmless for one token, but check the template's whitespace"
)


def _mask_regions(
    t: Tokenizer,
    conv: Conversation,
    r: Rendered,
    ids: list[int],
    bounds: _Bounds,
    max_length: int | None,
    *,
    straddle_hint: str = _STRADDLE_HINT,
) -> Tokenized:
    """The loss mask and message index per token from the rendered regions and where their
    boundaries fall among the tokens. A token that straddles a boundary between trained and
    untrained text is left untrained and reported."""
    n = len(ids)
    mask = [False] * n
    msg_idx = [-1] * n
    first, inside = bounds.first, bounds.inside
    findings = list(r.findings)
    for reg in r.regions:
        a, b = first[reg.start], first[reg.end]
        if b > a:
            msg_idx[a:b] = [reg.message_index] * (b - a)
            if reg.trained:
                mask[a:b] = [True] * (b - a)
        # a token that starts before this region but ends inside it straddles the boundary
        if a > 0 and inside[reg.start] and mask[a - 1] != reg.trained:
            mask[a - 1] = False
            findings.append(
                finding(
                    "mask.boundary-mismatch",
                    f"token {a - 1} ({_token_text(t, ids[a - 1])!r}) straddles the boundary at character {reg.start} "
                    f"between trained and untrained text; it was left untrained",
                    conv,
                    hint=straddle_hint,
                    data={"token_index": a - 1, "char": reg.start},
                )
            )
    return _finish(conv.id, ids, mask, msg_idx, max_length, tuple(findings))


def _finish(
    example_id: str,
    ids: list[int],
    mask: list[bool],
    msg_idx: list[int],
    max_length: int | None,
    findings: tuple[Finding, ...],
) -> Tokenized:
    full = Tokenized(example_id, tuple(ids), tuple(mask), tuple(msg_idx), False, mask.count(True), len(ids), findings)
    return truncate(full, max_length)


def truncate(tok: Tokenized, max_length: int | None) -> Tokenized:
    """Right truncation to `max_length` tokens (keep the head): what tokenize(max_length=) returns,
    from the untruncated Tokenized (the audit tokenizes once and needs both)."""
    if max_length is None or len(tok.input_ids) <= max_length:
        return tok
    mask = tok.loss_mask[:max_length]
    return replace(
        tok,
        input_ids=tok.input_ids[:max_length],
        loss_mask=mask,
        message_index=tok.message_index[:max_length],
        truncated=True,
        n_trained=mask.count(True),
    )


@emits(*EMITS)
def tokenize(
    conversation: Conversation, tokenizer: Any, *, policy: str = "assistant", max_length: int | None = None
) -> Tokenized:
    """Tokenize one conversation (see tokenize_batch)."""
    return tokenize_batch([conversation], tokenizer, policy=policy, max_length=max_length)[0]


@emits(*EMITS)
def tokenize_stream(
    conversations: Iterable[Conversation],
    tokenizer: Any,
    *,
    policy: str = "assistant",
    max_length: int | None = None,
    batch_size: int = 256,
) -> Iterable[tuple[Conversation, Tokenized]]:
    """Tokenize a stream in batches (bounded memory), yielding (conversation, tokenized) pairs."""
    t = prepare(tokenizer)
    batch: list[Conversation] = []
    for conv in conversations:
        batch.append(conv)
        if len(batch) >= batch_size:
            yield from zip(batch, tokenize_batch(batch, t, policy=policy, max_length=max_length))
            batch = []
    if batch:
        yield from zip(batch, tokenize_batch(batch, t, policy=policy, max_length=max_length))


def trained_text(tok: Tokenized, tokenizer: Any) -> list[str]:
    """Decode each contiguous run of trained tokens (for verification and `sftdata show`)."""
    runs: list[str] = []
    cur: list[int] = []
    for i, m in zip(tok.input_ids, tok.loss_mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tokenizer.decode(cur, skip_special_tokens=False))
            cur = []
    if cur:
        runs.append(tokenizer.decode(cur, skip_special_tokens=False))
    return runs

"""Token view of one example: decode ids with the run's tokenizer (the `tokenizers` library, no
transformers) and render them as Rich text with trained / masked / special / glue styles, message
rules with role labels and the truncation point.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text

from tui.run import Example, Run

log = logging.getLogger(__name__)

# styles readable on dark and light terminals (no fixed foreground on the masked ones)
TRAINED = "bold green"
MASKED = "dim"
SPECIAL = "bold magenta"
SPECIAL_TRAINED = "bold magenta underline"
GLUE = "dim italic"
RULE = "bold cyan"
TRUNCATED = "bold white on red"
CHANGED = "bold black on yellow"

ROLE_WORDS = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "model": "assistant",
    "human": "user",
    "gpt": "assistant",
    "ipython": "tool",
    "function": "tool",
    "developer": "system",
}
_ROLE_RE = re.compile(r"\b(" + "|".join(ROLE_WORDS) + r")\b", re.IGNORECASE)


@dataclass
class Vocab:
    """A loaded tokenizer: decoded pieces per id (cached) and the ids of special tokens."""

    tokenizer: Any
    path: str
    special: frozenset[int]

    def pieces(self, ids: list[int]) -> list[str]:
        return self.tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=False)


def tokenizer_candidates(run: Run) -> list[Path]:
    """Where the run's tokenizer.json may be: the trained model or adapter, the model directory the
    stages name (absolute, or relative to the working directory or the run's parent), the sftdata
    alias cache, the Hugging Face hub cache."""
    out = [run.path / "train" / d / "tokenizer.json" for d in ("adapter", "model")]
    specs: list[str] = []
    for stage in (run.manifest.get("stages") or {}).values():
        cfg = stage.get("config") if isinstance(stage, dict) else None
        if isinstance(cfg, dict):
            for key in ("model", "base_model", "tokenizer", "base"):
                if isinstance(cfg.get(key), str) and cfg[key] and cfg[key] not in specs:
                    specs.append(cfg[key])
    if run.audit and isinstance(run.audit.get("model"), str) and run.audit["model"] not in specs:
        specs.append(run.audit["model"])
    cache = Path(
        os.environ.get("SFTLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sftlab"
    )
    hf = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    )
    for spec in specs:
        for base in (Path(spec), run.path.parent / spec, run.path / spec):
            out.append(base / "tokenizer.json")
            out.append(base / "tokenizer" / "tokenizer.json")
        out.append(cache / "models" / spec / "tokenizer" / "tokenizer.json")
        snaps = hf / ("models--" + spec.replace("/", "--")) / "snapshots"
        if snaps.is_dir():
            out += sorted(snaps.glob("*/tokenizer.json"))
    return out


def load_vocab(run: Run) -> Vocab | None:
    from tokenizers import Tokenizer

    for p in tokenizer_candidates(run):
        if p.is_file():
            try:
                tok = Tokenizer.from_file(str(p))
            except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception on bad files
                log.warning("%s: not a loadable tokenizer.json (%s)", p, e)
                continue
            special = frozenset(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
            return Vocab(tok, str(p), special)
    return None


def visible(piece: str) -> str:
    return piece.replace("\n", "↵\n").replace("\t", "→")


def role_of(glue: str, trained: bool) -> str:
    found = _ROLE_RE.findall(glue)
    if found:
        return ROLE_WORDS[found[-1].lower()]
    return "assistant?" if trained else "?"


def message_starts(ex: Example, pieces: list[str], special: frozenset[int]) -> dict[int, tuple[int, str]]:
    """Token index where each message's rule goes -> (message, role). The rule goes before the
    message's header glue: the special token that opens the last role word in the glue run just
    before the message (ChatML `<|im_start|>user`, Llama-3 `<|start_header_id|>user`), else the
    start of that run."""
    out: dict[int, tuple[int, str]] = {}
    mi, n = ex.message_index, len(ex.input_ids)
    trained_msgs = {mi[k] for k in range(min(n, len(mi), len(ex.loss_mask))) if ex.loss_mask[k] and mi[k] >= 0}
    prev = -1
    for k in range(min(n, len(mi))):
        m = mi[k]
        if m < 0 or m == prev:
            if m >= 0:
                prev = m
            continue
        prev = m
        start = k
        while start > 0 and mi[start - 1] < 0:
            start -= 1
        glue = pieces[start:k]
        text = "".join(glue)
        role = role_of(text, m in trained_msgs)
        at = start
        found = list(_ROLE_RE.finditer(text))
        if found:
            pos, j, end = found[-1].start(), 0, len(glue[0]) if glue else 0
            while end <= pos and j < len(glue) - 1:  # the token holding the role word's first character
                j += 1
                end += len(glue[j])
            while j >= 0 and ex.input_ids[start + j] not in special:
                j -= 1
            at = start + max(j, 0)
        out[at] = (m, role)
    return out


def render_example(ex: Example, vocab: Vocab | None, *, show_ids: bool = False) -> Text:
    """The whole example as styled text: a rule before each message naming it, trained tokens
    green, masked dim, special magenta, template glue dim italic; token ids after each token on
    demand; the truncation point marked."""
    ids = ex.input_ids
    pieces = vocab.pieces(ids) if vocab else [f"[{i}]" for i in ids]
    special = vocab.special if vocab else frozenset()
    starts = message_starts(ex, pieces, special)
    out = Text()
    n = len(ids)
    for k in range(n):
        m = ex.message_index[k] if k < len(ex.message_index) else -1
        trained = bool(ex.loss_mask[k]) if k < len(ex.loss_mask) else False
        if k in starts:
            msg, role = starts[k]
            if out and not out.plain.endswith("\n"):
                out.append("\n")
            out.append(f"── message {msg} · {role} ".ljust(40, "─") + "\n", style=RULE)
        if ids[k] in special:
            style = SPECIAL_TRAINED if trained else SPECIAL
        elif trained:
            style = TRAINED
        elif m < 0:
            style = GLUE
        else:
            style = MASKED
        out.append(visible(pieces[k]) if vocab else pieces[k] + " ", style=style)
        if show_ids and vocab:
            out.append(f"[{ids[k]}]", style="dim cyan")
    if ex.truncated or (ex.n_tokens_full or 0) > n:
        cut = (ex.n_tokens_full or n) - n
        if not out.plain.endswith("\n"):
            out.append("\n")
        out.append(
            f" ✂ truncated here: {cut} more token{'s' * (cut != 1)} were cut at max length {n} ", style=TRUNCATED
        )
    return out


def message_texts(ex: Example, vocab: Vocab | None) -> str:
    """The messages' contents (tokens with message_index >= 0), one block per message, labelled."""
    if vocab is None:
        return " ".join(str(i) for i in ex.input_ids)
    pieces = vocab.pieces(ex.input_ids)
    blocks: list[tuple[int, list[str], list[str]]] = []  # message, glue before, pieces
    glue: list[str] = []
    for k, m in enumerate(ex.message_index):
        if m < 0:
            glue.append(pieces[k])
            continue
        if not blocks or blocks[-1][0] != m:
            blocks.append((m, glue, []))
            glue = []
        blocks[-1][2].append(pieces[k])
    return "\n".join(f"[{role_of(''.join(g), False)}] {''.join(p).strip()}" for _, g, p in blocks)


def word_diff(a: str, b: str) -> tuple[Text, Text]:
    """Both texts with the words that differ from the other highlighted."""
    wa, wb = re.split(r"(\s+)", a), re.split(r"(\s+)", b)
    ta, tb = Text(), Text()
    sm = difflib.SequenceMatcher(a=wa, b=wb, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        same = op == "equal"
        for w in wa[i1:i2]:
            ta.append(w, style=None if same or w.isspace() else CHANGED)
        for w in wb[j1:j2]:
            tb.append(w, style=None if same or w.isspace() else CHANGED)
    return ta, tb


def pretty_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=1)

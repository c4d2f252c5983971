"""The checks `sftdata audit` runs: plain functions that yield Findings and never raise on bad data.

Check ids are a public interface (like linter rule codes). CATALOGUE below is the single source of
their severity, explanation, example and fix: `sftdata audit --explain ID` prints an entry and
docs/checks.md is generated from it (`python -m sftdata.checks > docs/checks.md`; a test keeps the
two identical).

What runs where (sftdata.audit drives it in one streaming pass):

  once per tokenizer   check_tokenizer (tokens.pad-is-eos), check_template (template.missing,
                       template.generation-prompt-mismatch, template.default-system-prompt,
                       template.eot-not-eos), check_embeddings (tokens.untrained-embedding, only
                       with model weights)
  per conversation     check_roles (format.no-assistant, format.role-order),
                       check_content (tokens.special-in-content, tokens.unknown-special)
  per tokenized        check_tokens (tokens.double-bos), check_mask (mask.*), check_length (length.*)

Findings that tokenizing itself notices (template.render-error, template.not-prefix-preserving,
template.generation-prompt-mismatch, mask.boundary-mismatch for a token straddling a boundary) come
from sftdata.masks on each Tokenized; format.parse-error, format.missing-field, format.wrong-type,
format.bad-role, format.unsupported-content and format.empty-content come from sftdata.formats.read.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftdata import masks
from sftdata.records import Conversation, Finding, Tokenized

log = logging.getLogger(__name__)

SEVERITY_RANK = {"info": 1, "warning": 2, "error": 3}
AREAS = ("format", "template", "tokens", "mask", "length", "dedup")


# ============================================================================================
# The catalogue
# ============================================================================================


@dataclass(frozen=True)
class Check:
    id: str
    severity: str
    title: str  # one line
    explanation: str  # why it matters, how it is detected
    example: str  # a minimal example that triggers it
    fix: str
    reported_by: str = "sftdata audit"


READER = "sftdata audit, sftdata convert"  # found while reading records (sftdata.formats)
CATALOGUE: tuple[Check, ...] = (
    # --- format -----------------------------------------------------------------------------
    Check("format.parse-error", "error", "a record cannot be parsed (broken JSON, invalid UTF-8, a bad CSV row)",
          "The reader could not turn this record into a JSON object, so it is skipped. Reported with file:line; "
          "the rest of the file is still read (for a JSON array, nothing after a syntax error can be).",
          '{"messages": [{"role": "user", "content": "hi"}',
          "Fix the JSON on that line (a missing bracket or quote, usually), or delete the line.", READER),
    Check("format.missing-field", "error", "a record lacks a field its format needs",
          "The record is an object, but a field the format requires is absent or null: `messages` in the "
          "messages format, `role` on a message, `instruction`/`output` in alpaca, ... The record is skipped.",
          '{"messages": [{"content": "hi"}]}        (no role)',
          "Add the field, or name the right format with --from if detection picked the wrong one.", READER),
    Check("format.wrong-type", "error", "a field has the wrong JSON type",
          "A field exists but holds the wrong type (a number where a string belongs, an object where a list "
          "belongs). The record is skipped.",
          '{"messages": {"role": "user", "content": "hi"}}        (an object, not a list)',
          "Store the field with the type the format expects.", READER),
    Check("format.bad-role", "error", "a message has a role no chat template knows",
          "Roles must be system, user, assistant or tool (sharegpt's human/gpt/function_call/observation are "
          "mapped). Anything else cannot be rendered by a chat template. The record is skipped.",
          '{"messages": [{"role": "bot", "content": "hi"}]}',
          "Rename the role (developer -> system, function -> tool, bot -> assistant), or use --from sharegpt for "
          "from/value data.", READER),
    Check("format.unsupported-content", "error", "a message holds a non-text part (image, audio)",
          "sftlab trains text-only models; content parts other than text cannot be rendered. The record is skipped.",
          '{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "..."}}]}',
          "Drop the non-text parts, or leave multimodal data to a multimodal trainer.", READER),
    Check("format.empty-content", "warning", "a message has empty content",
          "A message's content is empty or whitespace (an assistant message with tool calls may be empty). An "
          "empty assistant turn teaches the model to answer with nothing but the end-of-turn token; an empty "
          "user turn trains an answer to no question.",
          '{"messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": ""}]}',
          "Fill the message in or drop the record.", READER),
    Check("format.no-assistant", "error", "a conversation has no assistant turn, so nothing is trained",
          "With the assistant or last mask policy only assistant turns are trained; a conversation without one "
          "contributes no trained token (it still costs compute). Not reported with --policy all or when a "
          "message is marked train: true.",
          '{"messages": [{"role": "user", "content": "Name a prime."}]}',
          "Add the missing answer, drop the record, or train on everything with --policy all if it is plain text."),
    Check("format.role-order", "warning", "the turns are in an order templates do not expect",
          "Reported per conversation, listing what is odd: an assistant turn before any user turn, two user (or "
          "two assistant) turns in a row, a system message that is not first, a tool result without a preceding "
          "tool call, or a trailing user turn that nothing answers. Strict templates (Mistral, Gemma, Llama-2) "
          "raise on such orders (then template.render-error follows); permissive ones (ChatML) render them and "
          "the model learns a turn structure it never sees at inference.",
          '{"messages": [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Hi"}]}',
          "Merge consecutive same-role turns, drop turns before the first user turn, move the system message first."),
    Check("format.unrepresentable", "error", "a conversation cannot be written in the requested format",
          "Reported by `sftdata convert`: the target format cannot express something the conversation holds (a "
          "tool call, reasoning, a per-message train flag, several turns for a single-turn format). The record "
          "is skipped rather than silently changed.",
          "converting a conversation with tool calls to alpaca",
          "Write the messages format (.jsonl), which can express everything.", "sftdata convert"),
    # --- template ---------------------------------------------------------------------------
    Check("template.missing", "error", "the tokenizer has no chat template",
          "Base (non-instruct) models usually ship without a chat template, so conversations cannot be rendered. "
          "Reported once, with the number of conversations affected (plain `text` rows need no template).",
          "sftdata audit data.jsonl --model ./my-base-model",
          "Pick the template of the model family you will serve with: copy the instruct model's chat_template "
          "into tokenizer_config.json (or chat_template.jinja) of your model directory, or convert the data to "
          "`text` rows if you want plain language-model training."),
    Check("template.render-error", "error", "the chat template raised on this conversation",
          "The template raised an exception while rendering (most often: a role it does not support, such as "
          "system for Gemma and Mistral, or roles that do not alternate). The example cannot be tokenized and "
          "would be dropped or crash the trainer.",
          'Gemma template + {"messages": [{"role": "system", ...}, {"role": "user", ...}, ...]}',
          "Fix the data (fold the system prompt into the first user turn, make roles alternate) or use a "
          "template that supports what the data does."),
    Check("template.not-prefix-preserving", "warning", "earlier turns render differently once later turns exist",
          "The render of messages[:i+1] is not a prefix of the render of the whole conversation (Qwen3 drops the "
          "reasoning of earlier turns, Phi-3 changes what follows the final turn). Multi-turn training then sees "
          "a different text than inference builds turn by turn. Masks are still derived (by diffing). Reported "
          "once per template with the number of conversations affected.",
          "Qwen3 template + a conversation with two assistant turns that carry reasoning",
          "Usually acceptable for single-turn data. For multi-turn data prefer --policy last (train the last turn, "
          "which matches inference) or a prefix-preserving template."),
    Check("template.generation-prompt-mismatch", "warning",
          "the inference prompt (add_generation_prompt=True) does not match how training renders the assistant turn",
          "Rendering the prompt with add_generation_prompt=True must give exactly the text training puts before "
          "the answer; otherwise the model is trained after one header and asked to answer after another "
          "(train/inference skew). Also reported when the template ignores add_generation_prompt altogether (then "
          "the header is not part of the prompt at inference, and training learns to emit the header). Reported "
          "once per template with the number of conversations affected.",
          "a template that renders '<|im_start|>assistant\\n' when training but has no add_generation_prompt branch",
          "Use the model family's official template, or add an add_generation_prompt branch that emits exactly the "
          "assistant header of the training render."),
    Check("template.eot-not-eos", "warning", "assistant turns end with a token generation does not stop at",
          "The token that closes an assistant turn (the last trained token of a turn) should be one of the EOS ids "
          "generation stops at: the tokenizer's eos_token and generation_config.json's eos_token_id (read from the "
          "model directory when present). Otherwise the trained model emits the end-of-turn token and keeps "
          "talking. Classic case: Llama-3 base configs have eos '<|end_of_text|>' while the chat template closes "
          "turns with '<|eot_id|>'.",
          "llama3 template (turns end with <|eot_id|>) + a tokenizer whose eos_token is <|end_of_text|>",
          "Set eos_token in tokenizer_config.json to the end-of-turn token, or add its id to eos_token_id (a list) "
          "in generation_config.json."),
    Check("template.default-system-prompt", "warning",
          "the template injects a system prompt into every conversation that has none",
          "Rendering a conversation without a system message shows a system turn that is not in the data "
          "(SmolLM2: 'You are a helpful AI assistant named SmolLM, trained by Hugging Face'; Qwen2.5: 'You are "
          "Qwen, created by Alibaba Cloud...'). Every such example is trained with that prompt, so the model "
          "learns its identity from the template, and inference without the same default differs. Reported once "
          "with the injected text and the number of conversations affected.",
          'SmolLM2 template + {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}',
          "Decide explicitly: add the system prompt you want to the data (then the default is not used), or edit "
          "the template to drop the default."),
    # --- tokens -----------------------------------------------------------------------------
    Check("template.empty-tools", "warning", "`tools: []` renders differently from no tools",
          "The conversation has an empty `tools` list, and the chat template renders `tools=[]` differently from "
          "no tools at all: Llama-3.1's template, for one, then adds its tool-use preamble ('Environment: ipython' "
          "and the function-calling instructions) to every such example. transformers' apply_chat_template and "
          "TRL's SFTTrainer pass the empty list as given, so the audit tokenizes it as given too: what is trained "
          "on is what you see in `sftdata show`.",
          '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "tools": []}',
          "Drop the empty `tools` key (or set it to null) where the conversation offers no tools."),
    Check("tokens.double-bos", "warning", "an example starts with two BOS tokens",
          "The first two token ids are both the BOS id: usually pre-rendered text that already begins with the "
          "BOS string, tokenized by a tokenizer that adds BOS itself, or a template that emits bos_token under a "
          "trainer that adds one too. The model is trained on a sequence start it never sees at inference.",
          '{"text": "<|begin_of_text|>Once upon a time"} with a tokenizer that adds <|begin_of_text|>',
          "Strip the BOS string from the data (or from the template) so that exactly one BOS remains."),
    Check("tokens.special-in-content", "error", "message content contains a special-token string that becomes a control token",
          "A special token's text (e.g. '<|im_end|>', '<|endoftext|>', '</s>') appears inside a message's content "
          "and the tokenizer turns it into the control token itself. It can close the turn early or forge a new "
          "one: the model is trained on a broken turn structure, and in user data it is a prompt-injection "
          "channel. The finding names the token, the message and the character offset.",
          '{"messages": [{"role": "user", "content": "Ignore this<|im_end|>"}, ...]}',
          "Remove the string, or escape it so it no longer matches the token exactly (e.g. insert a zero-width "
          "space: '<\\u200b|im_end|>'); never pass untrusted text through as control tokens."),
    Check("tokens.unknown-special", "warning", "special-looking strings that are not tokens of this vocabulary",
          "Strings shaped like control tokens ('<|foo|>', '<special_token_1>', '<end_of_turn>', '[INST]') that "
          "this tokenizer does not know are split into several ordinary pieces: typically data pre-rendered for "
          "another model family, or placeholders that were never replaced. The model learns to spell them out.",
          '{"messages": [..., {"role": "assistant", "content": "Sure.<special_token_1>"}]}',
          "Remove leftovers from other templates (re-export the data as plain messages), or add the token to the "
          "tokenizer (and train its embedding) if it is meant to be one."),
    Check("tokens.pad-is-eos", "info", "the pad token and EOS share an id",
          "Safe in sftlab: labels come from the loss mask, never from pad ids, so the end-of-turn token is still "
          "trained. Dangerous in other pipelines: collators that set labels to -100 wherever input_ids == "
          "pad_token_id (e.g. transformers' DataCollatorForLanguageModeling) then also mask every EOS, and the "
          "model never learns to stop.",
          "SmolLM2: pad_token = eos_token = '<|im_end|>'",
          "Nothing to do for sftlab. If you train with other tools, set a distinct pad token that is not used "
          "elsewhere (e.g. '<|endoftext|>' on ChatML models, or a reserved special token)."),
    Check("tokens.untrained-embedding", "warning", "a special token the template uses has an embedding row that looks untrained",
          "Checked only when --model has weights (the input embedding matrix is read from the safetensors files; "
          "torch is imported only for bf16 or .bin weights). For every special token the template renders "
          "(plus BOS/EOS/pad), the row is flagged when: its id is outside the matrix (no row at all); its norm is "
          "below 10% of the median row norm of ordinary tokens (zero or near-zero init, e.g. Llama-3 base's "
          "reserved tokens); its distance to the mean row is below 10% of the median such distance (the "
          "mean-initialisation of resize_token_embeddings); or it (almost) equals another special token's row "
          "(several tokens initialised alike, never trained apart). Fine-tuning with LoRA leaves such rows "
          "untrained unless embeddings are trained too.",
          "a base model whose template tokens were added with resize_token_embeddings and never trained",
          "Train the embedding rows (full fine-tuning, or LoRA with modules_to_save=['embed_tokens', 'lm_head']), "
          "or use a template whose tokens the model already knows."),
    # --- mask -------------------------------------------------------------------------------
    Check("mask.no-trained-tokens", "error", "after tokenizing (and truncation) nothing is trained",
          "The loss mask is all False: every assistant turn was truncated away, every message is marked train: "
          "false, or the template rendered no assistant text. The example costs compute and teaches nothing "
          "(and a batch of such examples gives a NaN loss in some trainers).",
          "a 3,000-token prompt with --max-length 2048",
          "Raise --max-length, shorten or drop the example, or check the per-message train flags."),
    Check("mask.eot-not-trained", "error", "an assistant turn is trained without its end-of-turn token",
          "The last trained token of an assistant turn is not a control token: the turn's end-of-turn token is "
          "either not rendered at all or not trained (e.g. a template that emits it at the start of the next "
          "message leaves the final turn without one). The model never learns to stop. Turns cut by truncation "
          "are reported as length.truncated-answer instead.",
          "a template that writes '<|im_end|>' before each following turn instead of after each turn",
          "Use a template that closes every assistant turn with its end-of-turn token (the official one)."),
    Check("mask.prompt-trained", "warning", "prompt or template text is trained",
          "With the assistant or last policy, only assistant answers (and their end-of-turn token) should be "
          "trained. Reported when trained tokens belong to a system, user or tool message or to template glue "
          "(without a train: true override or --policy all), or when an assistant turn's trained text starts "
          "with text before the answer, such as the role header (templates that ignore add_generation_prompt).",
          "a template without an add_generation_prompt branch: '<|im_start|>assistant\\n' is trained with the answer",
          "Fix the template (see template.generation-prompt-mismatch); use --policy all only if training on the "
          "prompt is intended."),
    Check("mask.boundary-mismatch", "warning", "the trained text of an assistant turn is not its content",
          "The trained tokens of each assistant turn are decoded and compared with the message content (ignoring "
          "whitespace the template trims, and the end-of-turn token). Reported when content is missing (e.g. the "
          "template drops tool calls or reasoning, so the model is trained on an empty turn), when extra text "
          "follows the content, or when one token straddles the boundary between trained and untrained text "
          "(that token is left untrained).",
          "SmolLM2's template + a tool-call turn: the call is not rendered, the trained text is only '<|im_end|>'",
          "Use a template that renders everything the data holds (tool calls, reasoning), or convert those turns "
          "to plain text content."),
    # --- length -----------------------------------------------------------------------------
    Check("length.truncated-answer", "warning", "truncation cuts trained tokens",
          "The example is longer than the maximum length (--max-length, else the tokenizer's model_max_length when "
          "that is a real limit) and truncation (which keeps the beginning) removes trained answer tokens: the "
          "model learns answers that stop mid-sentence without an end-of-turn token.",
          "an 1,800-token answer with --max-length 1024",
          "Raise --max-length (the summary lists how many examples each candidate length cuts), or shorten, split "
          "or drop the example."),
    Check("length.over-max", "info", "an example is over the maximum length, but only untrained tokens are cut",
          "The example is longer than the maximum length, and truncation removes only untrained tokens (template "
          "glue after the last answer, or a trailing prompt). Harmless for training; listed so the counts add up.",
          "a ChatML example whose final '\\n' after '<|im_end|>' falls beyond --max-length",
          "Nothing needed; raise --max-length to silence it."),
    # --- dedup (reported by `sftdata dedup`; see docs/checks-dedup.md) -------------------------
    Check("dedup.exact", "warning", "an example duplicates another after normalisation",
          "Reported by `sftdata dedup`. See docs/checks-dedup.md for the normalisation and the fields compared.",
          "the same alpaca instruction and output twice", "`sftdata dedup ... -o KEPT` keeps one per cluster.",
          "sftdata dedup"),
    Check("dedup.near", "warning", "an example near-duplicates another (MinHash, verified Jaccard)",
          "Reported by `sftdata dedup`. See docs/checks-dedup.md for shingling, the threshold and verification.",
          "the same source document under two prompt templates", "`sftdata dedup ... -o KEPT` keeps one per cluster.",
          "sftdata dedup"),
    Check("dedup.contamination", "error", "a training example overlaps an evaluation example",
          "Reported by `sftdata dedup --eval`. See docs/checks-dedup.md.",
          "a benchmark question copied into the training set", "Drop the training example.", "sftdata dedup"),
)
CHECKS: dict[str, Check] = {c.id: c for c in CATALOGUE}
# Checks whose findings describe the template, not one example: reported once with a count.
PER_TEMPLATE = ("template.missing", "template.not-prefix-preserving", "template.generation-prompt-mismatch",
                "template.eot-not-eos", "template.default-system-prompt", "tokens.pad-is-eos",
                "tokens.untrained-embedding")


def explain(check_id: str) -> str:
    """The long explanation of one check, as `sftdata audit --explain` prints it."""
    c = CHECKS[check_id]
    return (f"{c.id} ({c.severity}): {c.title}\n\n{c.explanation}\n\nExample:\n    {c.example}\n\nFix:\n    {c.fix}\n"
            + ("" if c.reported_by == "sftdata audit" else f"\nReported by: {c.reported_by}\n"))


def catalogue_markdown() -> str:
    """docs/checks.md, generated from CATALOGUE."""
    lines = [
        "# Check catalogue",
        "",
        "<!-- generated by `python -m sftdata.checks > docs/checks.md`; edit sftdata/checks.py instead -->",
        "",
        "Every finding sftlab reports carries one of these ids. Ids are a public interface, like linter rule",
        "codes: select or ignore them with `--select`/`--ignore` (a comma list; an area such as `tokens` or",
        "`tokens.*` selects all its checks), set the failing threshold with `--fail-on error|warning|info`, and",
        "print one entry with `sftdata audit --explain ID`.",
        "",
        "Severities: **error** = data the trainer must not train on (`sfttrain` refuses to start on error",
        "findings unless forced); **warning** = probably a silent bug, look at it; **info** = for the record.",
        "",
        "| id | severity | what | reported by |",
        "|---|---|---|---|",
    ]
    for c in CATALOGUE:
        lines.append(f"| [`{c.id}`](#{c.id.replace('.', '')}) | {c.severity} | {c.title} | `{c.reported_by}` |")
    area = None
    for c in CATALOGUE:
        a = c.id.split(".")[0]
        if a != area:
            area = a
            lines += ["", f"## {a}", ""]
            if a == "dedup":
                lines += ["These are reported by `sftdata dedup`; their full description is in "
                          "[checks-dedup.md](checks-dedup.md).", ""]
        lines += [f"### {c.id}", "", f"**{c.severity}** · {c.title}", "", c.explanation, "",
                  "Example:", "", "```", c.example, "```", "", f"Fix: {c.fix}", ""]
    return "\n".join(lines).rstrip() + "\n"


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
_TOKEN_WORDS = frozenset("special token turn sep tool call think unused reserved extra fim eot eos bos pad unk "
                         "sys inst im".split())
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


def tokenizer_info(tokenizer: Any, model_dir: str | None = None, prepared: masks.Tokenizer | None = None) -> TokenizerInfo:
    """What the checks need from `tokenizer`; `prepared` (masks.prepare(tokenizer)) lends its byte table."""
    backend = tokenizer.backend_tokenizer
    generation_eos = read_generation_eos(model_dir)
    eos = tokenizer.eos_token_id
    specials = {tok.content: i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special and tok.content}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):  # special even when not "added"
        text = getattr(tokenizer, name, None)
        if isinstance(text, str) and text and backend.token_to_id(text) is not None:
            specials.setdefault(text, backend.token_to_id(text))
    pattern = (re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
               if specials else None)
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
        answer_prefix=header[len(gen):] if gen and header is not None and header.startswith(gen) else "",
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
    return (gen[len(prompt):] if gen.startswith(prompt) else None), full[len(prompt): full.index(answer)]


def _token_text(tokenizer: Any, token_id: int | None) -> str:
    if token_id is None:
        return "None"
    return repr(tokenizer.convert_ids_to_tokens(int(token_id)))


def _snippet(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ============================================================================================
# Once per tokenizer
# ============================================================================================


def check_tokenizer(tokenizer: Any, info: TokenizerInfo) -> Iterator[Finding]:
    """tokens.pad-is-eos."""
    pad = info.pad_id
    if pad is not None and pad in info.eos_ids:
        yield Finding(
            "tokens.pad-is-eos", "info",
            f"the pad token {_token_text(tokenizer, pad)} (id {pad}) is also an EOS token. Safe in sftlab (labels come "
            "from the loss mask, so the end-of-turn token is still trained); dangerous in collators that set "
            "labels to -100 wherever input_ids == pad_token_id: they mask every EOS and the model never learns to stop",
            CHECKS["tokens.pad-is-eos"].fix, data={"pad_token_id": pad, "eos_token_ids": sorted(info.eos_ids)})


def check_template(tokenizer: Any, info: TokenizerInfo) -> Iterator[Finding]:
    """template.missing, template.generation-prompt-mismatch (probe), template.default-system-prompt,
    template.eot-not-eos: rendered on small probe conversations, once per tokenizer. The audit adds
    how many examples each one affects."""
    try:
        template = masks.template_of(tokenizer)
    except masks.TemplateError as e:
        yield Finding("template.missing", "error", e.message, e.hint)
        return
    gen, header = info.generation_prompt, info.assistant_header
    if header is None:
        pass  # the probe did not render as a prefix: per-example findings from masks say more
    elif gen is None:
        yield Finding(
            "template.generation-prompt-mismatch", "warning",
            "the prompt rendered with add_generation_prompt=True does not start with the prompt rendered without it",
            CHECKS["template.generation-prompt-mismatch"].fix)
    elif gen == "" and header.strip():
        yield Finding(
            "template.generation-prompt-mismatch", "warning",
            "the template ignores add_generation_prompt=True: at inference the prompt ends without the assistant "
            f"header {_snippet(header)!r} that training renders before the answer, and training learns to emit "
            "that header itself", CHECKS["template.generation-prompt-mismatch"].fix, data={"header": header})
    elif not header.startswith(gen):
        yield Finding(
            "template.generation-prompt-mismatch", "warning",
            f"add_generation_prompt=True appends {_snippet(gen)!r}, but training renders {_snippet(header)!r} before "
            "the answer: the model is trained after one header and asked to answer after another",
            CHECKS["template.generation-prompt-mismatch"].fix, data={"generation_prompt": gen, "header": header})
    yield from _default_system_prompt(tokenizer, template)
    yield from _eot_not_eos(tokenizer, info)


def _default_system_prompt(tokenizer: Any, template: str) -> Iterator[Finding]:
    """Render [user, assistant] and [system, user, assistant] with placeholders: if the text before
    the user turn in the first has the shape of the second's system turn, the template added one."""
    u, a, s = _PH.format("u"), _PH.format("a"), _PH.format("s")
    without = _probe(tokenizer, template, [{"role": "user", "content": u}, {"role": "assistant", "content": a}])
    with_sys = _probe(tokenizer, template, [{"role": "system", "content": s}, {"role": "user", "content": u},
                                            {"role": "assistant", "content": a}])
    if without is None or with_sys is None or u not in without or u not in with_sys or s not in with_sys:
        return
    before = without[: without.index(u)]
    shape = with_sys[: with_sys.index(u)]
    pre, post = shape.split(s, 1)
    if not (before.startswith(pre) and before.endswith(post) and len(before) >= len(pre) + len(post)):
        return
    injected = before[len(pre): len(before) - len(post)]
    if injected.strip():
        yield Finding(
            "template.default-system-prompt", "warning",
            f"the template adds the system prompt {_snippet(injected, 100)!r} to every conversation that has no "
            "system message: those examples are trained with it",
            CHECKS["template.default-system-prompt"].fix, data={"system_prompt": injected})


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
    source = "tokenizer eos_token" + (" and generation_config.json" if info.generation_eos_ids else
                                      " (no generation_config.json found)")
    if last in info.special_ids:
        what = (f"assistant turns end with the control token {_token_text(tokenizer, last)} (id {last}), which is not "
                "among the EOS ids generation stops at")
    else:
        what = (f"the template closes assistant turns with no end-of-turn token (an answer's last trained token is "
                f"ordinary text, e.g. {_token_text(tokenizer, last)}), so no EOS id generation stops at is trained")
    yield Finding(
        "template.eot-not-eos", "warning",
        f"{what} ({source}: {eos_names}): the trained model will not stop at the end of its turn",
        CHECKS["template.eot-not-eos"].fix, data={"end_of_turn_id": last, "eos_token_ids": sorted(info.eos_ids)})


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


def check_roles(conv: Conversation, policy: str) -> Iterator[Finding]:
    """format.no-assistant, format.role-order. Raw rows (text, plain prompt/completion) have no
    turns to check."""
    if masks.is_text_row(conv):
        return
    msgs = conv.messages
    roles = [m.role for m in msgs]
    if "assistant" not in roles and policy != "all" and not any(m.train for m in msgs):
        yield Finding("format.no-assistant", "error",
                      f"no assistant turn (roles: {', '.join(roles)}): nothing in this example is trained",
                      CHECKS["format.no-assistant"].fix, conv.id, conv.source)
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
        yield Finding("format.role-order", "warning",
                      f"unexpected turn order ({', '.join(roles)}): " + "; ".join(problems[:4]),
                      CHECKS["format.role-order"].fix, conv.id, conv.source, {"roles": roles})


def check_content(conv: Conversation, info: TokenizerInfo) -> Iterator[Finding]:
    """tokens.special-in-content, tokens.unknown-special (one finding each per conversation)."""
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
        yield Finding(
            "tokens.special-in-content", "error",
            f"{'; '.join(parts)}{more}: tokenized as the control token itself, not as text",
            f"remove {token!r} from the content, or escape it so it no longer matches the token (e.g. "
            f"{escaped!r}, with a zero-width space); never let untrusted text reach the model as control tokens",
            conv.id, conv.source,
            {"occurrences": [{"message": i, "char": k, "token": s} for i, k, s in found[:20]]})
    if unknown:
        parts = [f"{s!r} in message {i} at char {k} (split into {info.count_pieces(s)} pieces)" for i, k, s in unknown[:3]]
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        yield Finding(
            "tokens.unknown-special", "warning",
            f"special-looking {'; '.join(parts)}{more}: not a token of this vocabulary",
            CHECKS["tokens.unknown-special"].fix, conv.id, conv.source,
            {"occurrences": [{"message": i, "char": k, "text": s} for i, k, s in unknown[:20]]})


# ============================================================================================
# Per tokenized example
# ============================================================================================


def check_tokens(conv: Conversation, tok: Tokenized, info: TokenizerInfo) -> Iterator[Finding]:
    """tokens.double-bos."""
    ids = tok.input_ids
    if info.bos_id is not None and len(ids) >= 2 and ids[0] == info.bos_id and ids[1] == info.bos_id:
        yield Finding("tokens.double-bos", "warning",
                      f"the example starts with two BOS tokens (id {info.bos_id}): the data or the template already "
                      "begins with the BOS string and the tokenizer adds another",
                      CHECKS["tokens.double-bos"].fix, conv.id, conv.source)


def check_mask(conv: Conversation, tok: Tokenized, info: TokenizerInfo, policy: str, *,
               verify_text: bool = True) -> Iterator[Finding]:
    """mask.no-trained-tokens, mask.eot-not-trained, mask.prompt-trained, mask.boundary-mismatch on
    what the trainer trains (the truncated Tokenized). `verify_text=False` skips the decode-and-compare
    part (mask.prompt-trained by text, mask.boundary-mismatch)."""
    ids = tok.input_ids
    if not ids:
        return  # not rendered: template.* already says why
    msgs = conv.messages
    if tok.n_trained == 0:
        if masks.is_text_row(conv) or policy == "all" or any(m.role == "assistant" or m.train for m in msgs):
            why = ("truncation removed every trained token" if tok.truncated else
                   "no message is trained under the mask policy and train flags")
            yield Finding("mask.no-trained-tokens", "error",
                          f"nothing is trained ({len(ids)} tokens, {why})",
                          CHECKS["mask.no-trained-tokens"].fix, conv.id, conv.source)
        return
    if masks.is_text_row(conv):  # raw rows: text, or plain prompt/completion (no template)
        if verify_text and conv.meta.get("kind") == "prompt-completion" and not tok.truncated:
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
            yield Finding("mask.prompt-trained", "warning",
                          f"prompt tokens are trained: {', '.join(what)}",
                          CHECKS["mask.prompt-trained"].fix, conv.id, conv.source)
    straddle = any(f.check == "mask.boundary-mismatch" for f in tok.findings)
    for i, m in enumerate(msgs):
        if m.role != "assistant":
            continue
        runs = by_message.get(i)
        if not runs:
            if expected[i] and not straddle and i in mi:  # rendered but not trained
                yield Finding("mask.boundary-mismatch", "warning",
                              f"assistant message {i} is rendered but none of it is trained",
                              CHECKS["mask.boundary-mismatch"].fix, conv.id, conv.source, {"message": i})
            continue
        end = runs[-1][1]
        if tok.truncated and end == n:
            continue  # cut by truncation: length.truncated-answer says so
        last_id = ids[end - 1]
        if last_id not in info.special_ids:
            following = info.decode(ids[end:end + 3])
            yield Finding("mask.eot-not-trained", "error",
                          f"assistant message {i} is trained without an end-of-turn token: its last trained token is "
                          f"{info.decode([last_id])!r}, followed by {following!r} (untrained): the model never learns to stop",
                          CHECKS["mask.eot-not-trained"].fix, conv.id, conv.source, {"message": i})
        if verify_text and not straddle:
            trained = ids[runs[0][0]:end] if len(runs) == 1 else [t for a, b in runs for t in ids[a:b]]
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
                yield Finding("mask.prompt-trained", "warning",
                              f"assistant message {i}: the trained text starts with {_snippet(extra)!r} before the "
                              "answer: the template ignores add_generation_prompt, so its assistant header is trained",
                              CHECKS["mask.prompt-trained"].fix, conv.id, conv.source, {"message": i})
            else:
                yield Finding("mask.boundary-mismatch", "warning",
                              f"assistant message {i}: {_snippet(extra)!r} before the content is trained too",
                              CHECKS["mask.boundary-mismatch"].fix, conv.id, conv.source, {"message": i})
            return
        elif m.tool_calls or m.reasoning:
            got_all = flat_content in flat_text
        else:
            got_all = False
        if not got_all:
            k = next((j for j, (x, y) in enumerate(zip(text, content)) if x != y), min(len(text), len(content)))
            yield Finding("mask.boundary-mismatch", "warning",
                          f"assistant message {i}: the trained text differs from the content at char {k}: "
                          f"trained {_snippet(text[k:], 40)!r}, content {_snippet(content[k:], 40)!r}",
                          CHECKS["mask.boundary-mismatch"].fix, conv.id, conv.source, {"message": i, "char": k})
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
        yield Finding("mask.boundary-mismatch", "warning",
                      f"assistant message {i}: the template does not render {' and '.join(dropped)}; the trained "
                      f"text is {_snippet(text, 50)!r}",
                      CHECKS["mask.boundary-mismatch"].fix, conv.id, conv.source, {"message": i})


def check_length(conv: Conversation, full: Tokenized, kept: Tokenized, limit: int | None, *,
                 limit_name: str = "--max-length") -> Iterator[Finding]:
    """length.truncated-answer, length.over-max. `full` is the untruncated tokenization, `kept` what
    is trained; `limit` is --max-length (or the model's context length when that was not given)."""
    n = len(full.input_ids)
    if limit is None or n <= limit or not n:
        return
    trained_full = full.n_trained
    trained_kept = sum(full.loss_mask[:limit]) if kept is full else kept.n_trained
    lost = trained_full - trained_kept
    if lost > 0:
        yield Finding("length.truncated-answer", "warning",
                      f"{n} tokens, over {limit_name} {limit}: truncation cuts {lost} of {trained_full} trained tokens",
                      CHECKS["length.truncated-answer"].fix, conv.id, conv.source,
                      {"n_tokens": n, "max_length": limit, "trained_lost": lost})
    else:
        yield Finding("length.over-max", "info",
                      f"{n} tokens, over {limit_name} {limit}; truncation cuts only untrained tokens",
                      CHECKS["length.over-max"].fix, conv.id, conv.source, {"n_tokens": n, "max_length": limit})


# ============================================================================================
# With model weights
# ============================================================================================


def load_input_embeddings(model_dir: str) -> Any:
    """The input embedding matrix (numpy float32) from a model directory's weights, or None.

    Reads only that tensor from *.safetensors (numpy; torch only for bf16/fp16 storage it cannot
    view, or for pytorch_model*.bin)."""
    import numpy as np

    d = Path(model_dir)
    names = ("model.embed_tokens.weight", "embed_tokens.weight", "transformer.wte.weight", "wte.weight",
             "model.embeddings.word_embeddings.weight", "word_embeddings.weight", "tok_embeddings.weight")
    files = sorted(d.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="np") as st:
                keys = list(st.keys())
                key = next((k for k in names if k in keys), None) or next(
                    (k for k in keys if k.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight"))), None)
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
        key = next((k for k in state if k.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight"))), None)
        if key is not None:
            return state[key].float().numpy()
    return None


def template_special_ids(tokenizer: Any, info: TokenizerInfo) -> list[int]:
    """Special tokens the template renders (probe conversations), plus BOS/EOS/pad."""
    from sftdata.records import Message, Source

    used: set[int] = {i for i in (info.bos_id, info.pad_id, *info.eos_ids) if i is not None}
    for turns in ((("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"), ("assistant", "Bye")),
                  (("user", "Hi"), ("assistant", "Hello"))):
        conv = Conversation("probe", tuple(Message(r, c) for r, c in turns), Source("<probe>"))
        tok = masks.tokenize(conv, tokenizer)
        used.update(i for i in tok.input_ids if i in info.special_ids)
    return sorted(used)


def check_embeddings(tokenizer: Any, info: TokenizerInfo, embeddings: Any, token_ids: Sequence[int]) -> Iterator[Finding]:
    """tokens.untrained-embedding (criterion in CATALOGUE)."""
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
            problems[i] = (f"row is at the mean embedding (distance {dist:.3g}; median distance {median_dist:.3g}): "
                           "mean-initialised and never trained")
    others = sorted({j for j in info.special_ids if j < rows} | set(in_range))
    for i in in_range:
        if i in problems:
            continue
        for j in others:
            if j != i and float(np.linalg.norm(E[i] - E[j])) < 1e-3 * max(median_norm, 1e-12):
                problems[i] = (f"row equals the row of {_token_text(tokenizer, j)} (id {j}): initialised alike, "
                               "never trained apart")
                break
    for i, why in sorted(problems.items()):
        yield Finding("tokens.untrained-embedding", "warning",
                      f"special token {_token_text(tokenizer, i)} (id {i}), used by the template: {why}",
                      CHECKS["tokens.untrained-embedding"].fix, data={"token_id": i})


if __name__ == "__main__":  # python -m sftdata.checks > docs/checks.md
    sys.stdout.write(catalogue_markdown())

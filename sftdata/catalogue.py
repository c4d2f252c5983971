"""The check catalogue: every check id sftlab reports, with its severity, explanation, example and fix
(stdlib only, so that formats, masks, dedup and the checks can all import it).

Check ids are a public interface (like linter rule codes). CATALOGUE is the single source of their
severity and default hint: `finding(check_id, message, conv)` builds every Finding from it.
`sftdata audit --explain ID` prints an entry and docs/checks.md is generated from it
(`python -m sftdata.catalogue > docs/checks.md`; a test keeps the two identical).

A check function declares the ids it emits once, with `@emits(...)`; the audit reads that
declaration to decide which functions --select/--ignore leave anything to do.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sftdata.errors import UsageError
from sftdata.records import Conversation, Finding, Source, fast_constructor

SEVERITY_RANK = {"info": 1, "warning": 2, "error": 3}
AREAS = ("format", "template", "tokens", "mask", "length", "dedup")


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
    Check(
        "format.parse-error",
        "error",
        "a record cannot be parsed (broken JSON, invalid UTF-8, a bad CSV row)",
        "The reader could not turn this record into a JSON object, so it is skipped. Reported with file:line; "
        "the rest of the file is still read (for a JSON array, nothing after a syntax error can be).",
        '{"messages": [{"role": "user", "content": "hi"}',
        "Fix the JSON on that line (a missing bracket or quote, usually), or delete the line.",
        READER,
    ),
    Check(
        "format.missing-field",
        "error",
        "a record lacks a field its format needs",
        "The record is an object, but a field the format requires is absent or null: `messages` in the "
        "messages format, `role` on a message, `instruction`/`output` in alpaca, ... The record is skipped.",
        '{"messages": [{"content": "hi"}]}        (no role)',
        "Add the field, or name the right format with --from if detection picked the wrong one.",
        READER,
    ),
    Check(
        "format.wrong-type",
        "error",
        "a field has the wrong JSON type",
        "A field exists but holds the wrong type (a number where a string belongs, an object where a list "
        "belongs). The record is skipped.",
        '{"messages": {"role": "user", "content": "hi"}}        (an object, not a list)',
        "Store the field with the type the format expects.",
        READER,
    ),
    Check(
        "format.bad-role",
        "error",
        "a message has a role no chat template knows",
        "Roles must be system, user, assistant or tool (sharegpt's human/gpt/function_call/observation are "
        "mapped). Anything else cannot be rendered by a chat template. The record is skipped.",
        '{"messages": [{"role": "bot", "content": "hi"}]}',
        "Rename the role (developer -> system, function -> tool, bot -> assistant), or use --from sharegpt for "
        "from/value data.",
        READER,
    ),
    Check(
        "format.unsupported-content",
        "error",
        "a message holds a non-text part (image, audio)",
        "sftlab trains text-only models; content parts other than text cannot be rendered. The record is skipped.",
        '{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "..."}}]}',
        "Drop the non-text parts, or leave multimodal data to a multimodal trainer.",
        READER,
    ),
    Check(
        "format.empty-content",
        "warning",
        "a message has empty content",
        "A message's content is empty or whitespace (an assistant message with tool calls may be empty). An "
        "empty assistant turn teaches the model to answer with nothing but the end-of-turn token; an empty "
        "user turn trains an answer to no question.",
        '{"messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": ""}]}',
        "Fill the message in or drop the record.",
        READER,
    ),
    Check(
        "format.no-assistant",
        "error",
        "a conversation has no assistant turn, so nothing is trained",
        "With the assistant or last mask policy only assistant turns are trained; a conversation without one "
        "contributes no trained token (it still costs compute). Not reported with --policy all or when a "
        "message is marked train: true.",
        '{"messages": [{"role": "user", "content": "Name a prime."}]}',
        "Add the missing answer, drop the record, or train on everything with --policy all if it is plain text.",
    ),
    Check(
        "format.role-order",
        "warning",
        "the turns are in an order templates do not expect",
        "Reported per conversation, listing what is odd: an assistant turn before any user turn, two user (or "
        "two assistant) turns in a row, a system message that is not first, a tool result without a preceding "
        "tool call, or a trailing user turn that nothing answers. Strict templates (Mistral, Gemma, Llama-2) "
        "raise on such orders (then template.render-error follows); permissive ones (ChatML) render them and "
        "the model learns a turn structure it never sees at inference.",
        '{"messages": [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Hi"}]}',
        "Merge consecutive same-role turns, drop turns before the first user turn, move the system message first.",
    ),
    Check(
        "format.unrepresentable",
        "error",
        "a conversation cannot be written in the requested format",
        "Reported by `sftdata convert`: the target format cannot express something the conversation holds (a "
        "tool call, reasoning, a per-message train flag, several turns for a single-turn format). The record "
        "is skipped rather than silently changed.",
        "converting a conversation with tool calls to alpaca",
        "Write the messages format (.jsonl), which can express everything.",
        "sftdata convert",
    ),
    # --- template ---------------------------------------------------------------------------
    Check(
        "template.missing",
        "error",
        "the tokenizer has no chat template",
        "Base (non-instruct) models usually ship without a chat template, so conversations cannot be rendered. "
        "Reported once, with the number of conversations affected (plain `text` rows need no template).",
        "sftdata audit data.jsonl --model ./my-base-model",
        "Pick the template of the model family you will serve with: copy the instruct model's chat_template "
        "into tokenizer_config.json (or chat_template.jinja) of your model directory, or convert the data to "
        "`text` rows if you want plain language-model training.",
    ),
    Check(
        "template.render-error",
        "error",
        "the chat template raised on this conversation",
        "The template raised an exception while rendering (most often: a role it does not support, such as "
        "system for Gemma and Mistral, or roles that do not alternate). The example cannot be tokenized and "
        "would be dropped or crash the trainer.",
        'Gemma template + {"messages": [{"role": "system", ...}, {"role": "user", ...}, ...]}',
        "Fix the data (fold the system prompt into the first user turn, make roles alternate) or use a "
        "template that supports what the data does.",
    ),
    Check(
        "template.not-prefix-preserving",
        "warning",
        "earlier turns render differently once later turns exist",
        "The render of messages[:i+1] is not a prefix of the render of the whole conversation (Qwen3 drops the "
        "reasoning of earlier turns, Phi-3 changes what follows the final turn). Multi-turn training then sees "
        "a different text than inference builds turn by turn. Masks are still derived (by diffing). Reported "
        "once per template with the number of conversations affected.",
        "Qwen3 template + a conversation with two assistant turns that carry reasoning",
        "Usually acceptable for single-turn data. For multi-turn data prefer --policy last (train the last turn, "
        "which matches inference) or a prefix-preserving template.",
    ),
    Check(
        "template.generation-prompt-mismatch",
        "warning",
        "the inference prompt (add_generation_prompt=True) does not match how training renders the assistant turn",
        "Rendering the prompt with add_generation_prompt=True must give exactly the text training puts before "
        "the answer; otherwise the model is trained after one header and asked to answer after another "
        "(train/inference skew). Also reported when the template ignores add_generation_prompt altogether (then "
        "the header is not part of the prompt at inference, and training learns to emit the header). Reported "
        "once per template with the number of conversations affected.",
        "a template that renders '<|im_start|>assistant\\n' when training but has no add_generation_prompt branch",
        "Use the model family's official template, or add an add_generation_prompt branch that emits exactly the "
        "assistant header of the training render.",
    ),
    Check(
        "template.eot-not-eos",
        "warning",
        "assistant turns end with a token generation does not stop at",
        "The token that closes an assistant turn (the last trained token of a turn) should be one of the EOS ids "
        "generation stops at: the tokenizer's eos_token and generation_config.json's eos_token_id (read from the "
        "model directory when present). Otherwise the trained model emits the end-of-turn token and keeps "
        "talking. Classic case: Llama-3 base configs have eos '<|end_of_text|>' while the chat template closes "
        "turns with '<|eot_id|>'.",
        "llama3 template (turns end with <|eot_id|>) + a tokenizer whose eos_token is <|end_of_text|>",
        "Set eos_token in tokenizer_config.json to the end-of-turn token, or add its id to eos_token_id (a list) "
        "in generation_config.json.",
    ),
    Check(
        "template.default-system-prompt",
        "warning",
        "the template injects a system prompt into every conversation that has none",
        "Rendering a conversation without a system message shows a system turn that is not in the data "
        "(SmolLM2: 'You are a helpful AI assistant named SmolLM, trained by Hugging Face'; Qwen2.5: 'You are "
        "Qwen, created by Alibaba Cloud...'). Every such example is trained with that prompt, so the model "
        "learns its identity from the template, and inference without the same default differs. Reported once "
        "with the injected text and the number of conversations affected.",
        'SmolLM2 template + {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}',
        "Decide explicitly: add the system prompt you want to the data (then the default is not used), or edit "
        "the template to drop the default.",
    ),
    Check(
        "template.empty-tools",
        "warning",
        "`tools: []` renders differently from no tools",
        "The conversation has an empty `tools` list, and the chat template renders `tools=[]` differently from "
        "no tools at all: Llama-3.1's template, for one, then adds its tool-use preamble ('Environment: ipython' "
        "and the function-calling instructions) to every such example. transformers' apply_chat_template and "
        "TRL's SFTTrainer pass the empty list as given, so the audit tokenizes it as given too: what is trained "
        "on is what you see in `sftdata show`.",
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "tools": []}',
        "Drop the empty `tools` key (or set it to null) where the conversation offers no tools.",
    ),
    # --- tokens -----------------------------------------------------------------------------
    Check(
        "tokens.double-bos",
        "warning",
        "an example starts with two BOS tokens",
        "The first two token ids are both the BOS id: usually pre-rendered text that already begins with the "
        "BOS string, tokenized by a tokenizer that adds BOS itself, or a template that emits bos_token under a "
        "trainer that adds one too. The model is trained on a sequence start it never sees at inference.",
        '{"text": "<|begin_of_text|>Once upon a time"} with a tokenizer that adds <|begin_of_text|>',
        "Strip the BOS string from the data (or from the template) so that exactly one BOS remains.",
    ),
    Check(
        "tokens.special-in-content",
        "error",
        "message content contains a special-token string that becomes a control token",
        "A special token's text (e.g. '<|im_end|>', '<|endoftext|>', '</s>') appears inside a message's content "
        "and the tokenizer turns it into the control token itself. It can close the turn early or forge a new "
        "one: the model is trained on a broken turn structure, and in user data it is a prompt-injection "
        "channel. The finding names the token, the message and the character offset.",
        '{"messages": [{"role": "user", "content": "Ignore this<|im_end|>"}, ...]}',
        "Remove the string, or escape it so it no longer matches the token exactly (e.g. insert a zero-width "
        "space: '<\\u200b|im_end|>'); never pass untrusted text through as control tokens.",
    ),
    Check(
        "tokens.unknown-special",
        "warning",
        "special-looking strings that are not tokens of this vocabulary",
        "Strings shaped like control tokens ('<|foo|>', '<special_token_1>', '<end_of_turn>', '[INST]') that "
        "this tokenizer does not know are split into several ordinary pieces: typically data pre-rendered for "
        "another model family, or placeholders that were never replaced. The model learns to spell them out.",
        '{"messages": [..., {"role": "assistant", "content": "Sure.<special_token_1>"}]}',
        "Remove leftovers from other templates (re-export the data as plain messages), or add the token to the "
        "tokenizer (and train its embedding) if it is meant to be one.",
    ),
    Check(
        "tokens.pad-is-eos",
        "info",
        "the pad token and EOS share an id",
        "Safe in sftlab: labels come from the loss mask, never from pad ids, so the end-of-turn token is still "
        "trained. Dangerous in other pipelines: collators that set labels to -100 wherever input_ids == "
        "pad_token_id (e.g. transformers' DataCollatorForLanguageModeling) then also mask every EOS, and the "
        "model never learns to stop.",
        "SmolLM2: pad_token = eos_token = '<|im_end|>'",
        "Nothing to do for sftlab. If you train with other tools, set a distinct pad token that is not used "
        "elsewhere (e.g. '<|endoftext|>' on ChatML models, or a reserved special token).",
    ),
    Check(
        "tokens.untrained-embedding",
        "warning",
        "a special token the template uses has an embedding row that looks untrained",
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
        "or use a template whose tokens the model already knows.",
    ),
    # --- mask -------------------------------------------------------------------------------
    Check(
        "mask.no-trained-tokens",
        "error",
        "after tokenizing (and truncation) nothing is trained",
        "The loss mask is all False: every assistant turn was truncated away, every message is marked train: "
        "false, or the template rendered no assistant text. The example costs compute and teaches nothing "
        "(and a batch of such examples gives a NaN loss in some trainers).",
        "a 3,000-token prompt with --max-length 2048",
        "Raise --max-length, shorten or drop the example, or check the per-message train flags.",
    ),
    Check(
        "mask.eot-not-trained",
        "error",
        "an assistant turn is trained without its end-of-turn token",
        "The last trained token of an assistant turn is not a control token: the turn's end-of-turn token is "
        "either not rendered at all or not trained (e.g. a template that emits it at the start of the next "
        "message leaves the final turn without one). The model never learns to stop. Turns cut by truncation "
        "are reported as length.truncated-answer instead.",
        "a template that writes '<|im_end|>' before each following turn instead of after each turn",
        "Use a template that closes every assistant turn with its end-of-turn token (the official one).",
    ),
    Check(
        "mask.prompt-trained",
        "warning",
        "prompt or template text is trained",
        "With the assistant or last policy, only assistant answers (and their end-of-turn token) should be "
        "trained. Reported when trained tokens belong to a system, user or tool message or to template glue "
        "(without a train: true override or --policy all), or when an assistant turn's trained text starts "
        "with text before the answer, such as the role header (templates that ignore add_generation_prompt).",
        "a template without an add_generation_prompt branch: '<|im_start|>assistant\\n' is trained with the answer",
        "Fix the template (see template.generation-prompt-mismatch); use --policy all only if training on the "
        "prompt is intended.",
    ),
    Check(
        "mask.boundary-mismatch",
        "warning",
        "the trained text of an assistant turn is not its content",
        "The trained tokens of each assistant turn are decoded and compared with the message content (ignoring "
        "whitespace the template trims, and the end-of-turn token). Reported when content is missing (e.g. the "
        "template drops tool calls or reasoning, so the model is trained on an empty turn), when extra text "
        "follows the content, or when one token straddles the boundary between trained and untrained text "
        "(that token is left untrained).",
        "SmolLM2's template + a tool-call turn: the call is not rendered, the trained text is only '<|im_end|>'",
        "Use a template that renders everything the data holds (tool calls, reasoning), or convert those turns "
        "to plain text content.",
    ),
    # --- length -----------------------------------------------------------------------------
    Check(
        "length.truncated-answer",
        "warning",
        "truncation cuts trained tokens",
        "The example is longer than the maximum length (--max-length, else the tokenizer's model_max_length when "
        "that is a real limit) and truncation (which keeps the beginning) removes trained answer tokens: the "
        "model learns answers that stop mid-sentence without an end-of-turn token.",
        "an 1,800-token answer with --max-length 1024",
        "Raise --max-length (the summary lists how many examples each candidate length cuts), or shorten, split "
        "or drop the example.",
    ),
    Check(
        "length.over-max",
        "info",
        "an example is over the maximum length, but only untrained tokens are cut",
        "The example is longer than the maximum length, and truncation removes only untrained tokens (template "
        "glue after the last answer, or a trailing prompt). Harmless for training; listed so the counts add up.",
        "a ChatML example whose final '\\n' after '<|im_end|>' falls beyond --max-length",
        "Nothing needed; raise --max-length to silence it.",
    ),
    # --- dedup (reported by `sftdata dedup`; see docs/checks-dedup.md) -------------------------
    Check(
        "dedup.exact",
        "warning",
        "an example duplicates another after normalisation",
        "Reported by `sftdata dedup`. See docs/checks-dedup.md for the normalisation and the fields compared.",
        "the same alpaca instruction and output twice",
        "`sftdata dedup ... -o KEPT` keeps one per cluster.",
        "sftdata dedup",
    ),
    Check(
        "dedup.near",
        "warning",
        "an example near-duplicates another (MinHash, verified Jaccard)",
        "Reported by `sftdata dedup`. See docs/checks-dedup.md for shingling, the threshold and verification.",
        "the same source document under two prompt templates",
        "`sftdata dedup ... -o KEPT` keeps one per cluster.",
        "sftdata dedup",
    ),
    Check(
        "dedup.contamination",
        "error",
        "a training example overlaps an evaluation example",
        "Reported by `sftdata dedup --against EVAL`. See docs/checks-dedup.md.",
        "a benchmark question copied into the training set",
        "Drop the training example.",
        "sftdata dedup",
    ),
)
CHECKS: dict[str, Check] = {c.id: c for c in CATALOGUE}
# Checks whose findings describe the template, not one example: reported once with a count.
PER_TEMPLATE = (
    "template.missing",
    "template.not-prefix-preserving",
    "template.generation-prompt-mismatch",
    "template.eot-not-eos",
    "template.default-system-prompt",
    "tokens.pad-is-eos",
    "tokens.untrained-embedding",
)


def explain(check_id: str) -> str:
    """The long explanation of one check, as `sftdata audit --explain` prints it."""
    c = CHECKS[check_id]
    return (
        f"{c.id} ({c.severity}): {c.title}\n\n{c.explanation}\n\nExample:\n    {c.example}\n\nFix:\n    {c.fix}\n"
        + ("" if c.reported_by == "sftdata audit" else f"\nReported by: {c.reported_by}\n")
    )


def catalogue_markdown() -> str:
    """docs/checks.md, generated from CATALOGUE."""
    lines = [
        "# Check catalogue",
        "",
        "<!-- generated by `python -m sftdata.catalogue > docs/checks.md`; edit sftdata/catalogue.py instead -->",
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
                lines += [
                    "These are reported by `sftdata dedup`; their full description is in "
                    "[checks-dedup.md](checks-dedup.md).",
                    "",
                ]
        lines += [
            f"### {c.id}",
            "",
            f"**{c.severity}** · {c.title}",
            "",
            c.explanation,
            "",
            "Example:",
            "",
            "```",
            c.example,
            "```",
            "",
            f"Fix: {c.fix}",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


# ============================================================================================
# Building findings
# ============================================================================================


_new_finding = fast_constructor(Finding)  # Finding(...) built faster: dedup reports ~24k on T0


def finding(
    check_id: str,
    message: str,
    conv: Conversation | None = None,
    *,
    hint: str | None = None,
    data: dict[str, Any] | None = None,
    example_id: str | None = None,
    source: Source | None = None,
) -> Finding:
    """The one way to build a Finding: severity from the catalogue, hint the catalogue's fix unless
    the call site knows a more specific one. `conv` supplies example_id and source. An id that is
    not catalogued is a KeyError (a bug in sftlab, never in the data)."""
    check = CHECKS[check_id]
    if conv is not None:
        example_id, source = conv.id, conv.source
    return _new_finding(
        check_id,
        check.severity,
        message,
        check.fix if hint is None else hint,
        example_id,
        source,
        data if data is not None else {},
    )


def finding_of(check_id: str) -> Callable[[str, Conversation, str, dict[str, Any]], Finding]:
    """`finding(check_id, message, conv, hint=hint, data=data)` as a function of those four, with
    the catalogue looked up once: for call sites that build thousands (dedup: one per dropped
    example). A KeyError now for an id that is not catalogued."""
    severity = CHECKS[check_id].severity

    def make(message: str, conv: Conversation, hint: str, data: dict[str, Any]) -> Finding:
        return _new_finding(check_id, severity, message, hint, conv.id, conv.source, data)

    return make


F = TypeVar("F", bound=Callable[..., Any])


def emits(*check_ids: str) -> Callable[[F], F]:
    """Declare the check ids a check function can emit (`fn.emits`); unknown ids fail at import."""
    unknown = [c for c in check_ids if c not in CHECKS]
    if unknown:
        raise KeyError(f"not in the check catalogue: {unknown}")

    def mark(fn: F) -> F:
        fn.emits = check_ids  # type: ignore[attr-defined]
        return fn

    return mark


# ============================================================================================
# Selection (--select / --ignore)
# ============================================================================================


def parse_check_list(items: Iterable[str] | str | None, param: str) -> tuple[str, ...]:
    """Normalise a select/ignore value: comma lists, `tokens` / `tokens.*` = the whole area.
    Unknown ids are a UsageError for `param` that suggests the nearest one."""
    if items is None:
        return ()
    if isinstance(items, str):
        items = [items]
    out: list[str] = []
    for item in items:
        for raw in str(item).split(","):
            name = raw.strip()
            if not name:
                continue
            area = name[:-2] if name.endswith(".*") else name.rstrip(".")
            if area in AREAS:
                out.append(area + ".")
            elif name in CHECKS:
                out.append(name)
            else:
                near = difflib.get_close_matches(name, list(CHECKS) + list(AREAS), n=1)
                raise UsageError(
                    f"{name!r}: no such check or area"
                    + (f"; did you mean {near[0]!r}?" if near else "")
                    + "; `sftdata audit --explain ID` describes one, docs/checks.md lists all",
                    param=param,
                )
    return tuple(out)


def _matches(check: str, patterns: tuple[str, ...]) -> bool:
    return any(check == p or (p.endswith(".") and check.startswith(p)) for p in patterns)


@dataclass(frozen=True)
class Selection:
    """What --select/--ignore leave selected (normalised by parse_check_list)."""

    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def wants(self, check: str) -> bool:
        return (not self.select or _matches(check, self.select)) and not _matches(check, self.ignore)

    def wants_any(self, *ids: str) -> bool:
        return any(self.wants(i) for i in ids)


if __name__ == "__main__":  # python -m sftdata.catalogue > docs/checks.md
    sys.stdout.write(catalogue_markdown())

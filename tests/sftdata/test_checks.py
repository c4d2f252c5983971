"""Every audit check: plant the defect in real data and assert the finding; the same data without
the defect yields none. Real rows come from ../shared/data (LLaMA-Factory and self-instruct files)
and the bundled examples; templates are the real ones of several model families (sftdata.testing.families)
plus deliberately broken ones."""

from __future__ import annotations

import copy
import gzip
import itertools
import json
from pathlib import Path

import pytest

from sftdata import formats, masks
from sftdata.audit import run_audit
from sftdata.records import Conversation, replace

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
LF = SHARED / "llamafactory"
EXAMPLES = REPO / "examples"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")


# --------------------------------------------------------------------------------------------
# helpers


def real_rows(name: str, n: int) -> list[dict]:
    """The first n records of a shared-data file as OpenAI messages rows."""
    rows = []
    for item in formats.read(str(LF / name) if "/" not in name else str(SHARED / name)):
        if isinstance(item, Conversation):
            row = {"messages": item.message_dicts()}
            if item.tools:
                row["tools"] = list(item.tools)
            rows.append(row)
            if len(rows) == n:
                break
    return rows


def alpaca(n: int = 6) -> list[dict]:
    return real_rows("alpaca_en_demo.json", n)


def write(tmp_path: Path, rows: list, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8"
    )
    return str(path)


def audit(path: str, tokenizer, **kw):
    return run_audit([path], tokenizer, **kw)


def found(result, check: str) -> list:
    return [f for f in result.findings if f.check == check]


def with_message(row: dict, index: int, **changes) -> dict:
    row = copy.deepcopy(row)
    row["messages"][index].update(changes)
    return row


def with_template(tokenizer, template: str):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


# --------------------------------------------------------------------------------------------
# format.*


@needs_shared
def test_parse_error_missing_field_wrong_type_bad_role_unsupported(tmp_path, sft_tokenizer):
    rows = alpaca(3)
    planted = [
        json.dumps(rows[0]),
        json.dumps(rows[1])[:-5],  # broken JSON
        {"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello"}]},  # no role
        {"messages": {"role": "user", "content": "hi"}},  # an object, not a list
        with_message(rows[2], 0, role="bot"),
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": "a cat"},
            ]
        },
    ]
    path = write(tmp_path, planted)
    r = audit(path, sft_tokenizer)
    by = {f.check: f for f in r.findings}
    for check, line in [
        ("format.parse-error", 2),
        ("format.missing-field", 3),
        ("format.wrong-type", 4),
        ("format.bad-role", 5),
        ("format.unsupported-content", 6),
    ]:
        assert by[check].severity == "error"
        assert by[check].source.line == line, check
    assert r.summary["records_unreadable"] == 5 and r.summary["examples"] == 1
    assert not r.passed
    clean = audit(write(tmp_path, rows, "clean.jsonl"), sft_tokenizer)
    assert not [f for f in clean.findings if f.check.startswith("format.")]
    assert clean.passed


@needs_shared
def test_empty_content(tmp_path, sft_tokenizer):
    rows = alpaca(4)
    r = audit(write(tmp_path, rows[:2] + [with_message(rows[2], 1, content="")] + rows[3:]), sft_tokenizer)
    (f,) = found(r, "format.empty-content")
    assert f.source.line == 3 and "message 1 (assistant)" in f.message
    assert not found(audit(write(tmp_path, rows, "clean.jsonl"), sft_tokenizer), "format.empty-content")


@needs_shared
def test_no_assistant(tmp_path, sft_tokenizer):
    rows = alpaca(3)
    planted = copy.deepcopy(rows)
    planted[1]["messages"] = planted[1]["messages"][:1]
    r = audit(write(tmp_path, planted), sft_tokenizer)
    (f,) = found(r, "format.no-assistant")
    assert f.severity == "error" and f.source.line == 2
    assert not found(r, "mask.no-trained-tokens")  # the cause is reported, not the consequence twice
    assert not found(audit(write(tmp_path, planted, "all.jsonl"), sft_tokenizer, policy="all"), "format.no-assistant")
    assert not found(audit(write(tmp_path, rows, "clean.jsonl"), sft_tokenizer), "format.no-assistant")


@needs_shared
def test_role_order(tmp_path, sft_tokenizer):
    rows = alpaca(6)
    first, second = rows[0]["messages"], rows[1]["messages"]
    planted = [
        {"messages": list(reversed(first))},  # assistant first
        {"messages": [first[0], second[0], second[1]]},  # two user turns in a row
        {"messages": first + [second[0]]},  # trailing user turn
        {"messages": [first[0], {"role": "tool", "content": '{"ok": true}'}, first[1]]},  # tool without a call
        {"messages": [first[0], {"role": "system", "content": "Be brief."}, first[1]]},  # system not first
    ]
    r = audit(write(tmp_path, planted + rows[2:]), sft_tokenizer)
    fs = found(r, "format.role-order")
    assert [f.source.line for f in fs] == [1, 2, 3, 4, 5]
    assert "starts with an assistant turn" in fs[0].message
    assert "messages 0 and 1 are both user turns" in fs[1].message
    assert "nothing answers" in fs[2].message
    assert "follows no assistant tool call" in fs[3].message
    assert "system message at position 1" in fs[4].message
    assert not found(audit(write(tmp_path, rows, "clean.jsonl"), sft_tokenizer), "format.role-order")


@needs_shared
def test_tool_results_after_a_call_are_in_order(tmp_path, sft_tokenizer):
    r = audit(str(LF / "glaive_toolcall_en_demo.json"), sft_tokenizer)
    assert not found(r, "format.role-order")


# --------------------------------------------------------------------------------------------
# template.*


@needs_shared
def test_template_missing_reported_once_with_a_count(tmp_path, sft_tokenizer):
    path = write(tmp_path, alpaca(5))
    base = with_template(sft_tokenizer, None)
    r = audit(path, base)
    (f,) = found(r, "template.missing")
    assert f.severity == "error" and "[5 of 5 examples" in f.message
    assert r.summary["checks"]["template.missing"] == {
        **r.summary["checks"]["template.missing"],
        "findings": 1,
        "examples": 5,
    }
    # plain text rows need no template
    text = write(tmp_path, real_rows("c4_demo.jsonl", 3), "text.jsonl")
    text_rows = [{"text": json.loads(line)["text"]} for line in itertools.islice(open(LF / "c4_demo.jsonl"), 3)]
    text = write(tmp_path, text_rows, "text.jsonl")
    assert not found(audit(text, base), "template.missing")
    assert not found(audit(path, sft_tokenizer), "template.missing")


@needs_shared
def test_render_error(tmp_path, fam):
    rows = alpaca(4)
    with_system = copy.deepcopy(rows)
    with_system[2]["messages"].insert(0, {"role": "system", "content": "You are a helpful assistant."})
    r = audit(write(tmp_path, with_system), fam("gemma"))
    (f,) = found(r, "template.render-error")
    assert f.severity == "error" and f.source.line == 3 and "System role not supported" in f.message
    assert not r.passed
    assert not found(audit(write(tmp_path, rows, "clean.jsonl"), fam("gemma")), "template.render-error")


@needs_shared
def test_not_prefix_preserving_once_per_template(tmp_path, fam, sft_tokenizer):
    rows = alpaca(4)
    multi = [
        {"messages": rows[0]["messages"] + rows[1]["messages"]},
        {"messages": rows[2]["messages"] + rows[3]["messages"]},
    ]
    path = write(tmp_path, multi)
    r = audit(path, fam("qwen3"))  # Qwen3 renders an empty think block only in the last turn
    (f,) = found(r, "template.not-prefix-preserving")
    assert "[2 of 2 examples" in f.message and f.data["examples"] == 2
    assert not found(audit(path, sft_tokenizer), "template.not-prefix-preserving")


@needs_shared
def test_generation_prompt_ignored(tmp_path, sft_tokenizer):
    """A template without an add_generation_prompt branch: the header is not in the inference
    prompt, and masks train it as part of the answer."""
    broken = with_template(
        sft_tokenizer,
        sft_tokenizer.chat_template.replace(
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}", ""
        ),
    )
    assert broken.chat_template != sft_tokenizer.chat_template
    path = write(tmp_path, alpaca(3))
    r = audit(path, broken)
    (f,) = found(r, "template.generation-prompt-mismatch")
    assert "ignores add_generation_prompt" in f.message
    trained = found(r, "mask.prompt-trained")
    assert len(trained) == 3 and "<|im_start|>assistant" in trained[0].message
    clean = audit(path, sft_tokenizer)
    assert not found(clean, "template.generation-prompt-mismatch") and not found(clean, "mask.prompt-trained")


@needs_shared
def test_generation_prompt_differs_from_training_header(tmp_path, sft_tokenizer, fam):
    skewed = with_template(
        sft_tokenizer,
        sft_tokenizer.chat_template.replace("{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>Assistant:\n' }}"),
    )
    path = write(tmp_path, alpaca(3))
    (f,) = found(audit(path, skewed), "template.generation-prompt-mismatch")
    assert "'<|im_start|>Assistant:\\n'" in f.message and "[3 of 3 examples" in f.message
    # Mistral's prompt needs no generation prompt ("[INST] q [/INST]" then the answer): no finding
    assert not found(audit(path, fam("mistral")), "template.generation-prompt-mismatch")


@needs_shared
def test_eot_not_eos(tmp_path, fam, sft_tokenizer):
    """Llama-3 base configs: eos <|end_of_text|>, turns close with <|eot_id|>."""
    path = write(tmp_path, alpaca(3))
    llama = copy.deepcopy(fam("llama3"))
    llama.add_special_tokens({"additional_special_tokens": ["<|end_of_text|>"]}, replace_extra_special_tokens=False)
    llama.eos_token = "<|end_of_text|>"
    (f,) = found(audit(path, llama), "template.eot-not-eos")
    assert "'<|eot_id|>'" in f.message and "'<|end_of_text|>'" in f.message
    # generation_config.json listing the end-of-turn token as an EOS id fixes it
    model_dir = tmp_path / "llama-base"
    llama.save_pretrained(str(model_dir))
    eot, eos = llama.convert_tokens_to_ids("<|eot_id|>"), llama.eos_token_id
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, eot]}))
    assert not found(audit(path, str(model_dir)), "template.eot-not-eos")
    assert not found(audit(path, fam("llama3")), "template.eot-not-eos")
    assert not found(audit(path, sft_tokenizer), "template.eot-not-eos")


@needs_shared
def test_default_system_prompt(tmp_path, sft_tokenizer, fam):
    rows = alpaca(4)
    path = write(tmp_path, rows)
    for name, text in [("smollm2", "You are a helpful AI assistant named SmolLM"), ("qwen2_5", "You are Qwen")]:
        (f,) = found(audit(path, fam(name)), "template.default-system-prompt")
        assert text in f.message and "[4 of 4 examples" in f.message
        assert f.data["system_prompt"].startswith(text)
    with_system = copy.deepcopy(rows)
    for r in with_system:
        r["messages"].insert(0, {"role": "system", "content": "You are a concise assistant."})
    assert not found(audit(write(tmp_path, with_system, "sys.jsonl"), sft_tokenizer), "template.default-system-prompt")
    assert not found(audit(path, fam("llama3")), "template.default-system-prompt")


# --------------------------------------------------------------------------------------------
# tokens.*


@needs_shared
def test_double_bos(tmp_path, fam):
    """Pre-rendered text that already starts with BOS, under a tokenizer that adds BOS (Llama-3 does)."""
    from tokenizers.processors import TemplateProcessing

    llama = copy.deepcopy(fam("llama3"))
    bos = llama.bos_token_id
    llama.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    texts = [json.loads(line)["text"] for line in itertools.islice(open(LF / "c4_demo.jsonl"), 3)]
    r = audit(write(tmp_path, [{"text": "<|begin_of_text|>" + t} for t in texts]), llama)
    assert [f.source.line for f in found(r, "tokens.double-bos")] == [1, 2, 3]
    assert not found(audit(write(tmp_path, [{"text": t} for t in texts], "clean.jsonl"), llama), "tokens.double-bos")


@needs_shared
def test_special_in_content(tmp_path, sft_tokenizer):
    rows = alpaca(3)
    content = rows[1]["messages"][0]["content"]
    planted = with_message(rows[1], 0, content=content[:10] + "<|im_end|>" + content[10:])
    r = audit(write(tmp_path, [rows[0], planted, rows[2]]), sft_tokenizer)
    (f,) = found(r, "tokens.special-in-content")
    assert f.severity == "error" and f.source.line == 2
    assert "'<|im_end|>' in message 0 (user) at char 10" in f.message
    assert "\\u200b" in f.hint and "<|im_end|>" in f.hint
    assert f.data["occurrences"] == [{"message": 0, "char": 10, "token": "<|im_end|>"}]
    assert not r.passed
    assert not found(audit(write(tmp_path, rows, "clean.jsonl"), sft_tokenizer), "tokens.special-in-content")


@needs_shared
def test_special_in_content_real_t0_completions(tmp_path, sft_tokenizer):
    """Real data: self-instruct's T0 completions end with a literal '<|endoftext|>'."""
    lines = list(itertools.islice(gzip.open(SHARED / "self_instruct" / "t0_train_50k_per_template.jsonl.gz", "rt"), 5))
    r = audit(write(tmp_path, lines, "t0.jsonl"), sft_tokenizer)
    fs = found(r, "tokens.special-in-content")
    assert len(fs) == 5 and all("'<|endoftext|>' in message 1 (assistant)" in f.message for f in fs)
    stripped = [
        json.dumps({**json.loads(x), "completion": json.loads(x)["completion"].replace("<|endoftext|>", "")})
        for x in lines
    ]
    assert not found(audit(write(tmp_path, stripped, "t0-clean.jsonl"), sft_tokenizer), "tokens.special-in-content")


@needs_shared
def test_unknown_special(tmp_path, sft_tokenizer):
    rows = alpaca(3)
    answer = rows[0]["messages"][1]["content"]
    planted = [
        with_message(rows[0], 1, content=answer + "<special_token_1>"),
        with_message(rows[1], 0, content="<|foo|> " + rows[1]["messages"][0]["content"]),
    ]
    r = audit(write(tmp_path, planted + rows[2:]), sft_tokenizer)
    fs = found(r, "tokens.unknown-special")
    assert [f.source.line for f in fs] == [1, 2]
    assert "'<special_token_1>' in message 1" in fs[0].message and "pieces" in fs[0].message
    assert "'<|foo|>'" in fs[1].message
    # known special tokens are special-in-content, not unknown; placeholders and <mask> are text
    text_like = [with_message(rows[0], 0, content="Dear <your_name>, fill in the <mask> and <b>bold</b> parts.")]
    assert not found(
        audit(write(tmp_path, text_like + rows[1:], "clean.jsonl"), sft_tokenizer), "tokens.unknown-special"
    )


def test_pad_is_eos(tmp_path, sft_tokenizer):
    path = str(EXAMPLES / "messages.jsonl")
    (f,) = found(audit(path, sft_tokenizer), "tokens.pad-is-eos")
    assert f.severity == "info" and "'<|im_end|>'" in f.message and "labels come from the loss mask" in f.message
    distinct = copy.deepcopy(sft_tokenizer)
    distinct.pad_token = "<|endoftext|>"
    assert not found(audit(path, distinct), "tokens.pad-is-eos")


def test_untrained_embedding(tmp_path, sft_tokenizer):
    """A tiny random-init model on the demo tokenizer; <|im_end|> gets the mean row
    (resize_token_embeddings' initialisation), <|im_start|> a copy of another special's row."""
    torch = pytest.importorskip("torch")
    from sftdata.testing.fixtures import build_tiny_causal_lm

    path = str(EXAMPLES / "messages.jsonl")
    model = build_tiny_causal_lm(sft_tokenizer)
    with torch.no_grad():  # nn.Embedding zeroes the padding_idx row (pad = <|im_end|> here): the check would flag it
        model.get_input_embeddings().weight[2].normal_(0, 0.02)
    clean_dir = tmp_path / "clean"
    model.save_pretrained(str(clean_dir))
    sft_tokenizer.save_pretrained(str(clean_dir))
    r = audit(path, str(clean_dir))
    assert r.summary["embedding_check"] == "ran" and not found(r, "tokens.untrained-embedding")
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[2] = emb.mean(0)  # <|im_end|>
        emb[1] = emb[5]  # <|im_start|> = <file_sep>
    bad_dir = tmp_path / "bad"
    model.save_pretrained(str(bad_dir))
    sft_tokenizer.save_pretrained(str(bad_dir))
    fs = found(audit(path, str(bad_dir)), "tokens.untrained-embedding")
    assert {f.data["token_id"] for f in fs} == {1, 2}
    assert any("'<|im_start|>'" in f.message and "equals the row" in f.message for f in fs)
    # ignoring the check does not read the weights
    assert (
        audit(path, str(bad_dir), ignore=["tokens.untrained-embedding"])
        .summary["embedding_check"]
        .startswith("skipped")
    )


# --------------------------------------------------------------------------------------------
# mask.*


@needs_shared
def test_no_trained_tokens(tmp_path, sft_tokenizer):
    rows = alpaca(3)
    path = write(tmp_path, rows)
    r = audit(path, sft_tokenizer, max_length=20)  # the prompt alone is longer than 20 tokens
    fs = found(r, "mask.no-trained-tokens")
    assert len(fs) == 3 and fs[0].severity == "error" and "truncation removed every trained token" in fs[0].message
    flagged = [with_message(rows[0], 1, train=False)]
    (f,) = found(audit(write(tmp_path, flagged, "flags.jsonl"), sft_tokenizer), "mask.no-trained-tokens")
    assert "train flags" in f.message
    assert not found(audit(path, sft_tokenizer), "mask.no-trained-tokens")


EOT_AT_NEXT_MESSAGE = (
    "{% for m in messages %}{% if not loop.first %}<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}"
)


@needs_shared
def test_eot_not_trained(tmp_path, sft_tokenizer):
    """A template that emits <|im_end|> at the start of the next message: the final assistant turn
    has none at all (earlier turns borrow the next message's and are fine)."""
    rows = alpaca(4)
    multi = [{"messages": rows[0]["messages"] + rows[1]["messages"]}, rows[2], rows[3]]
    path = write(tmp_path, multi)
    r = audit(path, with_template(sft_tokenizer, EOT_AT_NEXT_MESSAGE))
    fs = found(r, "mask.eot-not-trained")
    assert [(f.source.line, f.data["message"]) for f in fs] == [(1, 3), (2, 1), (3, 1)]
    assert fs[0].severity == "error" and "never learns to stop" in fs[0].message
    assert not found(audit(path, sft_tokenizer), "mask.eot-not-trained")


@needs_shared
def test_eot_cut_by_truncation_is_a_length_finding(tmp_path, sft_tokenizer):
    path = write(tmp_path, alpaca(1))
    full = masks.tokenize(next(c for c in formats.read(path) if isinstance(c, Conversation)), sft_tokenizer)
    r = audit(path, sft_tokenizer, max_length=len(full.input_ids) - 5)
    assert found(r, "length.truncated-answer") and not found(r, "mask.eot-not-trained")


@needs_shared
def test_prompt_trained_respects_train_flags_and_policy(tmp_path, sft_tokenizer):
    rows = alpaca(2)
    flagged = [with_message(rows[0], 0, train=True), rows[1]]  # asked for: not a finding
    path = write(tmp_path, flagged)
    assert not found(audit(path, sft_tokenizer), "mask.prompt-trained")
    assert not found(audit(path, sft_tokenizer, policy="all"), "mask.prompt-trained")


@needs_shared
def test_boundary_mismatch_template_drops_tool_calls(tmp_path, sft_tokenizer, fam):
    """Real glaive tool-call rows: SmolLM2's template does not render tool calls, so those turns
    are trained as empty answers; Llama-3.1's template renders them."""
    rows = real_rows("glaive_toolcall_en_demo.json", 8)
    path = write(tmp_path, rows)
    fs = found(audit(path, sft_tokenizer), "mask.boundary-mismatch")
    calls = [(line, i) for line, r in enumerate(rows, 1) for i, m in enumerate(r["messages"]) if m.get("tool_calls")]
    assert calls and [(f.source.line, f.data["message"]) for f in fs] == calls
    assert "does not render the tool call" in fs[0].message
    assert not found(audit(path, fam("llama3_1")), "mask.boundary-mismatch")


@needs_shared
def test_boundary_mismatch_template_drops_reasoning(tmp_path, sft_tokenizer):
    rows = real_rows("reason_tool_use_demo_50.jsonl", 3)
    fs = found(audit(write(tmp_path, rows), sft_tokenizer), "mask.boundary-mismatch")
    assert fs and any("its reasoning" in f.message for f in fs)
    plain = [
        {
            "messages": [
                {k: v for k, v in m.items() if k not in ("reasoning_content", "tool_calls")}
                for m in r["messages"]
                if m["role"] in ("user", "assistant") and m.get("content")
            ]
        }
        for r in rows
    ]
    assert not found(audit(write(tmp_path, plain, "plain.jsonl"), sft_tokenizer), "mask.boundary-mismatch")


@needs_shared
def test_boundary_mismatch_on_a_broken_mask(sft_tokenizer):
    """check_mask compares decoded trained tokens with the content: a mask that lost the answer's
    first tokens (what an off-by-some offset bug produces) is reported."""
    from sftdata import checks

    conv = next(c for c in formats.read(str(LF / "alpaca_en_demo.json")) if isinstance(c, Conversation))
    tok = masks.tokenize(conv, sft_tokenizer)
    info = checks.tokenizer_info(sft_tokenizer)
    assert not list(checks.check_mask(conv, tok, info, "assistant"))
    first = tok.loss_mask.index(True)
    broken = replace(tok, loss_mask=tok.loss_mask[:first] + (False,) * 3 + tok.loss_mask[first + 3 :])
    (f,) = checks.check_mask(conv, broken, info, "assistant")
    assert f.check == "mask.boundary-mismatch" and "differs from the content at char 0" in f.message
    shifted = replace(tok, loss_mask=tok.loss_mask[1:] + (False,))  # one token early: header in, EOT out
    assert {"mask.eot-not-trained", "mask.prompt-trained"} <= {
        f.check for f in checks.check_mask(conv, shifted, info, "assistant")
    }
    glue = replace(tok, loss_mask=tuple(True if mi == -1 else m for m, mi in zip(tok.loss_mask, tok.message_index)))
    assert "mask.prompt-trained" in {f.check for f in checks.check_mask(conv, glue, info, "assistant")}


# --------------------------------------------------------------------------------------------
# length.*


@needs_shared
def test_truncated_answer_and_over_max(tmp_path, sft_tokenizer):
    rows = alpaca(3)
    path = write(tmp_path, rows)
    convs = [c for c in formats.read(path) if isinstance(c, Conversation)]
    n = [len(masks.tokenize(c, sft_tokenizer).input_ids) for c in convs]
    longest = max(range(3), key=n.__getitem__)
    r = audit(path, sft_tokenizer, max_length=n[longest] - 10)
    (f,) = found(r, "length.truncated-answer")
    assert f.source.line == longest + 1 and f.data["trained_lost"] > 0
    # only the trailing "\n" after <|im_end|> (untrained glue) is cut: over-max, info
    r = audit(path, sft_tokenizer, max_length=n[longest] - 1)
    (f,) = found(r, "length.over-max")
    assert f.severity == "info" and not found(r, "length.truncated-answer")
    clean = audit(path, sft_tokenizer, max_length=max(n))
    assert not found(clean, "length.over-max") and not found(clean, "length.truncated-answer")


def test_bundled_defects_example(sft_tokenizer):
    """examples/defects.jsonl carries one planted defect per line; each is found where planted."""
    r = audit(str(EXAMPLES / "defects.jsonl"), sft_tokenizer, max_length=256)
    where = {(f.check, f.source.line) for f in r.findings if f.source is not None}
    assert {
        ("tokens.special-in-content", 2),
        ("format.role-order", 3),
        ("format.empty-content", 4),
        ("format.role-order", 5),
        ("length.truncated-answer", 6),
        ("tokens.unknown-special", 7),
        ("format.parse-error", 8),
        ("format.no-assistant", 9),
    } <= where
    assert not {line for _, line in where} & {1, 10}  # the clean lines
    assert not r.passed

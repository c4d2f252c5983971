"""Golden tests for the single tokenize-with-mask path on real chat templates of several families."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftdata import masks
from sftdata.testing.families import FAMILIES, family_tokenizer
from sftdata.testing.fixtures import new_conversation

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

SINGLE = [("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris.")]
MULTI = [
    ("user", "Give me a synonym for happy."),
    ("assistant", "Joyful."),
    ("user", "And one for sad?"),
    ("assistant", "Melancholy, or simply: down."),
]
SYSTEM = [("system", "You answer in one short sentence.")] + MULTI
# Families whose templates are prefix-preserving and keep assistant content verbatim.
EXACT = ["smollm2", "llama3", "llama3_1", "mistral", "gemma", "qwen2_5", "phi3"]


def by_offsets(conv, r, enc, tok):
    """The mask of a rendered conversation from the encoder's character offsets (the path for
    tokenizers that are not lossless byte-level BPE)."""
    return masks._mask_regions(masks.prepare(tok), conv, r, enc.ids, masks._bounds_by_offsets(r, enc.offsets), None)


def eot(name):
    # Phi-3 closes turns with <|end|>; its tokenizer EOS <|endoftext|> ends the whole text.
    return "<|end|>" if name == "phi3" else FAMILIES[name].eos


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("turns", [SINGLE, MULTI, SYSTEM], ids=["single", "multi", "system"])
def test_trained_tokens_are_exactly_answers_plus_eot(fam, name, turns):
    if turns is SYSTEM and not FAMILIES[name].supports_system:
        pytest.skip(f"{name}'s template rejects a system role (covered by test_render_error_is_a_finding)")
    tok = fam(name)
    conv = new_conversation(turns)
    t = masks.tokenize(conv, tok)
    assert not [f for f in t.findings if f.check != "template.not-prefix-preserving"]
    assert masks.trained_text(t, tok) == [c.strip() + eot(name) for r, c in turns if r == "assistant"]
    # every trained token belongs to an assistant message, and every answer token is trained
    for m, idx in zip(t.loss_mask, t.message_index):
        if m:
            assert idx >= 0 and turns[idx][0] == "assistant"
    assert len(t.input_ids) == len(t.loss_mask) == len(t.message_index)
    assert t.n_trained == sum(t.loss_mask)
    # the full token sequence is exactly what apply_chat_template produces for inference/training
    assert list(t.input_ids) == list(
        tok.apply_chat_template([{"role": r, "content": c} for r, c in turns], tokenize=True, return_dict=False)
    )


def test_not_prefix_preserving_template_is_reported_and_headers_stay_glue(fam):
    # Qwen3 drops the (empty) think block from earlier turns once later turns exist.
    tok = fam("qwen3")
    t = masks.tokenize(new_conversation(MULTI), tok)
    assert "template.not-prefix-preserving" in {f.check for f in t.findings}
    # the last turn trains what the model must generate after the generation prompt: the empty
    # think block too, exactly as in a single-turn conversation
    assert masks.trained_text(t, tok) == [
        "Joyful.<|im_end|>",
        "<think>\n\n</think>\n\nMelancholy, or simply: down.<|im_end|>",
    ]


def test_phi3_final_eos_tail_is_not_a_prefix_violation(fam):
    # Phi-3 appends its EOS once after the whole conversation; earlier turns render identically.
    tok = fam("phi3")
    t = masks.tokenize(new_conversation(MULTI), tok)
    assert t.findings == ()
    assert tok.decode(t.input_ids).endswith("<|end|>\n<|endoftext|>")
    assert masks.trained_text(t, tok) == ["Joyful.<|end|>", "Melancholy, or simply: down.<|end|>"]


def test_qwen3_single_turn_trains_the_empty_think_block(fam):
    # The generation prompt is `<|im_start|>assistant\n`: at inference the model must itself
    # produce the (empty) think block, so it is trained along with the answer.
    tok = fam("qwen3")
    t = masks.tokenize(new_conversation(SINGLE), tok)
    assert masks.trained_text(t, tok) == ["<think>\n\n</think>\n\nThe capital of France is Paris.<|im_end|>"]


@pytest.mark.parametrize("name", ["mistral", "gemma"])
def test_render_error_is_a_finding(fam, name):
    t = masks.tokenize(new_conversation(SYSTEM), fam(name))
    assert [f.check for f in t.findings] == ["template.render-error"]
    assert t.input_ids == () and t.n_trained == 0


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
TOOL_TURNS = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "call_1", "name": "get_weather"},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
]


@pytest.mark.parametrize("name", ["qwen2_5", "llama3_1", "qwen3"])
def test_tool_turns(fam, name):
    tok = fam(name)
    t = masks.tokenize(new_conversation(TOOL_TURNS, tools=TOOLS), tok)
    runs = masks.trained_text(t, tok)
    assert len(runs) == 2, runs
    assert "get_weather" in runs[0] and "Paris" in runs[0] and runs[0].endswith(eot(name))
    assert runs[1].endswith("It is 21 degrees in Paris." + eot(name))
    trained_msgs = {i for m, i in zip(t.loss_mask, t.message_index) if m}
    assert trained_msgs == {2, 4}  # never the tool response, user or system
    assert list(t.input_ids) == list(tok.apply_chat_template(TOOL_TURNS, tools=TOOLS, tokenize=True, return_dict=False))


def test_policies_and_overrides(fam):
    tok = fam("llama3")
    conv = new_conversation(MULTI)
    assert masks.trained_text(masks.tokenize(conv, tok, policy="last"), tok) == [
        "Melancholy, or simply: down.<|eot_id|>"
    ]
    t_all = masks.tokenize(conv, tok, policy="all")
    assert all(t_all.loss_mask)
    over = new_conversation(
        [
            ("user", "Q1"),
            {"role": "assistant", "content": "A1", "train": False},
            {"role": "user", "content": "Q2", "train": True},
            ("assistant", "A2"),
        ]
    )
    assert masks.trained_text(masks.tokenize(over, tok), tok) == ["Q2", "A2<|eot_id|>"]


def test_truncation_is_right_and_marked(sft_tokenizer):
    conv = new_conversation(MULTI)
    full = masks.tokenize(conv, sft_tokenizer)
    cut = masks.tokenize(conv, sft_tokenizer, max_length=len(full.input_ids) - 5)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:-5] and cut.loss_mask == full.loss_mask[:-5]
    assert cut.n_tokens_full == len(full.input_ids)
    assert cut.n_trained == sum(full.loss_mask[:-5])


def test_no_double_bos(fam):
    tok = fam("llama3")
    t = masks.tokenize(new_conversation(SINGLE), tok)
    assert t.input_ids[0] == tok.bos_token_id and t.input_ids[1] != tok.bos_token_id
    assert t.input_ids.count(tok.bos_token_id) == 1


def test_trimmed_content_falls_back_to_exact_path(fam):
    # Llama-3's template trims content: the layout fast path must notice and not mis-place spans.
    tok = fam("llama3")
    conv = new_conversation([("user", "  padded question  \n"), ("assistant", "\n  padded answer \n")])
    t = masks.tokenize(conv, tok)
    assert masks.trained_text(t, tok) == ["padded answer<|eot_id|>"]


def test_eot_emitted_with_next_message_is_still_trained(sft_tokenizer):
    # A template that closes each turn at the start of the next message (a real pattern in some
    # community templates): the end-of-turn token that closes an assistant turn is still trained.
    tok = family_tokenizer(sft_tokenizer, "smollm2")
    tok.chat_template = (
        "{% for m in messages %}{% if not loop.first %}<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% endfor %}{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}"
    )
    t = masks.tokenize(new_conversation(MULTI), tok)
    runs = masks.trained_text(t, tok)
    assert runs[0] == "Joyful.<|im_end|>"


def test_missing_template_is_a_finding(sft_tokenizer):
    import copy

    tok = copy.deepcopy(sft_tokenizer)
    tok.chat_template = None
    t = masks.tokenize(new_conversation(SINGLE), tok)
    assert [f.check for f in t.findings] == ["template.missing"]


def test_text_rows_train_everything_and_end_with_eos(sft_tokenizer):
    conv = new_conversation([("assistant", "Plain pre-training text.")], shape="text")
    t = masks.tokenize(conv, sft_tokenizer)
    assert t.input_ids[-1] == sft_tokenizer.eos_token_id
    assert all(t.loss_mask)
    assert sft_tokenizer.decode(t.input_ids) == "Plain pre-training text.<|im_end|>"


def test_fast_layout_path_equals_exact_path_on_real_data(sft_tokenizer):
    path = SHARED / "llamafactory" / "alpaca_en_demo.json"
    if not path.is_file():
        pytest.skip("../shared/data not present (only on the project's machines)")
    rows = json.loads(path.read_text())[:200]
    convs = []
    for i, r in enumerate(rows):
        q = r["instruction"] + ("\n" + r["input"] if r["input"] else "")
        convs.append(new_conversation([("user", q), ("assistant", r["output"])], line=i + 1))
    fast = masks.tokenize_batch(convs, sft_tokenizer)
    prepared = masks.prepare(sft_tokenizer)
    slow = []
    for c in convs:
        r = masks._regions_incremental(
            sft_tokenizer,
            prepared.template,
            masks._template_messages(c),
            None,
            "assistant",
            [None] * len(c.messages),
            prepared.eot_extra,
            c.id,
            c.source,
        )
        enc = sft_tokenizer.backend_tokenizer.encode(r.text, add_special_tokens=False)
        slow.append(by_offsets(c, r, enc, sft_tokenizer))
    assert fast == slow
    for c, t in zip(convs, fast):
        assert (
            masks.trained_text(t, sft_tokenizer) == [c.messages[1].content.strip() + "<|im_end|>"]
            or c.messages[1].content != c.messages[1].content.strip()
        )


def test_import_sftdata_does_not_import_torch():
    code = "import sys, sftdata, sftdata.masks, sftdata.models, sftdata.records; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_string_tool_arguments_render_as_objects(fam):
    # OpenAI-format data stores arguments as a JSON string; rendering must not double-encode it.
    tok = fam("qwen2_5")
    turns = [dict(t) for t in TOOL_TURNS]
    turns[2] = {
        **turns[2],
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }
    runs = masks.trained_text(masks.tokenize(new_conversation(turns, tools=TOOLS), tok), tok)
    assert '"arguments": {"city": "Paris"}' in runs[0]


def test_plain_prompt_completion_rows_train_the_completion_raw(sft_tokenizer):
    conv = new_conversation(
        [("user", "Translate to French: cat =>"), ("assistant", " chat")], shape="prompt-completion"
    )
    t = masks.tokenize(conv, sft_tokenizer)
    assert "<|im_start|>" not in sft_tokenizer.decode(t.input_ids)  # no chat template
    assert masks.trained_text(t, sft_tokenizer) == [" chat<|im_end|>"]
    assert sft_tokenizer.decode(t.input_ids) == "Translate to French: cat => chat<|im_end|>"


def exact(conv, tok, policy="assistant"):
    """The exact per-conversation path, bypassing the layout fast path."""
    p = masks.prepare(tok)
    r = masks._regions_incremental(
        tok,
        p.template,
        masks._template_messages(conv),
        list(conv.tools) if conv.tools else None,
        policy,
        [m.train for m in conv.messages],
        p.eot_extra,
        conv.id,
        conv.source,
    )
    enc = tok.backend_tokenizer.encode(r.text, add_special_tokens=False)
    return by_offsets(conv, r, enc, tok)


@pytest.mark.parametrize("name", ["smollm2", "llama3", "gemma", "qwen2_5"])
def test_exact_path_never_matches_content_inside_headers(fam, name):
    # Short contents that also occur inside header tokens or a default system prompt ("a",
    # "user", "system", "assistant") must be located where the template put them.
    tok = fam(name)
    from sftdata.records import Message

    for content in ["a", "user", "system", "assistant", "You", "s", " b "]:
        conv = new_conversation(
            [
                Message("user", content, name="u"),
                ("assistant", content),
                {"role": "user", "content": content, "train": True},
                ("assistant", "ok"),
            ]
        )
        t = exact(conv, tok)
        runs = masks.trained_text(t, tok)
        want = content.strip() if name in ("llama3", "gemma") else content  # these templates trim content
        assert (
            runs[0].startswith(want) and runs[0].endswith(eot(name)) and len(runs[0]) == len(want) + len(eot(name))
        ), (content, runs)
        assert want in runs[1] and len(runs[1]) <= len(want) + 1, (content, runs)
        # and the fast path, where it applies, agrees token for token
        plain = new_conversation([("user", content), ("assistant", content), ("user", content), ("assistant", "ok")])
        assert masks.tokenize(plain, tok) == exact(plain, tok)


def test_assistant_first_conversation_does_not_train_the_system_prompt(sft_tokenizer):
    from sftdata.records import Message

    conv = new_conversation([Message("assistant", "a", name="bot"), ("user", "x"), ("assistant", "y")])
    assert masks.trained_text(masks.tokenize(conv, sft_tokenizer), sft_tokenizer) == ["a<|im_end|>", "y<|im_end|>"]


def test_fast_and_exact_paths_agree_on_random_short_content(fam):
    import random

    rng = random.Random(0)
    alphabet = ["a", "s", "user", "assistant", " ", "\n", "<", "|", "im", "end", "é", "字", "🙂", "x y", "  z  "]
    for name in ["smollm2", "llama3", "qwen2_5", "gemma"]:
        tok = fam(name)
        for _ in range(60):
            turns = []
            for k in range(rng.choice([2, 4])):
                content = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
                turns.append(("user" if k % 2 == 0 else "assistant", content))
            conv = new_conversation(turns)
            assert masks.tokenize(conv, tok) == exact(conv, tok), (name, turns)


def test_unpaired_surrogate_is_a_finding_not_a_crash(sft_tokenizer):
    bad = new_conversation([("user", "cut emoji \ud83d"), ("assistant", "ok")], line=2)
    good = new_conversation(SINGLE)
    out = masks.tokenize_batch([good, bad, good], sft_tokenizer)
    assert out[0] == out[2] and out[0].n_trained > 0
    assert [f.check for f in out[1].findings] == ["format.parse-error"] and out[1].input_ids == ()


def _random_conversations(rng, n, alphabet):
    convs = []
    for _ in range(n):
        turns = []
        for k in range(rng.choice([2, 4])):
            content = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
            turns.append(("user" if k % 2 == 0 else "assistant", content))
        convs.append(new_conversation(turns))
    return convs


@pytest.mark.parametrize("name", ["smollm2", "llama3", "qwen2_5", "gemma", "phi3"])
def test_byte_length_mapping_equals_offsets_mapping(fam, name):
    """Lossless byte-level BPE maps tokens to text by the tokens' byte lengths (encode without
    offsets); it must equal the mapping through the encoder's character offsets token for token,
    findings included, batched or one at a time, on content full of multi-byte characters, split
    emoji, whitespace runs and special-token strings (which create straddling tokens)."""
    import random

    tok = fam(name)
    assert masks.prepare(tok).byte_lengths is not None  # the demo tokenizer is lossless byte-level BPE
    rng = random.Random(1)
    alphabet = [
        "a",
        " b",
        "user",
        " ",
        "  ",
        "\n",
        "\n\n",
        "é",
        "字",
        "漢字",
        "🙂",
        "👍🏽",
        "\u200b",
        "<|im_end|>",
        "<|im_start|>",
        "x y",
        "\t",
        "'s",
        "123",
        "ü\n",
    ]
    convs = _random_conversations(rng, 120, alphabet)
    batched = masks.tokenize_batch(convs, tok)
    assert batched == [masks.tokenize(c, tok) for c in convs]
    p = masks.prepare(tok)
    full = []
    for c in convs:
        r = masks._render_one(p, c, "assistant")
        full.append(by_offsets(c, r, tok.backend_tokenizer.encode(r.text, add_special_tokens=False), tok))
    assert batched == full
    assert any(f.check == "mask.boundary-mismatch" for t in batched for f in t.findings) or name != "smollm2"


def test_trimmed_offsets_do_not_move_whitespace_tokens(sft_tokenizer):
    """GPT-2-era tokenizer.json files often trim offsets (ByteLevel post-processor,
    trim_offsets=True): a whitespace-only token then gets an empty span at the end of the
    whitespace. Token places come from byte lengths, so the mask does not depend on it."""
    import copy

    from tokenizers import processors

    trimming = copy.deepcopy(sft_tokenizer)
    trimming.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    from sftdata.records import Message

    convs = [new_conversation([Message("user", "hi  ", train=True), ("assistant", f"ok {i}")]) for i in range(20)]
    for tok in (sft_tokenizer, trimming):
        batched = masks.tokenize_batch(convs, tok)
        assert batched == [masks.tokenize(c, tok) for c in convs]
        assert masks.trained_text(batched[3], tok)[-2:] == ["hi  ", "ok 3<|im_end|>"]
    assert masks.tokenize_batch(convs, trimming) == masks.tokenize_batch(convs, sft_tokenizer)


def test_lossy_tokenizers_do_not_use_the_byte_length_mapping(sft_tokenizer):
    """A tokenizer whose tokens' bytes are not the text's (an added token that strips the
    whitespace around it; a prefix space) must map through real offsets."""
    import copy

    from tokenizers import AddedToken, pre_tokenizers

    stripping = copy.deepcopy(sft_tokenizer)
    stripping.backend_tokenizer.add_special_tokens([AddedToken("<sep>", lstrip=True, rstrip=True)])
    assert masks.prepare(stripping).byte_lengths is None
    prefixed = copy.deepcopy(sft_tokenizer)
    prefixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert masks.prepare(prefixed).byte_lengths is None
    convs = [new_conversation([("user", f"q{i} <sep> x"), ("assistant", f" a{i}")]) for i in range(20)]
    for tok in (stripping, prefixed):
        assert masks.tokenize_batch(convs, tok) == [masks.tokenize(c, tok) for c in convs]
        assert masks.trained_text(masks.tokenize_batch(convs, tok)[3], tok)[0].endswith("a3<|im_end|>")


def test_truncation_or_padding_saved_in_the_tokenizer_do_not_reach_the_mask(sft_tokenizer):
    """transformers keeps a tokenizer.json's truncation/padding switched on in the backend; the
    mask must be built on the whole conversation, as apply_chat_template encodes it, whatever
    the batch holds (a raw row used to switch them off as a side effect), and the user's
    tokenizer is left as it was."""
    import copy

    from sftdata.records import Conversation, Message, Source

    saved = copy.deepcopy(sft_tokenizer)
    saved.backend_tokenizer.enable_truncation(48)
    saved.backend_tokenizer.enable_padding(length=200, pad_id=2, pad_token="<|im_end|>")
    long_chat = new_conversation([("user", "word " * 60), ("assistant", "reply " * 60)])
    raw = Conversation("t", (Message("assistant", "plain text row"),), Source("f.jsonl", 1), shape="text")
    want = masks.tokenize(long_chat, sft_tokenizer)
    assert len(want.input_ids) > 48
    assert (
        list(want.input_ids)
        == sft_tokenizer.apply_chat_template(long_chat.message_dicts(), tokenize=True, return_dict=True)["input_ids"]
    )
    for batch in ([long_chat] * 20, [raw] + [long_chat] * 20, [long_chat] * 20 + [raw]):
        out = [t for t in masks.tokenize_batch(batch, saved) if t.example_id == long_chat.id]
        assert all(t == want for t in out)
    assert masks.tokenize(raw, saved) == masks.tokenize(raw, sft_tokenizer)
    assert saved.backend_tokenizer.truncation is not None and saved.backend_tokenizer.padding is not None


@pytest.mark.parametrize("trim", [False, True])
def test_raw_prompt_completion_rows_report_a_straddling_token(sft_tokenizer, trim):
    """A plain prompt/completion row whose prompt ends in a space: the completion's first token
    (' there') carries the prompt's space, so it is left untrained and reported, also on
    tokenizers that trim offsets."""
    import copy

    from tokenizers import processors

    from sftdata.records import Conversation, Message, Source

    tok = copy.deepcopy(sft_tokenizer)
    if trim:
        tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    row = Conversation(
        "pc",
        (Message("user", "Question: hi "), Message("assistant", "there friend")),
        Source("f.jsonl", 1),
        shape="prompt-completion",
    )
    for t in (masks.tokenize(row, tok), masks.tokenize_batch([row] * 20, tok)[7]):
        assert masks.trained_text(t, tok) == [" friend<|im_end|>"]
        assert [f.check for f in t.findings] == ["mask.boundary-mismatch"]
        assert "end the prompt with a space or newline" in t.findings[0].hint


def test_raw_rows_keep_the_special_tokens_the_tokenizer_adds(sft_tokenizer):
    """A tokenizer whose post-processor wraps a text in BOS ... EOS: raw rows keep exactly the
    ids it gives, BOS as untrained glue and that EOS trained (no second EOS appended)."""
    import copy

    from tokenizers import processors

    from sftdata.records import Conversation, Message, Source

    tok = copy.deepcopy(sft_tokenizer)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A <|im_end|>", special_tokens=[("<|im_start|>", 1), ("<|im_end|>", 2)]
    )  # EOS: <|im_end|>
    text = Conversation("t", (Message("assistant", "Some plain text."),), Source("f.jsonl", 1), shape="text")
    for t in (masks.tokenize(text, tok), masks.tokenize_batch([text] * 20, tok)[3]):
        assert list(t.input_ids) == tok.backend_tokenizer.encode("Some plain text.").ids
        assert t.input_ids[0] == 1 and not t.loss_mask[0] and t.message_index[0] == -1
        assert t.input_ids[-1] == 2 and t.loss_mask[-1] and t.input_ids.count(2) == 1
        assert masks.trained_text(t, tok) == ["Some plain text.<|im_end|>"]

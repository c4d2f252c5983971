"""Real chat templates of the major model families, on the demo tokenizer, for tests and demos.

No model hub is reachable here, so instead of each family's own vocabulary we put its real chat
template and its special tokens on the SmolLM2 tokenizer: what the loss mask depends on (the
template's glue, its BOS/EOS/end-of-turn tokens being single control tokens) is the family's own.
Templates come from the installed `trl` package (`trl/chat_templates/*.jinja`, copied verbatim
from the models' hub repos) or, for Mistral, the template shipped in Mistral-7B-Instruct-v0.1.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MISTRAL_V01_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    template_file: str | None  # in trl/chat_templates, None = the tokenizer's own or an inline one
    bos: str | None
    eos: str
    specials: tuple[str, ...]
    supports_system: bool = True
    supports_tools: bool = False


FAMILIES = {
    "smollm2": Family("smollm2", None, "<|im_start|>", "<|im_end|>", ()),
    "llama3": Family(
        "llama3",
        "llama3.jinja",
        "<|begin_of_text|>",
        "<|eot_id|>",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|begin_of_text|>"),
    ),
    "llama3_1": Family(
        "llama3_1",
        "llama3_1.jinja",
        "<|begin_of_text|>",
        "<|eot_id|>",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|begin_of_text|>", "<|eom_id|>", "<|python_tag|>"),
        supports_tools=True,
    ),
    "mistral": Family("mistral", "inline:mistral", "<s>", "</s>", ("[INST]", "[/INST]"), supports_system=False),
    "gemma": Family(
        "gemma", "gemma.jinja", "<bos>", "<end_of_turn>", ("<start_of_turn>", "<end_of_turn>"), supports_system=False
    ),
    "qwen2_5": Family(
        "qwen2_5",
        "qwen2_5.jinja",
        None,
        "<|im_end|>",
        ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"),
        supports_tools=True,
    ),
    "phi3": Family(
        "phi3",
        "phi3.jinja",
        "<s>",
        "<|endoftext|>",
        ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>"),
    ),
    "qwen3": Family(
        "qwen3",
        "qwen3.jinja",
        None,
        "<|im_end|>",
        ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>"),
        supports_tools=True,
    ),
}


def trl_template_dir() -> Path | None:
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "chat_templates"
    return d if d.is_dir() else None


def family_template(family: Family) -> str | None:
    if family.template_file is None:
        return None
    if family.template_file == "inline:mistral":
        return MISTRAL_V01_TEMPLATE
    d = trl_template_dir()
    if d is None or not (d / family.template_file).is_file():
        raise FileNotFoundError(f"{family.template_file} not found: install trl (pip install 'sftlab[train]')")
    return (d / family.template_file).read_text(encoding="utf-8")


def family_tokenizer(base: Any, name: str) -> Any:
    """A copy of `base` (the demo tokenizer) carrying family `name`'s template and special tokens."""
    family = FAMILIES[name]
    tok = copy.deepcopy(base)
    template = family_template(family)
    if template is None:
        return tok
    extra = [s for s in dict.fromkeys(family.specials + ((family.bos,) if family.bos else ()) + (family.eos,))]
    tok.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    if family.bos:
        tok.bos_token = family.bos
    tok.eos_token = family.eos
    tok.chat_template = template
    return tok

"""Packed rows never attend across examples, under every attention kernel, through transformers' own
dispatch: a packed example's logits equal the example run alone.

Flash-attention is not installed on CPU, so `torch_flash` registers a pure-torch flash/varlen pair
where transformers loads flash kernels (`_lazy_imports`) and leaves everything else to transformers'
real flash path (`flash_attention_forward` -> `_flash_attention_forward`: varlen from cu_seq_lens,
from position ids only for a batch of one row, else the plain causal kernel)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from sftdata import masks
from sftdata.pytest_plugin import build_tiny_causal_lm
from sfttrain import data
from sfttrain import train as train_mod
from sfttrain.config import Config

TORCH_FLASH = "sfttest_torch_flash"


def _sdpa(q, k, v, causal, scale):  # [B, T, H, D] in, [B, T, H, D] out (grouped-query heads expanded)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    if k.shape[1] != q.shape[1]:
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale).transpose(1, 2)


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    return _sdpa(q, k, v, causal, softmax_scale)


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    out = torch.empty_like(q)
    bounds = cu_seqlens_q.tolist()
    for a, b in itertools.pairwise(bounds):
        out[a:b] = _sdpa(q[None, a:b], k[None, a:b], v[None, a:b], causal, softmax_scale)[0]
    return out


@pytest.fixture
def torch_flash(monkeypatch):
    """Register TORCH_FLASH as a flash kernel with transformers (attention and mask interfaces)."""
    from transformers import modeling_flash_attention_utils as fa
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    real = fa._lazy_imports

    def lazy_imports(implementation, *args, **kwargs):
        if implementation == TORCH_FLASH:
            return flash_attn_func, flash_attn_varlen_func, None, fa._pad_input, fa._unpad_input
        return real(implementation, *args, **kwargs)

    monkeypatch.setattr(fa, "_lazy_imports", lazy_imports)
    monkeypatch.setattr(fa, "_loaded_implementation", None)
    ALL_ATTENTION_FUNCTIONS.register(TORCH_FLASH, flash_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(TORCH_FLASH, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    yield TORCH_FLASH
    monkeypatch.setattr(fa, "_loaded_implementation", None)


def _examples(tok, make_conversation):
    convs = [
        make_conversation([("user", "Hi"), ("assistant", "Hello there, friend.")]),
        make_conversation([("user", "What is 2+2?"), ("assistant", "4.")], line=2),
        make_conversation([("user", "Name a color."), ("assistant", "Blue, like the sky.")], line=3),
    ]
    return [data.to_example(c, masks.tokenize(c, tok)) for c in convs]


def _rows(ex):
    """Row 0 packs examples 0 and 1; row 1 holds example 2 (shorter: padded in [rows, T] layouts)."""
    a, b, c = ex
    return [
        {
            "input_ids": [*a.input_ids, *b.input_ids],
            "labels": [*a.labels, *b.labels],
            "seq_lengths": [len(a.input_ids), len(b.input_ids)],
        },
        {"input_ids": list(c.input_ids), "labels": list(c.labels), "seq_lengths": [len(c.input_ids)]},
    ]


def _per_example_logits(model, batch, ex):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits
    na, nb, nc = (len(e.input_ids) for e in ex)
    if logits.shape[0] == 1:  # flattened: one sequence, examples back to back
        flat = logits[0]
        return [flat[:na], flat[na : na + nb], flat[na + nb : na + nb + nc]]
    return [logits[0, :na], logits[0, na : na + nb], logits[1, :nc]]


@pytest.mark.parametrize(
    "kernel", ["eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.slow), "torch_flash"]
)
def test_a_packed_example_sees_only_itself(kernel, sft_tokenizer, make_conversation, request):
    name = request.getfixturevalue("torch_flash") if kernel == "torch_flash" else kernel
    model = build_tiny_causal_lm(sft_tokenizer).eval()
    try:
        model.set_attn_implementation(name)
    except (ValueError, ImportError) as e:
        pytest.skip(f"{kernel} is not available here: {e}")
    ex = _examples(sft_tokenizer, make_conversation)
    collate = train_mod.collator(Config(packing=True), model, sft_tokenizer)
    flat = kernel == "torch_flash"
    assert train_mod.is_varlen_kernel(model) is flat
    assert isinstance(collate, data.PackedCollator) is not flat
    batch = collate(_rows(ex))
    if flat:  # TRL's padding-free layout: one row, sequence boundaries given to the kernel
        assert batch["input_ids"].shape[0] == 1
        assert batch["cu_seq_lens_q"].tolist() == [0, *torch.tensor([len(e.input_ids) for e in ex]).cumsum(0).tolist()]
        assert batch["max_length_q"] == max(len(e.input_ids) for e in ex)
    try:
        got = _per_example_logits(model, batch, ex)
    except Exception as e:  # flex attention compiles a kernel: skip where this torch cannot on CPU
        if kernel == "flex_attention":
            pytest.skip(f"flex_attention does not run on this CPU: {type(e).__name__}: {str(e)[:200]}")
        raise
    for e, logits in zip(ex, got):
        with torch.no_grad():
            alone = model(input_ids=torch.from_numpy(e.input_ids).long()[None], use_cache=False).logits[0]
        torch.testing.assert_close(logits, alone, atol=1e-4, rtol=1e-4)
    # the labels of the flattened batch: no target crosses an example boundary
    labels = batch["labels"].flatten().tolist()
    starts = (batch["position_ids"].flatten() == 0).nonzero().flatten().tolist()
    assert all(labels[s] == -100 for s in starts)


def test_the_rows_layout_leaks_under_flash(torch_flash, sft_tokenizer, make_conversation):
    """Why flash kernels get the flattened layout: [rows, T] with position ids (what sdpa and eager
    use) runs the plain causal kernel over each whole row under transformers' flash path once
    there are two rows, so the second example of a row attends to the first."""
    model = build_tiny_causal_lm(sft_tokenizer).eval()
    model.set_attn_implementation(torch_flash)
    ex = _examples(sft_tokenizer, make_conversation)
    got = _per_example_logits(model, data.PackedCollator(sft_tokenizer.pad_token_id)(_rows(ex)), ex)
    with torch.no_grad():
        alone = model(input_ids=torch.from_numpy(ex[1].input_ids).long()[None], use_cache=False).logits[0]
    assert (got[1] - alone).abs().max() > 1e-2


def test_training_under_a_flash_kernel_uses_the_flat_layout(torch_flash, small_data_file, sft_tokenizer, tmp_path):
    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def __init__(self):
            self.batches = []

        def on_train_begin(self, args, state, control, model=None, **kw):
            model.register_forward_pre_hook(
                lambda m, a, kw: self.batches.append(kw) if m.training else None, with_kwargs=True
            )

    model = build_tiny_causal_lm(sft_tokenizer)
    model.set_attn_implementation(torch_flash)
    cap = Capture()
    cfg = Config(
        model="tiny",
        data=(str(small_data_file),),
        output_dir=str(tmp_path / "run"),
        max_length=64,
        batch_size=4,
        max_steps=1,
        save_steps=0,
        neftune_alpha=5.0,
    )
    r = train_mod.train(cfg, model=model, tokenizer=copy.deepcopy(sft_tokenizer), callbacks=[cap], audit=False)
    assert r.global_step == 1 and len(r.losses) == 1
    first = cap.batches[0]
    assert first["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in first
    assert len(first["cu_seq_lens_q"]) > 4  # several examples in the one flattened row
    assert first["position_ids"].shape == first["input_ids"].shape

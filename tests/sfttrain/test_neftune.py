"""NEFTune noise per example: |noise| <= alpha / sqrt(L_i * d) with L_i the true length of example i,
close to that bound, and zero on padding, in padded and in padding-free packed batches."""

from __future__ import annotations

import math

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from sfttrain import data, neftune

ALPHA = 5.0
LENGTHS = [7, 40, 120]  # very different lengths in one batch: row-length scaling would be visibly wrong


def examples(vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in LENGTHS:
        ids = torch.randint(10, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": ids})
    return out


def measured_noise(model, batch: dict) -> torch.Tensor:
    """Embedding output with NEFTune minus the clean embedding, for the batch the model is called with."""
    model.train()
    seen = {}
    handles = neftune.install(model, ALPHA)
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.setdefault("out", out.detach()))
    torch.manual_seed(1)
    with torch.no_grad():
        model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
    hook.remove()
    handles.remove()
    clean = model.get_input_embeddings()(batch["input_ids"])
    return seen["out"] - clean


def check_bound(noise: torch.Tensor, d: int) -> None:
    bound = ALPHA / math.sqrt(noise.shape[0] * d)
    peak = noise.abs().max().item()
    assert peak <= bound * (1 + 1e-5), f"L={noise.shape[0]}: max |noise| {peak:.5f} > bound {bound:.5f}"
    assert peak >= 0.95 * bound, f"L={noise.shape[0]}: max |noise| {peak:.5f} far below bound {bound:.5f}"


def test_padded_batch_noise_uses_each_examples_true_length(tiny_model, sft_tokenizer):
    collate = DataCollatorForLanguageModeling(pad_token_id=sft_tokenizer.pad_token_id)
    batch = collate(examples(len(sft_tokenizer)))
    assert "attention_mask" in batch and batch["input_ids"].shape == (3, max(LENGTHS))
    noise = measured_noise(tiny_model, batch)
    d = noise.shape[-1]
    for r, n in enumerate(LENGTHS):
        check_bound(noise[r, :n], d)
        assert (noise[r, n:] == 0).all(), "padding must get no noise"
    # The short example gets more noise than a row-length (padded) scaling would allow.
    assert noise[0, : LENGTHS[0]].abs().max() > 2 * ALPHA / math.sqrt(max(LENGTHS) * d)


def test_packed_rows_noise_uses_each_segments_length(tiny_model, sft_tokenizer):
    """Two packed rows of different fill (the shorter one padded), as sfttrain.data collates them."""
    exs = examples(len(sft_tokenizer))
    rows = [
        {
            "input_ids": exs[0]["input_ids"] + exs[2]["input_ids"],
            "labels": exs[0]["labels"] + exs[2]["labels"],
            "seq_lengths": [LENGTHS[0], LENGTHS[2]],
        },
        {"input_ids": exs[1]["input_ids"], "labels": exs[1]["labels"], "seq_lengths": [LENGTHS[1]]},
    ]
    batch = data.PackedCollator(sft_tokenizer.pad_token_id)(rows)
    assert "attention_mask" not in batch and batch["input_ids"].shape == (2, LENGTHS[0] + LENGTHS[2])
    noise = measured_noise(tiny_model, batch)
    d = noise.shape[-1]
    check_bound(noise[0, : LENGTHS[0]], d)
    check_bound(noise[0, LENGTHS[0] :], d)
    check_bound(noise[1, : LENGTHS[1]], d)
    assert (noise[1, LENGTHS[1] :] == 0).all(), "padding must get no noise"
    # The short example gets more noise than scaling by the packed row length would allow.
    assert noise[0, : LENGTHS[0]].abs().max() > 2 * ALPHA / math.sqrt(batch["input_ids"].shape[1] * d)


def test_trl_padding_free_row_noise_uses_each_segments_length(tiny_model, sft_tokenizer):
    """TRL's own padding-free collator (one flattened row, position ids from seq_lengths) works too."""
    exs = examples(len(sft_tokenizer))
    row = {
        "input_ids": [t for e in exs for t in e["input_ids"]],
        "labels": [t for e in exs for t in e["labels"]],
        "seq_lengths": LENGTHS,
    }
    batch = DataCollatorForLanguageModeling(pad_token_id=sft_tokenizer.pad_token_id, padding_free=True)([row])
    noise = measured_noise(tiny_model, batch)[0]
    start = 0
    for n in LENGTHS:
        check_bound(noise[start : start + n], noise.shape[-1])
        start += n


def test_token_lengths_with_both_mask_and_positions():
    """Lengths count only the real tokens of each segment; one-token runs of position 0 are padding."""
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0], [0, 1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
    lengths, valid = neftune.token_lengths((2, 7), attention_mask=mask, position_ids=pos)
    assert valid.tolist() == [[True] * 5 + [False] * 2, [True] * 5 + [False] * 2]
    assert lengths[0, :5].tolist() == [3, 3, 3, 2, 2] and lengths[1, :5].tolist() == [5] * 5
    rows, valid = neftune.token_lengths((2, 7), attention_mask=mask)
    assert rows[0].tolist() == [7] * 7 and rows[1, :5].tolist() == [5] * 5


def test_no_noise_in_eval_mode(tiny_model, sft_tokenizer):
    ids = torch.tensor([examples(len(sft_tokenizer))[0]["input_ids"]])
    handles = neftune.install(tiny_model, ALPHA)
    tiny_model.eval()
    with torch.no_grad():
        a = tiny_model(input_ids=ids).logits
    handles.remove()
    with torch.no_grad():
        b = tiny_model(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_alpha_zero_is_identity(tiny_model):
    tiny_model.train()
    handles = neftune.install(tiny_model, 0.0)
    ids = torch.tensor([[5, 6, 7]])
    emb = tiny_model.get_input_embeddings()
    torch.testing.assert_close(emb(ids), emb.weight[ids], atol=0, rtol=0)
    handles.remove()

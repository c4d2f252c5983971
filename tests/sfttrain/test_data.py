"""The trainer trains on exactly what sftdata tokenized and audited, token for token."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from sftdata import formats, masks
from sfttrain import data
from sfttrain.config import Config
from sfttrain.train import train


def test_labels_are_ids_where_trained_else_ignore():
    assert data.labels_from_mask([5, 6, 7, 8], [False, True, True, False]) == [-100, 6, 7, -100]
    with pytest.raises(ValueError):
        data.labels_from_mask([1, 2], [True])


def test_pack_bfd_is_best_fit_decreasing():
    # 5 -> new bin A (3 left); 4 -> new bin B (4 left); 3 -> A (best fit, 0 left); 3 -> B (1 left);
    # 2 -> new bin C; 1 -> B (the fullest bin it fits in)
    assert data.pack_bfd([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]


def test_pack_bfd_keeps_every_example_once_within_capacity():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 100, (500,), generator=g).tolist()
    bins = data.pack_bfd(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= 1.1 * sum(lengths) / 128 + 1  # BFD is near-optimal on such data
    with pytest.raises(ValueError):
        data.pack_bfd([129], 128)


class Capture(TrainerCallback):
    """Records every batch the model is called with during training (forward pre-hook)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []

    def on_train_begin(self, args, state, control, model=None, **kw):
        def hook(module, a, kwargs):
            if module.training:
                self.batches.append({k: v.detach().cpu() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

        model.register_forward_pre_hook(hook, with_kwargs=True)


def segments(batch: dict[str, torch.Tensor]):
    """(input_ids, labels) per example in a captured batch: rows (padded) or position-0 runs (packed).
    In a packed row an example that does not start the row must not have a target at its first
    token: it would be predicted from the previous example's last token (a cross-example target)."""
    ids, labels = batch["input_ids"], batch["labels"]
    if "attention_mask" in batch:
        for r in range(ids.shape[0]):
            n = int(batch["attention_mask"][r].sum())
            assert batch["attention_mask"][r, :n].all() and not batch["attention_mask"][r, n:].any()  # right padding
            assert (labels[r, n:] == -100).all()
            yield ids[r, :n].tolist(), labels[r, :n].tolist()
    else:
        for r in range(ids.shape[0]):
            pos = batch["position_ids"][r]
            starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
            for a, b in zip(starts, starts[1:]):
                assert pos[a:b].tolist() == list(range(b - a))
                if b - a == 1:  # padding at the end of a shorter row: one-token runs, never trained
                    assert labels[r, a] == -100 and (pos[a:] == 0).all()
                    continue
                if a > 0:
                    assert labels[r, a] == -100, "a target across an example boundary"
                yield ids[r, a:b].tolist(), labels[r, a:b].tolist()


@pytest.mark.parametrize(
    ("packing", "policy", "audit"),
    [(True, "assistant", False), (False, "assistant", False), (True, "all", True)],
    ids=["packed", "padded", "packed-all-from-audit"],
)
def test_batches_the_model_sees_are_the_audited_tokens(
    packing, policy, audit, small_data_file, tiny_model, sft_tokenizer, tmp_path
):
    """Also under policy=all, where every token is trained: packed, the first token of every example
    but a row's first must still be no target (the test fails if the collator stops masking it)."""
    pytest.importorskip("sftdata.audit")
    data_file = small_data_file
    max_length = 50  # truncates some examples: truncation must match the audit's too
    cfg = Config(
        model="tiny",
        data=(str(data_file),),
        output_dir=str(tmp_path / "run"),
        max_length=max_length,
        packing=packing,
        batch_size=4,
        epochs=1,
        save_steps=0,
        neftune_alpha=5.0,
        policy=policy,
    )
    cap = Capture()
    train(cfg, model=tiny_model, tokenizer=sft_tokenizer, callbacks=[cap], audit=audit)

    # What sftdata says, computed independently of sfttrain: the audit's tokenize path.
    convs = [c for c in formats.read(str(data_file)) if not hasattr(c, "check")]
    expected = {}
    for conv in convs:
        t = masks.tokenize(conv, sft_tokenizer, policy=policy, max_length=max_length)
        expected[tuple(t.input_ids)] = [i if m else -100 for i, m in zip(t.input_ids, t.loss_mask)]
    assert any(masks.tokenize(c, sft_tokenizer, max_length=max_length).truncated for c in convs)

    seen = []
    for batch in cap.batches:
        for ids, labels in segments(batch):
            assert tuple(ids) in expected, "the model saw tokens sftdata did not produce"
            want = expected[tuple(ids)]
            # transformers shifts labels inside the loss: labels[t] is predicted from tokens < t, so
            # labels[0] is never a target (TRL sets it to -100 in packed rows). The rest must match.
            assert labels[1:] == want[1:]
            assert labels[0] in (-100, want[0])
            seen.append(tuple(ids))
    assert sorted(seen) == sorted(expected), "one epoch trains every example exactly once"


def test_audit_examples_equal_trained_examples(data_file, sft_tokenizer, tmp_path):
    """When the audit is present: its examples.parquet holds the same tokens and masks."""
    audit = pytest.importorskip("sftdata.audit")
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    audit.run_audit([str(data_file)], sft_tokenizer, max_length=96, policy="assistant", run_dir=str(run))
    audited = {r["id"]: r for r in pq.read_table(run / "audit" / "examples.parquet").to_pylist()}
    examples, _ = data.load_examples(
        data.read_conversations([str(data_file)]), sft_tokenizer, policy="assistant", max_length=96
    )
    assert len(examples) == len(audited)
    for e in examples:
        a = audited[e.example_id]
        assert list(e.input_ids) == list(a["input_ids"])
        assert list(e.labels) == data.labels_from_mask(a["input_ids"], a["loss_mask"])


def test_packed_rows_do_not_attend_across_examples(tiny_model, sft_tokenizer, make_conversation):
    """Logits of packed rows (position ids, no attention mask) equal those of each example alone,
    padding included. (transformers derives the block-diagonal mask from position ids only without
    a KV cache: training passes use_cache=False, and so does this test.)"""
    convs = [
        make_conversation([("user", "Hi"), ("assistant", "Hello there, friend.")]),
        make_conversation([("user", "What is 2+2?"), ("assistant", "4.")], line=2),
    ]
    a, b = (data.to_example(c, masks.tokenize(c, sft_tokenizer)) for c in convs)
    # Row 0 packs both examples; row 1 holds the first alone and is padded to row 0's length.
    rows = [
        {
            "input_ids": [*a.input_ids, *b.input_ids],
            "labels": [*a.labels, *b.labels],
            "seq_lengths": [len(a.input_ids), len(b.input_ids)],
        },
        {"input_ids": list(a.input_ids), "labels": list(a.labels), "seq_lengths": [len(a.input_ids)]},
    ]
    batch = data.PackedCollator(sft_tokenizer.pad_token_id)(rows)
    na, nb = len(a.input_ids), len(b.input_ids)
    assert batch["position_ids"][0].tolist() == [*range(na), *range(nb)]
    assert (batch["labels"][0, [0, na]] == -100).all()  # each example's first token is not a target
    assert (batch["labels"][1, na:] == -100).all() and (batch["position_ids"][1, na:] == 0).all()
    tiny_model.eval()
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone_a = tiny_model(input_ids=torch.from_numpy(a.input_ids).long()[None]).logits[0]
        alone_b = tiny_model(input_ids=torch.from_numpy(b.input_ids).long()[None]).logits[0]
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[0, :na], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[0, na:], alone_b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1, :na], alone_a, atol=1e-5, rtol=1e-4)


def test_packed_rows_have_no_cross_example_targets_when_every_token_is_trained():
    """A first token that is trained (policy=all on a template without glue before the text, or raw
    text) would be predicted from the previous example's last token in a packed row: the collators
    (ours and, under flash kernels, TRL's padding-free one) drop it."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "seq_lengths": [3, 2]},
        {"input_ids": [10, 11], "labels": [10, 11], "seq_lengths": [2]},
    ]
    for collate in (data.PackedCollator(0), DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)):
        batch = collate([dict(r) for r in rows])
        starts = batch["position_ids"] == 0
        assert (batch["labels"][starts] == -100).all()
        assert (batch["labels"][~starts] != -100).all()

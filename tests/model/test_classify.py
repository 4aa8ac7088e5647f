"""GPT2ForSequenceClassification: HF's names and directory format, held equal to transformers in both directions."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2 import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from gpt2.errors import UserError
from gpt2.model.classify import last_token_index

EOT = 511  # the tiny preset's end-of-text id, used as the pad id as GPT-2 fine-tuning does
LABELS = {0: "ham", 1: "spam", 2: "other"}


def _config(**overrides) -> GPT2Config:
    return GPT2Config.from_preset("tiny", id2label=LABELS, pad_token_id=EOT, **overrides)


def _sharpen(model: torch.nn.Module) -> None:
    # ×4 so logits differ clearly between rows and positions (at init they are all near zero)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows of lengths 7, 3, 12 and 1, padded with EOT, and their attention mask."""
    g = torch.Generator().manual_seed(0)
    lengths = [7, 3, 12, 1]
    T = max(lengths)
    ids = torch.full((len(lengths), T), EOT, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)  # (B, T)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(0, EOT, (n,), generator=g)  # never the pad id inside a text
        mask[i, :n] = 1
    return ids, mask


def test_logits_pool_the_last_real_token_and_match_unpadded_rows() -> None:
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(_config()).eval()
    _sharpen(model)
    ids, mask = _batch()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=torch.tensor([0, 1, 2, 1]))
        assert out.logits.shape == (4, 3) and out.loss is not None and out.loss.ndim == 0
        by_pad_id = model(ids).logits  # no mask: pooled where the id is not the pad id, as HF does
        torch.testing.assert_close(by_pad_id, out.logits)
        for i, n in enumerate(mask.sum(1).tolist()):
            alone = model(ids[i : i + 1, :n]).logits
            torch.testing.assert_close(alone, out.logits[i : i + 1], atol=1e-5, rtol=1e-5)
        expected_loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 1]))
        torch.testing.assert_close(out.loss, expected_loss)


def test_every_position_is_the_head_on_each_prefix() -> None:
    """every_position=True (finetune.every_token_weight's loss): position t's logits are the classifier's
    on the first t + 1 tokens alone, and the last real one is what the plain forward returns."""
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(_config()).eval()
    _sharpen(model)
    ids, mask = _batch()
    with torch.no_grad():
        every = model(ids, attention_mask=mask, every_position=True)
        assert every.logits.shape == (4, 12, 3) and every.loss is None
        last = last_token_index(ids, attention_mask=mask, pad_token_id=None)
        torch.testing.assert_close(every.logits[torch.arange(4), last], model(ids, attention_mask=mask).logits)
        for t in (0, 4, 6):
            prefix = model(ids[:1, : t + 1]).logits  # row 0 has 7 real tokens
            torch.testing.assert_close(every.logits[0, t:t + 1], prefix, atol=1e-5, rtol=1e-5)


def test_last_token_index_rules() -> None:
    ids = torch.tensor([[5, 6, 9, 9], [9, 9, 9, 9], [1, 2, 3, 4]])
    assert last_token_index(ids, attention_mask=None, pad_token_id=9).tolist() == [1, 3, 3]
    assert last_token_index(ids, attention_mask=None, pad_token_id=None).tolist() == [3, 3, 3]
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(ids, attention_mask=mask, pad_token_id=9).tolist() == [2, 0, 3]


def test_ours_to_transformers_and_back(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    ours = GPT2ForSequenceClassification(_config(max_length=64, truncation_side="left")).eval()
    _sharpen(ours)
    ours.save_pretrained(tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForSequenceClassification"]
    assert cfg["id2label"] == {"0": "ham", "1": "spam", "2": "other"} and cfg["label2id"]["spam"] == 1
    assert cfg["pad_token_id"] == EOT and cfg["max_length"] == 64 and cfg["truncation_side"] == "left"

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    assert type(hf).__name__ == "GPT2ForSequenceClassification"
    assert hf.config.id2label == LABELS and hf.config.pad_token_id == EOT
    ids, mask = _batch()
    with torch.no_grad():
        expected = ours(ids, attention_mask=mask).logits
        # HF finds the last token from the pad id alone; with the mask too, its attention matches ours.
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(hf(ids, attention_mask=mask).logits, expected, atol=1e-4, rtol=0)

    # and back: our loader reads the directory transformers writes
    hf.save_pretrained(tmp_path / "hf")
    back = GPT2ForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert back.config.id2label == LABELS and back.config.pad_token_id == EOT
    # transformers 5 keeps our unknown truncation_side but drops max_length on a re-save (to it, a
    # generation parameter), so a classifier re-saved by transformers falls back to n_positions.
    assert back.config.truncation_side == "left" and back.config.max_length in (64, None)
    with torch.no_grad():
        torch.testing.assert_close(back(ids, attention_mask=mask).logits, expected, atol=1e-4, rtol=0)


def test_transformers_created_classifier_loads_with_ours(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    hf_config = transformers.GPT2Config(vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOT,
                                        eos_token_id=EOT, pad_token_id=EOT, id2label={0: "neg", 1: "pos"},
                                        label2id={"neg": 0, "pos": 1}, initializer_range=0.1)
    hf = transformers.GPT2ForSequenceClassification(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = GPT2ForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert ours.config.id2label == {0: "neg", 1: "pos"} and ours.config.label2id == {"neg": 0, "pos": 1}
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, attention_mask=mask).logits, hf(ids).logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)


def test_from_lm_copies_the_body_and_draws_a_fresh_head() -> None:
    torch.manual_seed(3)
    lm = GPT2LMHeadModel(GPT2Config.from_preset("tiny")).eval()
    clf = GPT2ForSequenceClassification.from_lm(lm, id2label={0: "a", 1: "b"}, pad_token_id=EOT)
    assert clf.config.num_labels == 2 and clf.config.label2id == {"a": 0, "b": 1} and not clf.training
    assert lm.config.id2label == {}  # the LM's config is untouched
    for k, v in lm.transformer.state_dict().items():
        assert torch.equal(clf.transformer.state_dict()[k], v)
    assert clf.transformer.wte.weight.data_ptr() != lm.transformer.wte.weight.data_ptr()  # a copy
    assert clf.score.weight.shape == (2, 64) and 0.01 < clf.score.weight.std().item() < 0.03
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        hidden = lm.transformer(ids)[:, -1]  # (1, C)
        torch.testing.assert_close(clf(ids).logits, hidden @ clf.score.weight.T)
    assert clf.num_parameters() == lm.num_parameters() + 2 * 64
    assert clf.device == lm.device


def test_the_wrong_kind_of_checkpoint_is_a_one_line_user_error(tmp_path) -> None:
    GPT2ForSequenceClassification(_config()).save_pretrained(tmp_path / "clf")
    GPT2LMHeadModel(GPT2Config.from_preset("tiny")).save_pretrained(tmp_path / "lm")
    with pytest.raises(UserError, match=r"is a sequence-classification checkpoint.*use `gpt2 classify`") as e:
        GPT2LMHeadModel.from_pretrained(tmp_path / "clf")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"is a language model.*`gpt2 generate`.*`gpt2 finetune classify`") as e:
        GPT2ForSequenceClassification.from_pretrained(tmp_path / "lm")
    assert "\n" not in str(e.value)
    # an LM's config.json gains no classifier keys
    cfg = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"]
    assert not {"id2label", "label2id", "pad_token_id", "max_length", "truncation_side"} & set(cfg)


def test_a_classifier_needs_two_labels_and_consistent_maps() -> None:
    with pytest.raises(UserError, match="at least 2 labels"):
        GPT2ForSequenceClassification(GPT2Config.from_preset("tiny"))
    with pytest.raises(UserError, match="not the inverse of id2label"):
        GPT2Config.from_preset("tiny", id2label={0: "a", 1: "b"}, label2id={"a": 1, "b": 0})
    with pytest.raises(UserError, match="truncation_side"):
        _config(truncation_side="middle")

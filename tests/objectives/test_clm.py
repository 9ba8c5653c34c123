"""The causal-LM objective: document-boundary masks and positions."""

import torch

from graft.objectives.clm import document_masks


def test_document_masks_block_attention_across_end_of_text_and_restart_positions():
    EOT = 0
    ids = torch.tensor([[5, 6, EOT, 7, 8, 9, EOT, 4]])
    positions, mask = document_masks(ids, EOT)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    m = mask[0, 0]
    assert m[2, :3].all() and not m[2, 3:].any()  # the EOT closes its own document
    assert m[5, 3:6].all() and not m[5, :3].any() and not m[5, 6:].any()
    assert m[7].tolist() == [False] * 7 + [True]
    assert not (m & ~torch.ones(8, 8, dtype=torch.bool).tril()).any()  # never looks ahead


def test_packed_documents_with_masks_score_like_documents_alone():
    from graft.model.config import ModelConfig
    from graft.model.transformer import LanguageModel

    torch.manual_seed(0)
    EOT = 0
    for style in ({}, {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu"}):
        model = LanguageModel(
            ModelConfig(vocab_size=30, max_seq_len=16, d_model=16, n_layers=2, n_heads=2, **style)
        ).eval()
        first, second = [3, 4, 5, EOT], [6, 7, 8, 9, 10]
        packed = torch.tensor([first + second])
        positions, mask = document_masks(packed, EOT)
        with torch.no_grad():
            together = model(packed, position_ids=positions, attention_mask=mask).logits
            alone = model(torch.tensor([second])).logits
        torch.testing.assert_close(together[:, len(first) :], alone, rtol=1e-5, atol=1e-5)

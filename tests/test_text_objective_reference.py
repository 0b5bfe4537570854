"""The whole data2vec v1 text objective against an independent reference built on Hugging Face's
`Data2VecText` (RoBERTa) in float64: the teacher's FFN outputs taken by forward hooks, each layer-normalised,
the top K averaged, the student run on BERT-corrupted ids, its final layer through the regression head, and
Smooth L1 (beta 4) at the chosen positions only. A wrong tap, a teacher that saw corrupted ids, a student that
saw clean ones, targets at the wrong positions or a wrong reduction each change the number."""

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from data2vec.config import build_config  # noqa: E402
from data2vec.interop.hf import from_hf  # noqa: E402
from data2vec.masking import token_mask  # noqa: E402
from data2vec.model import Data2Vec  # noqa: E402
from data2vec.train.checkpoint import load_checkpoint  # noqa: E402
from conftest import randomise, save_hf  # noqa: E402

VOCAB, DIM, DEPTH, TOP_K, BETA = 60, 32, 3, 2, 4.0


def _reference_loss(teacher_hf, student_hf, head_layers, ids, corrupted, chosen, padding):
    """Loss per the paper and the reference recipe, from HF modules in float64."""
    taps = []
    hooks = [layer.output.dense.register_forward_hook(lambda mod, args, out: taps.append(out))
             for layer in teacher_hf.encoder.layer]  # RobertaOutput.dense: the FFN output before its residual
    attention = (~padding).long()
    with torch.no_grad():
        teacher_hf(ids, attention_mask=attention)
    for hook in hooks:
        hook.remove()
    assert len(taps) == DEPTH
    targets = sum(F.layer_norm(t, t.shape[-1:], eps=1e-5) for t in taps[-TOP_K:]) / TOP_K
    hidden = student_hf(corrupted, attention_mask=attention).last_hidden_state
    pred = hidden[chosen]
    for i, (weight, bias) in enumerate(head_layers):
        pred = F.linear(pred, weight, bias)
        if i < len(head_layers) - 1:
            pred = F.gelu(pred)
    per_element = F.smooth_l1_loss(pred, targets[chosen], reduction="none", beta=BETA)
    return per_element.sum(-1).mean() / DIM  # loss_scale "mean": a plain mean over masked positions and dims


@pytest.mark.parametrize("head_layers", [1, 2])
def test_text_loss_matches_hugging_face_reference(tmp_path, head_layers):
    hf_cfg = transformers.Data2VecTextConfig(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=DEPTH,
                                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=20,
                                             type_vocab_size=1, layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
                                             attention_probs_dropout_prob=0.0)
    teacher_hf = transformers.Data2VecTextModel(hf_cfg, add_pooling_layer=False).eval()
    student_hf = transformers.Data2VecTextModel(hf_cfg, add_pooling_layer=False).eval()
    randomise(teacher_hf, seed=1)
    randomise(student_hf, seed=2)
    for module in (teacher_hf, student_hf):  # the reference keeps the teacher's embeddings the student's
        module.embeddings.load_state_dict(student_hf.embeddings.state_dict())
    save_hf(teacher_hf, tmp_path / "teacher", "safetensors")
    save_hf(student_hf, tmp_path / "student", "safetensors")
    teacher_w, _, cfg = load_checkpoint(from_hf(tmp_path / "teacher", tmp_path / "t"), with_state=False)
    student_w, _, _ = load_checkpoint(from_hf(tmp_path / "student", tmp_path / "s"), with_state=False)

    cfg = build_config("text-tiny", [f"model.dim={DIM}", f"model.depth={DEPTH}", "model.heads=4",
                                     "model.mlp_ratio=2.0", f"text.vocab_size={VOCAB}", "text.max_positions=20",
                                     f"objective.top_k={TOP_K}", f"objective.head_layers={head_layers}"])
    assert (cfg.objective.tap, cfg.objective.per_layer_norm, cfg.objective.loss_beta) == ("ffn", "layer", BETA)
    model = Data2Vec(cfg).eval()
    model.student.load_state_dict({k[len("student."):]: v for k, v in student_w.items() if k.startswith("student.")})
    model.teacher.load_state_dict({k[len("student."):]: v for k, v in teacher_w.items() if k.startswith("student.")})
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    ids = torch.randint(5, VOCAB, (4, 14), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    padding = torch.zeros_like(ids, dtype=torch.bool)
    padding[1, 9:] = True
    padding[3, 5:] = True
    ids[3, 4] = 2
    ids[padding] = 1
    corrupted, chosen = token_mask(ids, 0.3, generator=g, mask_id=4, vocab_size=VOCAB, special_ids=[0, 1, 2, 3, 4])
    assert chosen.any() and not chosen[padding].any()

    ours = model(ids, chosen, padding, student_inputs=corrupted)["loss"]
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    head = [(m.weight.double(), m.bias.double()) for m in linears]
    reference = _reference_loss(teacher_hf.double(), student_hf.double(), head, ids, corrupted, chosen, padding)
    error = abs(ours.item() - reference.item())
    assert error < 1e-6 * reference.item(), (ours.item(), reference.item())

    # the check can fail: the student on clean ids, or the block output as the tap, is far outside that error
    assert abs(model(ids, chosen, padding)["loss"].item() - reference.item()) > 100 * error
    cfg.objective.tap = "block"
    assert abs(model(ids, chosen, padding, student_inputs=corrupted)["loss"].item() - reference.item()) > 100 * error

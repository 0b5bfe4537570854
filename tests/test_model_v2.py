"""data2vec 2.0: visible-only student, one teacher pass for M clones, conv decoder."""

import torch

import data2vec.model as model_module
from data2vec.config import build_config
from data2vec.masking import inverse_block_mask
from data2vec.model import Data2Vec
from data2vec.nn.decoder import ConvDecoder

V2 = ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16", "image.patch_size=4",
      "objective.top_k=2", "objective.version=2", "objective.clones=3", "objective.decoder_dim=16",
      "objective.decoder_layers=2", "objective.decoder_groups=4", "objective.cls_loss_weight=0.01",
      "masking.inverse=true", "masking.block_size=2", "masking.ratio=0.75"]


def masks(b, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return inverse_block_mask(b * m, (4, 4), 0.75, generator=g, block_size=2).view(b, m, 16)


def test_student_encodes_only_visible_tokens_and_teacher_runs_once():
    torch.manual_seed(0)
    model = Data2Vec(build_config("image-tiny", V2))
    seen = {"student": [], "teacher": []}
    model.student.encoder.register_forward_pre_hook(lambda mod, args, kw: seen["student"].append(args[0].shape),
                                                    with_kwargs=True)
    model.teacher.frontend.register_forward_pre_hook(lambda mod, args: seen["teacher"].append(args[0].shape))
    out = model(torch.randn(2, 3, 16, 16), masks(2, 3))
    out["loss"].backward()
    assert seen["teacher"] == [torch.Size([2, 3, 16, 16])]  # once for the 2 images, not once per clone
    assert seen["student"] == [torch.Size([6, 1 + 4, 32])]  # 2 x 3 clones, CLS + 4 visible of 16 patches


def test_v1_and_v2_share_the_target_code(monkeypatch):
    calls = []
    real = model_module.build_targets
    monkeypatch.setattr(model_module, "build_targets", lambda *a, **k: calls.append(1) or real(*a, **k))
    images = torch.randn(2, 3, 16, 16)
    Data2Vec(build_config("image-tiny", V2))(images, masks(2, 3))
    v1 = build_config("image-tiny", V2[:6] + ["masking.min_block=2"])
    Data2Vec(v1)(images, torch.rand(2, 16) < 0.5)
    assert len(calls) == 2


def test_unequal_visible_counts_are_padded_not_mixed():
    torch.manual_seed(0)
    model = Data2Vec(build_config("image-tiny", V2 + ["objective.decoder_noise=0", "objective.clones=1"])).eval()
    images = torch.randn(2, 3, 16, 16)
    m = torch.zeros(2, 1, 16, dtype=torch.bool)
    m[0, 0, :12] = True  # 4 visible
    m[1, 0, :6] = True  # 10 visible
    captured = {}
    model.decoder.register_forward_hook(lambda mod, args, out: captured.setdefault("pred", out))
    model(images, m)
    together = captured.pop("pred")[0]
    model(images[:1], m[:1])
    alone = captured.pop("pred")[0]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_decoder_gradients_match_finite_differences():
    torch.manual_seed(0)
    for spatial in (1, 2):
        dec = ConvDecoder(4, 4, layers=2, kernel=3, groups=2, spatial_dims=spatial).double()
        x = torch.randn(2, 9, 4, dtype=torch.double, requires_grad=True)
        grid = (3, 3) if spatial == 2 else None
        assert torch.autograd.gradcheck(lambda t: dec(t, grid), (x,), eps=1e-6, atol=1e-5)


def test_decoder_mixes_neighbours_only_within_its_receptive_field():
    dec = ConvDecoder(4, 8, layers=1, kernel=3, groups=1, spatial_dims=2).double()
    x = torch.zeros(1, 25, 4, dtype=torch.double, requires_grad=True)
    dec(x, (5, 5))[0, 12].sum().backward()  # centre of a 5x5 grid
    touched = (x.grad[0].abs().sum(-1) > 0).view(5, 5)
    want = torch.zeros(5, 5, dtype=torch.bool)
    want[1:4, 1:4] = True
    assert torch.equal(touched, want)


def _fairseq_total_loss(pred, targets, mask, cls, weight):
    """fairseq's data2vec2.py + ModelCriterion in float64: the losses' elements summed (d2v_loss: squared error
    times 1/sqrt(D)), the CLS term times `cls_loss * sample_size`, all divided by sample_size (the masked
    positions), as the trainer does."""
    pred, targets, cls = pred.double(), targets.double(), cls.double()
    scale = 1 / pred.shape[-1] ** 0.5
    sample_size = mask.sum()
    reg = ((pred[mask] - targets[mask]) ** 2 * scale).sum()
    cls_term = ((cls - targets.mean(dim=1)) ** 2 * scale).sum() * (weight * sample_size)
    return (reg + cls_term) / sample_size


def test_cls_loss_is_fairseqs_raw_cls_output_summed_over_rows():
    torch.manual_seed(0)
    cfg = build_config("image-tiny", V2 + ["objective.loss_beta=0", "objective.loss_scale=inv_sqrt_dim",
                                           "objective.cls_loss_weight=0.5"])
    model = Data2Vec(cfg)
    assert not hasattr(model, "cls_head") or model.cls_head is None  # no head: the CLS output itself
    assert not any("cls_head" in name for name, _ in model.named_parameters())
    images, m = torch.randn(2, 3, 16, 16), masks(2, 3)
    seen = {}
    model.student.encoder.register_forward_hook(lambda mod, args, out: seen.update(cls=out[0][:, 0]))
    model.decoder.register_forward_hook(lambda mod, args, out: seen.update(pred=out))
    loss = model(images, m)["loss"]
    targets = model.targets(images).repeat_interleave(3, 0)  # [B*M, N, D]
    want = _fairseq_total_loss(seen["pred"], targets, m.reshape(6, 16), seen["cls"], 0.5)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)


def test_cls_head_of_older_checkpoints_is_kept_by_their_config():
    import yaml

    from data2vec.config import config_from_yaml_text, to_dict

    cfg = build_config("image-tiny", V2)
    data = to_dict(cfg)
    del data["objective"]["cls_head"]  # a config saved before the key existed
    old = config_from_yaml_text(yaml.safe_dump(data))
    assert old.objective.cls_head is True
    model = Data2Vec(old)
    assert isinstance(model.cls_head, torch.nn.Linear)  # its weights load, and it trains as it did
    model(torch.randn(2, 3, 16, 16), masks(2, 3))["loss"].backward()
    assert model.cls_head.weight.grad is not None

"""data2vec on text end to end: the student sees corrupted ids, the teacher clean ones, and the loss falls."""

import pytest
import torch

from data2vec.config import build_config
from data2vec.data.build import pretrain_loader
from data2vec.model import Data2Vec
from conftest import binarised_corpus

CORPUS = ("Arrays hold numbers of one type in a grid.\nThe shape gives the size of each axis.\n\n"
          "A tensor is an array that can live on a device.\nGradients flow back through tensor operations.\n\n"
          "Estimators learn from data with fit and predict.\nA pipeline chains transforms and an estimator.\n\n")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return binarised_corpus(tmp_path_factory.mktemp("text"), CORPUS * 30, 400)


def tiny(data_dir, *extra):
    return build_config("text-tiny", ["model.dim=32", "model.depth=2", "model.heads=2", "objective.top_k=2",
                                      "text.vocab_size=400", "text.block_size=24", "text.max_positions=26",
                                      f"data.path={data_dir / 'bin'}", "train.batch_size=16", "train.max_steps=40",
                                      f"out={data_dir / 'run'}", *extra])


def test_student_sees_corrupted_ids_and_teacher_clean_ones(data_dir):
    cfg = tiny(data_dir)
    batch = next(iter(pretrain_loader(cfg)))
    assert (batch["student_inputs"] != batch["inputs"]).any()
    torch.manual_seed(0)
    model = Data2Vec(cfg).eval()
    seen = []
    hook = model.student.frontend.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model(batch["inputs"], batch["mask"], batch["padding_mask"], student_inputs=batch["student_inputs"])
    hook.remove()
    assert torch.equal(seen[0], batch["student_inputs"])
    clean = model(batch["inputs"], batch["mask"], batch["padding_mask"])["loss"]
    corrupted = model(batch["inputs"], batch["mask"], batch["padding_mask"],
                      student_inputs=batch["student_inputs"])["loss"]
    assert not torch.allclose(clean, corrupted)


def test_tiny_text_run_loss_falls(data_dir):
    cfg = tiny(data_dir)
    torch.manual_seed(0)
    model = Data2Vec(cfg).train()
    opt = torch.optim.Adam([p for _, p in model.trainable_parameters()], lr=2e-3, betas=(0.9, 0.98))
    losses = []
    for batch in pretrain_loader(cfg):
        out = model(batch["inputs"], batch["mask"], batch["padding_mask"], student_inputs=batch["student_inputs"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.update_teacher(0.99)
        losses.append(out["loss"].item())
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_pretrain_task_runs_and_probes_text(data_dir, tmp_path):
    from data2vec.api import load
    from data2vec.tasks.pretrain import pretrain
    from data2vec.tasks.probe import probe_encoder

    (tmp_path / "train.tsv").write_text("".join(f"{'ab'[i % 2]}\t{CORPUS.splitlines()[i % 2]}\n" for i in range(20)))
    (tmp_path / "test.tsv").write_text("a\tArrays hold numbers.\nb\tThe shape gives the size.\n")
    cfg = tiny(data_dir, "train.max_steps=3", f"out={tmp_path / 'run'}", f"data.eval_path={tmp_path}")
    run = pretrain(cfg, progress=False)
    result = probe_encoder(load(run), cfg)
    assert set(result) == {"linear", "knn"}
    import numpy as np

    from data2vec.tasks.embed import embed

    (tmp_path / "lines.txt").write_text("Arrays hold numbers.\n\nA tensor is an array.\n")
    out = embed(run, [str(tmp_path / "lines.txt")], tmp_path / "emb.npy")
    assert np.load(out).shape == (2, 32)  # one embedding per non-empty line
    assert out.with_suffix(".txt").read_text().splitlines()[1].endswith("lines.txt:3")


V2 = ["objective.version=2", "objective.clones=3", "masking.token_prob=0.5", "masking.token_span=1",
      "masking.token_random=0", "masking.token_keep=0", "objective.decoder_dim=16", "objective.decoder_layers=2",
      "objective.decoder_kernel=5", "objective.decoder_groups=1", "objective.per_layer_norm=instance",
      "objective.loss_beta=0"]


def test_v2_text_batches_drop_chosen_tokens_per_clone(data_dir):
    cfg = tiny(data_dir, *V2)
    batch = next(iter(pretrain_loader(cfg)))
    B, T = batch["inputs"].shape
    assert "student_inputs" not in batch  # v2 drops tokens; nothing is corrupted
    assert batch["mask"].shape == (B, 3, T)
    specials = torch.isin(batch["inputs"], torch.tensor([0, 1, 2, 4]))  # <s> <pad> </s> <mask>
    assert not (batch["mask"] & specials[:, None]).any()  # never specials, never padding
    eligible = (~specials).sum(1, keepdim=True)  # [B, 1]
    share = batch["mask"].sum(-1) / eligible  # [B, 3]
    assert ((share - 0.5).abs() <= 1.0 / eligible + 1e-6).all()
    assert not torch.equal(batch["mask"][:, 0], batch["mask"][:, 1])  # each clone is masked differently

    torch.manual_seed(0)
    model = Data2Vec(cfg)
    lengths, teacher_calls = [], []
    model.student.encoder.register_forward_pre_hook(lambda m, a, k: lengths.append(a[0].shape[1]), with_kwargs=True)
    model.teacher.encoder.register_forward_pre_hook(lambda m, a: teacher_calls.append(1))  # the Transformer
    out = model(batch["inputs"], batch["mask"], batch["padding_mask"])
    out["loss"].backward()
    visible = (~(batch["mask"] | batch["padding_mask"][:, None])).sum(-1)  # [B, 3]
    assert lengths == [int(visible.max())] and teacher_calls == [1]
    assert torch.isfinite(out["loss"]) and model.decoder.proj_in.weight.grad is not None


def test_released_recipe_span_masking_reaches_the_batches(data_dir):
    """masking.token_span=4 with 35% all replaced by <mask> (the released v1 text recipe) flows from the
    config to the loader: chosen tokens come in runs, and every one of them is <mask> for the student."""
    cfg = tiny(data_dir, "masking.token_prob=0.35", "masking.token_span=4", "masking.token_random=0",
               "masking.token_keep=0")
    batch = next(iter(pretrain_loader(cfg)))
    mask = batch["mask"]
    assert (batch["student_inputs"][mask] == cfg.text.mask_id).all()
    starts = mask & ~torch.nn.functional.pad(mask, (1, 0))[:, :-1]  # first token of each run
    assert mask.sum() / starts.sum() > 2.5  # runs of about 4 (shorter only at the end of a text)
    plain = next(iter(pretrain_loader(tiny(data_dir, "masking.token_prob=0.35", "masking.token_span=1",
                                           "masking.token_random=0", "masking.token_keep=0"))))["mask"]
    plain_starts = plain & ~torch.nn.functional.pad(plain, (1, 0))[:, :-1]
    assert plain.sum() / plain_starts.sum() < 2.0

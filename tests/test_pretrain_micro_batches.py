"""Pretraining runs whatever a micro-batch holds: one real step of every modality and objective version at
batch 1 and with gradient accumulation down to one sample a forward, and an audio folder whose length buckets
leave one clip alone, all with the oneDNN products of nn/linear.py forced on (a speed path that once crashed
the speech backward pass on one-utterance micro-batches)."""

import numpy as np
import pytest
import soundfile as sf

from data2vec.config import build_config
from data2vec.nn import linear as lin
from data2vec.tasks.pretrain import pretrain
from conftest import binarised_corpus

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not lin.onednn_available(), reason="this PyTorch build has no oneDNN")]

SMALL = ["model.dim=16", "model.depth=1", "model.heads=2", "objective.top_k=1", "train.max_steps=1",
         "train.warmup_steps=0", "train.log_every=1", "data.num_workers=0"]
V2 = ["objective.decoder_dim=8", "objective.decoder_groups=2", "objective.decoder_layers=1", "objective.clones=2"]
MODALITY = {
    "image": ["image.image_size=16", "image.patch_size=4", "masking.min_block=2"],
    "audio": ["audio.conv_dim=[8,8,8,8,8,8,8]", "audio.pos_conv_groups=2", "audio.pos_conv_kernel=3",
              "audio.pos_conv_layers=1", "audio.max_sample_size=4000"],
    "text": ["text.vocab_size=300", "text.block_size=16", "text.max_positions=18"],
}
BATCHES = {"batch 1": ["train.batch_size=1"],
           "accumulation to 1": ["train.batch_size=2", "train.device_batch_size=1"]}


@pytest.fixture
def onednn_products(monkeypatch):
    """Force the oneDNN path (whatever the timing would pick here) and count the products it computes."""
    calls = []
    product = lin._onednn_mm
    monkeypatch.setattr(lin, "_onednn_mm", lambda *args: calls.append(1) or product(*args))
    lin.set_cpu_matmul("onednn")
    yield calls
    lin.set_cpu_matmul("auto")


@pytest.fixture(scope="module")
def text_bin(tmp_path_factory):
    corpus = "Arrays hold numbers of one type in a grid.\nThe shape gives the size of each axis.\n\n" * 20
    return binarised_corpus(tmp_path_factory.mktemp("text"), corpus, 300) / "bin"


def small(recipe: str, out, *extra: str):
    modality = recipe.split("-")[0]
    return build_config(recipe, [*SMALL, *MODALITY[modality], *(V2 if recipe.endswith("v2") else []),
                                 *extra, f"out={out}"])


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("recipe", ["image-tiny", "image-tiny-v2", "audio-tiny", "audio-tiny-v2",
                                    "text-tiny", "text-tiny-v2"])
def test_one_sample_micro_batches_train(onednn_products, text_bin, tmp_path, recipe, batch):
    data = [f"data.path={text_bin}"] if recipe.startswith("text") else []
    run = pretrain(small(recipe, tmp_path / "run", *data, *BATCHES[batch]), progress=False)
    assert (run / "metrics.jsonl").read_text().count('"step"') == 1
    assert onednn_products  # the fast path ran, forward and backward


def test_audio_folder_whose_buckets_leave_one_clip_alone(onednn_products, tmp_path):
    """Three clips of different lengths in batches of two: the shortest is a batch of its own."""
    rng = np.random.default_rng(0)
    (tmp_path / "clips").mkdir()
    for i, n in enumerate((3000, 3500, 2000)):
        sf.write(tmp_path / "clips" / f"{i}.wav", rng.normal(0, 0.1, n).astype(np.float32), 16000)
    run = pretrain(small("audio-tiny", tmp_path / "run", f"data.path={tmp_path / 'clips'}", "train.batch_size=2",
                         "train.max_steps=2"), progress=False)
    assert (run / "metrics.jsonl").read_text().count('"step"') == 2  # one batch of two clips, one of one
    assert onednn_products

"""The front-end contract (nn/frontend.py): what each modality's front-end states, which the model calls."""

import pytest
import torch

from data2vec.config import build_config
from data2vec.model import Data2Vec
from data2vec.nn.frontend import Frontend

TINY = {"image": ["image.image_size=16", "image.patch_size=4"], "text": ["text.vocab_size=300"],
        "audio": ["audio.conv_dim=[8,8]", "audio.conv_kernel=[10,3]", "audio.conv_stride=[5,2]",
                  "audio.pos_conv_groups=4"]}


@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_every_front_end_states_its_shape_and_its_unused_parameters(modality):
    cfg = build_config(f"{modality}-tiny-v2", ["model.dim=32", "model.heads=4", "model.depth=2", "objective.top_k=2",
                                               "objective.decoder_dim=16", "objective.decoder_groups=4",
                                               *TINY[modality]])
    model = Data2Vec(cfg)
    frontend = model.student.frontend
    assert isinstance(frontend, Frontend)
    assert (frontend.grid_hw is not None) == (modality == "image") and frontend.two_stage == (modality == "audio")
    assert model.decoder.spatial_dims == (2 if modality == "image" else 1)
    # v2 drops masked tokens: the mask embedding is frozen, every other front-end parameter trains
    frozen = {id(p) for p in frontend.mask_parameters()}
    assert len(frozen) == (0 if modality == "text" else 1)
    assert all(p.requires_grad != (id(p) in frozen) for p in frontend.parameters())
    if not frontend.two_stage:
        with pytest.raises(NotImplementedError, match="not two-stage"):
            frontend.local_features(torch.zeros(1, 4), None)

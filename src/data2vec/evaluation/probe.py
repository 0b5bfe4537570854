"""What frozen features are worth: a linear and a kNN classifier on pooled final-layer features.

Shared by every modality: features come from :meth:`Data2VecEncoder.embed` over the labelled splits that
`data.build.eval_dataset` reads for the checkpoint's modality (images, text lines, audio clips). The linear
probe is a multinomial logistic regression on standardised features, the kNN probe a distance-weighted
cosine vote of the 20 nearest training samples.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data2vec.config import Config
from data2vec.data.build import eval_dataset, eval_loader
from data2vec.errors import Data2VecError
from data2vec.model import Data2VecEncoder


@torch.no_grad()
def extract_features(encoder: Data2VecEncoder, cfg: Config, split: str, path: str | None = None,
                     device: str | torch.device = "cpu", option: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features `[N, D]` and labels `[N]` of a labelled split; `option` as in `eval_dataset`."""
    dataset = eval_dataset(cfg, split, path, option)
    encoder = encoder.to(device).eval()
    feats, labels = [], []
    for batch in eval_loader(dataset):
        if "inputs" not in batch:
            continue
        padding = batch.get("padding_mask")
        feats.append(encoder.embed(batch["inputs"].to(device),
                                   padding.to(device) if padding is not None else None).float().cpu())
        labels.append(batch["label"])
    x, y = torch.cat(feats).numpy(), torch.cat(labels).numpy()
    if (y < 0).any():
        raise Data2VecError(f"probe data '{path or cfg.data.eval_path or cfg.data.path}' has no labels; give a "
                            f"folder with one sub-folder per class ({option or 'data.eval_path=...'})")
    return x, y


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Top-1 accuracy of a logistic regression on standardised features."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20) -> float:
    """Top-1 accuracy of a distance-weighted cosine kNN vote."""
    clf = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine", weights="distance")
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def probe_encoder(encoder: Data2VecEncoder, cfg: Config, path: str | None = None,
                  option: str | None = None) -> dict[str, float]:
    """Linear and kNN accuracy of `encoder`'s frozen features, trained on the train split, scored on test;
    `option` names how the user gives `path` in an error's fix (see `eval_dataset`)."""
    train_x, train_y = extract_features(encoder, cfg, "train", path, option=option)
    test_x, test_y = extract_features(encoder, cfg, "test", path, option=option)
    return {"linear": linear_probe(train_x, train_y, test_x, test_y), "knn": knn_probe(train_x, train_y, test_x, test_y)}

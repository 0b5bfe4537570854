"""What frozen features are worth: a linear and a kNN classifier on pooled final-layer features.

Shared by every modality: features come from :meth:`Data2VecEncoder.embed` over the labelled splits that
`data.build.eval_dataset` reads for the checkpoint's modality (images, labelled text, audio clips): the same
labelled sets fine-tuning reads, with the test split numbered by the training split's classes. The linear
probe is a multinomial logistic regression on standardised features, the kNN probe a distance-weighted
cosine vote of the 20 nearest training samples. Data that is not split is read whole for both splits;
the probe then says that its accuracies are on the samples it was fitted to.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data2vec.config import Config
from data2vec.data.build import eval_dataset, eval_loader
from data2vec.data.dataset import StepDataset
from data2vec.model import Data2VecEncoder

log = logging.getLogger("data2vec")


def extract_features(encoder: Data2VecEncoder, cfg: Config, split: str, path: str | None = None,
                     device: str | torch.device = "cpu", option: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features `[N, D]` and labels `[N]` of a labelled split; `option` as in `eval_dataset`."""
    return dataset_features(encoder, eval_dataset(cfg, split, path, option), device)


@torch.no_grad()
def dataset_features(encoder: Data2VecEncoder, dataset: StepDataset, device: str | torch.device = "cpu"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features `[N, D]` and labels `[N]` of every readable sample of a labelled set."""
    encoder = encoder.to(device).eval()
    feats, labels = [], []
    for batch in eval_loader(dataset):
        if "inputs" not in batch:
            continue
        padding = batch.get("padding_mask")
        feats.append(encoder.embed(batch["inputs"].to(device),
                                   padding.to(device) if padding is not None else None).float().cpu())
        labels.append(batch["label"])
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


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
    train = eval_dataset(cfg, "train", path, option)
    train_x, train_y = dataset_features(encoder, train)
    test_x, test_y = dataset_features(encoder, eval_dataset(cfg, "test", path, option, classes=train.classes))
    if np.array_equal(train_x, test_x) and np.array_equal(train_y, test_y):
        log.warning("the probe's train and test splits are the same %d samples (the data is not split), so its "
                    "accuracies are on the samples it was fitted to; for held-out ones give images or audio in "
                    "train/ and test/ sub-folders, text as train.tsv and test.tsv", len(train_y))
    return {"linear": linear_probe(train_x, train_y, test_x, test_y), "knn": knn_probe(train_x, train_y, test_x, test_y)}

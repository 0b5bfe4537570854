"""What the built-in text probe (`builtin:pydocs`, 4 packages) rewards, and what a short run can reach.

Issue 5's demo barely beats random weights on this probe. This script puts beside that, on the same probe and
the same tokenizer, features that need no Transformer:

- **bag of words**: token counts (normalised), the full vocabulary, and the same projected to the model width
  by a fixed random matrix, which is what mean-pooling a random-weight encoder amounts to;
- **TF-IDF + logistic regression** (built-in sets only): scikit-learn's `TfidfVectorizer` with its defaults on
  the raw paragraphs and `LogisticRegression()`, the usual lexical baseline, for scale;
- **PPMI-SVD**: 128-d word vectors from the corpus's co-occurrences (window 5, positive PMI with context
  smoothing 0.75, truncated SVD), mean-pooled; a classic estimate of what distributional word meaning alone
  is worth here;
- optionally (`--mlm-steps N`) a masked-language-model baseline: our text-tiny encoder with a linear vocabulary
  head and cross-entropy on the same masked batches, schedule and optimiser as `data2vec pretrain text-tiny`
  for N steps; it tells whether a short run of the classic objective does better than data2vec's.

    python benchmarks/text_baselines.py
    python benchmarks/text_baselines.py --mlm-steps 600
    python benchmarks/text_baselines.py --mlm-steps 3000 --save runs/mlm   # data2vec finetune ... checkpoint=runs/mlm

`--save` writes the MLM encoder as a checkpoint that `data2vec finetune` and `data2vec probe` take like a data2vec
one, so fine-tuning can compare the two objectives too.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.utils.extmath import randomized_svd

from data2vec.checkpoint import save_checkpoint
from data2vec.config import build_config
from data2vec.data.build import eval_dataset, pretrain_loader
from data2vec.data.text import TokenShards
from data2vec.data.text_source import text_source
from data2vec.evaluation.probe import knn_probe, linear_probe, probe_encoder
from data2vec.model import Data2VecEncoder
from data2vec.train.optim import build_optimizer, lr_at, set_lr


def token_lists(cfg, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    data = eval_dataset(cfg, split)
    return [ids.numpy() for ids in data.ids], np.array(data.labels)


def tfidf_accuracy(cfg) -> float | None:
    """Test accuracy of TF-IDF words (scikit-learn's defaults) and a logistic regression on the raw text of a
    built-in labelled set; None for other data (the labelled files' text is not kept by the data set)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from data2vec.data.builtin_text import builtin_labelled_file

    path = cfg.data.eval_path or cfg.data.path
    if not path.startswith("builtin:"):
        return None
    splits = []
    for split in ("train", "test"):
        rows = [line.split("\t", 1) for line in builtin_labelled_file(path.split(":", 1)[1], split).read_text()
                .splitlines() if "\t" in line]
        splits.append(([text for _, text in rows], np.array([label for label, _ in rows])))
    (train_text, train_y), (test_text, test_y) = splits
    vectorizer = TfidfVectorizer()
    clf = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(train_text), train_y)
    return float((clf.predict(vectorizer.transform(test_text)) == test_y).mean())


def bag_of_words(docs: list[np.ndarray], vocab: int) -> np.ndarray:
    x = np.zeros((len(docs), vocab))
    for i, ids in enumerate(docs):
        np.add.at(x[i], ids, 1.0)
    return x / x.sum(1, keepdims=True)


def ppmi_vectors(tokens: np.ndarray, vocab: int, dim: int, window: int = 5) -> np.ndarray:
    """Word vectors `[V, dim]` from positive PMI of co-occurrence within `window` tokens, by truncated SVD."""
    tokens = tokens.astype(np.int64)
    left = np.concatenate([tokens[:-k] for k in range(1, window + 1)])
    right = np.concatenate([tokens[k:] for k in range(1, window + 1)])
    rows, cols = np.concatenate([left, right]), np.concatenate([right, left])
    counts = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(vocab, vocab)).tocsr().tocoo()
    total = counts.data.sum()
    p_word = np.asarray(counts.tocsr().sum(1)).ravel() / total
    p_context = p_word ** 0.75
    p_context /= p_context.sum()
    pmi = np.log(counts.data / total / (p_word[counts.row] * p_context[counts.col]))
    ppmi = sp.coo_matrix((np.maximum(pmi, 0.0), (counts.row, counts.col)), shape=(vocab, vocab)).tocsr()
    u, s, _ = randomized_svd(ppmi, dim, random_state=0)
    return u * np.sqrt(s)


def mlm_encoder(cfg, steps: int) -> Data2VecEncoder:
    """text-tiny trained as a masked language model on data2vec's masked batches, with its schedule."""
    torch.manual_seed(cfg.train.seed)
    loader = pretrain_loader(cfg)
    encoder = Data2VecEncoder(cfg)
    head = torch.nn.Linear(cfg.model.dim, cfg.text.vocab_size)
    named = list(encoder.named_parameters()) + [(f"head.{n}", p) for n, p in head.named_parameters()]
    optimizer = build_optimizer(named, cfg.train)
    params = [p for _, p in named]
    for step, batch in zip(range(steps), loader):
        set_lr(optimizer, lr_at(step, cfg.train))
        hidden = encoder(batch["student_inputs"], padding_mask=batch["padding_mask"]).last_hidden_state
        mask = batch["mask"]
        loss = F.cross_entropy(head(hidden[mask]), batch["inputs"][mask])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad)
        optimizer.step()
        if (step + 1) % 100 == 0:
            print(f"  mlm step {step + 1}: cross-entropy {loss.item():.3f}", flush=True)
    return encoder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="text-tiny")
    parser.add_argument("--mlm-steps", type=int, default=0, help="also train an MLM baseline for this many steps")
    parser.add_argument("--save", default="", help="with --mlm-steps: write the MLM encoder as a checkpoint here")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. text.vocab_size=4096")
    args = parser.parse_args()
    # The MLM baseline masks as BERT does (15%: 80/10/10), the setting of the numbers in README and docs/text.md;
    # text-tiny itself now masks spans (masking.* overrides change both).
    bert = ["masking.token_prob=0.15", "masking.token_span=1", "masking.token_random=0.1", "masking.token_keep=0.1"]
    cfg = build_config(args.recipe, [*bert, *args.overrides, "out=runs/text-baselines",
                                     *([f"train.max_steps={args.mlm_steps}"] if args.mlm_steps else [])])
    vocab, dim = cfg.text.vocab_size, cfg.model.dim
    (train_docs, train_y), (test_docs, test_y) = token_lists(cfg, "train"), token_lists(cfg, "test")
    results = {}

    def score(name: str, train_x: np.ndarray, test_x: np.ndarray) -> None:
        results[name] = {"linear": linear_probe(train_x, train_y, test_x, test_y),
                         "knn": knn_probe(train_x, train_y, test_x, test_y)}
        print(f"{name:<40}{results[name]['linear']:>8.3f}{results[name]['knn']:>8.3f}", flush=True)

    print(f"{'features (' + cfg.data.path + ')':<40}{'linear':>8}{'kNN':>8}")
    tfidf = tfidf_accuracy(cfg)
    if tfidf is not None:
        results["tf-idf + logistic regression"] = {"linear": tfidf}
        print(f"{'TF-IDF + logistic regression':<40}{tfidf:>8.3f}", flush=True)
    bow_train, bow_test = bag_of_words(train_docs, vocab), bag_of_words(test_docs, vocab)
    score(f"bag of words ({vocab} tokens)", bow_train, bow_test)
    projection = np.random.default_rng(0).normal(size=(vocab, dim))
    score(f"bag of words, random projection to {dim}", bow_train @ projection, bow_test @ projection)
    folder, _, _ = text_source(cfg)
    shards = TokenShards(folder)
    vectors = ppmi_vectors(shards.tokens(0, int(shards.starts[-1])), vocab, dim)
    score(f"PPMI-SVD word vectors ({dim}), mean", np.stack([vectors[d].mean(0) for d in train_docs]),
          np.stack([vectors[d].mean(0) for d in test_docs]))
    torch.manual_seed(cfg.train.seed)
    results["random encoder"] = probe_encoder(Data2VecEncoder(cfg).eval(), cfg)
    print(f"{'random-weight encoder':<40}{results['random encoder']['linear']:>8.3f}"
          f"{results['random encoder']['knn']:>8.3f}", flush=True)
    if args.mlm_steps:
        start = time.perf_counter()
        encoder = mlm_encoder(cfg, args.mlm_steps)
        if args.save:  # the encoder as a run's student, so fine-tuning loads it as it loads data2vec's
            weights = {f"student.{k}": v for k, v in encoder.state_dict().items()}
            saved = save_checkpoint(args.save, args.mlm_steps, weights, {"step": args.mlm_steps}, cfg, keep_last=1)
            print(f"MLM encoder saved to {saved}", flush=True)
        results[f"MLM {args.mlm_steps} steps"] = probe_encoder(encoder, cfg)
        r = results[f"MLM {args.mlm_steps} steps"]
        print(f"{f'MLM text-tiny, {args.mlm_steps} steps':<40}{r['linear']:>8.3f}{r['knn']:>8.3f}"
              f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

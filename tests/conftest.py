"""Test-wide settings (the OpenMP one must precede importing torch) and shared fixtures."""

import os

import pytest
import torch

# Sleeping OpenMP threads: on a shared 2-core runner spinning ones made steps 3-10x slower (see data2vec/__init__).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped on a machine without a GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run: bash benchmarks/gpu_check.sh)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine waiting for one costs seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def binarised_corpus(folder, text: str, vocab_size: int):
    """`folder/c.txt` holding `text`, a BPE tokenizer trained on it in `folder/tok` and its token shards in
    `folder/bin`: the smallest real text pipeline, shared by the text tests. Returns `folder`."""
    from data2vec.data.text import binarize, train_tokenizer

    (folder / "c.txt").write_text(text)
    train_tokenizer([folder / "c.txt"], vocab_size, folder / "tok")
    binarize([folder / "c.txt"], folder / "tok", folder / "bin", progress=False)
    return folder


def assert_student_round_trip(original, converted):
    """The student weights of two checkpoints are the same tensors, key for key; returns both configs."""
    from data2vec.train.checkpoint import load_checkpoint

    (w1, _, c1), (w2, _, c2) = load_checkpoint(original, with_state=False), load_checkpoint(converted, with_state=False)
    student = {k: v for k, v in w1.items() if k.startswith("student.")}
    assert student.keys() == {k for k in w2 if k.startswith("student.")}
    assert all(torch.equal(v, w2[k]) for k, v in student.items())
    return c1, c2


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """HF initialises norms, biases, position biases and CLS tokens to constants; random values test the
    weight layout of a conversion."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def save_hf(model, folder, fmt: str) -> None:
    """Save an HF model as safetensors, or as the `.bin` that older folders hold (transformers 5 writes only
    safetensors)."""
    if fmt == "safetensors":
        model.save_pretrained(folder)
    else:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")

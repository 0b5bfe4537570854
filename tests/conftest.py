"""Test-wide settings (the OpenMP one must precede importing torch) and shared fixtures."""

import os

import pytest

# Sleeping OpenMP threads: on a shared 2-core runner spinning ones made steps 3-10x slower (see data2vec/__init__).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine waiting for one costs seconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

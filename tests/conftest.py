"""Test-wide settings that must precede importing torch."""

import os

# Sleeping OpenMP threads: on a shared 2-core runner spinning ones made steps 3-10x slower (see data2vec/__init__).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

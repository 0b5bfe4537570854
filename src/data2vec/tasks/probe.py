"""`data2vec probe CHECKPOINT`: linear and kNN probes of a checkpoint's frozen features.

The probes themselves live in :mod:`data2vec.evaluation.probe` (shared by every modality and by the demo);
this task loads the checkpoint, runs them and writes ``probe.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from data2vec.evaluation.probe import extract_features, knn_probe, linear_probe, probe_encoder

__all__ = ["probe", "probe_encoder", "extract_features", "linear_probe", "knn_probe"]


def probe(checkpoint: str | Path, data: str | None = None, out: str | Path | None = None) -> dict[str, float]:
    """Probe a checkpoint; writes `probe.json` beside it (or into `out`) and returns the accuracies."""
    from data2vec.api import load
    from data2vec.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    encoder = load(path)
    result = probe_encoder(encoder, encoder.cfg, data, option="--data PATH")  # the command's only way to give it
    target = Path(out) if out else path
    target.mkdir(parents=True, exist_ok=True)
    (target / "probe.json").write_text(json.dumps(result, indent=1))
    return result

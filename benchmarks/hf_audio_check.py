"""Base-size check of the speech Hugging Face conversion (too slow for the test suite: about a minute on 2 CPU
cores). Builds `transformers`' `Data2VecAudioForCTC` with the sizes of `facebook/data2vec-audio-base-960h`
(12 x 768, 7-conv feature encoder, 5 positional conv layers, 32 characters) and HF's random initialisation,
converts it with `from_hf`, and compares every hidden state (all frames, padded ones included) and the CTC
logits on a padded batch of 3 s and 1.9 s; then exports it back with `to_hf` and compares HF's logits.

    python benchmarks/hf_audio_check.py [--out /tmp/hf-audio-check]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    import transformers

    import data2vec
    from data2vec.interop.hf import from_hf, to_hf
    from data2vec.nn.heads import load_head

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="hf-audio-check-"))
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    torch.manual_seed(0)
    hf = transformers.Data2VecAudioForCTC(transformers.Data2VecAudioConfig(vocab_size=32)).eval()
    hf.save_pretrained(root / "hf")
    from_hf(root / "hf", root / "run")
    ours, head = data2vec.load(root / "run"), load_head(root / "run")

    g = torch.Generator().manual_seed(1)
    padding = torch.zeros(2, 48000, dtype=torch.bool)
    padding[1, 30000:] = True
    waves = (torch.randn(2, 48000, generator=g) * 0.1).masked_fill(padding, 0.0)
    with torch.no_grad():
        ref = hf(waves, attention_mask=(~padding).long(), output_hidden_states=True)
        out = ours(waves, padding_mask=padding)
        per_layer = [(a - b).abs().max().item() for a, b in zip(out.hidden_states, ref.hidden_states, strict=True)]
        logits = head(out.last_hidden_state, None)
        to_hf(root / "run", root / "back")
        back = transformers.AutoModelForCTC.from_pretrained(root / "back").eval()
        again = back(waves, attention_mask=(~padding).long()).logits
    result = {
        "frames": (~out.padding_mask).sum(1).tolist(),
        "hidden_max_abs_diff": max(per_layer), "per_layer": per_layer,
        "hidden_max_abs_value": max(h.abs().max().item() for h in ref.hidden_states),
        "logits_max_abs_diff": (logits - ref.logits).abs().max().item(),
        "reexported_logits_max_abs_diff": (again - ref.logits).abs().max().item(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=1))
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Meta's fairseq data2vec checkpoints -> data2vec run folders (`data2vec convert --from-fairseq`).

:mod:`.reader` reads a fairseq ``.pt`` file as plain data without fairseq, hydra or omegaconf and without running
code from the file; :func:`from_fairseq` tells the kind from the file's config and hands it to its converter
(:mod:`.v1`: data2vec speech, its CTC fine-tunes, text; :mod:`.v2`: data2vec 2.0), which writes an ordinary run
folder (``config.yaml``, a step-0 checkpoint, ``fairseq.json`` with the file's config). :mod:`.weights` is the
name mapping, :mod:`.common` what the converters share.
"""

from __future__ import annotations

from pathlib import Path

from data2vec.errors import Data2VecError


def from_fairseq(checkpoint: str | Path, out: str | Path, dictionary: str | Path | None = None) -> Path:
    """Convert fairseq checkpoint `checkpoint` into run folder `out`; returns the checkpoint written.

    `dictionary` is what the file does not hold: for text models the folder with fairseq's ``dict.txt`` and
    GPT-2's ``encoder.json`` / ``vocab.bpe`` (the tokenizer); for CTC fine-tunes the letter dictionary
    ``dict.ltr.txt`` (LibriSpeech's when left out and the head has its 32 outputs); for an image classifier the
    class names (a file, one per line)."""
    from data2vec.interop.fairseq import v1, v2
    from data2vec.interop.fairseq.reader import read_checkpoint
    from data2vec.interop.hf.common import refuse_existing_run

    path, out = Path(checkpoint), Path(out)
    dictionary = Path(dictionary) if dictionary is not None else None
    if dictionary is not None and not dictionary.exists():
        raise Data2VecError(f"--dict '{dictionary}' does not exist; give fairseq's dict.txt / dict.ltr.txt or the "
                            "folder holding it")
    refuse_existing_run(out)
    ckpt = read_checkpoint(path)
    cfg = ckpt.get("cfg")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise Data2VecError(f"'{path}' has no hydra config ('cfg'): it predates fairseq 0.10 (an 'args' "
                            "Namespace only), which data2vec checkpoints never do; re-save it with a current fairseq")
    kind = v1.kind(cfg)
    if kind == "audio":
        return v1.convert_audio(ckpt, out)
    if kind == "audio_ctc":
        return v1.convert_audio_ctc(ckpt, out, dictionary)
    if kind == "text":
        return v1.convert_text(ckpt, out, dictionary)
    if v2.matches(cfg):
        return v2.convert(ckpt, out, dictionary)
    name = cfg["model"].get("_name")
    raise Data2VecError(f"'{path}' holds a fairseq '{name}' model; data2vec converts data2vec_audio (and its "
                        "wav2vec_ctc fine-tunes), data2vec_text and data2vec 2.0 (data2vec_multi) checkpoints")


__all__ = ["from_fairseq"]

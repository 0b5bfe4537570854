"""The built-in spoken-word set (data/builtin_audio.py): reproducible, split by voice, readable as a folder."""

import numpy as np
import pytest
import soundfile as sf

from data2vec.data.audio import resolve_audio_files
from data2vec.data.builtin_audio import SpokenWordsSpec, builtin_audio_folder, generate_spoken_words
from data2vec.errors import Data2VecError


def test_generation_is_reproducible_split_by_voice_and_labelled(tmp_path):
    spec = SpokenWordsSpec(words=("one", "two"), max_voices=4, per_voice={"train": 1, "test": 2})
    meta = generate_spoken_words(tmp_path / "a", spec)
    again = generate_spoken_words(tmp_path / "b", spec)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.flac"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.flac"))
    for rel in files:  # eSpeak keeps state between utterances: only a fresh process per run makes this hold
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert meta == again and meta["files"] == {"train": 3 * 2 * 1, "test": 1 * 2 * 2}
    assert not set(meta["voices"]["train"]) & set(meta["voices"]["test"])  # test speakers are unseen
    wave, rate = sf.read(tmp_path / "a" / files[0])
    assert rate == 16000 and wave.ndim == 1 and 0.3 < len(wave) / rate < 2.0 and np.abs(wave).max() > 0.05
    test = resolve_audio_files(str(tmp_path / "a"), "test", 400)
    assert test.classes == ["one", "two"] and sorted(test.labels) == [0, 0, 1, 1]


def test_unknown_builtin_name_is_a_one_line_error():
    with pytest.raises(Data2VecError, match="unknown built-in audio set 'builtin:digits'.*builtin:spoken-words"):
        builtin_audio_folder("digits")

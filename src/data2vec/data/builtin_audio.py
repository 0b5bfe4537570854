"""Built-in speech with no download: spoken words synthesised with eSpeak NG, generated once into the cache.

`builtin:spoken-words` is the ten English digit words and ten command words ("yes", "no", "up", "down",
"left", "right", "on", "off", "stop", "go"), spoken by eSpeak NG (from the `espeakng-loader` wheel, which
ships ``libespeak-ng.so`` and its voice data) in all of its voice variants (104 in espeak-ng 1.52) with English
accents, speaking rates, pitches and pitch ranges drawn at random, then resampled from 22.05 to 16 kHz,
padded with 50-250 ms of silence each side, scaled to a random peak level and mixed with white noise at a random
signal-to-noise ratio (15-40 dB). A quarter of the voice variants, chosen by the seed, are test-only, so a
probe is scored on speakers it never heard. Everything follows from the seed: the same files every time.

Layout in ``$DATA2VEC_CACHE/audio/spoken-words`` (default ``~/.cache/data2vec``): ``train/WORD/*.flac`` and
``test/WORD/*.flac`` (16-bit FLAC, 16 kHz mono), and ``meta.json`` (counts, voices of each split, seed).

eSpeak NG keeps state between utterances (pitch flutter, filter memory), so an utterance depends on what was
spoken before it in the process. Generation therefore runs in a fresh child process (this file run as a
script, which imports neither torch nor the rest of data2vec), in a fixed order, with eSpeak's random seed
reset before each utterance: that makes the set reproducible.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-us-nyc")
BUILTIN_AUDIO = ("spoken-words",)
FORMAT_VERSION = 1
ESPEAK_RATE = 22050
AUDIO_OUTPUT_SYNCHRONOUS, POS_CHARACTER, CHARS_UTF8 = 2, 1, 1
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4


@dataclass
class SpokenWordsSpec:
    """What to generate; the defaults are `builtin:spoken-words`. Smaller specs are for tests."""

    words: tuple[str, ...] = DIGITS + COMMANDS
    seed: int = 0
    test_share: float = 0.25  # share of voice variants held out for the test split
    per_voice: dict[str, int] = field(default_factory=lambda: {"train": 2, "test": 2})  # takes per word and voice
    max_voices: int = 0  # use only the first N voice variants (0: all); for quick tests
    sample_rate: int = 16000


def _espeak():
    """The eSpeak NG library from the `espeakng-loader` wheel, initialised for synchronous synthesis."""
    import ctypes

    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"eSpeak NG from espeakng-loader speaks at {rate} Hz, expected {ESPEAK_RATE}")
    chunks: list[np.ndarray] = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    def collect(wav, n, events):  # called with each block of synthesised samples
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    lib.espeak_SetSynthCallback(collect)
    lib._keep = collect  # the callback must outlive this function
    voices = sorted(os.listdir(Path(espeakng_loader.get_data_path()) / "voices" / "!v"))

    def speak(word: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int) -> np.ndarray:
        """int16 samples at 22.05 kHz."""
        chunks.clear()
        lib.espeak_SetVoiceByName(voice.encode())
        for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range)):
            lib.espeak_SetParameter(param, value, 0)
        lib.espeak_ng_SetRandSeed(seed)
        text = word.encode()
        lib.espeak_Synth(text, len(text) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    return speak, voices


def split_voices(voices: list[str], spec: SpokenWordsSpec) -> dict[str, list[str]]:
    """Voice variants of each split: a seeded quarter (at least one) is test-only."""
    rng = np.random.default_rng([spec.seed, 1])
    order = [voices[i] for i in rng.permutation(len(voices))]
    n_test = max(1, round(spec.test_share * len(voices)))
    return {"train": sorted(order[n_test:]), "test": sorted(order[:n_test])}


def _augment(wave: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Silence each side, random peak level, white noise at a random SNR: float32 in [-1, 1]."""
    lead, trail = (rng.uniform(0.05, 0.25, size=2) * sample_rate).astype(int)
    wave = np.concatenate([np.zeros(lead), wave, np.zeros(trail)])
    wave = wave / max(np.abs(wave).max(), 1e-6) * rng.uniform(0.1, 0.9)
    signal_power = np.mean(wave ** 2) * len(wave) / max(np.count_nonzero(wave), 1)  # power while speaking
    snr_db = rng.uniform(15.0, 40.0)
    wave = wave + rng.standard_normal(len(wave)) * math.sqrt(signal_power / 10 ** (snr_db / 10))
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _generate(folder: str, spec: SpokenWordsSpec) -> dict:
    """Write the set into `folder` (run in a fresh process: see the module docstring)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    speak, voices = _espeak()
    if spec.max_voices:
        voices = voices[: spec.max_voices]
    splits = split_voices(voices, spec)
    g = math.gcd(ESPEAK_RATE, spec.sample_rate)
    counts = {}
    for split, names in splits.items():
        n = 0
        for v, voice in enumerate(names):
            for w, word in enumerate(spec.words):
                (Path(folder) / split / word).mkdir(parents=True, exist_ok=True)
                for take in range(spec.per_voice[split]):
                    rng = np.random.default_rng([spec.seed, 2, int(split == "test"), v, w, take])
                    accent = ACCENTS[rng.integers(len(ACCENTS))]
                    rate, pitch, pitch_range = rng.integers(110, 241), rng.integers(15, 86), rng.integers(20, 101)
                    raw = speak(word, f"{accent}+{voice}", int(rate), int(pitch), int(pitch_range),
                                int(rng.integers(2**31)))
                    if raw.size == 0:
                        continue
                    wave = resample_poly(raw.astype(np.float32) / 32768.0, spec.sample_rate // g, ESPEAK_RATE // g)
                    wave = _augment(wave, rng, spec.sample_rate)
                    name = f"{_slug(voice)}_{accent}_{take}.flac"
                    sf.write(str(Path(folder) / split / word / name), wave, spec.sample_rate, subtype="PCM_16")
                    n += 1
        counts[split] = n
    meta = {"format_version": FORMAT_VERSION, "spec": asdict(spec), "files": counts, "voices": splits,
            "source": "eSpeak NG (GPL-3.0-or-later) via the espeakng-loader package"}
    (Path(folder) / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def generate_spoken_words(folder: str | Path, spec: SpokenWordsSpec | None = None) -> dict:
    """Generate the set into `folder` (replaced if present) in a fresh process; returns its ``meta.json``."""
    # not at the top: see builtin_audio_folder
    from data2vec.errors import Data2VecError

    if importlib.util.find_spec("espeakng_loader") is None:
        raise Data2VecError("builtin:spoken-words needs eSpeak NG from the espeakng-loader package; "
                            "pip install espeakng-loader (a dependency of data2vec)")
    spec = spec or SpokenWordsSpec()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        run = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
        done = subprocess.run([sys.executable, "-c", run, __file__, str(tmp), json.dumps(asdict(spec))],
                              capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise Data2VecError(f"generating the spoken-word set with eSpeak NG failed ({last}); reinstall "
                                "espeakng-loader")
        meta = json.loads((tmp / "meta.json").read_text())
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def builtin_audio_folder(name: str) -> Path:
    """The cache folder of a built-in speech set, generated on first use (a few seconds)."""
    # imported here, not at the top: this file also runs as the generating child process, which must import
    # neither torch nor the rest of data2vec (see the module docstring)
    from data2vec.data.cache import cache_dir
    from data2vec.errors import Data2VecError

    if name not in BUILTIN_AUDIO:
        raise Data2VecError(f"unknown built-in audio set 'builtin:{name}'; choose one of "
                            f"{', '.join('builtin:' + n for n in BUILTIN_AUDIO)}")
    folder = cache_dir() / "audio" / name
    meta = folder / "meta.json"
    if not meta.is_file() or json.loads(meta.read_text()).get("format_version") != FORMAT_VERSION:
        logging.getLogger("data2vec").info("generating builtin:%s with eSpeak NG into %s (once)", name, folder)
        generate_spoken_words(folder)
    return folder


if __name__ == "__main__":  # the child process of generate_spoken_words: argv = [-c, THIS_FILE, FOLDER, SPEC]
    _spec = json.loads(sys.argv[3])
    _generate(sys.argv[2], SpokenWordsSpec(**{**_spec, "words": tuple(_spec["words"])}))

"""Speech data (data/audio.py): folders, manifests, bad files, resampling, crops, masks, length buckets."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from data2vec.config import build_config
from data2vec.data import audio as audio_data
from data2vec.data.audio import (AudioCollate, AudioDataset, load_audio, read_manifest, resampled_length,
                                 resolve_audio_files, scan_folder)
from data2vec.data.build import eval_dataset, eval_loader, pretrain_loader
from data2vec.data.sampler import LengthBucketSampler
from data2vec.errors import Data2VecError
from data2vec.frames import conv_output_length
from data2vec.masking import span_mask

KERNELS, STRIDES = [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]


def tone(n: int, freq: float = 440.0, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


@pytest.fixture()
def folder(tmp_path):
    """Two classes of good files plus a corrupt, an empty and a too-short one."""
    for label, freq in (("high", 880.0), ("low", 220.0)):
        (tmp_path / label).mkdir()
        for i, n in enumerate((4000, 6000, 9000)):
            sf.write(tmp_path / label / f"{i}.wav", tone(n, freq), 16000)
    sf.write(tmp_path / "low" / "stereo.flac", np.stack([tone(5000), tone(5000, 330)], 1), 16000)
    (tmp_path / "high" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00not a wave file at all")
    sf.write(tmp_path / "high" / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(tmp_path / "low" / "short.ogg", tone(300), 16000)
    return tmp_path


def cfg_for(path, *extra):
    return build_config("audio-tiny", ["audio.conv_dim=[8,8,8,8,8,8,8]", "model.dim=32", "model.heads=4",
                                       "model.depth=2", "objective.top_k=2", "audio.pos_conv_groups=4",
                                       f"data.path={path}", "data.num_workers=0", "train.batch_size=4", *extra])


def test_folder_scan_skips_and_counts_bad_files_and_names_them(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        files = scan_folder(folder, min_samples=400)
    assert len(files) == 7
    assert files.classes == ["high", "low"] and sorted(set(files.labels)) == [0, 1]
    reasons = {k.split(" (")[0]: [p.rsplit("/", 1)[-1] for p in v] for k, v in files.skipped.items()}
    assert reasons == {"cannot be decoded": ["corrupt.wav"], "is empty": ["empty.wav"],
                       "is shorter than 400 samples": ["short.ogg"]}
    assert "skipped 3 of 10 audio files" in caplog.text
    for name in ("corrupt.wav", "empty.wav", "short.ogg"):
        assert name in caplog.text


def test_strict_mode_fails_on_the_first_bad_file(folder):
    with pytest.raises(Data2VecError, match=r"corrupt\.wav.*data\.strict=false"):
        scan_folder(folder, min_samples=400, strict=True)


def test_missing_path_and_empty_folder_fail_with_one_line(tmp_path):
    for path, pattern in ((tmp_path / "nope", "does not exist"), (tmp_path, "no audio files")):
        with pytest.raises(Data2VecError, match=pattern) as err:
            resolve_audio_files(str(path), "train", 400)
        assert "\n" not in str(err.value)


def test_manifest_reading_root_lengths_labels_and_skips(folder, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("m") / "train.tsv"
    manifest.write_text(f"{folder}\nhigh/0.wav\t4000\tup\nlow/1.wav\t6000\tdown\nlow/short.ogg\t300\tdown\n")
    files = read_manifest(manifest, min_samples=400)
    assert [p.name for p in files.paths] == ["0.wav", "1.wav"] and files.lengths == [4000, 6000]
    assert files.classes == ["down", "up"] and files.labels == [1, 0]
    assert list(files.skipped) == ["is shorter than 400 samples"]
    with pytest.raises(Data2VecError, match="shorter than 400"):
        read_manifest(manifest, min_samples=400, strict=True)
    manifest.write_text("/no/such/root\nhigh/0.wav\t4000\n")
    with pytest.raises(Data2VecError, match="first line '/no/such/root' is not a folder"):
        read_manifest(manifest, min_samples=400)
    manifest.write_text(f"{folder}\nhigh/0.wav 4000\n")
    with pytest.raises(Data2VecError, match=r"train\.tsv:2: expected relative/path<TAB>num_samples"):
        read_manifest(manifest, min_samples=400)


def test_manifest_folder_gives_splits(folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    (root / "train.tsv").write_text(f"{folder}\nhigh/0.wav\t4000\nhigh/1.wav\t6000\n")
    (root / "valid.tsv").write_text(f"{folder}\nlow/0.wav\t4000\n")
    assert [p.name for p in resolve_audio_files(str(root), "train", 400).paths] == ["0.wav", "1.wav"]
    assert [p.parent.name for p in resolve_audio_files(str(root), "test", 400).paths] == ["low"]


def test_path_errors_name_the_option_the_user_gave(folder, tmp_path):
    # the probe command takes --data PATH, not data.eval_path=...: its fixes must say so
    with pytest.raises(Data2VecError, match="does not exist; set --data PATH to a folder"):
        resolve_audio_files(str(tmp_path / "missing"), "test", 400, option="--data PATH")
    (tmp_path / "train.tsv").write_text(f"{folder}\nhigh/0.wav\t4000\n")
    with pytest.raises(Data2VecError, match="set --data PATH to a labelled manifest"):
        resolve_audio_files(str(tmp_path), "test", 400, option="--data PATH")
    with pytest.raises(Data2VecError, match=r"set data\.eval_path=\.\.\. to a labelled manifest"):
        resolve_audio_files(str(tmp_path), "test", 400)


def test_loading_mixes_down_and_resamples_with_one_notice(tmp_path, caplog):
    sf.write(tmp_path / "a.wav", np.stack([tone(22050), -tone(22050)], 1), 22050)  # channels cancel
    sf.write(tmp_path / "b.wav", tone(11025, rate=22050), 22050)
    audio_data._NOTIFIED_RATES.discard(22050)
    with caplog.at_level(logging.INFO, logger="data2vec"):
        a = load_audio(tmp_path / "a.wav")
        b = load_audio(tmp_path / "b.wav")
    assert caplog.text.count("resampling 22050 Hz audio to 16000 Hz") == 1
    assert a.dtype == np.float32 and len(a) == 16000 == resampled_length(22050, 22050, 16000)
    assert np.abs(a).max() < 1e-4 and len(b) == 8000  # 16-bit rounding
    assert scan_folder(tmp_path, 400).lengths == [16000, 8000]  # header lengths are given at 16 kHz


def test_items_are_normalised_cropped_and_masked_from_their_own_generator(folder):
    cfg = cfg_for(folder, "audio.max_sample_size=5000", "masking.span_length=2")
    dataset = AudioDataset(scan_folder(folder, 400), cfg, train=True)
    i = dataset.files.lengths.index(9000)
    item = dataset[(i, 0)]
    assert item["audio"].numel() == 5000 and item["mask"].numel() == conv_output_length(5000, KERNELS, STRIDES)
    assert torch.equal(item["audio"], dataset[(i, 0)]["audio"]) and torch.equal(item["mask"], dataset[(i, 0)]["mask"])
    assert any(not torch.equal(item["audio"], dataset[(i, e)]["audio"]) for e in range(1, 4))  # new crop per epoch
    whole = AudioDataset(scan_folder(folder, 400), cfg_for(folder, "audio.max_sample_size=100000"), train=False)[i]
    assert abs(float(whole["audio"].mean())) < 1e-4 and abs(float(whole["audio"].std()) - 1) < 1e-3
    assert "mask" not in whole


def test_collated_masks_never_cover_padding(folder):
    cfg = cfg_for(folder, "masking.span_prob=0.9", "masking.span_length=2")
    dataset = AudioDataset(scan_folder(folder, 400), cfg, train=True)
    batch = dataset.collate([dataset[(i, 0)] for i in range(len(dataset))])
    from data2vec.nn.audio import AudioFrontend

    frontend = AudioFrontend(cfg.audio, cfg.model)
    frame_padding = frontend.frame_padding(batch["padding_mask"], batch["mask"].shape[1])
    assert batch["mask"].shape[1] == conv_output_length(batch["inputs"].shape[1], KERNELS, STRIDES)
    assert frame_padding.any() and not (batch["mask"] & frame_padding).any()
    assert (batch["mask"].sum(1) > 0).all()


def test_collated_v1_masks_share_the_smallest_count_unless_same_count_is_off(folder):
    """fairseq's require_same_masks: every clip of a batch keeps the batch's smallest masked count, by dropping
    masked frames of its own spans (in the order the item drew); masking.same_count=false keeps the spans."""
    free = AudioDataset(scan_folder(folder, 400), cfg_for(folder, "masking.same_count=false"), train=True)
    equal = AudioDataset(scan_folder(folder, 400), cfg_for(folder, "masking.same_count=true"), train=True)
    items = [free[(i, 0)] for i in range(len(free))]
    assert "mask_order" not in items[0]
    spans = free.collate(items)["mask"]
    batch = equal.collate([equal[(i, 0)] for i in range(len(equal))])["mask"]
    assert len(set(spans.sum(1).tolist())) > 1  # clips of different lengths get different counts
    assert (batch.sum(1) == spans.sum(1).min()).all() and not (batch & ~spans).any()


def test_same_length_batch_has_no_padding_mask():
    batch = AudioCollate(KERNELS, STRIDES)([{"audio": torch.randn(800), "index": i, "label": -1} for i in range(2)])
    assert batch["padding_mask"] is None and batch["inputs"].shape == (2, 800)


def test_span_mask_fraction_is_the_papers_on_long_inputs_and_fairseqs_in_batches():
    mask = span_mask(64, 2000, 0.65, 10, generator=torch.Generator().manual_seed(0), same_count=False)
    assert 0.47 < mask.float().mean().item() < 0.51  # about 49% of frames for p=0.65, span 10
    mask = span_mask(8, 500, 0.65, 10, generator=torch.Generator().manual_seed(0))
    assert 0.43 < mask.float().mean().item() < 0.47  # fairseq's batches of 8 keep the smallest count: ~45%


def test_length_buckets_respect_the_budget_cover_the_epoch_and_resume():
    lengths = torch.randint(400, 16000, (203,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthBucketSampler(lengths, batch_size=16, max_samples=60000, seed=3, max_steps=40)
    steps = list(sampler)
    per_epoch = sampler.steps_per_epoch
    for batch in steps:
        assert len(batch) <= 16 and len(batch) * max(lengths[i] for i, _ in batch) <= 60000
    assert sorted(i for batch in steps[:per_epoch] for i, _ in batch) == list(range(203))
    assert len(sampler.plan(1)) == per_epoch and sampler.plan(1) != sampler.plan(0)
    resumed = LengthBucketSampler(lengths, batch_size=16, max_samples=60000, seed=3, start_step=17, max_steps=40)
    assert list(resumed) == steps[17:]
    ranks = [LengthBucketSampler(lengths, 16, 60000, 3, max_steps=40, rank=r, world_size=2).batch_at(5)
             for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(steps[5])


def test_pretrain_loader_counts_files_that_fail_at_load_time(folder, tmp_path):
    bad = folder / "low" / "truncated.flac"
    sf.write(bad, tone(8000), 16000)
    data = bad.read_bytes()
    bad.write_bytes(data[:200] + bytes(len(data) - 200))  # a valid header, then zeros instead of frames
    cfg = cfg_for(folder, "train.batch_size=8", "train.max_steps=1")
    batch = next(iter(pretrain_loader(cfg)))
    assert batch["skipped"] == 1 and batch["inputs"].shape[0] == 7  # 8 files pass the scan: one epoch a step
    for name in ("high/corrupt.wav", "high/empty.wav", "low/short.ogg"):  # strict stops at these in the scan
        (folder / name).unlink()
    with pytest.raises(Data2VecError, match="truncated.flac"):
        list(pretrain_loader(cfg_for(folder, "train.batch_size=8", "train.max_steps=2", "data.strict=true",
                                     "audio.min_sample_size=0")))


def test_eval_loader_keeps_labels_aligned_in_length_buckets(folder):
    dataset = eval_dataset(cfg_for(folder), "train")
    dataset.eval_batch_samples = 12000
    seen = []
    for batch in eval_loader(dataset, batch_size=3):
        assert batch["inputs"].shape[0] * batch["inputs"].shape[1] <= 12000
        seen += list(zip(batch["index"].tolist(), batch["label"].tolist()))
    assert sorted(seen) == [(i, dataset.files.labels[i]) for i in range(len(dataset))]


def test_report_caption_says_how_each_version_masks(folder, tmp_path):
    from data2vec.tasks.report import audio_examples

    v1 = audio_examples(cfg_for(folder, "masking.same_count=true"), tmp_path / "v1.png", count=2)
    assert "each frame a start with probability 0.65" in v1 and "smallest masked count" in v1
    assert "smallest" not in audio_examples(cfg_for(folder, "masking.same_count=false"), tmp_path / "f.png", count=2)
    v2 = audio_examples(build_config("audio-tiny-v2", [f"data.path={folder}", "data.num_workers=0"]),
                        tmp_path / "v2.png", count=2)
    assert "centred on random frames, 0.5 of the frames exactly" in v2 and (tmp_path / "v2.png").is_file()


def test_crop_to_shortest_crops_each_batch_to_its_shortest_clip_without_padding(folder):
    cfg = cfg_for(folder, "data.crop_to_shortest=true", "train.batch_size=3", "train.max_steps=4",
                  "masking.span_length=2")
    loader = pretrain_loader(cfg)
    dataset = loader.dataset
    sampler = loader.batch_sampler
    for step, batch in enumerate(loader):
        keys = sampler.batch_at(step)
        shortest = min(dataset.files.lengths[i] for i, _, _ in keys)
        assert all(crop == shortest for _, _, crop in keys)
        assert batch["padding_mask"] is None and batch["inputs"].shape[1] == shortest
        assert batch["mask"].shape[-1] == conv_output_length(shortest, KERNELS, STRIDES)
        for row, (i, _, _) in zip(batch["inputs"], keys):  # a window of the normalised clip, as fairseq crops
            whole = audio_data.normalize_wave(torch.from_numpy(load_audio(dataset.files.paths[i])))
            windows = whole.unfold(0, shortest, 1)
            assert (windows - row).abs().amax(1).min() < 1e-6


def test_crop_to_shortest_is_the_global_batchs_whatever_the_process_count():
    lengths = [100, 220, 310, 450, 500, 640, 700, 990]
    one = LengthBucketSampler(lengths, 4, 0, seed=3, crop_to_shortest=True)
    for step in range(4):
        got = [one.batch_at(step)] + [LengthBucketSampler(lengths, 4, 0, seed=3, rank=r, world_size=2,
                                                          crop_to_shortest=True).batch_at(step) for r in (0, 1)]
        crops = {crop for part in got for _, _, crop in part}
        assert crops == {min(lengths[i] for i, _, _ in got[0])}
    assert all(len(key) == 2 for key in LengthBucketSampler(lengths, 4, 0, seed=3).batch_at(0))  # off: as before

import pytest
import torch

from data2vec.config import build_config
from data2vec.errors import Data2VecError
from data2vec.train.checkpoint import (is_complete, latest_checkpoint, list_checkpoints, load_checkpoint,
                                       save_checkpoint)


def _save(out, step, value=0.0, keep=2):
    cfg = build_config("image-tiny")
    return save_checkpoint(out, step, {"w": torch.full((3,), value)}, {"step": step}, cfg, keep_last=keep)


def test_round_trip_and_keep_last(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, float(step))
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000002", "step_00000003"]
    weights, state, cfg = load_checkpoint(tmp_path)
    assert state["step"] == 3 and weights["w"].tolist() == [3.0] * 3 and cfg.name == "image-tiny"


def test_damaged_checkpoint_falls_back_to_previous(tmp_path):
    _save(tmp_path, 1, 1.0)
    newest = _save(tmp_path, 2, 2.0)
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit, same size
    (newest / "model.safetensors").write_bytes(bytes(data))
    assert not is_complete(newest, verify_hashes=True)
    assert latest_checkpoint(tmp_path).name == "step_00000001"


def test_truncated_checkpoint_is_incomplete(tmp_path):
    path = _save(tmp_path, 1)
    data = (path / "state.pt").read_bytes()
    (path / "state.pt").write_bytes(data[: len(data) // 2])
    assert not is_complete(path)
    with pytest.raises(Data2VecError, match="damaged"):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(Data2VecError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(Data2VecError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)


def test_a_file_or_a_hugging_face_folder_given_as_checkpoint_is_named(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(Data2VecError, match="is a file; .*--from-fairseq"):
        load_checkpoint(tmp_path / "model.pt")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"x")
    with pytest.raises(Data2VecError, match="Hugging Face model folder.*--from-hf"):
        load_checkpoint(hf)


def test_leftover_temp_folder_is_ignored(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / "checkpoints" / ".step_00000002.tmp").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000001"

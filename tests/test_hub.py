"""Released models by name (interop/hub.py), offline: a local Hugging Face Hub cache stands in for the Hub, and
file:// URLs and a local HTTP server with Range support stand in for dl.fbaipublicfiles.com."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from pathlib import Path

import pytest
import torch
from conftest import assert_student_round_trip

import data2vec
from data2vec.cli import main
from data2vec.config import build_config
from data2vec.errors import Data2VecError
from data2vec.interop import hub
from data2vec.interop.hf import to_hf
from data2vec.model import Data2Vec
from data2vec.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty data2vec and Hub caches, the Hub offline (nothing here may reach the network)."""
    monkeypatch.setenv("DATA2VEC_CACHE", str(tmp_path / "d2v-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _tiny_checkpoint(folder: Path) -> Path:
    cfg = build_config("image-tiny", ["model.dim=32", "model.depth=2", "model.heads=4"])
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    return save_checkpoint(folder, 0, model.state_dict(), {"step": 0}, cfg)


def _in_hub_cache(caches: Path, repo: str) -> Path:
    """Our tiny model exported with `to_hf`, laid out as huggingface_hub's cache holds `repo` at COMMIT."""
    original = _tiny_checkpoint(caches / "ours")
    repo_dir = caches / "hf-cache" / f"models--{repo.replace('/', '--')}"
    to_hf(original, repo_dir / "snapshots" / COMMIT)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return original


def test_hf_id_opens_from_the_hub_cache_converted_once(caches, monkeypatch):
    original = _in_hub_cache(caches, "someone/tiny-d2v")
    run = hub.resolve("someone/tiny-d2v")
    assert run == caches / "d2v-cache" / "converted" / f"hf--someone--tiny-d2v--{COMMIT[:12]}"
    assert_student_round_trip(original, run)
    monkeypatch.setattr(hub, "_from_hf", lambda *a: pytest.fail("converted twice"))
    assert hub.resolve("someone/tiny-d2v") == run
    by_name, by_path = data2vec.load("someone/tiny-d2v").state_dict(), data2vec.load(original).state_dict()
    assert by_name.keys() == by_path.keys() and all(torch.equal(v, by_path[k]) for k, v in by_name.items())


def test_cli_embed_and_convert_take_a_hub_id(caches):
    from PIL import Image

    _in_hub_cache(caches, "someone/tiny-d2v")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(caches / "red.png")
    assert main(["embed", "someone/tiny-d2v", str(caches / "red.png"), "--out", str(caches / "e.npy")]) == 0
    assert (caches / "e.npy").is_file()
    assert main(["convert", "--from-hf", "someone/tiny-d2v", "--out", str(caches / "mine")]) == 0
    assert main(["convert", "--to-hf", "someone/tiny-d2v", "--out", str(caches / "back")]) == 0
    assert (caches / "back" / "config.json").is_file()


@pytest.mark.parametrize("command,task", [("probe", "data2vec.tasks.probe.probe"),
                                          ("evaluate", "data2vec.tasks.evaluate.evaluate")])
def test_cli_probe_and_evaluate_hand_the_task_the_converted_run(caches, monkeypatch, command, task):
    _in_hub_cache(caches, "someone/tiny-d2v")
    seen = []

    def fake(checkpoint, *args, **kwargs):
        seen.append(checkpoint)
        raise Data2VecError("stop here")

    monkeypatch.setattr(task, fake)
    assert main([command, "someone/tiny-d2v"]) == 2
    assert seen == [hub.resolve("someone/tiny-d2v")]


def test_finetune_checkpoint_name_is_resolved_before_the_task(caches, monkeypatch):
    _in_hub_cache(caches, "someone/tiny-d2v")
    seen = {}

    def fake_finetune(cfg, progress=True):
        seen["checkpoint"] = cfg.finetune.checkpoint
        raise Data2VecError("stop here")

    monkeypatch.setattr("data2vec.tasks.finetune.finetune", fake_finetune)
    assert main(["finetune", "image-tiny-ft", "checkpoint=someone/tiny-d2v"]) == 2
    assert seen["checkpoint"] == str(hub.resolve("someone/tiny-d2v"))
    seen.clear()
    # the fine-tuning code is imported by now (the CLI ran it); the public function must still be the
    # function, not a subpackage of the same name that the import bound over it
    import data2vec.tasks.finetune
    assert callable(data2vec.finetune)
    with pytest.raises(Data2VecError, match="stop here"):
        data2vec.finetune("image-tiny-ft", "finetune.checkpoint=someone/tiny-d2v")
    assert seen["checkpoint"] == str(hub.resolve("someone/tiny-d2v"))


def test_hf_id_not_cached_while_offline_says_what_to_do(caches):
    with pytest.raises(Data2VecError) as e:
        hub.resolve("someone/not-cached")
    assert "HF_HUB_OFFLINE" in str(e.value) and "hf download someone/not-cached" in str(e.value)
    assert "\n" not in str(e.value)


def test_names_that_are_paths_pass_through_and_unknown_names_are_one_line_errors(caches):
    (caches / "runs").mkdir()
    assert hub.resolve("runs/missing") == Path("runs/missing")  # `runs` is a local folder: a path, not a Hub id
    assert hub.resolve(caches / "nothing") == caches / "nothing"
    assert hub.resolve("./x") == Path("./x")
    with pytest.raises(Data2VecError, match=r"closest: data2vec2-image-base") as e:
        hub.resolve("data2vec2-image-bse")
    assert "\n" not in str(e.value)
    with pytest.raises(Data2VecError, match="only https, http and file URLs"):
        hub.resolve("ftp://example.org/x.pt")


def test_released_names_match_the_docs_table():
    """Every short name and Hugging Face id in hub.py is in docs/checkpoints.md, and back."""
    text = (ROOT / "docs" / "checkpoints.md").read_text()
    table = text.split("## Opening released models by name")[1].split("\n## ")[0]
    named = set(re.findall(r"`((?:data2vec[12]-[\w-]+)|(?:facebook/[\w.-]+))`", table))
    assert named == set(hub.RELEASED) | set(hub.HF_RELEASED)
    assert all(url.startswith("https://dl.fbaipublicfiles.com/fairseq/data2vec") for url in hub.RELEASED.values())


# --- downloads ---------------------------------------------------------------------------------------------

def _source(tmp_path: Path, size: int = 3 * hub.CHUNK + 123) -> tuple[Path, bytes]:
    data = torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy()
    path = tmp_path / "remote" / "model.pt"
    path.parent.mkdir()
    path.write_bytes(data.tobytes())
    return path, data.tobytes()


def test_file_url_downloads_once_with_its_sha256_recorded(caches):
    source, data = _source(caches)
    got = hub.download(source.as_uri())
    assert got.read_bytes() == data and got.is_relative_to(caches / "d2v-cache" / "downloads")
    assert got.with_name("model.pt.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert not got.with_name("model.pt.part").exists()
    source.write_bytes(b"changed")  # reused, not fetched again
    assert hub.download(source.as_uri()).read_bytes() == data


def test_interrupted_download_resumes_from_the_part_file(caches):
    source, data = _source(caches)
    target = hub._download_path(source.as_uri())
    target.parent.mkdir(parents=True)
    kept = b"X" * 1000  # not the source's bytes: a download that started over would not keep them
    target.with_name("model.pt.part").write_bytes(kept)
    got = hub.download(source.as_uri())
    assert got.read_bytes() == kept + data[len(kept):]
    assert got.with_name("model.pt.sha256").read_text().split()[0] == hashlib.sha256(got.read_bytes()).hexdigest()


def test_part_file_longer_than_the_source_starts_over(caches):
    source, data = _source(caches)
    target = hub._download_path(source.as_uri())
    target.parent.mkdir(parents=True)
    target.with_name("model.pt.part").write_bytes(b"Y" * (len(data) + 10))  # the file changed on the server
    assert hub.download(source.as_uri()).read_bytes() == data


def test_damaged_cached_file_is_detected(caches):
    source, _ = _source(caches)
    got = hub.download(source.as_uri())
    damaged = bytearray(got.read_bytes())
    damaged[5] ^= 1
    got.write_bytes(bytes(damaged))
    with pytest.raises(Data2VecError, match="does not match its recorded SHA-256.*delete it"):
        hub.download(source.as_uri())


class _RangeServer(http.server.BaseHTTPRequestHandler):
    """Serves `data` with HTTP Range; the first request's connection drops after `cut` bytes."""
    data, cut, ranges = b"", None, []

    def do_GET(self):  # noqa: N802 - http.server's name
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
        body = self.data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        self.end_headers()
        if type(self).cut is not None:
            body, type(self).cut = body[:type(self).cut], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_download_dropped_midway_resumes_with_a_range_request(caches):
    _, data = _source(caches)
    _RangeServer.data, _RangeServer.cut, _RangeServer.ranges = data, 1_500_000, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/fairseq/model.pt"
    try:
        with pytest.raises(Data2VecError, match="stopped after 1500000 of .* run again to resume") as e:
            hub.download(url)
        assert "\n" not in str(e.value)
        got = hub.download(url)
    finally:
        server.shutdown()
    assert _RangeServer.ranges == [None, "bytes=1500000-"]
    assert got.read_bytes() == data
    assert got.with_name("model.pt.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()


def test_url_unreachable_and_not_cached_says_where_to_put_it(caches):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeServer)
    port = server.server_port
    server.server_close()  # nothing listens there now
    with pytest.raises(Data2VecError, match="download it by hand to") as e:
        hub.download(f"http://127.0.0.1:{port}/fairseq/model.pt")
    assert str(hub._download_path(f"http://127.0.0.1:{port}/fairseq/model.pt")) in str(e.value)
    assert "\n" not in str(e.value)


# --- fairseq checkpoints by URL and name -------------------------------------------------------------------

FAIRSEQ = ROOT / "tests" / "fixtures" / "fairseq_ckpt"  # written by fairseq (benchmarks/fairseq_parity/)


def _same_encoders(a: Path, b: Path) -> None:
    for which in ("student", "teacher"):
        sa, sb = data2vec.load(a, which=which).state_dict(), data2vec.load(b, which=which).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in sa.items())


def test_fairseq_url_is_downloaded_and_converted_once(caches, monkeypatch):
    from data2vec.interop.fairseq import from_fairseq

    url = (FAIRSEQ / "v2_image.pt").as_uri()
    run = hub.resolve(url)
    sha = hashlib.sha256((FAIRSEQ / "v2_image.pt").read_bytes()).hexdigest()
    assert run == caches / "d2v-cache" / "converted" / f"v2_image-{sha[:12]}"
    from_fairseq(FAIRSEQ / "v2_image.pt", caches / "direct")
    _same_encoders(run, caches / "direct")
    monkeypatch.setattr(hub, "_from_fairseq", lambda *a: pytest.fail("converted twice"))
    assert hub.resolve(url) == run


def test_released_text_name_brings_its_dictionary(caches, monkeypatch):
    """A short name stands for its URL, and a text model's dict.txt and GPT-2 BPE files come along (here the
    fixture's, as file:// URLs), so the converted run has the tokenizer `--dict` would give it."""
    from data2vec.train.checkpoint import load_config

    url = (FAIRSEQ / "v1_text.pt").as_uri()
    monkeypatch.setitem(hub.RELEASED, "data2vec1-text-base", url)
    monkeypatch.setitem(hub.DICTIONARIES, url, [(FAIRSEQ / "v1_text_dict" / f).as_uri()
                                                for f in ("dict.txt", "encoder.json", "vocab.bpe")])
    assert main(["convert", "--from-fairseq", "data2vec1-text-base", "--out", str(caches / "by-name")]) == 0
    assert main(["convert", "--from-fairseq", str(FAIRSEQ / "v1_text.pt"), "--out", str(caches / "by-path"),
                 "--dict", str(FAIRSEQ / "v1_text_dict")]) == 0
    _same_encoders(caches / "by-name", caches / "by-path")
    run = hub.resolve("data2vec1-text-base")
    tokenizer = Path(load_config(run).text.tokenizer)
    assert tokenizer.is_file() and tokenizer.is_relative_to(run)
    assert tokenizer.read_bytes() == Path(load_config(caches / "by-path").text.tokenizer).read_bytes()


def test_built_in_sets_and_downloads_share_one_cache_folder(monkeypatch, tmp_path):
    """One cache for everything data2vec fetches or makes: the rule (DATA2VEC_CACHE, else XDG_CACHE_HOME, else
    ~/.cache) lives in data/cache.py and the hub uses it."""
    from data2vec.data import cache

    monkeypatch.delenv("DATA2VEC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "data2vec"
    assert hub.cache_dir is cache.cache_dir
    monkeypatch.setenv("DATA2VEC_CACHE", "~/d2v")
    assert cache.cache_dir() == Path("~/d2v").expanduser()

"""`data2vec report`: a self-contained page whose every section renders, from hand-written and real runs."""

import json
import math
from html.parser import HTMLParser

import pytest
from PIL import Image

from data2vec.cli import main
from data2vec.errors import Data2VecError
from data2vec.tasks.report import read_metrics, report

SECTIONS = ["Training curves", "Probe accuracy", "Embedding map (t-SNE)", "Masked training inputs"]


class Page(HTMLParser):
    """Collects the h2 headings and every src / href of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings, self.links, self.tags, self._in_h2 = [], [], set(), False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self._in_h2 = tag == "h2"
        self.links += [(tag, value) for name, value in attrs if name in ("src", "href")]

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)

    def handle_endtag(self, tag):
        self._in_h2 = False


def check_page(index):
    """Asserts the page is self-contained; returns the names of the images it shows."""
    text = index.read_text()
    page = Page(text)
    assert page.headings == SECTIONS
    for bad in ("http:", "https:", '"//', "'//", "url("):
        assert bad not in text, bad
    assert not page.tags & {"script", "link", "iframe"}
    shown = []
    for tag, src in page.links:
        assert tag == "img" and "/" not in src and src.endswith(".png"), src
        with Image.open(index.parent / src) as img:
            img.verify()
            assert img.format == "PNG"
        shown.append(src)
    return shown


def write_metrics(run, keys=("loss", "lr", "ema_decay", "samples_per_s", "grad_norm", "target_var", "pred_var"),
                  steps=30):
    run.mkdir(parents=True, exist_ok=True)
    values = {"loss": lambda s: 2 * math.exp(-s / 10), "lr": lambda s: 1e-3 * min(1, s / 5),
              "ema_decay": lambda s: 0.999, "samples_per_s": lambda s: 400.0, "grad_norm": lambda s: 1 / s,
              "target_var": lambda s: 0.5 * math.exp(-s / 5), "pred_var": lambda s: 0.2}
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "skipped": 0, **{k: values[k](s) for k in keys}}) + "\n")


def test_hand_written_run_renders_every_section_with_local_pngs(tmp_path):
    run = tmp_path / "demo" / "pretrain"
    write_metrics(run)
    (run / "probe.json").write_text(json.dumps({"linear": 0.8, "knn": 0.75}))
    (run / "checkpoints" / "step_00000030").mkdir(parents=True)
    (run / "checkpoints" / "step_00000030" / "probe.json").write_text(json.dumps({"linear": 0.61, "knn": 0.52}))
    (run.parent / "demo.json").write_text(json.dumps({"pretrained": {"linear": 0.8, "knn": 0.7},
                                                      "random": {"linear": 0.4, "knn": 0.3},
                                                      "raw_pixels": {"linear": 0.9}}))
    index = report(run)
    assert index == run / "report" / "index.html"
    assert sorted(check_page(index)) == ["curves.png", "probe.png", "target_var.png"]
    text = index.read_text()
    for row in ("pretrained (demo)", "random weights (demo)", "raw pixels (demo)", "this run", "0.750",
                "step_00000030", "0.610"):
        assert row in text
    assert 'class="warn"' in text  # target_var ends at 0.0012, under the default threshold 0.01
    assert "No embedding map" in text and "No example inputs" in text


def test_demo_json_belongs_only_to_the_demo_pretrain_folder(tmp_path):
    write_metrics(tmp_path / "other")
    (tmp_path / "demo.json").write_text(json.dumps({"pretrained": {"linear": 0.8, "knn": 0.7}}))
    text = report(tmp_path / "other").read_text()
    assert "(demo)" not in text and "No probe results" in text


def test_collapse_warning_follows_the_threshold(tmp_path):
    write_metrics(tmp_path / "run")  # target_var falls from 0.44 to 0.012
    assert 'class="warn"' not in report(tmp_path / "run", collapse_threshold=0.001).read_text()
    assert 'class="warn"' in report(tmp_path / "run", collapse_threshold=0.05).read_text()


def test_metrics_without_target_var_still_render(tmp_path):
    write_metrics(tmp_path / "run", keys=("loss", "lr"))
    index = report(tmp_path / "run", out=tmp_path / "elsewhere")
    assert index == tmp_path / "elsewhere" / "index.html"
    assert check_page(index) == ["curves.png"]
    assert "logged no target_var" in index.read_text()


def test_read_metrics_keeps_last_record_of_a_step_and_skips_a_torn_line(tmp_path):
    lines = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.0}]
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 4, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert read_metrics(tmp_path / "metrics.jsonl") == [lines[0], lines[2], lines[3]]


def test_missing_run_folder_is_a_user_error(tmp_path, capsys):
    with pytest.raises(Data2VecError, match="does not exist"):
        report(tmp_path / "nope")
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_tiny_run_report_shows_curves_map_and_masked_inputs(tmp_path, capsys):
    from data2vec.config import build_config
    from data2vec.tasks.pretrain import pretrain

    cfg = build_config("image-tiny", ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16",
                                      "image.patch_size=4", "objective.top_k=2", "masking.min_block=2",
                                      "train.batch_size=16", "train.max_steps=6", "train.log_every=1",
                                      "data.num_workers=0", f"out={tmp_path / 'run'}"])
    run = pretrain(cfg, progress=False)
    assert main(["report", str(run)]) == 0
    index = run / "report" / "index.html"
    assert str(index) in capsys.readouterr().out
    shown = check_page(index)
    assert {"curves.png", "target_var.png", "tsne.png", "examples_image.png"} <= set(shown)
    with Image.open(index.parent / "examples_image.png") as img:
        assert img.width > 600  # eight examples side by side

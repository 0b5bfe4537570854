"""The docs say what the code does: the README's Python snippet and every `data2vec` command of its bash
blocks run at a tiny size, and the files, tests, recipes and config keys the docs name exist.

The commands are read from README.md itself, so a changed README changes what runs here. Each bash block
runs in a fresh folder, in order, so a command uses what the ones before it wrote (`pretrain ... out=runs/tiny`
then `probe runs/tiny`); tiny overrides are appended to the commands that train. What a user brings (a photo
folder, a text corpus) is made here, a run folder no earlier command wrote is a copy of one shared tiny run,
and `hf download` writes a tiny model of the named modality. A command that needs data that cannot exist here
(an absolute path such as `/data/imagenet`) or several processes (`torchrun`) is parsed by the CLI's own
parser and its recipe and overrides are built by `build_config`, which rejects unknown keys and bad values;
what it would have written is then missing, so commands reading it are parsed only too.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import data2vec
from data2vec.cli import _parser, main
from data2vec.config import Config, build_config, recipe_names

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

STEPS = ["train.max_steps=2", "train.warmup_steps=1", "train.save_every=2", "train.log_every=1",
         "train.precision=fp32", "data.num_workers=0"]
TINY = {  # per modality: the smallest models the recipes' front-ends take
    "image": ["model.dim=32", "model.depth=1", "model.heads=2", "image.image_size=16", "image.patch_size=4",
              "objective.top_k=1", "masking.min_block=2", "train.batch_size=16"],
    "audio": ["model.dim=32", "model.depth=1", "model.heads=2", "audio.conv_dim=[8,8,8,8,8,8,8]",
              "audio.pos_conv_layers=1", "audio.pos_conv_kernel=5", "audio.pos_conv_groups=4", "objective.top_k=1",
              "audio.max_sample_size=4000", "masking.span_length=3", "train.batch_size=6"],
    "text": ["model.dim=32", "model.depth=1", "model.heads=2", "text.block_size=32", "text.max_positions=34",
             "objective.top_k=1", "train.batch_size=8"],
}
FINETUNE = ["train.max_steps=2", "train.warmup_steps=1", "train.batch_size=16", "train.precision=fp32",
            "data.num_workers=0", "finetune.eval_every=2"]
BUILTIN = {"image": "builtin:digits", "audio": "builtin:spoken-words", "text": "builtin:pydocs"}

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# --- reading the README ---------------------------------------------------------------------------------

def code_blocks(text: str, language: str) -> list[tuple[str, str]]:
    """(the heading above it, its text) for each fenced block of `language`."""
    blocks, heading = [], ""
    for match in re.finditer(rf"^(#+ [^\n]*)$|^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks.append((heading, match.group(2)))
    return blocks


def shell_commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped, `&&` split."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1:]
    return commands


def readme_blocks() -> list[tuple[str, list[list[str]]]]:
    return [(heading, shell_commands(block)) for heading, block in code_blocks(README.read_text(), "bash")]


def data2vec_argv(words: list[str]) -> tuple[list[str] | None, bool]:
    """(the arguments after `data2vec`, whether it runs under torchrun), or (None, False) for another tool.
    Leading `VAR=value` settings and a launcher before `torchrun` (`srun`) are passed over."""
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    if words and words[0] == "data2vec":
        return words[1:], False
    if words[:3] == ["python", "-m", "data2vec"]:
        return words[3:], False
    if "torchrun" in words[:2]:
        at = words.index("-m")
        assert words[at + 1] == "data2vec", words
        return words[at + 2:], True
    return None, False


def parse(argv: list[str]):
    """The CLI's own parsing (`data2vec.cli.main` does the same before it runs anything)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    assert all("=" in e and not e.startswith("-") for e in extra), f"argparse rejects {extra}"
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


# --- what a user brings -----------------------------------------------------------------------------------

def image(path: Path, seed: int = 0) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)


def tones(folder: Path) -> Path:
    """A labelled speech folder: two pitches, train and test."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for label, freq in (("low", 200.0), ("high", 900.0)):
            (folder / split / label).mkdir(parents=True)
            for i in range(count):
                t = np.arange(int(rng.integers(3000, 5000))) / 16000
                wave = np.sin(2 * np.pi * freq * t) * 0.3 + rng.normal(0, 0.01, len(t))
                sf.write(folder / split / label / f"{i}.wav", wave.astype(np.float32), 16000)
    return folder


WORDS = ["array", "tensor", "matrix", "sparse", "solver", "gradient", "kernel", "model", "layer", "vector", "sample",
         "batch"]


def corpus(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        docs = ["\n".join(" ".join(rng.choice(WORDS, 12)) for _ in range(4)) for _ in range(20)]
        (folder / name).write_text("\n\n".join(docs) + "\n")


def labelled_text(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for split, count in (("train", 12), ("test", 6)):
        lines = [f"{label}\t{' '.join(rng.choice(WORDS, 8))}" for label in ("x", "y") for _ in range(count)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def tiny_hf_folder(repo: str, folder: Path, tiny_run: Path) -> None:
    """`hf download REPO --local-dir FOLDER`, offline: a tiny random model of the repo's modality."""
    from data2vec.interop.hf import to_hf
    from data2vec.model import Data2Vec
    from data2vec.train.checkpoint import save_checkpoint

    if "vision" in repo:
        to_hf(tiny_run, folder)
        return
    modality = "audio" if "audio" in repo else "text"
    cfg = build_config(f"{modality}-tiny", TINY[modality] + (["text.vocab_size=64"] if modality == "text" else []))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder.parent / f".{folder.name}-ckpt", 0, Data2Vec(cfg).state_dict(),
                                 {"step": 0}, cfg)
    to_hf(checkpoint, folder)


# --- running one block ------------------------------------------------------------------------------------

class Session:
    """A folder in which one README block runs, command after command, as a user's shell would."""

    def __init__(self, cwd: Path, tiny_run: Path):
        self.cwd, self.tiny_run = cwd, tiny_run
        self.missing: list[Path] = []  # what parsed-only commands would have written
        self.ran: list[str] = []
        self.parsed: list[str] = []

    def provide(self, args) -> None:
        """Make the inputs a user brings, and copy the shared run where a command reads a run that no command
        of the block wrote."""
        reads = {"probe": "checkpoint", "embed": "checkpoint", "evaluate": "checkpoint", "report": "run_dir",
                 "convert": "to_hf"}
        runs = [getattr(args, reads.get(args.command, ""), None)]
        runs += [o.split("=", 1)[1] for o in getattr(args, "overrides", []) if o.startswith("checkpoint=")]
        for run in filter(None, runs):
            if not (self.cwd / run).exists():
                shutil.copytree(self.tiny_run, self.cwd / run)
        for name in args.inputs if args.command == "embed" else []:
            path = self.cwd / name
            if path.suffix and not path.exists():
                image(path)
            elif not path.exists():  # a folder of photos
                path.mkdir(parents=True)
                for i in range(2):
                    image(path / f"{i}.jpg", i)

    def is_missing(self, value: str) -> bool:
        return any((self.cwd / value).resolve().is_relative_to(m.resolve()) for m in self.missing)

    def needs_absent_data(self, argv: list[str]) -> bool:
        values = [w.split("=", 1)[1] if "=" in w else w for w in argv]
        return any(v.startswith("/") or self.is_missing(v) for v in values)

    def tiny(self, args) -> list[str]:
        """Overrides that make a training command tiny; a demo gets a small local set for a built-in one that
        is slow to make (speech, text)."""
        if args.command == "pretrain":
            return [*TINY[build_config(args.recipe, args.overrides).modality], *STEPS, "--no-progress"]
        if args.command == "finetune":
            return [*FINETUNE, "--no-progress"]
        if args.command == "demo":
            data = []
            if args.modality == "audio":
                data = [f"data.path={tones(self.cwd / 'tones')}"]
            elif args.modality == "text":
                labelled_text(self.cwd / "labelled")
                data = ["data.path=bin/", "data.eval_path=labelled/"]
            return [*TINY[args.modality], *STEPS, *data, "--no-progress"]
        return []

    def check_config(self, args) -> None:
        """Parse-only: the recipe and overrides must build, with data.path on a built-in set. What the command
        would have written is then missing."""
        if args.command not in ("pretrain", "finetune", "bench"):
            return
        if args.recipe not in recipe_names() and not (self.cwd / args.recipe).exists():
            assert self.is_missing(args.recipe), f"recipe {args.recipe} is neither shipped nor written before"
            return
        overrides = [f"finetune.{o}" if o.startswith("checkpoint=") else o for o in args.overrides]
        modality = build_config(args.recipe, overrides).modality
        swapped = [f"{o.split('=')[0]}={BUILTIN[modality]}" if o.startswith(("data.path=", "data.eval_path="))
                   else o for o in overrides]
        cfg = build_config(args.recipe, swapped)
        if not (self.cwd / cfg.out).exists():  # a run it would have continued is still there
            self.missing.append(self.cwd / cfg.out)

    def parse_only(self, words: list[str]) -> None:
        argv, _ = data2vec_argv(words)
        if argv is not None:
            args = parse(argv)
            self.check_config(args)
            if getattr(args, "out", None):
                self.missing.append(self.cwd / args.out)
            self.parsed.append(" ".join(words))

    def hf_download(self, words: list[str]) -> None:
        assert words[1] == "download" and "--local-dir" in words, words
        tiny_hf_folder(words[2], self.cwd / words[words.index("--local-dir") + 1], self.tiny_run)
        self.ran.append(" ".join(words))

    def run(self, words: list[str], capsys) -> None:
        argv, distributed = data2vec_argv(words)
        if argv is None:  # another tool (pip, pytest, a script): not ours to run here
            if words[0] == "hf":
                self.hf_download(words)
            return
        if any(a.startswith("corpus/") for a in argv) and not (self.cwd / "corpus").exists():
            corpus(self.cwd / "corpus")  # before the shell's glob would see it
        argv = [w for a in argv for w in (sorted(glob.glob(a, root_dir=self.cwd)) or [a] if "*" in a else [a])]
        if argv == ["--help"]:
            with pytest.raises(SystemExit) as exit_:
                main(argv)
            assert exit_.value.code == 0
            self.ran.append(" ".join(words))
            return
        args = parse(argv)
        if distributed or self.needs_absent_data(argv):
            self.parse_only(words)
            return
        self.provide(args)
        capsys.readouterr()
        code = main([*argv, *self.tiny(args)])
        err = capsys.readouterr().err
        assert code == 0, f"`{' '.join(words)}` exited {code}: {err[-2000:]}"
        self.ran.append(" ".join(words))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny image pretraining run (2 steps), shared by every test that needs a run folder."""
    out = tmp_path_factory.mktemp("shared") / "run"
    data2vec.pretrain("image-tiny", *TINY["image"], *STEPS, f"out={out}")
    return out


BLOCKS = readme_blocks()


def test_the_readme_has_the_commands_this_test_expects():
    """Guards the reader: if README's blocks move or vanish, say so here rather than test nothing."""
    headings = [heading for heading, _ in BLOCKS]
    for heading in ("Quick start", "Using it", "Speech", "Text", "Fine-tuning", "Hugging Face"):
        assert heading in headings
    assert sum(len(commands) for _, commands in BLOCKS) >= 25


@pytest.mark.parametrize("heading, commands", BLOCKS, ids=[h for h, _ in BLOCKS])
def test_readme_commands_run_at_a_tiny_size(heading, commands, tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    session = Session(tmp_path, tiny_run)
    for words in commands:
        session.run(words, capsys)
    assert len(session.ran) + len(session.parsed) == sum(data2vec_argv(c)[0] is not None or c[0] == "hf"
                                                         for c in commands)
    if heading == "Using it":
        assert Path("feats.npy").exists() and np.load("feats.npy").shape == (3, 32)  # photos/ (2) + cat.png
        assert (tmp_path / "runs" / "tiny" / "checkpoints" / "step_00000002" / "probe.json").exists()
    if heading == "Text":
        assert (tmp_path / "tok" / "tokenizer.json").exists() and (tmp_path / "bin" / "meta.json").exists()
    if heading == "Fine-tuning":
        assert (tmp_path / "runs" / "digits-ft" / "best").is_dir()
    if heading == "Hugging Face":
        assert (tmp_path / "hf" / "mine" / "config.json").exists()


def test_report_doc_commands_and_snippet_run(tiny_run, tmp_path, monkeypatch, capsys):
    """docs/report.md's first commands and its Python call, on copies of the shared run."""
    doc = (ROOT / "docs" / "report.md").read_text()
    monkeypatch.chdir(tmp_path)
    session = Session(tmp_path, tiny_run)
    for words in shell_commands(code_blocks(doc, "bash")[0][1]):
        session.run(words, capsys)
    assert session.ran and Path("runs/image-tiny/report/index.html").exists()
    [(_, snippet)] = code_blocks(doc, "python")
    scope: dict = {}
    exec(compile(snippet, "docs/report.md", "exec"), scope)  # noqa: S102 - our own docs
    assert scope["index"] == Path("runs/image-tiny/report/index.html")


def test_huggingface_doc_snippet_runs(tmp_path, monkeypatch):
    """docs/huggingface.md's Python code on tiny random `transformers` models in the folders it names: an image
    classifier for the vision part and a CTC model for the speech part."""
    transformers = pytest.importorskip("transformers")
    [(_, snippet)] = [b for b in code_blocks((ROOT / "docs" / "huggingface.md").read_text(), "python")
                      if b[0] == "From Python"]  # the pipelines' block runs in tests/test_hf_pipeline.py
    monkeypatch.chdir(tmp_path)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    torch.manual_seed(0)
    transformers.Data2VecVisionForImageClassification(transformers.Data2VecVisionConfig(
        **small, image_size=16, patch_size=4, num_labels=3)).save_pretrained("hf/data2vec-vision-base-ft1k")
    transformers.Data2VecAudioForCTC(transformers.Data2VecAudioConfig(
        **small, conv_dim=(8, 8, 8), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=3,
        conv_pos_kernel_size=5, num_conv_pos_embedding_groups=4, vocab_size=6)).save_pretrained("hf/d2v-audio-960h")
    waves = torch.randn(2, 1200)
    padding = torch.zeros(2, 1200, dtype=torch.bool)
    padding[1, 700:] = True
    scope = {"images": torch.rand(2, 3, 16, 16), "waves": waves, "padding": padding}
    exec(compile(snippet, "docs/huggingface.md", "exec"), scope)  # noqa: S102 - our own docs
    assert scope["logits"].shape[::2] == (2, 6) and Path("hf/exported/config.json").exists()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_commands_parse_and_their_configs_build(doc, tmp_path):
    """Every `data2vec` command in docs/*.md: the CLI parses it and its recipe and overrides build (the README's
    run, above; these would need data and hours)."""
    session = Session(tmp_path, tmp_path / "no-run")
    for _, block in code_blocks(doc.read_text(), "bash"):
        for words in shell_commands(block):
            session.parse_only(words)


def test_readme_run_folder_and_metrics_keys_match_a_run(tiny_run):
    """The files the README lists for a run folder and the keys it lists for `metrics.jsonl` are those a run
    writes (the shared run logs every step)."""
    text = README.read_text()
    [row] = [line for line in text.splitlines() if line.startswith("| `out` |")]
    for name in re.findall(r"`([^`]+)`", row)[1:]:
        assert list(tiny_run.glob(re.sub(r"step_\d+", "step_*", name).rstrip("/"))), f"README lists {name}"
    paragraph = text[text.index("`metrics.jsonl` has one line per logged step"):].split("\n\n")[0]
    documented = set(re.findall(r"`(\w+)`", paragraph.split("TensorBoard")[0])) - {"metrics"}
    logged = set(json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[0]))
    assert documented == logged


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    """The "From Python" snippet, with tiny overrides appended to its pretrain call and `images` defined."""
    [(_, snippet)] = [(h, b) for h, b in code_blocks(README.read_text(), "python") if h == "From Python"]
    monkeypatch.chdir(tmp_path)
    pretrain = data2vec.pretrain
    monkeypatch.setattr(data2vec, "pretrain", lambda recipe, *o: pretrain(recipe, *o, *TINY["image"], *STEPS))
    scope = {"images": torch.rand(2, 3, 16, 16)}
    exec(compile(snippet, "README.md (From Python)", "exec"), scope)  # noqa: S102 - our own README
    assert Path(scope["run"]).is_dir() and scope["out"].last_hidden_state.shape == (2, 17, 32)
    assert len(scope["out"].hidden_states) == 2 and scope["features"].shape == (2, 32)


# --- what the docs name exists ----------------------------------------------------------------------------

def _markdown_files() -> list[Path]:
    return [README, ROOT / "BENCHMARKS.md", *DOCS]


def _backticked(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE)  # inline code only
    return re.findall(r"`([^`\n]+)`", text)


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: p.name)
def test_links_and_named_files_exist(doc):
    missing = [target for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text())
               if not re.match(r"[a-z]+:", target) and not (doc.parent / target.split("#")[0]).exists()]
    bases = (ROOT, ROOT / "src", ROOT / "src" / "data2vec")  # nn/transformer.py is relative to the package
    ours = "|".join(["src", "tests", "benchmarks", "docs", "data2vec",  # other paths name Meta's code (fidelity.md)
                     *(d.name for d in (ROOT / "src" / "data2vec").iterdir() if d.is_dir() and d.name.isidentifier())])
    for code in _backticked(doc):
        for token in (t.rstrip(",;:") for t in code.split()):
            named = re.fullmatch(rf"({ours})/[\w./-]+\.(py|md|yaml|png)", token)
            if named and not any((base / token).exists() for base in bases):
                missing.append(token)
    assert not missing, f"{doc.name} names what does not exist: {missing}"


def _tests_defined() -> set[str]:
    return {name for f in (ROOT / "tests").glob("test_*.py")
            for name in re.findall(r"^def (test_\w+)", f.read_text(), re.MULTILINE)}


FILE_TYPES = {"py", "md", "yaml", "json", "jsonl", "tsv", "txt", "log", "safetensors", "npy", "pt", "bin"}
SECTIONS = "model|image|audio|text|masking|objective|data|train|finetune"


def _is_config_key(dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    hints = typing.get_type_hints(Config)
    return section in hints and key in typing.get_type_hints(hints[section])


def _unknown(token: str, tests: set[str], recipes: set[str]) -> bool:
    if re.fullmatch(r"test_\w+", token):
        return token not in tests
    if re.fullmatch(r"(image|audio|text)-(tiny|base|large)[\w-]*", token):
        return token not in recipes
    if re.fullmatch(rf"({SECTIONS})\.[a-z_]+(=\S*)?", token) and token.split(".")[1] not in FILE_TYPES:
        return not _is_config_key(token.split("=")[0])
    return False


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: p.name)
def test_named_tests_recipes_and_config_keys_exist(doc):
    tests, recipes = _tests_defined(), set(recipe_names())
    missing = [token for code in _backticked(doc) for token in re.split(r"[\s,]+", code)
               if _unknown(token, tests, recipes)]
    assert not missing, f"{doc.name} names tests, recipes or config keys that do not exist: {missing}"

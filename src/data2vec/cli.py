"""The `data2vec` command: parse arguments, then call a task. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys

from data2vec.errors import Data2VecError, Preempted
from data2vec.nn.linear import check_environment
from data2vec.train.distributed import is_main_process

CHECKPOINT_HELP = ("checkpoint folder or run folder, or a released model's name, Hugging Face id or URL "
                   "(docs/checkpoints.md)")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGINT after writing a checkpoint; run again to resume


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="data2vec", description="data2vec self-supervised pretraining")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("pretrain", help="pretrain from a recipe (name or YAML path) with key=value overrides")
    p.add_argument("recipe", help="recipe name (e.g. image-tiny) or path to a YAML file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-3 out=runs/x")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("probe", help="linear and kNN probe of a checkpoint's frozen features")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--data", default=None, help="labelled data: images in class sub-folders (or train/ and test/ "
                                                "of them), text as label<TAB>text lines (a file, or a folder of "
                                                "train.tsv and test.tsv), audio in class sub-folders or a manifest; "
                                                "default: the checkpoint's data.eval_path or data.path")
    p.add_argument("--out", default=None, help="folder for probe.json (default: the checkpoint folder)")

    p = sub.add_parser("embed", help="pooled features of input files or folders, written to .npy")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("inputs", nargs="+", help="image files or folders; for a text model, text files (one "
                                             "embedding per non-empty line); for a speech model, audio files "
                                             "or folders (one embedding per file)")
    p.add_argument("--out", default="embeddings.npy", help="output .npy path (a .txt of input names goes beside it)")
    p.add_argument("--batch-size", type=int, default=64)

    p = sub.add_parser("demo", help="pretrain on built-in data, probe, and compare with random weights")
    p.add_argument("modality", nargs="?", default="image", choices=["image", "text", "audio"])
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo recipe")
    p.add_argument("--out", default=None, help="run folder (default: runs/demo-MODALITY)")
    p.add_argument("--v2", action="store_true", help="use the data2vec 2.0 recipe (faster to the same accuracy)")
    p.add_argument("--recipe", default=None, help="any recipe name or path instead of the demo's default")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("report", help="an HTML page of a run's curves, probe results, feature map and masks")
    p.add_argument("run_dir", help="run folder (the `out` of a pretraining run)")
    p.add_argument("--out", default=None, help="folder for index.html and its PNGs (default: RUN_DIR/report)")
    p.add_argument("--collapse-threshold", type=float, default=0.01,
                   help="target variance below which the page warns of collapse (default: 0.01, i.e. a standard deviation of 0.1)")

    p = sub.add_parser("bench", help="measure the data pipeline alone: samples per second")
    p.add_argument("what", choices=["data"])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=50)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on text files")
    p.add_argument("action", choices=["train"])
    p.add_argument("files", nargs="+", help="text files or folders of .txt files (UTF-8; lines with bad bytes "
                                            "are kept with replacement characters and counted, as binarize does)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--out", required=True, help="folder for tokenizer.json")

    p = sub.add_parser("text", help="text data tools: binarize text files into token shards")
    p.add_argument("action", choices=["binarize"])
    p.add_argument("inputs", nargs="+", help="text files or folders (documents separated by empty lines)")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json, or a folder holding one")
    p.add_argument("--out", required=True, help="output folder (shards, docs.npy, meta.json, tokenizer.json)")
    p.add_argument("--shard-tokens", type=int, default=2**26, help="tokens per shard file")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("convert", help="convert a Hugging Face transformers model folder or a fairseq checkpoint "
                                       "to a checkpoint, or a checkpoint to a Hugging Face folder")
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-fairseq", metavar="CKPT", help="fairseq data2vec checkpoint (.pt file, URL or released "
                                                            "name): v1 speech, its CTC fine-tunes, v1 text, data2vec 2.0")
    way.add_argument("--from-hf", metavar="DIR", help="HF Data2VecVision / Data2VecText / Data2VecAudio folder "
                                                      "(config.json + model.safetensors or pytorch_model.bin), "
                                                      "or a Hugging Face model id")
    way.add_argument("--to-hf", metavar="CHECKPOINT", help="data2vec checkpoint or run folder, or a released "
                                                          "model's name, Hugging Face id or URL")
    p.add_argument("--out", required=True, help="--from-hf: new run folder for the checkpoint; --to-hf: folder for "
                                                "config.json and model.safetensors")
    p.add_argument("--teacher", action="store_true", help="--to-hf: export the EMA teacher instead of the student")
    p.add_argument("--dict", metavar="PATH", help="--from-fairseq: what the file does not hold: text models, the "
                                                  "folder with fairseq's dict.txt, encoder.json and vocab.bpe; CTC "
                                                  "fine-tunes, their dict.ltr.txt (default: LibriSpeech's letters); "
                                                  "image classifiers, their class names (a file, one per line)")

    p = sub.add_parser("finetune", help="fine-tune a pretrained checkpoint: a classifier, or CTC speech recognition")
    p.add_argument("recipe", help="fine-tuning recipe (image-tiny-ft, text-tiny-ft, audio-tiny-ctc, ...) or YAML path")
    p.add_argument("overrides", nargs="*", help="checkpoint=PATH (pretrained run or checkpoint folder, or a name), "
                                                "data.path=TRAIN data.eval_path=VALID, out=..., other key=value")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="metrics of a fine-tuned checkpoint (accuracy, F1, MCC, top-5; WER, CER)")
    p.add_argument("checkpoint", help="checkpoint folder or run folder (RUN/best: the best validation checkpoint)")
    p.add_argument("overrides", nargs="*", help="data=PATH (labelled data; default: the run's validation set), "
                                                "split=valid|train")
    p.add_argument("--data", default=None, help="labelled data, as data=PATH (the probe's spelling)")
    p.add_argument("--out", default=None, help="folder for eval.json (default: the checkpoint folder)")

    p = sub.add_parser("recipes", help="list the recipes that ship with the package")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "pretrain":
        from data2vec.config import build_config
        from data2vec.tasks.pretrain import pretrain

        out = pretrain(build_config(args.recipe, args.overrides), progress=not args.no_progress)
        if is_main_process():  # torchrun: once, not once per process
            print(f"run folder: {out}")
    elif args.command == "probe":
        from data2vec.interop.hub import resolve
        from data2vec.tasks.probe import probe

        result = probe(resolve(args.checkpoint), args.data, args.out)
        print(f"linear probe top-1: {result['linear']:.4f}   kNN top-1: {result['knn']:.4f}")
    elif args.command == "embed":
        from data2vec.interop.hub import resolve
        from data2vec.tasks.embed import embed

        path = embed(resolve(args.checkpoint), args.inputs, args.out, args.batch_size)
        print(f"embeddings: {path}")
    elif args.command == "demo":
        from data2vec.tasks.demo import demo

        demo(args.modality, args.out or f"runs/demo-{args.modality}{'-v2' if args.v2 else ''}", args.overrides,
             progress=not args.no_progress, v2=args.v2, recipe=args.recipe)
    elif args.command == "report":
        from data2vec.tasks.report import report

        print(f"report: {report(args.run_dir, args.out, args.collapse_threshold)}")
    elif args.command == "bench":
        from data2vec.config import build_config
        from data2vec.tasks.bench import bench_data

        cfg = build_config(args.recipe, [*args.overrides, f"train.max_steps={args.steps + 10}"])
        r = bench_data(cfg, args.steps)
        print(f"data pipeline: {r['samples_per_s']:.1f} samples/s ({r['batches_per_s']:.2f} batches/s of "
              f"{r['batch_size']}, {r['num_workers']} workers, {r['skipped']} skipped)")
    elif args.command == "tokenizer":
        from data2vec.data.text import train_tokenizer

        r = train_tokenizer(args.files, args.vocab_size, args.out)
        print(f"tokenizer: {r['tokenizer']} from {r['lines']} lines of {r['files']} file(s); {r['bad_utf8_lines']} "
              f"lines with bad UTF-8, {r['empty_lines']} empty lines, {r['empty_files']} empty files")
    elif args.command == "text":
        from data2vec.data.text import binarize

        meta = binarize(args.inputs, args.tokenizer, args.out, args.shard_tokens, progress=not args.no_progress)
        print(f"{meta['tokens']} tokens in {meta['documents']} documents, {len(meta['shard_sizes'])} shard(s) of "
              f"{meta['dtype']}; {meta['bad_utf8_lines']} lines with bad UTF-8, {meta['empty_lines']} empty lines, "
              f"{meta['empty_files']} empty files: {args.out}")
    elif args.command == "convert":
        from data2vec import from_fairseq, from_hf, to_hf  # names resolved (hub) as in the Python API

        if args.from_fairseq:
            print(f"checkpoint: {from_fairseq(args.from_fairseq, args.out, args.dict)}")
        elif args.from_hf:
            print(f"checkpoint: {from_hf(args.from_hf, args.out)}")
        else:
            which = "teacher" if args.teacher else "student"
            print(f"Hugging Face folder: {to_hf(args.to_hf, args.out, which)}")
    elif args.command == "finetune":
        from data2vec.config import build_config
        from data2vec.interop.hub import resolve_overrides
        from data2vec.tasks.finetune import finetune

        overrides = [f"finetune.{o}" if o.startswith("checkpoint=") else o for o in resolve_overrides(args.overrides)]
        out = finetune(build_config(args.recipe, overrides), progress=not args.no_progress)
        if not is_main_process():  # torchrun: the main process reports
            return 0
        result = json.loads((out / "results.json").read_text())
        best, metric = result["best"] or {}, result["metric"]
        print(f"run folder: {out}   best validation {metric} {best.get(metric, float('nan')):.4f} at step "
              f"{best.get('step')}: {out / 'best'}")
    elif args.command == "evaluate":
        from data2vec.interop.hub import resolve
        from data2vec.tasks.evaluate import evaluate

        options = {"data": args.data, "split": "valid"}
        for item in args.overrides:
            key, sep, value = item.partition("=")
            if not sep or key not in options:
                raise Data2VecError(f"evaluate takes data=PATH and split=valid|train, not '{item}'")
            if key == "data" and args.data is not None:
                raise Data2VecError(f"give the data once: --data {args.data} or {item}, not both")
            options[key] = value
        if options["split"] not in ("valid", "train"):
            raise Data2VecError(f"split={options['split']}: use split=valid or split=train")
        option = "--data PATH" if args.data is not None else "data=PATH"
        result = evaluate(resolve(args.checkpoint), options["data"], options["split"], args.out, option=option)
        shown = "  ".join(f"{k} {result[k]:.4f}" for k in ("accuracy", "top5", "f1", "mcc", "wer", "cer")
                          if k in result)
        print(f"{result['samples']} samples of {result['data']} ({result['split']}): {shown}")
    elif args.command == "recipes":
        from data2vec.config import recipe_names

        print("\n".join(recipe_names()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`demo image --out X train.lr=1`): argparse leaves those over
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if args.version:
        from data2vec import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    from data2vec.train.logging import setup_logging

    setup_logging()
    try:
        check_environment()
        return run(args)
    except Data2VecError as err:
        print(f"data2vec: error: {err}", file=sys.stderr)
        return 2
    except Preempted as err:
        print(f"data2vec: {err}; run the same command again to continue", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("data2vec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

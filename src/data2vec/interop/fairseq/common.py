"""What every fairseq conversion shares: judging fairseq's settings, the letter dictionary of a CTC head, the
conv feature encoder spec, and writing the run folder.

Each fairseq setting a converter reads falls in one of four kinds (:class:`Settings`):

- ``mapped``: becomes one of our config keys;
- ``required``: changes what the model computes, and we compute only the value given (e.g.
  ``layer_norm_first=false``): any other value stops the conversion naming the key;
- ``training``: changes only how fairseq trained (channel masking, gradient scaling, freezing): the model
  computes the same without it, so the conversion goes on, logs each one whose value has an effect and lists it
  in ``fairseq.json`` of the run folder;
- ``ignored``: no effect on the model (paths, bookkeeping, options of unused parts of a shared config class).

A key of the model section in none of them stops the conversion: a setting we have not judged is never
dropped silently.
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from data2vec.config import Config
from data2vec.errors import Data2VecError

log = logging.getLogger("data2vec")

FAIRSEQ_JSON = "fairseq.json"  # the file's config and the settings not carried, beside the checkpoint
# fairseq's letter dictionary of its LibriSpeech CTC fine-tunes (dict.ltr.txt, most frequent first), after the
# four specials <s> <pad> </s> <unk>; fairseq's CTC blank is <s>, index 0, as ours
LIBRISPEECH_LETTERS = list("|ETAONIHSRDLUMWCFGYPBVK'XJQZ")


def unsupported(key: str, value: Any, why: str) -> Data2VecError:
    """The error for a fairseq setting data2vec cannot express; `key` is its dotted path in the file's cfg."""
    return Data2VecError(f"cannot convert: the fairseq checkpoint sets {key}={value!r}, which {why}; data2vec "
                         "converts only models it computes exactly (docs/checkpoints.md lists what converts)")


@dataclass
class Settings:
    """A converter's judgement of the keys of one fairseq config section (see the module docstring).
    `required` maps a key to the accepted values (a tuple) or a predicate and the reason; `training` maps a key
    to (the value that has no effect, why it is not carried)."""

    section: str
    mapped: set[str] = field(default_factory=set)
    required: dict[str, tuple[Any, str]] = field(default_factory=dict)
    training: dict[str, tuple[Any, str]] = field(default_factory=dict)
    ignored: set[str] = field(default_factory=set)

    def check(self, values: dict[str, Any], dropped: list[str]) -> None:
        """Stop on a required key with another value or a key not judged; append the training-only
        settings with an effect to `dropped` (as ``section.key=value: why``)."""
        for key, value in values.items():
            path = f"{self.section}.{key}"
            if key in self.required:
                accepted, why = self.required[key]
                ok = accepted(value) if callable(accepted) else value in accepted
                if not ok:
                    raise unsupported(path, value, why)
            elif key in self.training:
                neutral, why = self.training[key]
                if value != neutral and not (callable(neutral) and neutral(value)):
                    dropped.append(f"{path}={value!r}: {why}")
            elif key not in self.mapped and key not in self.ignored:
                raise unsupported(path, value, "is a setting this converter does not know (a newer or patched "
                                  "fairseq?), so it cannot tell whether the converted model would compute the same")


def report_dropped(dropped: list[str]) -> None:
    for item in dropped:
        log.warning("fairseq setting not carried over (training only, the converted model computes the same): %s",
                    item)


def conv_layers(spec: str, key: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string (a Python expression such as ``[(512, 10, 5)] + [(512, 3, 2)] *
    4``) as (channels, kernel, stride) triples, evaluated without `eval`: only literals, + and *."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(ast.dump(node))

    try:
        layers = value(ast.parse(spec, mode="eval").body)
        if not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
            raise ValueError(spec)
    except (SyntaxError, ValueError, TypeError):
        raise unsupported(key, spec, "is not a list of (channels, kernel, stride) triples") from None
    return [tuple(t) for t in layers]


def train_overrides(cfg: dict[str, Any], dropped: list[str] | None = None) -> list[str]:
    """The optimiser settings of the file's `optimization` / `optimizer` / `lr_scheduler` sections that ours share
    (for resume): fairseq's `tri_stage` scheduler becomes ``train.schedule=tri_stage`` with its phases and scales
    (:func:`_tri_stage`), any other our warm-up then cosine (``train.schedule=cosine``). A `composite` optimizer
    (data2vec 2.0's recipes) keeps the learning rate, Adam settings and warm-up of its parameters in its
    `default` group, where `optimization.lr` is fairseq's unused default. A schedule we cannot express goes to
    `dropped` (as ``section.key=value: why``) where the caller keeps that list."""
    out = []
    opt, optim = _section(cfg, "optimization"), _section(cfg, "optimizer")
    sched = _section(cfg, "lr_scheduler")
    lr = opt.get("lr")
    if optim.get("_name") == "composite":
        group = _section(_section(optim, "groups"), "default")
        optim, sched, lr = _section(group, "optimizer"), _section(group, "lr_scheduler"), [group.get("lr_float")]
    if isinstance(opt.get("max_update"), int) and opt["max_update"] > 0:
        out.append(f"train.max_steps={opt['max_update']}")
    if isinstance(lr, list) and lr and isinstance(lr[0], (int, float)):
        out.append(f"train.lr={float(lr[0])!r}")
    if isinstance(opt.get("clip_norm"), (int, float)):
        out.append(f"train.clip_grad={float(opt['clip_norm'])!r}")
    if optim.get("_name") == "adam" and isinstance(optim.get("adam_betas"), (str, list, tuple)):
        betas = optim["adam_betas"]
        try:
            b1, b2 = (float(b) for b in (betas.strip("()[] ").split(",") if isinstance(betas, str) else betas))
            out += [f"train.beta1={b1!r}", f"train.beta2={b2!r}"]
        except ValueError:
            pass
    if isinstance(optim.get("adam_eps"), (int, float)):
        out.append(f"train.eps={float(optim['adam_eps'])!r}")
    if isinstance(optim.get("weight_decay"), (int, float)):
        out.append(f"train.weight_decay={float(optim['weight_decay'])!r}")
    tri_stage = _tri_stage(sched, opt.get("max_update"), dropped) if sched.get("_name") == "tri_stage" else []
    out += tri_stage or ["train.schedule=cosine"]
    if isinstance(sched.get("warmup_updates"), int) and sched["warmup_updates"] > 0:
        out.append(f"train.warmup_steps={sched['warmup_updates']}")
    return out


def _tri_stage(sched: dict[str, Any], max_update: Any, dropped: list[str] | None) -> list[str]:
    """fairseq's `tri_stage` scheduler section as our ``train.schedule=tri_stage`` keys. fairseq gives the phases
    as `phase_ratio` of `max_update` (every released speech config), or as `warmup_steps` / `hold_steps` /
    `decay_steps` when that is null: those become ratios only where they fill `max_update` and the ratios give
    back the same steps (fairseq's int(max_update x ratio)); otherwise the schedule is not carried ([])."""
    ratio = sched.get("phase_ratio")
    if isinstance(ratio, str):  # an argparse-era file: "(0.1, 0.4, 0.5)"
        try:
            ratio = list(ast.literal_eval(ratio))
        except (ValueError, SyntaxError, TypeError):
            ratio = None
    total = sched.get("max_update") or max_update
    if not ratio and isinstance(total, (int, float)) and total > 0:
        steps = [sched.get(key) or 0 for key in ("warmup_steps", "hold_steps", "decay_steps")]
        ratio = [s / total for s in steps]
        if sum(steps) != total or [int(total * r) for r in ratio] != steps:
            ratio = None
    ok = (isinstance(ratio, (list, tuple)) and len(ratio) == 3
          and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratio))
    if not ok:
        if dropped is not None:
            keys = {k: sched.get(k) for k in ("phase_ratio", "warmup_steps", "hold_steps", "decay_steps")}
            dropped.append(f"lr_scheduler={keys!r}: tri_stage phases that do not split optimization.max_update "
                           f"({max_update!r}); train.schedule stays cosine")
        return []
    out = ["train.schedule=tri_stage", f"train.phase_ratio=[{', '.join(repr(float(r)) for r in ratio)}]"]
    for key in ("init_lr_scale", "final_lr_scale"):  # fairseq's defaults (0.01) where the file has none
        value = sched.get(key, 0.01)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(f"train.{key}={float(value)!r}")
    return out


def _section(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    """A sub-section of a fairseq config, or {} where the file has none (or a bare name, as `pass_through`)."""
    value = cfg.get(key)
    return value if isinstance(value, dict) else {}


def ctc_labels(dictionary: Path | None, n: int) -> list[str]:
    """The labels of a fairseq CTC head's `n` outputs: its target dictionary (``dict.ltr.txt``: one ``symbol
    count`` line each, after fairseq's four specials) with fairseq's blank ``<s>`` (index 0) as our blank.
    fairseq checkpoints do not hold the dictionary; without one, a head of 32 outputs gets LibriSpeech's letter
    dictionary (what every released data2vec CTC fine-tune used), with a warning."""
    from data2vec.ctc import BLANK
    from data2vec.interop.fairseq.tokenizer import read_dictionary

    specials = [BLANK, "<pad>", "</s>", "<unk>"]
    if dictionary is None:
        if n != len(specials) + len(LIBRISPEECH_LETTERS):
            raise Data2VecError(f"the CTC head has {n} outputs and fairseq checkpoints do not hold their letters; "
                                "give the fine-tuning's letter dictionary with --dict PATH/dict.ltr.txt")
        log.warning("no --dict given: labelling the CTC head's 32 outputs with LibriSpeech's letter dictionary "
                    "(fairseq's dict.ltr.txt of its LibriSpeech fine-tunes)")
        return specials + LIBRISPEECH_LETTERS
    path = dictionary / "dict.ltr.txt" if dictionary.is_dir() else dictionary
    if not path.is_file():
        raise Data2VecError(f"--dict '{dictionary}' is neither a dict.ltr.txt nor a folder holding one")
    symbols = read_dictionary(path)
    labels = specials + symbols
    if len(labels) != n:
        raise Data2VecError(f"--dict '{path}' lists {len(symbols)} symbols, so the CTC head would have "
                            f"{len(labels)} outputs, but it has {n}; give the dictionary the model was fine-tuned with")
    return labels


def fairseq_json(ckpt: dict[str, Any], kind: str, dropped: list[str]) -> bytes:
    """The record written beside the checkpoint: the kind converted, the file's config as plain data (so
    nothing of it is lost) and the training-only settings not carried over."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, (str, int, float, bool)) or x is None:
            return x
        return repr(x)

    record = {"kind": kind, "not_carried": dropped, "cfg": plain(ckpt.get("cfg") or ckpt.get("args"))}
    return (json.dumps(record, indent=1) + "\n").encode()


def write_run(cfg: Config, out: Path, student: dict[str, Tensor], teacher: dict[str, Tensor] | None = None,
              model_extra: dict[str, Tensor] | None = None, head: torch.nn.Module | None = None,
              extra_files: dict[str, bytes] | None = None) -> Path:
    """Write run folder `out` (``config.yaml`` and a step-0 checkpoint) from our encoder's tensors (`student`;
    `teacher`, fairseq's EMA teacher where the file holds one, else a copy of the student), other tensors of
    our full model (`model_extra`: ``head.*``, ``decoder.*``) and a fine-tuning head; returns the checkpoint."""
    from data2vec.interop.hf.common import write_checkpoint
    from data2vec.nn.heads import HEAD_FILE, head_file

    cfg.out = str(out)
    extra = dict(extra_files or {})
    if head is not None:
        extra[HEAD_FILE] = head_file(head)
    return write_checkpoint(cfg, student, out, extra, teacher_state=teacher, model_state=model_extra)


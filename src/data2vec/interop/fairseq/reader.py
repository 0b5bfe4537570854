"""Read a fairseq checkpoint file without fairseq, hydra or omegaconf, and without running code from the file.

A fairseq checkpoint is a `torch.save`d dict: ``model`` (the state dict), ``cfg`` (an omegaconf ``DictConfig``;
older files ``args``, an ``argparse.Namespace``), ``optimizer_history``, ``extra_state`` (the EMA model in some),
... Unpickling it the ordinary way imports fairseq and omegaconf, and a pickle may name any callable to run.
Here every global the pickle names goes through one allow-list (:func:`_resolve_global`):

- torch's tensor rebuild functions, storages, dtypes and sizes, ``collections.OrderedDict`` / ``defaultdict``
  and a few inert builtin types: the real objects, each function behind a guard (:class:`_Guarded`) that refuses a
  pickle's BUILD on it, which would otherwise set attributes (``__defaults__``, ``_get_layout.cache``) of torch's
  own function for the whole process;
- the classes of omegaconf, fairseq, hydra, ``argparse.Namespace``, ``typing`` and enums (whatever a config
  holds): inert stand-ins (:class:`_Record`) that only remember their constructor arguments and state;
- anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...): a :class:`Data2VecError` naming
  the global, before anything is called. numpy's ``ndarray`` / ``_reconstruct`` / ``scalar`` are refused too: an
  object dtype over bytes from the file dereferences pointers the file chose (fairseq's protocol-2 files could not
  hold numpy values anyway: their bytes need ``_codecs.encode``, never allowed).

:func:`read_checkpoint` then turns the stand-ins into plain data: a ``DictConfig`` becomes a dict, a ``ListConfig``
a list, an omegaconf node its value, a ``Namespace`` or dataclass its fields, an enum member its value (its name
where the enum numbers its members, :data:`AUTO_ENUMS`, as omegaconf's ``enum_to_str`` writes it); and ``${a.b}``
interpolations are resolved against the config's root, as omegaconf would.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import pickle
import re
import tarfile
import types
import zipfile
from pathlib import Path
from typing import Any, Self

import torch

from data2vec.errors import Data2VecError

# torch's own rebuild functions, as `torch.load(weights_only=True)` allows them
_TORCH = {
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch.nn.parameter", "Parameter"), ("torch", "Size"),
    ("torch", "device"), ("torch.serialization", "_get_layout"), ("torch", "Tensor"),
}
_COLLECTIONS = {("collections", "OrderedDict"), ("collections", "defaultdict")}
_BUILTIN_TYPES = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
                  "bytearray", "bool", "slice", "object"}
# packages whose classes a config holds: read as inert records, never imported
_RECORD_PACKAGES = ("omegaconf", "fairseq", "examples", "hydra", "typing", "enum", "pathlib")
_RECORD_GLOBALS = {("argparse", "Namespace")}


class _Record:
    """Stand-in for a class of a config (omegaconf containers and nodes, Namespace, fairseq dataclasses and
    enums): keeps the constructor arguments (`args`) and the pickled state (`state`), runs nothing."""

    module: str = ""
    name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on a dict-like record
        if not isinstance(self.state, dict):
            self.state = {}
        self.state[key] = value

    def append(self, value: Any) -> None:  # APPEND(S) on a list-like record
        self.args = (*self.args, value)

    @classmethod
    def qualname(cls) -> str:
        return f"{cls.module}.{cls.name}"


_RECORD_CLASSES: dict[tuple[str, str], type[_Record]] = {}
# fairseq's enums whose values are `auto()` numbers: a pickled member holds only (class, number), so its name comes
# from here (member i is number i + 1); the other enums (fairseq's ChoiceEnum) have their names as values
AUTO_ENUMS = {
    ("data2vec.data.modality", "Modality"): ("AUDIO", "IMAGE", "TEXT"),
    ("data2vec.models.mae_image_classification", "PredictionMode"): ("MEAN_POOLING", "CLS_TOKEN", "LIN_SOFTMAX"),
}


def _record_class(module: str, name: str) -> type[_Record]:
    key = (module, name)
    if key not in _RECORD_CLASSES:
        _RECORD_CLASSES[key] = type(name, (_Record,), {"module": module, "name": name})
    return _RECORD_CLASSES[key]


class _Guarded:
    """An allowed function as the pickle sees it: calls the function, refuses a BUILD (`__setstate__`) on it."""

    def __init__(self, fn: Any, qualname: str) -> None:
        self.fn, self.qualname = fn, qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise Data2VecError(f"the checkpoint sets attributes of the function '{self.qualname}'; data2vec reads only "
                            "config objects and tensors from it")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """`copyreg._reconstructor` (protocol 0 / 1 objects), for record classes only."""
    if isinstance(cls, type) and issubclass(cls, _Record):
        return cls.__new__(cls)
    raise Data2VecError(f"the checkpoint rebuilds a '{getattr(cls, '__name__', cls)}' object through "
                        "copyreg._reconstructor; data2vec reads only config objects and tensors from it")


def _resolve_global(module: str, name: str, source: str) -> Any:
    """The object a pickle's global `module.name` stands for, or a Data2VecError naming it."""
    if (module, name) in _TORCH:
        obj: Any = torch
        for part in module.split(".")[1:] + [name]:
            obj = getattr(obj, part)
        return _Guarded(obj, f"{module}.{name}") if isinstance(obj, types.FunctionType) else obj
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if (module, name) in _COLLECTIONS:
        return getattr(collections, name)
    if module == "builtins" and name in _BUILTIN_TYPES:
        return getattr(builtins, name)
    if (module, name) == ("copyreg", "_reconstructor"):
        return _Guarded(_reconstructor, "copyreg._reconstructor")
    if module.split(".")[0] in _RECORD_PACKAGES or (module, name) in _RECORD_GLOBALS:
        return _record_class(module, name)
    raise Data2VecError(f"'{source}' asks to load the global '{module}.{name}', which a fairseq checkpoint does not "
                        "hold; data2vec refuses it (reading a checkpoint never runs code from the file). Convert only "
                        "checkpoints from a source you trust to be fairseq's")


def _unpickler_module(source: str) -> types.SimpleNamespace:
    """A `pickle_module` for `torch.load` whose every global lookup goes through the allow-list."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # Python 2 names (`__builtin__.long`), mapped as pickle's own find_class maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            return _resolve_global(module, name, source)

    def load(file: Any, **kwargs: Any) -> Any:  # torch's legacy format unpickles its header with this
        return Unpickler(file, **kwargs).load()

    return types.SimpleNamespace(Unpickler=Unpickler, load=load, __name__="data2vec_restricted_pickle")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A fairseq checkpoint as plain data: dicts, lists, strings, numbers, None and tensors (on the CPU). ``cfg``
    (or ``args``) is a dict with interpolations resolved; ``model`` maps parameter names to tensors."""
    path = Path(path)
    if path.is_dir():
        raise Data2VecError(f"fairseq checkpoint '{path}' is a folder; give the .pt file fairseq's training wrote (a "
                            "Hugging Face model folder converts with --from-hf)")
    if not path.is_file():
        raise Data2VecError(f"fairseq checkpoint '{path}' does not exist; give the path of a .pt file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith("constants.pkl") for n in zf.namelist()):
                raise Data2VecError(f"'{path}' is a TorchScript archive, not a fairseq checkpoint; give the .pt file "
                                    "fairseq's training wrote")
    if path.suffix == ".safetensors":
        raise Data2VecError(f"'{path}' is a safetensors file (data2vec's or Hugging Face's weights), not a fairseq "
                            "checkpoint; give the .pt file fairseq's training wrote (a Hugging Face model folder "
                            "converts with --from-hf)")
    if tarfile.is_tarfile(path):  # torch would extract its members, links to any file included, and read them
        raise Data2VecError(f"'{path}' is in torch's pre-0.4 tar layout, which fairseq never wrote and data2vec does "
                            "not read; give the .pt file fairseq's training wrote")
    try:
        raw = torch.load(path, map_location="cpu", pickle_module=_unpickler_module(str(path)), weights_only=False)
        plain = to_plain(raw)  # RecursionError (a RuntimeError) where the pickle built a cycle
    except Data2VecError:
        raise
    except Exception as err:  # whatever a damaged or crafted file makes torch, pickle or an allowed callable raise
        raise Data2VecError(f"'{path}' is not a readable torch checkpoint ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''}); give a fairseq .pt file") from None
    if not isinstance(plain, dict) or "model" not in plain:
        raise Data2VecError(f"'{path}' holds no 'model' state dict; it is not a fairseq training checkpoint")
    for key in ("cfg", "args"):
        if isinstance(plain.get(key), dict):
            plain[key] = resolve_interpolations(plain[key])
    return plain


def to_plain(obj: Any) -> Any:
    """Records and containers -> plain data (see the module docstring); tensors and scalars unchanged."""
    if isinstance(obj, _Record):
        return _record_to_plain(obj)
    if isinstance(obj, dict):  # OrderedDict, defaultdict included
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj


def _record_to_plain(rec: _Record) -> Any:
    state = rec.state
    fields = state if isinstance(state, dict) else {}
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict state, slot state)
        fields = {**(state[0] or {}), **state[1]}
    if rec.name in ("DictConfig", "ListConfig"):
        content = fields.get("_content")
        if isinstance(content, dict):
            return {to_plain(k): to_plain(v) for k, v in content.items()}
        if isinstance(content, list):
            return [to_plain(v) for v in content]
        return to_plain(content)  # None, "???" (missing) or an interpolation string
    if rec.module.startswith("omegaconf") and "_val" in fields:  # AnyNode, StringNode, EnumNode, ...
        return to_plain(fields["_val"])
    if len(rec.args) == 1 and not fields:  # an enum member: Enum(value)
        value = rec.args[0]
        for (module, name), members in AUTO_ENUMS.items():
            if rec.name == name and rec.module.endswith(module) and isinstance(value, int) \
                    and 1 <= value <= len(members):
                return members[value - 1]
        return to_plain(value)
    if fields:  # argparse.Namespace, a dataclass: its fields (fairseq's `_name` included)
        return {k: to_plain(v) for k, v in fields.items()}
    if rec.args:
        return [to_plain(v) for v in rec.args]
    return rec.qualname()  # a bare class (typing.Any, an enum type): its name


_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def resolve_interpolations(cfg: dict) -> dict:
    """Values that are exactly ``${a.b.c}`` replaced by the value at that absolute path (recursively); a path
    that does not exist, or relative / composite interpolations, stay as they are."""

    def lookup(path: str, seen: tuple[str, ...]) -> Any:
        node: Any = cfg
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None, False
            node = node[part]
        return resolve(node, (*seen, path)), True

    def resolve(value: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(value, str):
            m = _INTERPOLATION.match(value)
            if m and m.group(1) not in seen:
                found, ok = lookup(m.group(1), seen)
                return found if ok else value
            return value
        if isinstance(value, dict):
            return {k: resolve(v, seen) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, seen) for v in value]
        return value

    return resolve(cfg)

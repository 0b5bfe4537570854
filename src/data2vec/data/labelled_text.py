"""Labelled text files, parsed once for probing, fine-tuning and evaluation: GLUE-style TSV (GLUE's own files,
read without quoting), CSV or JSON lines with a header row naming the columns (`sentence`, `sentence1` /
`sentence2`, `question` / `sentence`, `label`, ...), or a header-less TSV of ``label<TAB>text[<TAB>text2]``.
Column choices come from ``finetune.text_column`` / ``pair_column`` / ``label_column`` (names, or 0-based
numbers for a file without a header); errors name the file, line and fix.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from data2vec.errors import Data2VecError

# Header names tried in order when finetune.*_column is empty (GLUE's SST-2, CoLA with a header, MRPC, QQP,
# QNLI, RTE, MNLI and common JSON-lines layouts).
LABEL_COLUMNS = ("label", "gold_label", "is_duplicate", "quality")
TEXT_COLUMNS = ("text", "sentence1", "question1", "question", "premise", "#1 string", "text_a", "sentence")
PAIR_COLUMNS = ("text_pair", "sentence2", "question2", "hypothesis", "#2 string", "text_b", "sentence")


@dataclass
class TextRow:
    text: str
    pair: str | None
    label: str
    line: int  # 1-based line of the file, for error messages


def sort_labels(labels: set[str]) -> list[str]:
    """Class names in order: numerically when every label is an integer ("2" before "10"), else by name."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _pick(names: list[str], wanted: str, guesses: tuple[str, ...], role: str, path: Path, exclude: str | None = None,
          required: bool = True) -> str | None:
    """The column for `role`: the configured name (case-insensitive), else the first guess present."""
    lower = {n.lower(): n for n in names}
    if wanted:
        if wanted.lower() not in lower:
            raise Data2VecError(f"'{path}' has no column '{wanted}' (finetune.{role}_column); its columns are: "
                                f"{', '.join(names)}")
        return lower[wanted.lower()]
    for guess in guesses:
        if guess in lower and lower[guess] != exclude:
            return lower[guess]
    if required:
        raise Data2VecError(f"cannot tell which column of '{path}' holds the {role}; its columns are: "
                            f"{', '.join(names)}. Set finetune.{role}_column=NAME")
    return None


def _read_table(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-empty rows of a TSV (no quoting, as GLUE's files) or CSV file."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix.lower() == ".csv":
        reader = csv.reader(text.splitlines())
        rows = []
        for fields in reader:
            if any(f.strip() for f in fields):
                rows.append((reader.line_num, fields))
        return rows
    return [(n, raw.split("\t")) for n, raw in enumerate(text.splitlines(), start=1) if raw.strip()]


def read_text_rows(path: str | Path, text_column: str = "", pair_column: str = "", label_column: str = ""
                   ) -> list[TextRow]:
    """Rows of a labelled text file (see the module docstring); errors name the file, line and fix."""
    path = Path(path)
    if not path.is_file():
        raise Data2VecError(f"labelled text file '{path}' does not exist; give a .tsv, .csv or .jsonl file of "
                            "sentences and labels (data.path=... for training, data.eval_path=... for validation)")
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, text_column, pair_column, label_column)
    table = _read_table(path)
    if not table:
        raise Data2VecError(f"labelled text file '{path}' has no rows")
    first = [f.strip() for f in table[0][1]]
    named = (c for c in (text_column, label_column) if c and not c.isdigit())  # numbers are positions
    known = {c.lower() for c in (*LABEL_COLUMNS, *TEXT_COLUMNS, *PAIR_COLUMNS, *named)}
    if any(f.lower() in known for f in first):  # a header row
        label = first.index(_pick(first, label_column, LABEL_COLUMNS, "label", path))
        text_name = _pick(first, text_column, TEXT_COLUMNS, "text", path)
        text = first.index(text_name)
        pair_name = _pick(first, pair_column, PAIR_COLUMNS, "pair", path, exclude=text_name, required=False)
        pair = first.index(pair_name) if pair_name is not None else None
        table = table[1:]
    else:
        label, text, pair = _positions(len(first), text_column, pair_column, label_column, path)
    rows = []
    need = max(i for i in (label, text, pair) if i is not None) + 1
    for n, fields in table:
        if len(fields) < need:
            raise Data2VecError(f"{path}:{n}: expected at least {need} {'comma' if path.suffix == '.csv' else 'tab'}-"
                                f"separated fields, got {len(fields)}; fix the line or remove it")
        value = fields[label].strip()
        if not value:
            raise Data2VecError(f"{path}:{n}: the label is empty; every row needs a label")
        rows.append(TextRow(fields[text], fields[pair] if pair is not None else None, value, n))
    if not rows:
        raise Data2VecError(f"labelled text file '{path}' has a header but no rows")
    return rows


def _positions(count: int, text_column: str, pair_column: str, label_column: str, path: Path
               ) -> tuple[int, int, int | None]:
    """Column positions of a file without a header: configured 0-based numbers, else label, text[, pair]."""
    def number(value: str, role: str) -> int:
        if not value.isdigit():
            raise Data2VecError(f"'{path}' has no header row, so finetune.{role}_column must be a 0-based column "
                                f"number, not '{value}'; or add a header row naming the columns")
        return int(value)

    if text_column or label_column:
        if not (text_column and label_column):
            raise Data2VecError(f"'{path}' has no header row: set both finetune.text_column and "
                                "finetune.label_column (0-based column numbers)")
        return (number(label_column, "label"), number(text_column, "text"),
                number(pair_column, "pair") if pair_column else None)
    if count == 2:
        return 0, 1, None
    if count == 3:
        return 0, 1, 2
    if count < 2:
        raise Data2VecError(f"'{path}' has one column and no header row; give label<TAB>text lines, or a header "
                            "naming the text and label columns")
    raise Data2VecError(f"'{path}' has {count} columns and no header row; add a header naming the text and label "
                        "columns, or set finetune.text_column and finetune.label_column to 0-based column numbers")


def _read_jsonl(path: Path, text_column: str, pair_column: str, label_column: str) -> list[TextRow]:
    rows = []
    keys: tuple[str, str, str | None] | None = None
    for n, raw in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise Data2VecError(f"{path}:{n}: not valid JSON ({err.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise Data2VecError(f"{path}:{n}: expected a JSON object such as {{\"text\": ..., \"label\": ...}}")
        if keys is None:
            names = list(obj)
            text = _pick(names, text_column, TEXT_COLUMNS, "text", path)
            keys = (_pick(names, label_column, LABEL_COLUMNS, "label", path), text,
                    _pick(names, pair_column, PAIR_COLUMNS, "pair", path, exclude=text, required=False))
        label, text, pair = keys
        missing = [k for k in (label, text, pair) if k is not None and k not in obj]
        if missing:
            raise Data2VecError(f"{path}:{n}: the object has no '{missing[0]}' key, which the first line has")
        if obj[label] is None or str(obj[label]).strip() == "":
            raise Data2VecError(f"{path}:{n}: the label is empty; every row needs a label")
        rows.append(TextRow(str(obj[text]), str(obj[pair]) if pair is not None else None, str(obj[label]).strip(), n))
    if not rows:
        raise Data2VecError(f"labelled text file '{path}' has no rows")
    return rows

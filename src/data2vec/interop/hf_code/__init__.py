"""Model code that ``convert --to-hf`` copies into an export folder where no `transformers` class computes what
data2vec computed; `transformers` loads it with ``trust_remote_code=True``. The files here import
`transformers`; data2vec itself never imports them (only the tests do)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def code_files(*names: str) -> dict[str, str]:
    """{file name: source} of these files of this folder, for an export's `files` (written as text)."""
    return {name: (HERE / name).read_text() for name in names}

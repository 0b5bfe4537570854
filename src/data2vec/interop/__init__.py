"""Conversion to and from other libraries' formats (Hugging Face `transformers`: the package
:mod:`data2vec.interop.hf`, one module per modality)."""

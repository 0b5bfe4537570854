"""Conversion to and from other libraries' formats (Hugging Face `transformers`: :mod:`data2vec.interop.hf`)."""

"""Meta's fairseq data2vec checkpoints -> data2vec run folders.

:mod:`.reader` reads a fairseq ``.pt`` file as plain data without fairseq, hydra or omegaconf and without
running code from the file.
"""

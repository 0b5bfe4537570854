"""What the `data2vec` command does: one module per task, each callable from Python too."""

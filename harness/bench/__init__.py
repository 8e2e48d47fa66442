"""The bench: a grid of cells (model x method x sparsity x seed), each run in isolation, with resumable results."""

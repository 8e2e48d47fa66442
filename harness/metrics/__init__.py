"""Quality metrics of a (pruned) model: downstream accuracy through lm-evaluation-harness."""

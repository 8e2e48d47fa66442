"""Recovery fine-tuning after pruning: LoRA on the pruned model's remaining linear layers, merged back.

- :mod:`harness.recovery.config`: the settings (``RecoveryConfig``), each profile's defaults and the tool they
  follow, and the report a recovery writes (``RecoveryReport``);
- :mod:`harness.recovery.data`: the training text, refused when it shares text with the evaluation text;
- :mod:`harness.recovery.train`: the training loop (peft's LoRA) and the merge;
- :mod:`harness.recovery.cache`: recovered models cached by everything that determines them.

The result is an ordinary pruned checkpoint of the same structure (docs/recovery.md).
"""

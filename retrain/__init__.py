"""Dynamic training: pair mining, LoRA fine-tunes, evaluation gate, model registry."""

"""Callbacks for the training loops people already use, running the rules' hooks (`begin_training` once,
`after_step` after every optimizer step: the weight mirror's warm-up and schedule) and logging alignment
(`nowt.weight_angles`) through the framework's own logger.

- `nowt.integrations.hf.NowtCallback`: a Hugging Face `transformers.TrainerCallback` (`pip install nowt[hf]`).
- `nowt.integrations.lightning.NowtCallback`: a PyTorch Lightning `Callback` (`pip install nowt[lightning]`).

Importing this package imports neither framework; each submodule needs only its own.
"""

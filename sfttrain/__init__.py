"""sfttrain: train on exactly what sftdata tokenized and audited (TRL SFTTrainer + peft LoRA +
correct NEFTune + padding-free packing). `sfttrain run` / `sfttrain merge`; see docs/sfttrain.md.

    from sfttrain.config import Config
    from sfttrain.train import train      # train(Config(...)) -> Result
    from sfttrain.merge import merge      # merge(run_dir, out_dir)
"""

from sfttrain.config import Config

__all__ = ["Config"]

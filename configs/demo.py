"""The embedded demo: SOLV on procedurally generated videos, on a laptop CPU, no download.

  python -m solv_jax.main --config=configs/demo.py

Builds the synthetic dataset on first use (config.data.data_dir, default
~/tensorflow_datasets), evaluates the untrained model, trains, evaluates on held-out videos
and writes masks under workdir/demo/eval/ (step 0 under workdir/demo/eval_step0/).
Arguments as in solv_jax/schema.py (e.g. configs/demo.py:model=A for Table 3's model A).

DINOv2 is RANDOMLY initialised here (official init, LayerScale 1e-5), so no weights are
needed; set --config.model.encoder_weights to use converted ones (and
--config.model.encoder_blocks=0 to use all blocks). With LayerScale 1e-5 every block changes
the tokens by about 1e-5 of their size, so a random DINOv2's features are a random linear
map of the patch pixels plus its position embedding; the demo runs only the first block
(features within 1e-4 relative of all 12, measured 7e-6; tests/models/test_dinov2.py) to
halve the CPU step.

The videos: 2-4 single-coloured objects whose colours come from a palette of 3 per video,
so objects often share a colour, over a dim, textured 4-cell background. Colour alone
(k-means of the features) cannot tell same-coloured objects apart. Neither, within this
budget, does SOLV: see README.md for the measured scores, the token-grid ceiling
(`python -m solv_jax.baselines --config=configs/demo.py --baseline=kmeans,token_oracle`)
and why.
"""
import dataclasses

from solv_jax import schema
from solv_jax.data import synthetic


def get_config(arg=None):
  return schema.get_config(arg, recipe)


def recipe(config):
  config.data.name = config.data.tfds_name = "synthetic"
  # Every generator knob at its default first, so that each can be set on the command line
  # (--config.data.synthetic.num_train=100); the dataset's tag depends only on the values.
  config.data.synthetic.update(dataclasses.asdict(synthetic.SyntheticConfig()))
  config.data.resolution = (112, 112)  # 8 x 8 tokens
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.shuffle_buffer = 256
  config.data.synthetic.height = config.data.synthetic.width = 112
  config.data.synthetic.colours_per_object = (1, 1)
  config.data.synthetic.palette_size = 3
  config.data.synthetic.max_objects = 4
  config.data.synthetic.radius = (0.2, 0.32)
  config.data.synthetic.cross_prob = 0.2
  config.data.synthetic.background_cells = 4
  config.data.synthetic.background_contrast = 0.25
  config.data.synthetic.background_mix = 0.0
  config.data.synthetic.shading = 0.0  # > 0: lit objects (docs/demo.md)

  config.model.encoder_variant = "vits14"
  config.model.encoder_blocks = 1
  config.model.num_slots = 8
  # Smaller than the paper's (128, 1024, n = 2), so that 15 CPU minutes hold 3500 steps
  # (tools/demo_sweep.py: at equal wall time these learn faster than the larger model).
  config.model.slot_dim = 64
  config.model.decoder_hidden = 128
  config.data.num_context = 1  # windows of 3 frames
  # Flax's initialisation, not the authors' PyTorch one (the paper's recipes keep theirs): this
  # small model on a random encoder learns far less from the authors' (seed 0, 3500 steps:
  # FG-ARI 0.129 against 0.324 with Flax's, 2026-12-01; README).
  config.model.param_init = "flax"

  # The demo's small matrices run faster on XLA:CPU's default YNNPACK dots (0.13 s against
  # 0.15 s per step with them off, BENCHMARKS.md).
  config.xla_flags = ""

  config.train.batch_size = 8
  config.train.num_steps = 3500
  config.train.num_epochs = 10
  config.train.learning_rate = 4e-4
  config.train.log_every = 250
  config.train.checkpoint_every = 500
  config.eval.num_visualize = 6
  config.eval.untrained = True

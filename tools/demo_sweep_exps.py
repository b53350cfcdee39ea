"""The runs behind docs/demo.md's analysis of the demo (see tools/demo_sweep.py).

  python tools/demo_sweep.py tools/demo_sweep_exps.py OUT

Each run is configs/demo.py with its own step count (the schedules stretch with it) and the
overrides below, evaluated every `eval_every` steps and at the end on the first 16 validation
videos. Their scores are in docs/demo.md ("The sweep, re-run on the trainer").
"""


def run(name, steps, eval_every, km=False, data=None, **config):
  return dict(name=name, kmeans=km, config={
      "train.num_steps": steps, "train.eval_every": eval_every, "eval.untrained": False,
      "eval.num_visualize": 0, "data.eval_max_videos": 16,
      **{f"data.synthetic.{k}": v for k, v in (data or {}).items()}, **config})


EXPS = [
    # Longer training.
    run("recipe_5000", 5000, 1000, km=True),
    # Merging off in training and evaluation.
    run("recipe_nomerge", 2500, 0, **{"model.use_merge": False}),
    # Distinct colours (palette 12), unlit and lit (`shading`: a distant light, Lambert): does
    # brightness varying across an object hurt k-means of the features more than SOLV?
    run("palette12", 2500, 1000, km=True, data={"palette_size": 12}),
    run("shade8_p12", 2500, 1000, km=True, data={"shading": 0.8, "palette_size": 12}),
    # One colour per video, so only position and motion tell objects apart.
    run("palette1_demo", 2500, 1000, km=True, data={"palette_size": 1}),
    # ... with at most 3 smaller objects.
    run("palette1_small", 2500, 1000, km=True,
        data={"palette_size": 1, "max_objects": 3, "radius": (0.16, 0.24)}),
]

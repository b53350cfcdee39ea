"""The runs behind configs/demo.py's data and model choice (see tools/demo_sweep.py)."""
DEMO = {"colours_per_object": [1, 1], "palette_size": 3, "max_objects": 4,
        "radius": [0.2, 0.32], "cross_prob": 0.2, "background_cells": 4,
        "background_contrast": 0.25, "background_mix": 0.0}
DISTINCT = {**DEMO, "palette_size": 8}   # objects rarely share a colour
MODEL_A = {"model.spatial_binding": "vanilla", "model.temporal_binding": False,
           "model.merge": False}


def run(name, data, km=False, steps=3000, **config):
  return dict(name=name, data=data, res=112, kmeans=km, steps=steps, eval_at=[0, 1000, steps],
              eval_videos=12, config={"train.learning_rate": 4e-4, **config})


EXPS = [
    run("demo_E", DEMO, km=True),
    run("demo_A", DEMO, **MODEL_A),
    run("demo_E_k6", DEMO, **{"model.num_slots": 6}),
    run("demo_E_clamp", DEMO, **{"model.clamp_scales": True}),
    run("distinct_E", DISTINCT, km=True),
]

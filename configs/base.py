"""Kept for recipes written before the schema moved into the package: `from configs import
base` still works from the repository root. The schema is solv_jax/schema.py; new recipes
import it from there (`from solv_jax import schema`)."""
from solv_jax.schema import *  # noqa: F401,F403

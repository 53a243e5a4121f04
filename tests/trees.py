"""Random multi-layer parameter trees in the layouts users have."""

from flax.core import FrozenDict
import jax.numpy as jnp

FLAX_SHAPES = {
    "params": {
        "Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)},
        "Dense_0": {"kernel": (16, 8), "bias": (8,)},
        "LayerNorm_0": {"scale": (8,), "bias": (8,)},
        "Dense_1": {"kernel": (8, 3), "bias": (3,)},
    }
}


def random_like_shapes(rng, shapes=FLAX_SHAPES, dtype=jnp.float32, scale=1.0):
  if isinstance(shapes, dict):
    return {k: random_like_shapes(rng, v, dtype, scale) for k, v in shapes.items()}
  return jnp.asarray(scale * rng.normal(size=shapes), dtype)


def flax_tree(rng, dtype=jnp.float32, scale=1.0, frozen=False):
  tree = random_like_shapes(rng, FLAX_SHAPES, dtype, scale)
  return FrozenDict(tree) if frozen else tree


def mixed_tree(rng):
  """Tuples, lists, None leaves and mixed dtypes in one tree."""
  return {
      "blocks": [
          {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
           "b": jnp.asarray(rng.normal(size=3), jnp.float32)},
          {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.bfloat16), "b": None},
      ],
      "pair": (jnp.asarray(rng.normal(size=5), jnp.float32),
               jnp.asarray(rng.normal(size=(2, 2)), jnp.float16)),
  }

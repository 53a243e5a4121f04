"""normopt: normalized-gradient optimizers as chainable optax transformations."""

from normopt.aliases import adagrad_bng
from normopt.aliases import adagrad_ng
from normopt.aliases import adam_ng
from normopt.aliases import adam_ngadap
from normopt.aliases import s_sngd
from normopt.aliases import sgd_ng
from normopt.aliases import sgd_ngadap
from normopt.aliases import sngd
from normopt.blocks import block_norms
from normopt.blocks import block_partition
from normopt.normalization import block_normalize
from normopt.normalization import clip_block_norm
from normopt.normalization import ngadap_scale
from normopt.normalization import scale_by_adagrad_bng
from normopt.normalization import ScaleByAdagradBNGState
from normopt.schedules import stagewise_schedule

__version__ = "0.1.0"

__all__ = (
    "adagrad_bng",
    "adagrad_ng",
    "adam_ng",
    "adam_ngadap",
    "block_normalize",
    "block_norms",
    "block_partition",
    "clip_block_norm",
    "ngadap_scale",
    "s_sngd",
    "scale_by_adagrad_bng",
    "ScaleByAdagradBNGState",
    "sgd_ng",
    "sgd_ngadap",
    "sngd",
    "stagewise_schedule",
)

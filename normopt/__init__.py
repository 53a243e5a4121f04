"""normopt: normalized-gradient optimizers as chainable optax transformations."""

from normopt.adanorm import adanorm_rescale
from normopt.adanorm import AdaNormState
from normopt.adanorm import scale_by_adanorm_moments
from normopt.adanorm import scale_by_diffgrad
from normopt.adanorm import ScaleByAdaNormState
from normopt.adanorm import ScaleByDiffGradState
from normopt.aliases import adabelief_norm
from normopt.aliases import adam_norm
from normopt.aliases import diffgrad
from normopt.aliases import diffgrad_norm
from normopt.aliases import radam_norm
from normopt.aliases import adagrad_bng
from normopt.aliases import adagrad_ng
from normopt.aliases import adam_ng
from normopt.aliases import adam_ngadap
from normopt.aliases import nd_adam
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
from normopt.spherical import normalize_vectors
from normopt.spherical import scale_by_vector_adam
from normopt.spherical import ScaleByVectorAdamState
from normopt.spherical import spherical_project
from normopt.spherical import spherical_retract
from normopt import losses

__version__ = "0.1.0"

__all__ = (
    "losses",
    "nd_adam",
    "normalize_vectors",
    "scale_by_vector_adam",
    "ScaleByVectorAdamState",
    "spherical_project",
    "spherical_retract",
    "adabelief_norm",
    "adam_norm",
    "adanorm_rescale",
    "AdaNormState",
    "diffgrad",
    "diffgrad_norm",
    "radam_norm",
    "scale_by_adanorm_moments",
    "scale_by_diffgrad",
    "ScaleByAdaNormState",
    "ScaleByDiffGradState",
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

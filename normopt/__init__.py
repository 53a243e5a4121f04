"""normopt: normalized-gradient optimizers as chainable optax transformations."""

from normopt import losses
from normopt.adanorm import adanorm_rescale
from normopt.adanorm import AdaNormState
from normopt.adanorm import scale_by_adanorm_moments
from normopt.adanorm import scale_by_diffgrad
from normopt.adanorm import ScaleByAdaNormState
from normopt.adanorm import ScaleByDiffGradState
from normopt.aliases import adabelief_norm
from normopt.aliases import adagrad_bng
from normopt.aliases import adagrad_ng
from normopt.aliases import adam_ng
from normopt.aliases import adam_ngadap
from normopt.aliases import adam_norm
from normopt.aliases import diffgrad
from normopt.aliases import diffgrad_norm
from normopt.aliases import nd_adam
from normopt.aliases import radam_norm
from normopt.aliases import s_sngd
from normopt.aliases import sgd_ng
from normopt.aliases import sgd_ngadap
from normopt.aliases import sngd
from normopt.blocks import block_norm_map
from normopt.blocks import block_norms
from normopt.blocks import block_partition
from normopt.blocks import BlockSpec
from normopt.blocks import stacked_under
from normopt.blocks import StackedSpec
from normopt.layouts import Layouts
from normopt.layouts import layouts_from_shapes
from normopt.layouts import param_layouts
from normopt.layouts import ParamLayout
from normopt.muon_family import adamuon
from normopt.muon_family import normuon
from normopt.muon_family import scale_by_unit_rms
from normopt.muon_family import ScaleByUnitRmsState
from normopt.muon_recipe import muon
from normopt.muon_recipe import scale_by_muon_momentum
from normopt.muon_recipe import scale_by_width
from normopt.muon_recipe import ScaleByMuonMomentumState
from normopt.normalization import block_normalize
from normopt.normalization import clip_block_norm
from normopt.normalization import ngadap_scale
from normopt.normalization import scale_by_adagrad_bng
from normopt.normalization import ScaleByAdagradBNGState
from normopt.norms import NormSpec
from normopt.norms import polar_factors
from normopt.schedules import stagewise_schedule
from normopt.scion_lmo import scale_by_scion
from normopt.scion_lmo import ScaleByScionState
from normopt.scion_lmo import scion
from normopt.spherical import nd_adam_transform
from normopt.spherical import NDAdamState
from normopt.spherical import normalize_vectors
from normopt.spherical import scale_by_vector_adam
from normopt.spherical import ScaleByVectorAdamState
from normopt.spherical import spherical_project
from normopt.spherical import spherical_retract
from normopt.spherical import VectorAxes

__version__ = "0.1.0"

__all__ = (
    "AdaNormState",
    "BlockSpec",
    "NDAdamState",
    "Layouts",
    "NormSpec",
    "ParamLayout",
    "ScaleByAdaNormState",
    "ScaleByAdagradBNGState",
    "ScaleByDiffGradState",
    "ScaleByMuonMomentumState",
    "ScaleByScionState",
    "ScaleByUnitRmsState",
    "ScaleByVectorAdamState",
    "StackedSpec",
    "VectorAxes",
    "adabelief_norm",
    "adagrad_bng",
    "adagrad_ng",
    "adam_ng",
    "adam_ngadap",
    "adam_norm",
    "adamuon",
    "adanorm_rescale",
    "block_norm_map",
    "block_normalize",
    "block_norms",
    "block_partition",
    "clip_block_norm",
    "diffgrad",
    "diffgrad_norm",
    "layouts_from_shapes",
    "losses",
    "muon",
    "nd_adam",
    "nd_adam_transform",
    "ngadap_scale",
    "normalize_vectors",
    "normuon",
    "param_layouts",
    "polar_factors",
    "radam_norm",
    "s_sngd",
    "scale_by_adagrad_bng",
    "scale_by_adanorm_moments",
    "scale_by_diffgrad",
    "scale_by_muon_momentum",
    "scale_by_scion",
    "scale_by_unit_rms",
    "scale_by_vector_adam",
    "scale_by_width",
    "scion",
    "sgd_ng",
    "sgd_ngadap",
    "sngd",
    "spherical_project",
    "spherical_retract",
    "stacked_under",
    "stagewise_schedule",
)

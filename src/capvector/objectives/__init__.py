"""Auxiliary training objectives (spatial alignment; sub-goal prediction; latent reasoning) and the frozen teachers
that give their targets."""

from capvector.objectives.alignment import AlignmentProjector, SpatialAlignment, cosine_alignment_loss
from capvector.objectives.capture import LayerCapture
from capvector.objectives.features import feature_key, write_teacher_features
from capvector.objectives.latent import LatentReasoning
from capvector.objectives.subgoal import SubgoalPrediction, SubgoalTeacher
from capvector.objectives.teachers import (
    DepthGeometryTeacher,
    PrecomputedTeacher,
    Teacher,
    backproject_world,
    make_teacher,
    objective_name,
)

__all__ = [
    "AlignmentProjector",
    "DepthGeometryTeacher",
    "LatentReasoning",
    "LayerCapture",
    "PrecomputedTeacher",
    "SpatialAlignment",
    "SubgoalPrediction",
    "SubgoalTeacher",
    "Teacher",
    "backproject_world",
    "cosine_alignment_loss",
    "feature_key",
    "make_teacher",
    "objective_name",
    "objective_for",
    "write_teacher_features",
]


def objective_for(reads: str) -> type[SpatialAlignment | SubgoalPrediction]:
    """The objective class that supervises the token stream a teacher's targets are for."""
    return {"visual": SpatialAlignment, "queries": SubgoalPrediction, "thoughts": LatentReasoning}[reads]

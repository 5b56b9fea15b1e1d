"""Auxiliary training objectives (spatial alignment first) and the frozen teachers that give their targets."""

from capvector.objectives.alignment import AlignmentProjector, SpatialAlignment, cosine_alignment_loss
from capvector.objectives.capture import LayerCapture
from capvector.objectives.teachers import (
    DepthGeometryTeacher,
    PrecomputedTeacher,
    Teacher,
    backproject_world,
    feature_key,
    make_teacher,
    write_teacher_features,
)

__all__ = [
    "AlignmentProjector",
    "DepthGeometryTeacher",
    "LayerCapture",
    "PrecomputedTeacher",
    "SpatialAlignment",
    "Teacher",
    "backproject_world",
    "cosine_alignment_loss",
    "feature_key",
    "make_teacher",
    "write_teacher_features",
]

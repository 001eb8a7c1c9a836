"""trilay.frontends: neurosymbolic front ends on the engine (DeepProbLog, semantic loss, fuzzy)."""

from .fuzzy import FuzzyFormula
from .semantic_loss import Constraint, SemanticLoss

__all__ = ["Constraint", "FuzzyFormula", "SemanticLoss"]

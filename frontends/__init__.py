"""trilay.frontends: neurosymbolic front ends (DeepProbLog, semantic loss, fuzzy logic) on the engine."""

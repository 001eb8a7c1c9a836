"""trilay.frontends: neurosymbolic front ends on the engine (DeepProbLog, semantic loss, fuzzy)."""

"""Runnable examples of the frontends: ``python -m trilay.frontends.examples.<name>``."""

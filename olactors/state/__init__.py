"""The worker's own state that must hold alike on every worker: secrets, grants,
tokens, owners (kept in a state directory several workers may share)."""

from ._dir import Stamp, StateDir, StateDoc, state_path

__all__ = ["Stamp", "StateDir", "StateDoc", "state_path"]

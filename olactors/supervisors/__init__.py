"""Supervisors: restart strategies that make an instance a robust virtual sandbox."""

from ._supervisor import ChildHandle, ChildSpec, Restart, Unrecoverable, supervise

__all__ = ["ChildHandle", "ChildSpec", "Restart", "Unrecoverable", "supervise"]

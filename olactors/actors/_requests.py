"""A call on its way from the HTTP layer through a function to an instance."""

from __future__ import annotations

from dataclasses import dataclass

from ..sock import Invocation, InvocationResult
from ._calls import Reply


@dataclass(eq=False, slots=True)
class CallRequest:
    name: str
    invocation: Invocation
    request_id: str
    reply: Reply[InvocationResult]
    submitted: float

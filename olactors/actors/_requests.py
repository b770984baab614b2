"""A call on its way from the HTTP layer through a function to an instance."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._access import Access
from .._records import CallTrace
from ..sock import Invocation, InvocationResult
from ._calls import Reply


@dataclass(eq=False, slots=True)
class CallRequest:
    name: str
    invocation: Invocation
    request_id: str
    reply: Reply[InvocationResult]
    submitted: float
    #: Filled in by the function actor and the instance (see CallTrace).
    trace: CallTrace = field(default_factory=CallTrace)
    #: The function's access the call was admitted under (AccessGate), or
    #: None for a caller the gate does not judge (simulations, tests).  The
    #: function actor refuses to run private code for a call admitted as public.
    admitted: Access | None = None

"""Echo: returns the JSON event it was called with (``null`` for an empty body)."""


def f(event):
    return event

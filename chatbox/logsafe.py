"""Client-supplied text on its way into the log.

A path, an Origin or a forged X-Forwarded-For may carry ESC and other
control characters; written raw, they rewrite an operator's terminal or
forge log lines. Everything a client chose goes through `printable` first.
"""

__all__ = ["printable"]


def printable(value: object, limit: int = 200) -> str:
    """`value` as text with every non-printable character escaped as repr
    would (`\\x1b`, `\\n`, `\\u200b`), cut to about `limit` characters so one
    request cannot write a megabyte of log."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + "..." if cut else text

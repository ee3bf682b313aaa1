"""What a message may contain: v2's rule, plus being real text."""

__all__ = ["MAX_CONTENT_LENGTH", "is_valid_content"]

MAX_CONTENT_LENGTH = 4000


def is_valid_content(content: object) -> bool:
    """A string of 1..4000 characters (code points, not UTF-16 units).

    Codec-decoded strings never hold lone surrogates, so every accepted
    message can be stored and sent as UTF-8.
    """
    return isinstance(content, str) and 0 < len(content) <= MAX_CONTENT_LENGTH

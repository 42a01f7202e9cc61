"""Conversations as the API, batch lines and the server take them: checked before any template
renders them, so a bad turn is a BadInput naming it, never a template error."""
from .errors import BadInput
from .text import not_text

ROLES = ("system", "user", "assistant")


def check_messages(messages) -> list:
    """A conversation as chat templates expect it: turns with a known role and text, the last one
    the user's (the answer comes next). Anything else is BadInput, never a template error."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise BadInput("messages must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadInput(f"messages[{k}] must be an object with a \"role\" and a \"content\"")
        if m["role"] not in ROLES:
            raise BadInput(f"messages[{k}].role must be one of {', '.join(ROLES)}, got {m['role']!r:.40}")
        if not isinstance(m.get("content"), str):
            raise BadInput(f"messages[{k}].content must be a string")
        problem = not_text(m["content"])
        if problem:
            raise BadInput(f"messages[{k}].content {problem}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise BadInput("the last message must be the user's")
    if not any(m["content"].strip() for m in out if m["role"] == "user"):
        raise BadInput("the prompt is empty")
    return out

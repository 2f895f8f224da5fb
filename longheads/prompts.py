"""Prompt layouts. The document comes first so that every question about it shares the cached prefix."""

from __future__ import annotations

DEFAULT_SYSTEM = "You are a helpful assistant. Answer questions using only the document you are given."
# Asked once per document, its selection trace is the baseline of the page map: what the heads read whatever
# the question (SelectionTrace.top_chunks).
NEUTRAL_QUESTION = "What is this document about?"


def document_messages(document: str, question: str, system: str | None = DEFAULT_SYSTEM) -> list[dict]:
    """Chat messages that put a whole document before the question."""
    messages = [{"role": "system", "content": system}] if system else []
    content = f"<document>\n{document}\n</document>\n\nQuestion: {question}"
    messages.append({"role": "user", "content": content})
    return messages

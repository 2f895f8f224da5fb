"""LangChain integration of longheads: a chat model that reads a whole long document in one prompt, and a
PDF loader with page metadata.

    from langchain_longheads import ChatLongHeads, LongHeadsPDFLoader
"""

from langchain_longheads.chat_models import ChatLongHeads
from langchain_longheads.document_loaders import LongHeadsPDFLoader

__all__ = ["ChatLongHeads", "LongHeadsPDFLoader"]

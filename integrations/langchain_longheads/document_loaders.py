"""LongHeadsPDFLoader: a PDF as LangChain Documents with page metadata, read by `longheads.pdf`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document

from longheads.pdf import PDFDocument, PDFSource, read_pdf


class LongHeadsPDFLoader(BaseLoader):
    """Loads a PDF (path, bytes or binary file object) as one Document per page, or one for the whole file.

    Page documents carry `page` (0-based, as LangChain's PDF loaders), `page_number` (1-based), `page_label`
    (what the viewer shows), `total_pages`, `source` and `start_index` (offset of the page in the whole
    text). `mode="single"` gives one Document with the whole text, to put into a prompt as it is; its
    metadata keeps every page's offsets under `pages`. `pdf` holds the `PDFDocument` after loading, for the
    page map (`pdf.pages_for_trace(chat.get_engine().last_trace)`).
    """

    def __init__(self, source: PDFSource, *, password: str | None = None, mode: str = "page") -> None:
        if mode not in ("page", "single"):
            raise ValueError(f"mode={mode!r}: choose 'page' or 'single'")
        self.source = source
        self.password = password
        self.mode = mode
        self.pdf: PDFDocument | None = None

    def lazy_load(self) -> Iterator[Document]:
        # The whole file is read before the first Document is yielded: a damaged page fails the load
        # instead of leaving the caller with half a book.
        pdf = self.pdf = read_pdf(self.source, password=self.password)
        base: dict[str, Any] = {"source": pdf.name or "bytes", "total_pages": pdf.num_pages}
        if pdf.title:
            base["title"] = pdf.title
        if self.mode == "single":
            pages = [
                {"page_number": p.number, "page_label": p.label, "start": p.start, "end": p.end}
                for p in pdf.pages
            ]
            yield Document(page_content=pdf.text, metadata={**base, "pages": pages})
            return
        for p in pdf.pages:
            meta = {
                **base,
                "page": p.index,
                "page_number": p.number,
                "page_label": p.label,
                "start_index": p.start,
            }
            yield Document(page_content=p.text, metadata=meta)

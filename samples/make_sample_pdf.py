"""Writes the small sample the app ships: four pages on the Eddystone Lighthouse.

    python samples/make_sample_pdf.py            # rewrites apps/longheads_app/samples/eddystone.pdf

The first page is labelled "i" (a preface) and the others 1, 2, 3, so the sample also shows page labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

TITLE = "The Eddystone Lighthouse: Four Towers on One Rock"

PREFACE = [
    "These notes tell, in brief, the story of the lighthouses built on the Eddystone Rocks, a reef about "
    "fourteen kilometres south-west of Rame Head in the English Channel. The rocks are mostly covered at "
    "high tide, and they wrecked many ships sailing for Plymouth before any light stood on them.",
    "Four towers have stood on the reef. The first two were made largely of wood, the third was the granite "
    "tower of John Smeaton, and the fourth, designed by James Douglass, still guides ships today. The story "
    "is told in the order the towers were built.",
]

PAGES = [
    (
        "Winstanley's Towers",
        [
            "The first lighthouse on the Eddystone was the work of Henry Winstanley, a showman and engineer "
            "who had lost a ship of his own on the reef. Work began in 1696. The tower was octagonal and "
            "built of wood on a stone base anchored to the rock with iron stanchions.",
            "While the work went on, a French privateer carried Winstanley off to France. Louis XIV ordered "
            "his release, remarking that France was at war with England, not with humanity. The light was "
            "first lit on 14 November 1698.",
            "After a first winter at sea, Winstanley enlarged and strengthened the tower and gave it an "
            "ornate lantern. In November 1703 the Great Storm struck southern England. Winstanley was on the "
            "rock for repairs, and the whole tower was swept away with everyone in it.",
        ],
    ),
    (
        "Rudyerd's Wooden Tower",
        [
            "The second lighthouse was designed by John Rudyerd and completed in 1709. It was a smooth "
            "conical tower of timber built around a core of brick and "
            "granite, shaped so that the waves would "
            "slide past it. It stood for almost fifty years.",
            "In December 1755 the lantern at the top caught fire. The "
            "keeper, Henry Hall, who was ninety-four "
            "years old, fought the fire with buckets of water thrown upwards. He claimed to have swallowed "
            "molten lead from the melting roof, and he died twelve days later. A lump of lead was later "
            "found in his stomach.",
        ],
    ),
    (
        "Smeaton's Granite Tower",
        [
            "The third lighthouse was built by John Smeaton, often called the father of civil engineering "
            "in Britain. He modelled its shape on the trunk of an oak tree, broad at the base and narrowing "
            "upwards, and built it of granite and Portland stone blocks "
            "dovetailed into each other and into the rock.",
            "Smeaton also developed a hydraulic lime, a mortar that sets under water, which led in time to "
            "modern Portland cement. The light was first lit on 16 October 1759.",
            "The tower itself proved sound, but the rock beneath it was being undercut by the sea. In the "
            "1870s it was decided to build a new lighthouse on a nearby part of the reef. The upper part of "
            "Smeaton's tower was taken down and rebuilt on Plymouth Hoe, where it stands today as a "
            "memorial; the stump of its base still stands beside the present light.",
        ],
    ),
    (
        "The Douglass Tower",
        [
            "The fourth and present lighthouse was designed by James Douglass, using the methods Robert "
            "Stevenson had developed for rock lighthouses. It stands on a solid granite base and is about "
            "forty-nine metres tall, more than twice the height of "
            "Smeaton's tower. It was lit on 18 May 1882.",
            "A helipad was built on top of the lantern in 1980, and in 1982 the lighthouse became the first "
            "rock lighthouse of Trinity House to be automated, so that no keepers live on the reef any more. "
            "It is now monitored from the Trinity House centre at Harwich.",
        ],
    ),
]


def make_sample_pdf(path: str | Path) -> Path:
    from fpdf import FPDF  # the test extra

    path = Path(path)
    pdf = FPDF(format=(148, 210))  # A5 in millimetres
    pdf.set_title(TITLE)
    pdf.set_author("longheads samples")
    pdf.set_margins(16, 16, 16)
    pdf.set_auto_page_break(auto=True, margin=16)

    pdf.add_page()
    pdf.set_page_label(label_style="r")  # lower-case roman: the preface is page "i"
    pdf.set_font("Helvetica", "B", 15)
    pdf.multi_cell(0, 8, TITLE)
    pdf.ln(3)
    pdf.set_font("Helvetica", "I", 11)
    pdf.multi_cell(0, 6, "Preface")
    pdf.ln(1)
    pdf.set_font("Times", "", 11)
    for para in PREFACE:
        pdf.multi_cell(0, 5.5, para)
        pdf.ln(2)

    for i, (heading, paras) in enumerate(PAGES):
        pdf.add_page()
        if i == 0:
            pdf.set_page_label(label_style="D", label_start=1)  # the chronicle proper starts at 1
        pdf.set_font("Helvetica", "B", 13)
        pdf.multi_cell(0, 7, heading)
        pdf.ln(2)
        pdf.set_font("Times", "", 11)
        for para in paras:
            pdf.multi_cell(0, 5.5, para)
            pdf.ln(2)
        if pdf.page_no() != i + 2:
            raise RuntimeError(f"section {heading!r} ran over its page; shorten it")
    pdf.output(str(path))
    return path


BUNDLED = Path(__file__).resolve().parents[1] / "apps" / "longheads_app" / "samples" / "eddystone.pdf"

if __name__ == "__main__":
    out = make_sample_pdf(sys.argv[1] if len(sys.argv) > 1 else BUNDLED)
    print(f"wrote {out}")

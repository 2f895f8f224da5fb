"""Writes a long PDF of real prose with known facts on known pages (see `longheads.sample_pdf`).

    python samples/make_long_pdf.py out/long.pdf                 # about 100k tokens
    python samples/make_long_pdf.py out/short.pdf --tokens 16000 --facts 3 --positions 0.1,0.5,0.9
"""

import sys

from longheads.sample_pdf import main

if __name__ == "__main__":
    sys.exit(main())

"""Examples run at full size by default and at a small size with ``--small`` (the test suite does)."""
import sys

SMALL = "--small" in sys.argv[1:]


def size(full, small):
    """``small`` under ``--small``, else ``full``."""
    return small if SMALL else full

__version__ = "0.1.0"

# Version of the on-disk checkpoint format written by memtune.save (see io.py).
FORMAT_VERSION = 1

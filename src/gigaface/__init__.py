"""gigaface: find every face in a gigapixel crowd image and find one person among them."""
from gigaface.api import Capture, find, open_capture, scan
from gigaface.errors import GigafaceError
from gigaface.library.records import Face
from gigaface.search import Match

__version__ = "0.1.0"
__all__ = ["scan", "find", "open_capture", "Capture", "Face", "Match", "GigafaceError", "__version__"]

"""Frame sources: CORe50 NICv2, the user's image folders, the built-in synthetic stream, cameras and
video files."""
from .base import FrameBatch, Scenario, SourceError
from .core50 import CLASS_NAMES as CORE50_CLASS_NAMES, Core50Scenario, load_filelists
from .folder import FolderScenario
from .synthetic import SyntheticScenario
from .video import VideoSource, center_crop_resize

__all__ = ["FrameBatch", "Scenario", "SourceError", "Core50Scenario", "CORE50_CLASS_NAMES", "FolderScenario",
           "load_filelists", "SyntheticScenario", "VideoSource", "center_crop_resize"]

"""mmdet-speedup: a per-stage profiler for mmdet two-stage detectors, and the optimizations it measures."""
from . import environment, project, stages
from .choices import STOCK, Choices
from .equivalence import Agreement, compare, identical
from .masks import BoxMasks, FullMasks, LegacyMasks, RawMasks
from .models import Conditioning, UnsupportedModelError, Workload, build_detector
from .optimize import Predictor, optimize
from .pipeline import Detections, ImageLoadError, StagedPipeline, load_image, stock_test_step
from .profiler import Profiler, Repeats, prepare_inputs, stage_gap, stage_summary, stage_table
from .records import BENCHMARK_VERSION, Recorder
from .timing import StageTimer, benchmark, resolve_device, summarize

__version__ = "0.1.0"
__all__ = [
    "Agreement", "BENCHMARK_VERSION", "BoxMasks", "Choices", "Conditioning", "Detections", "FullMasks", "ImageLoadError",
    "LegacyMasks", "Predictor", "Profiler", "RawMasks", "Recorder", "Repeats", "STOCK", "StageTimer", "StagedPipeline",
    "UnsupportedModelError", "Workload", "benchmark", "build_detector", "compare", "environment", "identical",
    "load_image", "optimize", "prepare_inputs", "project", "resolve_device", "stage_gap", "stage_summary",
    "stage_table", "stages", "stock_test_step", "summarize",
]

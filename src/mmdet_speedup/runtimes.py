"""Runtime backends for the dense parts of the model: backbone, neck, the RPN head's convolutions and the RoI heads'
box and mask heads run in eager PyTorch (``torch``), OpenVINO (``openvino``) or ONNX Runtime (``onnxruntime``).

Only those parts change: RPN decoding and NMS (``predict_by_feat``), RoIAlign (the RoI extractors), box decoding,
the box head's NMS and every mask variant stay in PyTorch around them, and each part keeps its own stage range
(``backbone``, ``neck``, ``rpn``, ``roi_bbox``, ``roi_mask``).

A :class:`RuntimeModule` stands in for the torch module. On its first call for an input shape it exports the
module and compiles it. Backbone, neck and RPN head are compiled with static shapes (the padded input size changes
with the image's aspect ratio, and a new shape compiles again). In OpenVINO they are traced once per weights with
dynamic spatial dimensions (``_TRACED``), on the input cropped to ``TRACE_SIDE`` pixels a side
(``trace_example``), and each shape reshapes a copy and compiles it: tracing costs grow with the example while a
reshape and compile takes a fraction of a second, and the compiled model runs as fast as one traced at its own
shape (``benchmarks/openvino_trace.py`` measures both; its rows are in ``data/benchmarks/``). The trace is per
weights: it
serves every padded shape of the same model and the other precision; a model conditioned at another scale reuses
the neck's and RPN head's traces (no BatchNorm, the same weights) and traces its backbone again (its BatchNorm
statistics differ) on a crop as small.
ONNX Runtime exports each shape again. The RoI heads (``dynamic_batch=True``: box head
N x 256 x 7 x 7 -> (cls_score, bbox_pred), mask head N x 256 x 14 x 14 -> N x C x 28 x 28) are converted once with a
dynamic first dimension, so one conversion serves every number of RoIs N; N == 0 never reaches the runtime (the
torch module maps the empty input to empty outputs of the right shape). The compiled model is cached process-wide,
keyed by (a hash of the module's weights and structure, runtime, precision, input shapes with ``-1`` for a dynamic
dimension, threads, and for int8 the calibration set), so pipelines over the same weights share conversions.
The weights are read at conversion: like ``torch.compile(freezing=True)`` they are constants afterwards.
Each conversion's first-call cost (export and compile seconds, RSS growth; for int8 also quantization seconds and
calibration samples) is appended to ``RuntimeModule.conversions`` (``StagedPipeline.conversion_costs()``
collects them).

Precision. ``fp32`` runs every converted part in fp32; OpenVINO's CPU plugin picks bf16 on its own on a CPU with
AVX512_BF16/AMX, so fp32 sets ``INFERENCE_PRECISION_HINT=f32`` explicitly. ``bf16`` is OpenVINO's bf16 hint
(ONNX Runtime: fp32 only); what stays in torch keeps bf16 autocast. ``int8`` (OpenVINO only, ``QUANTIZED``) is
NNCF's post-training quantization (preset ``MIXED``: symmetric weights, asymmetric activations) of each converted
part, compiled with ``INFERENCE_PRECISION_HINT`` bf16 where the CPU has bf16 (``environment.cpu_has_bf16``) else
f32 for the ops left unquantized; the torch parts run fp32. int8 changes results: it is a speed lever to be
judged by its agreement, not an equivalent path. ``fp16`` (CUDA only) and the ``*-weights`` precisions are torch
levers: they need ``runtime="torch"``, as do ``channels_last`` and ``compile`` (a converted part always receives
and returns fp32 NCHW tensors). ``fold_bn`` is applied to the torch module before export (harmless: the
converters fold BatchNorm themselves). The non-torch runtimes run on the CPU only.

Calibration (int8). An int8 part is quantized with the inputs it receives from real images: ``calibrate(pipeline,
images)`` runs the pipeline over ``images`` with every int8 part in fp32 torch (so the whole pipeline is the fp32
torch one), records each part's inputs (at the padded shape, per image; for the RoI heads, that image's RoI
features), and later conversions quantize with them. Quantization runs once per part and calibration set on a
model converted with dynamic spatial dimensions (RoI heads: a dynamic N), so images of every padded shape
calibrate together; each input shape then gets a copy of the quantized model reshaped to its static shape and
compiled. Without ``calibrate`` a part quantizes with its own first input (one sample). The conversion record says
how many samples were used (``calibration_samples``) and whether they were given (``calibration``).

``runtime="auto"`` is decided at run time (``choices.MEASURED``): on the first input of each shape every
available runtime (torch as chosen, and those the precision allows) runs backbone, neck and RPN convolutions,
interleaved, ``AUTO_TRIALS`` times; a non-torch runtime is kept only if its median beats torch's by more than
``AUTO_MARGIN``. The RoI heads then run in the runtime that won for the image's features (they are not measured on
their own). The conversions it makes are cached, so the winner's are reused. Its price is every candidate's
conversion plus ``1 + AUTO_TRIALS`` forwards of each, on the first image of each shape (outside the stage ranges,
inside ``total``): about a second per conversion at CI sizes, but OpenVINO alone takes ~50 s for backbone and neck
at 1344x800 on two cores, so a profiler's warm-up must see every input shape first. int8 is never measured: it
needs ``runtime="openvino"`` (``Choices`` resolves ``runtime="auto"`` with int8 to it).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import math
import os
import resource
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .checks import InputError, choice

TORCH, OPENVINO, ONNXRUNTIME = "torch", "openvino", "onnxruntime"
RUNTIMES = (TORCH, OPENVINO, ONNXRUNTIME)
#: the pip package that provides each non-torch runtime
PACKAGES = {OPENVINO: "openvino", ONNXRUNTIME: "onnxruntime"}
#: what else a runtime's conversion imports (torch's ONNX exporter needs ``onnx``)
EXTRA = {ONNXRUNTIME: ("onnx",)}
#: short names for variant labels
SHORT = {TORCH: "torch", OPENVINO: "ov", ONNXRUNTIME: "ort"}
#: the float precisions each non-torch runtime runs (Choices.precision names)
PRECISIONS = {OPENVINO: ("fp32", "bf16"), ONNXRUNTIME: ("fp32",)}
INT8 = "int8"
#: the quantized precisions each non-torch runtime runs: precisions that exist only in a runtime (not in
#: ``precision.PRECISIONS``), calibrated post-training quantization that changes results
QUANTIZED = {OPENVINO: (INT8,), ONNXRUNTIME: ()}
#: what quantizes each quantized precision, and its pip package
QUANTIZER = {INT8: "nncf"}
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
#: the parts a runtime replaces, in pipeline order: convolutional stages (static shapes), then the RoI heads
#: (dynamic number of RoIs)
PARTS = ("backbone", "neck", "rpn_head")
ROI_PARTS = ("bbox_head", "mask_head")
#: compiled models kept per process (least recently used dropped first)
CACHE_SIZE = 24
#: quantized (not yet compiled) models kept per process
QUANTIZED_CACHE_SIZE = 8
#: OpenVINO models traced with dynamic spatial dimensions (not yet compiled) kept per process
TRACED_CACHE_SIZE = 8
#: OpenVINO traces a static-shape part on its input cropped to at most this many pixels a side (the first input;
#: the others in proportion): the graph has dynamic spatial dimensions, and tracing costs grow with the example
TRACE_SIDE = 256
#: how much faster than torch another runtime must be for ``auto`` to pick it
AUTO_MARGIN = 0.9
AUTO_TRIALS = 3
ONNX_OPSET = 17


class RuntimeMissingError(InputError):
    """A runtime was asked for that is not installed."""


class ConversionError(InputError):
    """A model part could not be exported to, or compiled by, a runtime."""


def check(name: str) -> str:
    return choice(name, RUNTIMES, "runtime")


def precisions(name: str) -> tuple[str, ...]:
    """Every precision ``name`` runs: its float precisions, then its quantized ones (torch: none listed here)."""
    check(name)
    return PRECISIONS.get(name, ()) + QUANTIZED.get(name, ())


def is_quantized(precision: str) -> bool:
    """Whether ``precision`` is a runtime's quantized precision (int8), not a torch precision."""
    return any(precision in q for q in QUANTIZED.values())


def runs(precision: str) -> tuple[str, ...]:
    """The non-torch runtimes that run a quantized ``precision`` (int8: OpenVINO)."""
    return tuple(r for r, q in QUANTIZED.items() if precision in q)


def compatible(name: str, device: torch.device | str | None = None, precision: str | None = None) -> str:
    """``name`` can run on ``device`` at ``precision`` (a Choices precision), else a one-line InputError."""
    check(name)
    if name == TORCH:
        if precision is not None and is_quantized(precision):
            raise InputError(f"precision {precision!r} is post-training quantization in a runtime, not a torch "
                             f"precision: use runtime={' or '.join(map(repr, runs(precision)))}")
        return name
    if device is not None and torch.device(device).type != "cpu":
        raise InputError(f"runtime {name!r} runs on the CPU only; on {torch.device(device).type} use runtime='torch'")
    if precision is not None and precision not in precisions(name):
        if is_quantized(precision):
            hint = f" ({precision} is {'/'.join(runs(precision))}'s post-training quantization)"
        else:
            hint = " (fp16 and the *-weights precisions are torch levers)" if precision != "bf16" else \
                " (use runtime='openvino' for bf16, or precision='fp32')"
        raise InputError(f"runtime {name!r} runs precision {' or '.join(precisions(name))}, not {precision!r}{hint}")
    return name


def load(name: str):
    """The runtime's Python module, or a RuntimeMissingError naming the pip package."""
    check(name)
    if name == TORCH:
        return torch
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise RuntimeMissingError(f"runtime {name!r} is not installed: pip install {PACKAGES[name]} "
                                  f"({type(e).__name__}: {e})") from None
    for extra in EXTRA.get(name, ()):
        try:
            importlib.import_module(extra)
        except ImportError as e:
            raise RuntimeMissingError(f"runtime {name!r} needs the {extra} package to export: pip install {extra} "
                                      f"({type(e).__name__}: {e})") from None
    return module


def load_quantizer(precision: str = INT8):
    """The package that quantizes ``precision`` (NNCF for int8), or a RuntimeMissingError naming it."""
    package = QUANTIZER[precision]
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise RuntimeMissingError(f"precision {precision!r} needs {package} to quantize: pip install {package} "
                                  f"({type(e).__name__}: {e})") from None


def available(name: str) -> bool:
    try:
        load(name)
        return True
    except RuntimeMissingError:
        return False


def candidates(device: torch.device | str, precision: str) -> tuple[str, ...]:
    """The runtimes ``auto`` measures: torch, and every installed runtime that runs ``precision`` on ``device``."""
    out = [TORCH]
    for name in RUNTIMES[1:]:
        try:
            compatible(name, device, precision)
        except InputError:
            continue
        if available(name):
            out.append(name)
    return tuple(out)


# -- the cache of compiled models -------------------------------------------------------------------------
@dataclass
class Compiled:
    """One converted part at one input shape: ``run`` maps fp32 arrays to fp32 arrays, ``spec`` rebuilds the
    torch module's output structure from them; ``native`` is the runtime's own object (OpenVINO's CompiledModel,
    ONNX Runtime's InferenceSession), for inspection."""

    run: Callable[[list[np.ndarray]], list[np.ndarray]]
    spec: Any
    cost: dict
    native: Any = None


_CACHE: "OrderedDict[tuple, Compiled]" = OrderedDict()
#: quantized ov.Models (dynamic shapes, not compiled) per (weights, calibration, dynamic dims): (model, spec, info)
_QUANTIZED: "OrderedDict[tuple, tuple[Any, Any, dict]]" = OrderedDict()
#: ov.Models traced with dynamic spatial dimensions per (weights, dynamic dims): (model, output spec, first input's
#: shape traced at)
_TRACED: "OrderedDict[tuple, tuple[Any, Any, str]]" = OrderedDict()


def clear_cache(runtime: str | None = None) -> None:
    """Forget compiled (and quantized) models (of ``runtime``, or all) and ``auto``'s measured choices."""
    for key in [k for k in _CACHE if runtime is None or k[1] == runtime]:
        del _CACHE[key]
    if runtime in (None, OPENVINO):
        _QUANTIZED.clear()
        _TRACED.clear()
    _AUTO_CHOICE.clear()


def _lru_put(cache: OrderedDict, key, value, size: int) -> None:
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)


def weights_hash(module: torch.nn.Module) -> str:
    """A digest of the module's structure (its repr) and every parameter and buffer (values, dtype, shape)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    for name, t in module.state_dict(keep_vars=False).items():
        t = t.detach().cpu().reshape(-1).contiguous()
        h.update(f"{name}:{t.dtype}:{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Flat(torch.nn.Module):
    """The module with positional tensor inputs and a flat tuple of outputs (what the exporters want); the
    output structure is recorded while the exporter traces it."""

    def __init__(self, module: torch.nn.Module, single: bool) -> None:
        super().__init__()
        self.module = module
        self.single = single
        self.spec = None

    def forward(self, *xs):
        out = self.module(xs[0] if self.single else tuple(xs))
        flat, self.spec = tree_flatten(out)
        return tuple(flat)


_OV_CORE: list = []


def _ov_core():
    if not _OV_CORE:
        _OV_CORE.append(load(OPENVINO).Core())
    return _OV_CORE[0]


def _dims(shape: Sequence[int], dynamic: Sequence[int]) -> list[int]:
    """``shape`` with ``-1`` at the ``dynamic`` dimensions (those the tensor has)."""
    return [-1 if d in dynamic else int(s) for d, s in enumerate(shape)]


def _ov_shapes(xs: Sequence[torch.Tensor], dynamic: Sequence[int]) -> list:
    ov = load(OPENVINO)
    return [ov.PartialShape(_dims(t.shape, dynamic)) for t in xs]


def trace_example(xs: Sequence[torch.Tensor], side: int | None = None) -> tuple[torch.Tensor, ...]:
    """``xs`` cropped (top left) for tracing: the first input to at most ``side`` (``TRACE_SIDE``) per spatial
    dimension, each other input by the same factor, rounded up, so that feature pyramids keep their strides."""
    side = TRACE_SIDE if side is None else side
    first = xs[0].shape[2:]
    out = []
    for t in xs:
        crop = [min(d, max(1, math.ceil(min(f, side) * d / f))) for d, f in zip(t.shape[2:], first)]
        out.append(t[(..., *(slice(0, c) for c in crop))].contiguous())
    return tuple(out)


def ov_convert(module, example_input, **kw):
    """``openvino.convert_model`` of a torch module, without torch's ``jit.trace`` deprecation warnings (OpenVINO
    traces through it; the warning is about torch's API, not about this conversion)."""
    ov = load(OPENVINO)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.trace")
        return ov.convert_model(module, example_input=example_input, **kw)


def ov_compile(model, hint: str, threads: int, performance: str = "LATENCY", requests: int | None = None):
    """Compile an ov.Model (or a model file's path) for the CPU, the one OpenVINO session builder of the library
    (the staged parts here, the deployed graph in ``deploy``): (compiled model, the precision the plugin runs)."""
    core = _ov_core()
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": performance}
    if performance == "THROUGHPUT" and requests is not None:
        config["PERFORMANCE_HINT_NUM_REQUESTS"] = requests
    compiled = core.compile_model(core.read_model(str(model)) if isinstance(model, (str, os.PathLike)) else model,
                                  "CPU", config)
    used = compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin runs (it may ignore the hint)
    return compiled, getattr(used, "to_string", lambda: str(used))()


def ort_session(model: bytes | str | os.PathLike, threads: int):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads, run sequentially: the one ONNX Runtime session
    builder of the library (the staged parts here, the deployed graph in ``deploy``)."""
    ort = load(ONNXRUNTIME)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def _ov_compile(model, hint: str, threads: int):
    """Compile an ov.Model for the CPU: (run, compiled model, the inference precision the plugin runs)."""
    compiled, used = ov_compile(model, hint, threads)
    n_out = len(compiled.outputs)

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        out = compiled(arrays, share_inputs=True, share_outputs=False)
        return [out[i] for i in range(n_out)]
    return run, compiled, used


def int8_ops(compiled) -> int:
    """How many ops of a compiled OpenVINO model execute in u8/i8 (its runtime model's ``runtimePrecision``)."""
    n = 0
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and info["runtimePrecision"].astype(str) in ("u8", "i8"):
            n += 1
    return n


def fake_quantize_ops(model) -> int:
    """How many FakeQuantize ops an ov.Model holds (NNCF's quantization points)."""
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


# The converters: export and compile one part. Each returns (run, export_s, compile_s, details); details["native"]
# is the runtime's compiled object (kept on ``Compiled``, not in the cost record).
# ``dynamic``: the input dimensions left dynamic (the RoI heads' number of RoIs), the rest static.
def _convert_openvino(flat: _Flat, xs: tuple[torch.Tensor, ...], precision: str, threads: int,
                      dynamic: tuple[int, ...] = ()):
    t0 = time.perf_counter()
    model = ov_convert(flat, xs, **({"input": _ov_shapes(xs, dynamic)} if dynamic else {}))
    t1 = time.perf_counter()
    run, compiled, used = _ov_compile(model, _OV_PRECISION[precision], threads)
    t2 = time.perf_counter()
    return run, t1 - t0, t2 - t1, {"inference_precision": used, "native": compiled}


def _convert_onnxruntime(flat: _Flat, xs: tuple[torch.Tensor, ...], precision: str, threads: int,
                         dynamic: tuple[int, ...] = ()):
    names = [f"input{i}" for i in range(len(xs))]
    kw: dict[str, Any] = {}
    if dynamic:  # name the outputs, so their first dimension is dynamic too
        outputs = [f"output{i}" for i in range(len(flat(*xs)))]
        kw = dict(output_names=outputs, dynamic_axes={n: {d: f"d{d}" for d in dynamic} for n in names + outputs})
    buf = io.BytesIO()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated (it still works on torch 2.14)
        torch.onnx.export(flat, xs, buf, opset_version=ONNX_OPSET, dynamo=False, input_names=names,
                          do_constant_folding=True, **kw)
    t1 = time.perf_counter()
    session = ort_session(buf.getvalue(), threads)
    t2 = time.perf_counter()

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays)))
    return run, t1 - t0, t2 - t1, {"onnx_mb": round(len(buf.getvalue()) / 2**20, 1), "native": session}


CONVERTERS: dict[str, Callable] = {OPENVINO: _convert_openvino, ONNXRUNTIME: _convert_onnxruntime}


@contextlib.contextmanager
def _quiet_nncf(nncf) -> Iterator[None]:
    """NNCF logs at INFO and draws progress bars on stdout: keep notebooks and test logs clean."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _inputs(arg) -> tuple[tuple[torch.Tensor, ...], bool]:
    """The module's one argument as a tuple of tensors, and whether it was a single tensor."""
    if isinstance(arg, torch.Tensor):
        return (arg,), True
    if isinstance(arg, (tuple, list)) and arg and all(isinstance(t, torch.Tensor) for t in arg):
        return tuple(arg), False
    raise TypeError(f"a runtime part takes a tensor or a sequence of tensors, got {type(arg).__name__}")


def _as_input(t: torch.Tensor) -> torch.Tensor:
    """fp32, NCHW-contiguous, on the CPU: what the converted model was traced with."""
    return t.detach().to("cpu", torch.float32).contiguous()


def _shape_text(shapes) -> str:
    return ", ".join("x".join("N" if s == -1 else str(s) for s in shape) for shape in shapes)


class RuntimeModule(torch.nn.Module):
    """``module`` run by ``runtime`` at ``precision``, converted on the first call per input shape.

    Called like the module (one tensor, or a tuple of tensors); returns torch tensors in the module's own output
    structure. Attributes it does not have (``predict_by_feat``, ``test_cfg``, ...) are the wrapped module's.
    ``dynamic_batch``: convert once with a dynamic first dimension (the RoI heads: N RoIs), and map an empty input
    (N == 0) to the torch module's empty outputs without calling the runtime.
    int8 (OpenVINO): quantized with ``calibration`` (``set_calibration``, or ``calibrate(pipeline, images)``), else
    with the first input converted.
    """

    def __init__(self, module: torch.nn.Module, runtime: str, precision: str = "fp32", name: str = "",
                 dynamic_batch: bool = False) -> None:
        compatible(runtime, "cpu", precision)
        if runtime == TORCH:
            raise ValueError("RuntimeModule wraps a module for a non-torch runtime")
        load(runtime)
        if is_quantized(precision):
            load_quantizer(precision)
        super().__init__()
        self.module = module
        self.runtime = runtime
        self.precision = precision
        self.name = name or type(module).__name__
        self.dynamic_batch = bool(dynamic_batch)
        #: one dict per conversion this module made (see ``conversion``)
        self.conversions: list[dict] = []
        #: int8: the calibration inputs (one tuple of fp32 arrays per call recorded), see ``set_calibration``
        self.calibration: list[tuple[np.ndarray, ...]] = []
        self._calibration_key: str | None = None
        self._recording: list | None = None
        self._recording_limit: int | None = None
        self._hash: str | None = None

    def extra_repr(self) -> str:
        dyn = ", dynamic_batch=True" if self.dynamic_batch else ""
        return f"runtime={self.runtime}, precision={self.precision}, name={self.name}{dyn}"

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("module", "_parameters", "_buffers", "_modules"):
                raise
            return getattr(super().__getattr__("module"), name)

    @property
    def dynamic(self) -> tuple[int, ...]:
        """The input dimensions the compiled model leaves dynamic."""
        return (0,) if self.dynamic_batch else ()

    @property
    def quantized(self) -> bool:
        return is_quantized(self.precision)

    def weights_key(self) -> str:
        if self._hash is None:
            self._hash = weights_hash(self.module)
        return self._hash

    def key(self, xs: Sequence[torch.Tensor]) -> tuple:
        shapes = tuple(tuple(_dims(t.shape, self.dynamic)) for t in xs)
        key = (self.weights_key(), self.runtime, self.precision, shapes, torch.get_num_threads())
        return key + (self.calibration_key(),) if self.quantized else key

    # -- int8 calibration ---------------------------------------------------------------------------------
    def set_calibration(self, samples: Iterable[Sequence[torch.Tensor | np.ndarray] | torch.Tensor]) -> int:
        """The inputs to quantize with (each one call's input: a tensor or a tuple of tensors or arrays, any padded
        shape; tensors are copied, fp32 arrays kept as given). Replaces earlier ones; a later conversion quantizes with them (a new cache key). Returns how many."""
        out = []
        for s in samples:
            s = (s,) if isinstance(s, (torch.Tensor, np.ndarray)) else tuple(s)
            out.append(tuple(t.detach().to("cpu", torch.float32).clone().numpy() if isinstance(t, torch.Tensor)
                             else np.ascontiguousarray(t, dtype=np.float32) for t in s))
        h = hashlib.blake2b(digest_size=16)
        for s in out:
            for a in s:
                h.update(f"{a.shape}".encode())
                h.update(np.ascontiguousarray(a).tobytes())
            h.update(b"|")
        self.calibration, self._calibration_key = out, (h.hexdigest() if out else None)
        return len(out)

    def calibration_key(self) -> str:
        """A digest of the calibration inputs, or ``"first-call"`` (quantized with the first input converted)."""
        return self._calibration_key or "first-call"

    @contextlib.contextmanager
    def recording(self, limit: int | None = None) -> Iterator[list]:
        """While open, calls run the torch module in fp32 and record their inputs (``limit``: at most that many);
        what was recorded becomes the calibration set on exit (``calibrate`` opens this on every int8 part)."""
        self._recording, self._recording_limit = [], limit
        recorded = self._recording
        try:
            yield recorded
        finally:
            self._recording = self._recording_limit = None
        self.set_calibration(recorded)

    # -- conversion ---------------------------------------------------------------------------------------
    def is_converted(self, arg) -> bool:
        """Whether a compiled model for this input's shapes is cached (by any module with the same weights)."""
        return self.key(_inputs(arg)[0]) in _CACHE

    def compiled(self, arg) -> Compiled:
        """The compiled part for this input's shapes: from the cache, else converted now."""
        xs, single = _inputs(arg)
        return self._compiled(tuple(_as_input(t) for t in xs), single)

    def _compiled(self, xs: tuple[torch.Tensor, ...], single: bool) -> Compiled:
        key = self.key(xs)
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        entry = self._convert(xs, single, key)
        _lru_put(_CACHE, key, entry, CACHE_SIZE)
        return entry

    def _convert(self, xs: tuple[torch.Tensor, ...], single: bool, key: tuple) -> Compiled:
        shape_text = _shape_text(key[3])
        flat = _Flat(self.module, single).eval()
        example = xs
        if self.dynamic_batch and xs[0].shape[0] < 2:  # trace with >= 2 rows, so nothing specializes on N == 1
            example = tuple(t.expand(2, *t.shape[1:]).contiguous() for t in xs)
        rss0, peak0 = _rss_mb(), _peak_rss_mb()
        t0 = time.perf_counter()
        try:
            # the exporters trace the fp32 module: a caller's autocast must not put casts into the graph
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                if self.quantized:
                    run, export_s, compile_s, details = self._convert_quantized(flat, example, xs, key[4])
                elif self.runtime == OPENVINO and not self.dynamic:
                    run, export_s, compile_s, details = self._convert_reshaped(flat, example, key[4])
                else:
                    run, export_s, compile_s, details = CONVERTERS[self.runtime](flat, example, self.precision,
                                                                                 key[4], self.dynamic)
        except RuntimeMissingError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConversionError(f"could not convert {self.name} ({type(self.module).__name__}) to {self.runtime} "
                                  f"at input shape {shape_text}: {type(e).__name__}: {first}") from e
        if flat.spec is None:
            raise ConversionError(f"could not convert {self.name} to {self.runtime}: the exporter never ran it")
        native = details.pop("native", None)
        cost = dict(part=self.name, runtime=self.runtime, precision=self.precision, shape=shape_text,
                    threads=key[4], export_s=export_s, compile_s=compile_s, seconds=time.perf_counter() - t0,
                    rss_growth_mb=_rss_mb() - rss0, peak_rss_growth_mb=max(0.0, _peak_rss_mb() - peak0), **details)
        self.conversions.append(cost)
        return Compiled(run, flat.spec, cost, native)

    def _convert_quantized(self, flat: _Flat, example: tuple[torch.Tensor, ...], xs: tuple[torch.Tensor, ...],
                           threads: int):
        """int8 (OpenVINO): the quantized model of this calibration set (quantized now, or cached), reshaped to
        this input's shapes and compiled with bf16 (where the CPU has it) or f32 for the unquantized ops."""
        from .environment import cpu_has_bf16

        model, spec, info, export_s = self._quantized_model(flat, example, xs)
        flat.spec = flat.spec or spec
        t0 = time.perf_counter()
        model = model.clone()
        want = _ov_shapes(xs, self.dynamic)
        if [str(i.partial_shape) for i in model.inputs] != [str(s) for s in want]:
            model.reshape({model.input(i): s for i, s in enumerate(want)})
        run, compiled, used = _ov_compile(model, "bf16" if cpu_has_bf16() else "f32", threads)
        return run, export_s, time.perf_counter() - t0, {"inference_precision": used, **info,
                                                         "int8_ops": int8_ops(compiled), "native": compiled}

    def _convert_reshaped(self, flat: _Flat, xs: tuple[torch.Tensor, ...], threads: int):
        """OpenVINO, a part with static shapes: the part traced once per weights with dynamic spatial dimensions
        (traced now on ``trace_example(xs)``, or cached), a copy reshaped to ``xs``'s shapes and compiled at the
        precision."""
        spatial = tuple(range(2, max(t.dim() for t in xs)))
        tkey = (self.weights_key(), spatial)
        hit = _TRACED.get(tkey)
        t0 = time.perf_counter()
        if hit is None:
            small = trace_example(xs)
            model = ov_convert(flat, small, input=_ov_shapes(small, spatial))
            traced_at = "x".join(map(str, small[0].shape))
            _lru_put(_TRACED, tkey, (model, flat.spec, traced_at), TRACED_CACHE_SIZE)
        else:
            _TRACED.move_to_end(tkey)
            model, spec, traced_at = hit
            flat.spec = flat.spec or spec
        t1 = time.perf_counter()
        model = model.clone()
        model.reshape({model.input(i): s for i, s in enumerate(_ov_shapes(xs, ()))})
        run, compiled, used = _ov_compile(model, _OV_PRECISION[self.precision], threads)
        return run, t1 - t0, time.perf_counter() - t1, {"inference_precision": used, "trace_reused": hit is not None,
                                                        "traced_at": traced_at, "native": compiled}

    def _quantized_model(self, flat: _Flat, example: tuple[torch.Tensor, ...], xs: tuple[torch.Tensor, ...]):
        """(quantized ov.Model with dynamic dims, output spec, record fields, export seconds): NNCF's quantization
        of the part converted with dynamic spatial dimensions (RoI heads: dynamic N), calibrated on
        ``calibration`` or, without one, on ``xs``; once per (weights, calibration set)."""
        qkey = (self.weights_key(), self.calibration_key(), self.dynamic_batch)
        hit = _QUANTIZED.get(qkey)
        if hit is not None:
            _QUANTIZED.move_to_end(qkey)
            model, spec, info = hit
            return model, spec, {**info, "quantize_s": 0.0, "quantized_reused": True}, 0.0
        nncf = load_quantizer(self.precision)
        samples = [list(s) for s in self.calibration] or [[t.numpy() for t in xs]]
        spatial = self.dynamic or tuple(range(2, max(t.dim() for t in xs)))  # every padded shape quantizes alike
        t0 = time.perf_counter()
        model = ov_convert(flat, example, input=_ov_shapes(example, spatial))
        t1 = time.perf_counter()
        with _quiet_nncf(nncf):
            model = nncf.quantize(model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(samples))
        info = dict(calibration_samples=len(samples), calibration="given" if self.calibration else "first call",
                    quantize_s=time.perf_counter() - t1, quantized_ops=fake_quantize_ops(model),
                    quantized_reused=False)
        _lru_put(_QUANTIZED, qkey, (model, flat.spec, info), QUANTIZED_CACHE_SIZE)
        return model, flat.spec, info, t1 - t0

    def _torch(self, xs: tuple[torch.Tensor, ...], single: bool):
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            return self.module(xs[0] if single else xs)

    def forward(self, arg):
        xs, single = _inputs(arg)
        xs = tuple(_as_input(t) for t in xs)
        if self._recording is not None:  # calibration: the fp32 torch forward, its input kept
            if self._recording_limit is None or len(self._recording) < self._recording_limit:
                self._recording.append(tuple(t.numpy().copy() for t in xs))
            return self._torch(xs, single)
        if self.dynamic_batch and xs[0].shape[0] == 0:  # no RoIs: nothing for the runtime to do
            return self._torch(xs, single)
        entry = self._compiled(xs, single)
        outs = entry.run([t.numpy() for t in xs])
        return tree_unflatten([torch.from_numpy(np.asarray(o)) for o in outs], entry.spec)


def wrap(module: torch.nn.Module | None, runtime: str, precision: str, name: str, dynamic_batch: bool = False):
    """``module`` for ``runtime`` (itself for torch, or when there is none, e.g. no neck or no mask head); a
    ModuleList (a cascade's per-stage heads) becomes a ModuleList of runtime modules."""
    if module is None or runtime == TORCH:
        return module
    if isinstance(module, torch.nn.ModuleList):
        return torch.nn.ModuleList([RuntimeModule(m, runtime, precision, f"{name}.{i}", dynamic_batch)
                                    for i, m in enumerate(module)])
    return RuntimeModule(module, runtime, precision, name, dynamic_batch)


def runtime_modules(modules: Iterable[Any]) -> list[RuntimeModule]:
    """The runtime modules among ``modules`` (ModuleLists opened), in order."""
    out = []
    for m in modules:
        if isinstance(m, RuntimeModule):
            out.append(m)
        elif isinstance(m, torch.nn.ModuleList):
            out += [x for x in m if isinstance(x, RuntimeModule)]
    return out


def weights_hash_of(parts: dict[str, Any]) -> str:
    """One digest over several modules' weights and structure (``auto``'s measurement key)."""
    h = hashlib.blake2b(digest_size=16)
    for name, m in parts.items():
        if m is not None:
            h.update(f"{name}:{weights_hash(m)}".encode())
    return h.hexdigest()


def conversions(modules: Sequence[Any]) -> list[dict]:
    """Every conversion the runtime modules among ``modules`` made, in order."""
    return [c for m in runtime_modules(modules) for c in m.conversions]


def calibrate(pipeline, images: Sequence[Any], limit: int | None = None) -> dict[str, int]:
    """Record the inputs ``pipeline``'s int8 parts receive over ``images`` (run through the whole pipeline, with
    every int8 part in fp32 torch) and make them those parts' calibration sets; the next conversion of each part
    quantizes with them. ``limit``: at most that many samples per part (calibration inputs are kept in memory:
    about 250 MB per image for backbone, neck and RPN head at 1344x800). Returns samples per part; {} when the
    pipeline has no int8 part."""
    from .checks import count

    if limit is not None:
        count(limit, "limit")
    modules = [m for m in pipeline.runtime_modules() if m.quantized]
    if not modules:
        return {}
    images = list(images)
    if not images:
        raise InputError("calibrate needs at least one image")
    with contextlib.ExitStack() as stack:
        for m in modules:
            stack.enter_context(m.recording(limit))
        with torch.no_grad():
            for image in images:
                pipeline(image)
    return {m.name: len(m.calibration) for m in modules}


# -- "auto": measured once per input shape ---------------------------------------------------------------
#: auto's measured winners and medians (seconds) per (weights, precision, threads, input shape, candidates)
_AUTO_CHOICE: dict[tuple, tuple[str, dict[str, float]]] = {}


def pick(key: tuple, runs: dict[str, Callable[[], Any]], trials: int | None = None) -> tuple[str, dict[str, float]]:
    """The fastest of ``runs`` (name -> one forward) for ``key``: measured once, interleaved after one warm-up
    (conversion) each, ``trials`` (default ``AUTO_TRIALS``) times; torch unless another wins by more than
    ``AUTO_MARGIN``. Returns (winner, medians in seconds)."""
    trials = AUTO_TRIALS if trials is None else trials
    if key not in _AUTO_CHOICE:
        if len(runs) == 1:
            _AUTO_CHOICE[key] = (next(iter(runs)), {})
        else:
            for fn in runs.values():
                fn()
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(trials):  # interleaved, so drift lands on every candidate alike
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            med = {name: float(np.median(t)) for name, t in times.items()}
            best = min(med, key=med.get)
            _AUTO_CHOICE[key] = (best if best == TORCH or med[best] < AUTO_MARGIN * med[TORCH] else TORCH, med)
    return _AUTO_CHOICE[key]

"""Runtime backends for the convolutional stages: backbone, neck and the RPN head's convolutions run in eager
PyTorch (``torch``), OpenVINO (``openvino``) or ONNX Runtime (``onnxruntime``).

Only those three parts change: RPN decoding and NMS (``predict_by_feat``), the RoI heads and every mask variant
stay in PyTorch around them, and each part keeps its own stage range (``backbone``, ``neck``, ``rpn``).

A :class:`RuntimeModule` stands in for the torch module. On its first call for an input shape it exports the
module (static shapes: the padded input size changes with the image's aspect ratio, and a new shape converts
again) and compiles it; the compiled model is cached process-wide, keyed by (a hash of the module's weights and
structure, runtime, precision, input shapes, threads), so pipelines over the same weights share conversions.
The weights are read at conversion: like ``torch.compile(freezing=True)`` they are constants afterwards.
Each conversion's first-call cost (export and compile seconds, RSS growth) is appended to
``RuntimeModule.conversions`` (``StagedPipeline.conversion_costs()`` collects them).

Precision. ``fp32`` runs every converted part in fp32; OpenVINO's CPU plugin picks bf16 on its own on a CPU with
AVX512_BF16/AMX, so fp32 sets ``INFERENCE_PRECISION_HINT=f32`` explicitly. ``bf16`` is OpenVINO's bf16 hint
(ONNX Runtime: fp32 only); the torch parts (RoI heads) keep bf16 autocast. ``fp16`` (CUDA only) and the
``*-weights`` precisions are torch levers: they need ``runtime="torch"``, as do ``channels_last`` and ``compile``
(a converted part always receives and returns fp32 NCHW tensors). ``fold_bn`` is applied to the torch module
before export (harmless: the converters fold BatchNorm themselves). The non-torch runtimes run on the CPU only.

``runtime="auto"`` is decided at run time (``choices.MEASURED``): on the first input of each shape every
available runtime (torch as chosen, and those the precision allows) runs backbone, neck and RPN convolutions,
interleaved, ``AUTO_TRIALS`` times; a non-torch runtime is kept only if its median beats torch's by more than
``AUTO_MARGIN``. The conversions it makes are cached, so the winner's are reused. Its price is every candidate's
conversion plus ``1 + AUTO_TRIALS`` forwards of each, on the first image of each shape (outside the stage ranges,
inside ``total``): about a second per conversion at CI sizes, but OpenVINO alone takes ~50 s for backbone and neck
at 1344x800 on two cores, so a profiler's warm-up must see every input shape first.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import resource
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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
#: the precisions each non-torch runtime runs (Choices.precision names)
PRECISIONS = {OPENVINO: ("fp32", "bf16"), ONNXRUNTIME: ("fp32",)}
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
#: the parts a runtime replaces, in pipeline order
PARTS = ("backbone", "neck", "rpn_head")
#: compiled models kept per process (least recently used dropped first)
CACHE_SIZE = 24
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


def compatible(name: str, device: torch.device | str | None = None, precision: str | None = None) -> str:
    """``name`` can run on ``device`` at ``precision`` (a Choices precision), else a one-line InputError."""
    check(name)
    if name == TORCH:
        return name
    if device is not None and torch.device(device).type != "cpu":
        raise InputError(f"runtime {name!r} runs on the CPU only; on {torch.device(device).type} use runtime='torch'")
    if precision is not None and precision not in PRECISIONS[name]:
        hint = " (fp16 and the *-weights precisions are torch levers)" if precision != "bf16" else \
            " (use runtime='openvino' for bf16, or precision='fp32')"
        raise InputError(f"runtime {name!r} runs precision {' or '.join(PRECISIONS[name])}, not {precision!r}{hint}")
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
    torch module's output structure from them."""

    run: Callable[[list[np.ndarray]], list[np.ndarray]]
    spec: Any
    cost: dict


_CACHE: "OrderedDict[tuple, Compiled]" = OrderedDict()


def clear_cache(runtime: str | None = None) -> None:
    """Forget compiled models (of ``runtime``, or all) and ``auto``'s measured choices."""
    for key in [k for k in _CACHE if runtime is None or k[1] == runtime]:
        del _CACHE[key]
    _AUTO_CHOICE.clear()


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


# The converters: export and compile one part. Each returns (run, export_s, compile_s, details).
def _convert_openvino(flat: _Flat, xs: tuple[torch.Tensor, ...], precision: str, threads: int):
    ov = load(OPENVINO)
    t0 = time.perf_counter()
    model = ov.convert_model(flat, example_input=xs)
    t1 = time.perf_counter()
    config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "INFERENCE_NUM_THREADS": int(threads),
              "PERFORMANCE_HINT": "LATENCY"}
    compiled = _ov_core().compile_model(model, "CPU", config)
    t2 = time.perf_counter()
    n_out = len(compiled.outputs)

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        out = compiled(arrays, share_inputs=True, share_outputs=False)
        return [out[i] for i in range(n_out)]
    used = compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin runs (it may ignore the hint)
    return run, t1 - t0, t2 - t1, {"inference_precision": getattr(used, "to_string", lambda: str(used))()}


def _convert_onnxruntime(flat: _Flat, xs: tuple[torch.Tensor, ...], precision: str, threads: int):
    ort = load(ONNXRUNTIME)
    names = [f"input{i}" for i in range(len(xs))]
    buf = io.BytesIO()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated (it still works on torch 2.14)
        torch.onnx.export(flat, xs, buf, opset_version=ONNX_OPSET, dynamo=False, input_names=names,
                          do_constant_folding=True)
    t1 = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    t2 = time.perf_counter()

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays)))
    return run, t1 - t0, t2 - t1, {"onnx_mb": round(len(buf.getvalue()) / 2**20, 1)}


CONVERTERS: dict[str, Callable] = {OPENVINO: _convert_openvino, ONNXRUNTIME: _convert_onnxruntime}


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


class RuntimeModule(torch.nn.Module):
    """``module`` run by ``runtime`` at ``precision``, converted on the first call per input shape.

    Called like the module (one tensor, or a tuple of tensors); returns torch tensors in the module's own output
    structure. Attributes it does not have (``predict_by_feat``, ``test_cfg``, ...) are the wrapped module's.
    """

    def __init__(self, module: torch.nn.Module, runtime: str, precision: str = "fp32", name: str = "") -> None:
        compatible(runtime, "cpu", precision)
        if runtime == TORCH:
            raise ValueError("RuntimeModule wraps a module for a non-torch runtime")
        load(runtime)
        super().__init__()
        self.module = module
        self.runtime = runtime
        self.precision = precision
        self.name = name or type(module).__name__
        #: one dict per conversion this module made (see ``conversion``)
        self.conversions: list[dict] = []
        self._hash: str | None = None

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, precision={self.precision}, name={self.name}"

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("module", "_parameters", "_buffers", "_modules"):
                raise
            return getattr(super().__getattr__("module"), name)

    def weights_key(self) -> str:
        if self._hash is None:
            self._hash = weights_hash(self.module)
        return self._hash

    def key(self, xs: Sequence[torch.Tensor]) -> tuple:
        shapes = tuple(tuple(int(s) for s in t.shape) for t in xs)
        return (self.weights_key(), self.runtime, self.precision, shapes, torch.get_num_threads())

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
        _CACHE[key] = entry
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return entry

    def _convert(self, xs: tuple[torch.Tensor, ...], single: bool, key: tuple) -> Compiled:
        convert = CONVERTERS[self.runtime]
        shapes = key[3]
        shape_text = ", ".join("x".join(map(str, s)) for s in shapes)
        flat = _Flat(self.module, single).eval()
        rss0, peak0 = _rss_mb(), _peak_rss_mb()
        t0 = time.perf_counter()
        try:
            # the exporters trace the fp32 module: a caller's autocast must not put casts into the graph
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                run, export_s, compile_s, details = convert(flat, xs, self.precision, key[4])
        except RuntimeMissingError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConversionError(f"could not convert {self.name} ({type(self.module).__name__}) to {self.runtime} "
                                  f"at input shape {shape_text}: {type(e).__name__}: {first}") from e
        if flat.spec is None:
            raise ConversionError(f"could not convert {self.name} to {self.runtime}: the exporter never ran it")
        cost = dict(part=self.name, runtime=self.runtime, precision=self.precision, shape=shape_text,
                    threads=key[4], export_s=export_s, compile_s=compile_s, seconds=time.perf_counter() - t0,
                    rss_growth_mb=_rss_mb() - rss0, peak_rss_growth_mb=max(0.0, _peak_rss_mb() - peak0), **details)
        self.conversions.append(cost)
        return Compiled(run, flat.spec, cost)

    def forward(self, arg):
        xs, single = _inputs(arg)
        xs = tuple(_as_input(t) for t in xs)
        entry = self._compiled(xs, single)
        outs = entry.run([t.numpy() for t in xs])
        return tree_unflatten([torch.from_numpy(np.asarray(o)) for o in outs], entry.spec)


def wrap(module: torch.nn.Module | None, runtime: str, precision: str, name: str):
    """``module`` for ``runtime`` (itself for torch, or when there is none, e.g. no neck)."""
    if module is None or runtime == TORCH:
        return module
    return RuntimeModule(module, runtime, precision, name)


def weights_hash_of(parts: dict[str, Any]) -> str:
    """One digest over several modules' weights and structure (``auto``'s measurement key)."""
    h = hashlib.blake2b(digest_size=16)
    for name, m in parts.items():
        if m is not None:
            h.update(f"{name}:{weights_hash(m)}".encode())
    return h.hexdigest()


def conversions(modules: Sequence[Any]) -> list[dict]:
    """Every conversion the runtime modules among ``modules`` made, in order."""
    return [c for m in modules if isinstance(m, RuntimeModule) for c in m.conversions]


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

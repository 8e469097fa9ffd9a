"""The peer row: the whole model as a user deploys it, exported by mmdeploy 1.3.1 and run by ONNX Runtime or OpenVINO.

``export_end2end`` exports the *same in-memory model* (a deep copy of it, so the same weights; no checkpoint is
written or reloaded) through mmdeploy's own ``mmdeploy.apis.onnx.export``, the function ``torch2onnx`` calls
after it has built a model from a checkpoint: mmdeploy's rewriters (``RewriterContext``, ``patch_model``) turn
mmdet's Mask R-CNN into one graph of standard ONNX ops, opset 11 (``RoiAlign``, ``NonMaxSuppression``, ``TopK``
...; no custom op), whose outputs are ``dets`` (1 x N x 5: boxes in the padded input's pixels and score),
``labels`` and ``masks`` (1 x N x 28 x 28 probabilities of the detected class). The deploy configs are mmdeploy
v1.3.1's ``configs/mmdet/instance-seg/instance-seg_onnxruntime_{static,dynamic}.py`` with their ``_base_`` files
merged (the PyPI wheel ships no configs); a path to any mmdeploy deploy config file works too.

``DeployedModel`` then does what mmdeploy's SDK-less ``End2EndModel`` does: the model config's test pipeline and
``DetDataPreprocessor`` on the host (the config is saved next to the ONNX), the graph, then drop the zero-score
rows, divide the boxes by the scale factor (no clipping) and paste each 28x28 probability map over the *whole*
original image with ``grid_sample``, threshold 0.5 (``End2EndModel.postprocessing_masks``, ported here so the
runtime needs neither mmdeploy nor torch's model, and checked equal to it by the tests).

How mmdeploy's graph differs from mmdet's own test path (read from mmdeploy 1.3.1's rewriters; so agreement is
high but not exact, by design of mmdeploy, not of this module):
- the RPN keeps zero-width/height proposals (mmdet drops them: ``min_bbox_size=0`` keeps only w, h > 0), runs one
  NMS over all FPN levels together (mmdet: per level, ``batched_nms`` by level) and drops proposals scoring under
  0.05 (mmdeploy's ``score_threshold``; mmdet's RPN has none). With random weights the first shows: boxes clipped
  to zero width at the image edge become detections (42 of 60 on astronaut.jpg at 320x192);
- the box head keeps, for each RoI, only the box regressed for its top-scoring class and scores every class on
  that box (mmdet decodes one box per class), then runs ONNX ``NonMaxSuppression`` per class with
  ``max_output_boxes_per_class=200`` and ``pre_top_k=5000`` (mmdeploy's post-processing defaults; score threshold,
  IoU threshold and ``max_per_img`` come from the model's ``test_cfg``);
- boxes are clipped to the padded input's size, not to the resized image's (mmdeploy sets ``img_shape`` to the
  input's shape);
- RoIAlign is opset-11's (no ``aligned`` attribute: mmdeploy shifts the RoIs by half a pixel instead).

What it takes on this stack (torch 2.14.1, mmdet 3.3.0, mmcv 2.1.0, onnx 1.23.2; see scripts/setup_mmdeploy.sh):
- ``pip install --no-deps mmdeploy==1.3.1 aenum``: the wheel pins ``protobuf<=3.20.2`` (onnx 1.23 needs a newer
  one; the export never touches protobuf's old API) and lists grpcio, multiprocess and prettytable, which the ONNX
  export path does not import. ``pip check`` then reports those four, and nothing about torch, mmdet, onnx,
  onnxruntime or openvino. The bundled ORT 1.15 custom-op library is not loaded: the graph has no custom op.
- two shims, active only during the export and undone after it: torch >= 2.9 made ``dynamo=True`` the default of
  ``torch.onnx.export``, and mmdeploy calls it without ``dynamo`` (on torch 2.14.1 that fails with
  ``ModuleNotFoundError: No module named 'onnxscript'``; with onnxscript it would bypass mmdeploy's symbolic
  rewrites, which need the TorchScript exporter), so the call gets ``dynamo=False``; and torch removed
  ``torch.onnx.symbolic_opset9._cast_Long``, which mmdeploy's RoIAlign symbolic imports (``ImportError: cannot
  import name '_cast_Long' from 'torch.onnx.symbolic_opset9'``), so an equivalent (an ONNX ``Cast`` to int64) is
  put there while exporting.
- mmdeploy's optional TorchScript graph optimizer (``optimize=True`` in its configs) is not in the PyPI wheel;
  mmdeploy logs "Can not optimize model" and exports without it, as for any user of that wheel.

OpenVINO: mmdeploy's own OpenVINO backend needs the retired ``openvino-dev`` 2022.3 API; OpenVINO 2026 reads the
same ONNX (``ov.Core().read_model``). Its CPU plugin runs bf16 by default on AVX512_BF16/AMX CPUs, so the
precision hint is always set explicitly (``f32`` or ``bf16``).

Throughput: ``DeployedModel(..., runtime="openvino", hint="THROUGHPUT")`` compiles with OpenVINO's
``PERFORMANCE_HINT=THROUGHPUT`` (the plugin splits ``threads`` over several streams) and reads back
``OPTIMAL_NUMBER_OF_INFER_REQUESTS``; :func:`throughput` then keeps that many infer requests in flight
(``openvino.AsyncInferQueue``) over a list of images and reports images/s, for a user serving many images rather
than one at a time. ONNX Runtime's CPU provider has no such mode (one session, one run at a time).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import queue
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import stages as S
from .checks import InputError, choice, count
from .masks import FullMasks
from .pipeline import Detections, ImageLike, load_image
from .timing import NullTimer

GRAPH = S.GRAPH  # the ONNX graph's run, timed between ``data_preprocessor`` and ``mask_postprocess``
RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
#: OpenVINO's ``PERFORMANCE_HINT``: one request as fast as possible, or as many images per second as possible.
HINTS = ("LATENCY", "THROUGHPUT")
MMDEPLOY_VERSION = "1.3.1"

_ONNX_CONFIG = dict(type="onnx", export_params=True, keep_initializers_as_inputs=False, opset_version=11,
                    save_file="end2end.onnx", input_names=["input"], output_names=["dets", "labels", "masks"],
                    input_shape=None, optimize=True)
_CODEBASE_CONFIG = dict(type="mmdet", task="ObjectDetection", model_type="end2end",
                        post_processing=dict(score_threshold=0.05, confidence_threshold=0.005, iou_threshold=0.5,
                                             max_output_boxes_per_class=200, pre_top_k=5000, keep_top_k=100,
                                             background_label_id=-1, export_postprocess_mask=False))
_DYNAMIC_AXES = {"input": {0: "batch", 2: "height", 3: "width"}, "dets": {0: "batch", 1: "num_dets"},
                 "labels": {0: "batch", 1: "num_dets"},
                 "masks": {0: "batch", 1: "num_dets", 2: "height", 3: "width"}}
#: mmdeploy v1.3.1's instance-seg ONNX Runtime deploy configs, ``_base_`` files merged (as mmengine merges them).
DEPLOY_CONFIGS: dict[str, dict] = {
    "instance-seg_onnxruntime_static": dict(onnx_config=_ONNX_CONFIG, codebase_config=_CODEBASE_CONFIG,
                                            backend_config=dict(type="onnxruntime")),
    "instance-seg_onnxruntime_dynamic": dict(onnx_config=dict(_ONNX_CONFIG, dynamic_axes=_DYNAMIC_AXES),
                                             codebase_config=_CODEBASE_CONFIG,
                                             backend_config=dict(type="onnxruntime")),
}


class Export(NamedTuple):
    path: Path
    seconds: float


def deploy_config(name_or_path: str | os.PathLike):
    """One of ``DEPLOY_CONFIGS`` by name, or an mmdeploy deploy config file, as an mmengine ``Config``."""
    from mmengine.config import Config

    key = str(name_or_path)
    key = key[:-3] if key.endswith(".py") and not Path(key).is_file() else key
    if key in DEPLOY_CONFIGS:
        return Config(copy.deepcopy(DEPLOY_CONFIGS[key]))
    if Path(name_or_path).is_file():
        cfg = Config.fromfile(str(name_or_path))
        if "onnx_config" not in cfg or "codebase_config" not in cfg:
            raise InputError(f"{name_or_path} is not an mmdeploy ONNX deploy config (no onnx_config/codebase_config)")
        return cfg
    raise InputError(f"unknown deploy config {key!r}; choose from {', '.join(DEPLOY_CONFIGS)} or give a file")


def _cast_long(g, input, non_blocking):  # what torch < 2.9 had as symbolic_opset9._cast_Long
    return g.op("Cast", input, to_i=7)  # TensorProto.INT64


@contextlib.contextmanager
def _torchscript_export():
    """While mmdeploy exports: ``torch.onnx.export`` defaults to the TorchScript exporter, ``_cast_Long`` exists."""
    import torch.onnx
    import torch.onnx.symbolic_opset9 as opset9

    export = torch.onnx.export
    added = not hasattr(opset9, "_cast_Long")
    torch.onnx.export = functools.partial(export, dynamo=False)
    if added:
        opset9._cast_Long = _cast_long
    try:
        yield
    finally:
        torch.onnx.export = export
        if added:
            del opset9._cast_Long


@contextlib.contextmanager
def _quiet():
    """mmdeploy's INFO lines, its "Can not optimize model" warning (its optional TorchScript optimizer is not in
    the wheel), mmengine's registry-scope warning, TracerWarnings and torch.onnx's deprecation: not shown."""
    from mmdeploy.utils import get_root_logger
    from mmengine.logging import MMLogger

    loggers = [get_root_logger(), MMLogger.get_current_instance()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example_image(image) -> np.ndarray:
    """An example image, or for an ``(h, w)`` pair a seeded noise image of that size."""
    if isinstance(image, tuple) and len(image) == 2 and all(isinstance(v, int) for v in image):
        h, w = count(image[0], "image height"), count(image[1], "image width")
        return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return load_image(image)


def _model_inputs(cfg, data_preprocessor, img: np.ndarray) -> tuple[Tensor, list]:
    """mmdeploy's ``create_input``: the config's test pipeline (in-memory image), then the data preprocessor."""
    from .preprocess import test_pipeline

    data = test_pipeline(SimpleNamespace(cfg=cfg))(dict(img=img, img_id=0))
    out = data_preprocessor(dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]]), False)
    return out["inputs"], out["data_samples"]


def export_end2end(model, image: ImageLike | tuple[int, int], path: str | os.PathLike, *,
                   deploy_cfg: str | os.PathLike = "instance-seg_onnxruntime_static") -> Export:
    """Export ``model`` (its weights as they are in memory) with mmdeploy to ``path`` (an ``.onnx`` file).

    ``image`` (or an ``(h, w)`` pair: a seeded noise image) goes through the model's test pipeline to give the
    example input; a static deploy config fixes the graph's input to that padded size. Next to the ONNX go the
    model config (``<stem>.model_cfg.py``, for the pre-processing) and ``<stem>.json`` (what was exported, how,
    with which versions). Returns the ONNX path and the export's seconds (tracing and writing the file).
    """
    cfg = deploy_config(deploy_cfg)  # refuse a bad name before any work
    try:
        import mmdeploy
        from mmdeploy.apis.core.pipeline_manager import no_mp
        from mmdeploy.apis.onnx import export
        from mmdeploy.codebase import import_codebase
        from mmdeploy.utils import Codebase, get_backend, get_dynamic_axes, get_onnx_config, is_dynamic_shape
    except ImportError as e:
        raise InputError(f"mmdeploy is not installed ({e}); run scripts/setup_mmdeploy.sh") from e
    path = Path(path)
    if path.suffix != ".onnx":
        raise InputError(f"the export path must end in .onnx, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        import_codebase(Codebase.MMDET)  # registers mmdeploy's mmdet rewriters

    m = copy.deepcopy(model).cpu().eval()  # mmdeploy patches the model it exports; the caller's stays as it is
    inputs, samples = _model_inputs(m.cfg, m.data_preprocessor, _example_image(image))
    onnx_cfg = get_onnx_config(cfg)
    names = list(onnx_cfg["input_names"]) + list(onnx_cfg["output_names"])
    start = time.perf_counter()
    with _quiet(), _torchscript_export(), no_mp():
        export(m, inputs, output_path_prefix=str(path.with_suffix("")), backend=get_backend(cfg).value,
               input_metas={"data_samples": samples, "mode": "predict"}, context_info=dict(deploy_cfg=cfg),
               input_names=onnx_cfg["input_names"], output_names=onnx_cfg["output_names"],
               opset_version=onnx_cfg.get("opset_version", 11), dynamic_axes=get_dynamic_axes(cfg, names),
               verbose=False, keep_initializers_as_inputs=onnx_cfg.get("keep_initializers_as_inputs", True),
               optimize=onnx_cfg.get("optimize", False))
    seconds = time.perf_counter() - start
    try:
        from mmdeploy.backend.torchscript import ts_optimizer  # noqa: F401
        ts_optimized = bool(onnx_cfg.get("optimize", False))
    except ImportError:
        ts_optimized = False
    model.cfg.dump(str(_cfg_path(path)))
    meta = dict(deploy_cfg=str(deploy_cfg), dynamic=bool(is_dynamic_shape(cfg)), input_shape=list(inputs.shape),
                output_names=list(onnx_cfg["output_names"]), opset=onnx_cfg.get("opset_version", 11),
                export_seconds=seconds, ts_optimizer=ts_optimized,
                model=getattr(model, "mmdet_speedup_config", type(model).__name__),
                versions=dict(mmdeploy=mmdeploy.__version__, torch=torch.__version__))
    _meta_path(path).write_text(json.dumps(meta, indent=1))
    return Export(path, seconds)


def _cfg_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".model_cfg.py")


def _meta_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def paste_masks(bboxes: Tensor, probs: Tensor, img_w: int, img_h: int) -> Tensor:
    """mmdeploy 1.3.1's ``End2EndModel.postprocessing_masks``: each (M x M) probability map resampled over the
    whole ``img_h x img_w`` image at its box (original-image pixels), one ``grid_sample`` per detection."""
    if len(bboxes) == 0:
        return torch.zeros(0, img_h, img_w, dtype=torch.float32)
    out = []
    for box, mask in zip(bboxes, probs):
        img_y = torch.arange(0, img_h, dtype=torch.float32) + 0.5
        img_x = torch.arange(0, img_w, dtype=torch.float32) + 0.5
        x0, y0, x1, y1 = box
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1
        img_x[torch.isinf(img_x)] = 0
        img_y[torch.isinf(img_y)] = 0
        gx = img_x[None, :].expand(img_y.size(0), img_x.size(0))
        gy = img_y[:, None].expand(img_y.size(0), img_x.size(0))
        grid = torch.stack([gx, gy], dim=2)
        out.append(F.grid_sample(mask.to(torch.float32)[None, None], grid[None], align_corners=False))
    return torch.cat(out, 1).squeeze(0)


class DeployedModel:
    """An exported graph in ONNX Runtime or OpenVINO, with mmdeploy's host pre- and post-processing.

    ``__call__(image, timer=None)`` returns a :class:`Detections` (boxes in original-image pixels, ``FullMasks``)
    and times ``load``, ``preprocess`` (test pipeline), ``data_preprocessor`` (normalize, pad), ``graph`` and
    ``mask_postprocess`` (drop empty rows, rescale boxes, paste masks) in ``timer``'s stages. ``load_seconds``:
    reading and compiling the graph; ``inference_precision``: what the runtime reports it runs (OpenVINO's
    ``INFERENCE_PRECISION_HINT`` read back from the compiled model).

    ``hint`` (OpenVINO only for ``"THROUGHPUT"``): the ``PERFORMANCE_HINT`` it is compiled with. ``requests``: how
    many infer requests :func:`throughput` keeps in flight; by default OpenVINO's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``
    for the hint (given with ``THROUGHPUT``, it is also passed as ``PERFORMANCE_HINT_NUM_REQUESTS``, so the plugin
    makes no more streams than that). ``optimal_requests``: what OpenVINO reports (1 for ONNX Runtime).
    """

    def __init__(self, onnx_path: str | os.PathLike, runtime: str = "onnxruntime", precision: str = "fp32",
                 threads: int | None = None, *, hint: str = "LATENCY", requests: int | None = None) -> None:
        self.runtime = choice(runtime, RUNTIMES, "runtime")
        self.precision = choice(precision, PRECISIONS, "precision")
        self.hint = choice(hint, HINTS, "hint")
        self.threads = count(torch.get_num_threads() if threads is None else threads, "threads")
        if self.runtime == "onnxruntime" and (self.hint != "LATENCY" or requests is not None):
            raise InputError("ONNX Runtime has no throughput mode (one session runs one request at a time); use "
                             "runtime='openvino' for hint='THROUGHPUT' or several requests")
        self._requests = None if requests is None else count(requests, "requests")
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise InputError(f"ONNX file not found: {self.path}")
        if not _meta_path(self.path).is_file() or not _cfg_path(self.path).is_file():
            raise InputError(f"{self.path} has no {_meta_path(self.path).name} / {_cfg_path(self.path).name} beside "
                             "it: export it with export_end2end")
        self.meta = json.loads(_meta_path(self.path).read_text())
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import Config

        register_all_modules()
        self.cfg = Config.fromfile(str(_cfg_path(self.path)))
        self.data_preprocessor = MODELS.build(self.cfg.model.data_preprocessor).eval()
        from .preprocess import test_pipeline

        self.pipeline = test_pipeline(SimpleNamespace(cfg=self.cfg))
        start = time.perf_counter()
        self._run = self._onnxruntime() if self.runtime == "onnxruntime" else self._openvino()
        self.load_seconds = time.perf_counter() - start

    def __repr__(self) -> str:
        hint = "" if self.hint == "LATENCY" else f", hint={self.hint}, requests={self.requests}"
        return f"DeployedModel({self.path.name}, {self.runtime}, {self.precision}, threads={self.threads}{hint})"

    def _onnxruntime(self):
        from .runtimes import ort_session

        if self.precision != "fp32":
            raise InputError("ONNX Runtime's CPU provider runs this graph in fp32 only; use runtime='openvino' "
                             "for bf16")
        sess = ort_session(self.path, self.threads)
        self.inference_precision = "f32"
        self.optimal_requests = self.requests = 1
        self._compiled = None
        names = [o.name for o in sess.get_outputs()]
        return lambda x: dict(zip(names, sess.run(names, {"input": x})))

    def _openvino(self):
        import openvino as ov

        core = ov.Core()
        if self.precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise InputError("this CPU has no bf16 support in OpenVINO (no AVX512_BF16 or AMX); use fp32")
        from .runtimes import ov_compile

        compiled, self.inference_precision = ov_compile(self.path, "f32" if self.precision == "fp32" else "bf16",
                                                        self.threads, self.hint, self._requests)
        self.optimal_requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = self.optimal_requests if self._requests is None else self._requests
        self._compiled = compiled
        request = compiled.create_infer_request()
        outputs = [(o.get_any_name(), o) for o in compiled.outputs]
        self._outputs = outputs

        def run(x):
            res = request.infer({"input": x})
            return {name: np.asarray(res[port]) for name, port in outputs}
        return run

    @torch.no_grad()
    def __call__(self, image: ImageLike, timer=None) -> Detections:
        timer = timer or NullTimer()
        x, meta = self._prepare(image, timer)
        with timer.stage(GRAPH):
            res = self._run(x)
        return self._postprocess(res, meta, timer)

    @torch.no_grad()
    def _prepare(self, image: ImageLike, timer=None) -> tuple[np.ndarray, dict]:
        """Load, test pipeline and data preprocessor: the graph's input and the image's meta."""
        timer = timer or NullTimer()
        with timer.stage(S.LOAD):
            img = load_image(image)
        with timer.stage(S.PREPROCESS):
            data = self.pipeline(dict(img=img, img_id=0))
        with timer.stage(S.DATA_PREPROCESSOR):
            out = self.data_preprocessor(dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]]), False)
            x = out["inputs"].contiguous().numpy()
        meta = out["data_samples"][0].metainfo
        if not self.meta["dynamic"] and list(x.shape) != self.meta["input_shape"]:
            raise InputError(f"{self.path.name} was exported static for input {self.meta['input_shape']}; this "
                             f"image gives {list(x.shape)}: export with instance-seg_onnxruntime_dynamic")
        return x, meta

    @torch.no_grad()
    def _postprocess(self, res: dict, meta: dict, timer=None) -> Detections:
        """Drop the zero-score rows, rescale the boxes to the original image, paste the masks."""
        timer = timer or NullTimer()
        with timer.stage(S.MASK_POSTPROCESS):
            dets = torch.from_numpy(np.ascontiguousarray(res["dets"][0]))
            labels = torch.from_numpy(np.ascontiguousarray(res["labels"][0])).long()
            keep = dets[:, 4] > 0.0
            dets, labels = dets[keep], labels[keep]
            scale = torch.tensor(meta["scale_factor"], dtype=dets.dtype).repeat(2)
            bboxes = dets[:, :4] / scale
            h, w = meta["ori_shape"][:2]
            masks = None
            if "masks" in res:
                probs = torch.from_numpy(np.ascontiguousarray(res["masks"][0]))[keep]
                masks = FullMasks(paste_masks(bboxes, probs, w, h) >= 0.5)
        return Detections(bboxes, dets[:, 4].clone(), labels, masks, (h, w), {"dets_out": int(len(labels))})

    def run_many(self, images: list[ImageLike]) -> list[Detections]:
        """``images``' detections, in input order, with ``self.requests`` OpenVINO infer requests in flight.

        The calling thread loads and pre-processes each image and hands it to an ``openvino.AsyncInferQueue``
        (``start_async`` waits while every request is busy, so pre-processing the next image overlaps the
        inference of the ones in flight); each request's callback copies its outputs and hands them to one
        post-processing thread. Results go back by index, so the order is the input's whatever order the
        requests finish in. The first error (pre-, post-processing or inference) is raised here, after the
        requests in flight have finished.
        """
        if self._compiled is None:
            raise InputError("run_many/throughput need runtime='openvino' (ONNX Runtime has no asynchronous "
                             "infer-request queue); time ONNX Runtime one image at a time")
        import openvino as ov

        images = list(images)
        results: list = [None] * len(images)
        errors: list[BaseException] = []
        done: queue.SimpleQueue = queue.SimpleQueue()  # (index, outputs, meta); None ends the post thread

        def post() -> None:
            while (item := done.get()) is not None:
                i, res, meta = item
                if errors:
                    continue  # drain without work once something failed
                try:
                    results[i] = self._postprocess(res, meta)
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                    errors.append(e)

        def finished(request, userdata) -> None:  # in an OpenVINO thread: copy out, nothing heavy
            i, meta = userdata
            try:  # the request's output memory is reused by its next start_async: copy it now
                done.put((i, {name: np.array(request.get_tensor(port).data) for name, port in self._outputs},
                          meta))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        jobs = ov.AsyncInferQueue(self._compiled, self.requests)
        jobs.set_callback(finished)
        worker = threading.Thread(target=post, name="deploy-post", daemon=True)
        worker.start()
        try:
            for i, image in enumerate(images):
                if errors:
                    break
                x, meta = self._prepare(image)
                jobs.start_async({"input": x}, userdata=(i, meta))
        finally:
            jobs.wait_all()  # an inference error surfaces here
            done.put(None)
            worker.join()
        if errors:
            raise errors[0]
        return results


def throughput(deployed: DeployedModel, images: list[ImageLike], passes: int = 1, *, warmup: bool = True) -> dict:
    """Images per second of ``deployed.run_many`` over ``images``, ``passes`` times (after one untimed pass).

    End to end, as a server sees it: loading, host pre-processing, the graph on ``deployed.requests`` infer
    requests in flight, mask pasting. For OpenVINO only (compile with ``hint="THROUGHPUT"`` for the throughput
    row; with ``"LATENCY"`` OpenVINO's optimal count is one request, the serial baseline on the same runtime).
    Returns ``images_per_s``, ``seconds`` (the timed passes), ``images`` (per pass), ``passes``, ``requests``
    (in flight), ``optimal_requests`` (OpenVINO's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``), ``hint``, ``threads``,
    ``precision`` and ``detections`` (the last pass's, in input order: check them against ``deployed(image)``).
    """
    from .loader import throughput as images_per_s

    images = list(images)
    if not images:
        raise InputError("throughput needs at least one image")
    passes = count(passes, "passes")
    if warmup:
        deployed.run_many(images)  # every request's first inference, and the host's first allocations
    dets: list[Detections] = []

    def timed() -> list[Detections]:
        nonlocal dets
        for _ in range(passes):
            dets = deployed.run_many(images)
        return dets

    n = len(images) * passes
    rate = images_per_s(timed, n, torch.device("cpu"))
    return dict(images_per_s=rate, seconds=n / rate, images=len(images), passes=passes, requests=deployed.requests,
                optimal_requests=deployed.optimal_requests, hint=deployed.hint, threads=deployed.threads,
                precision=deployed.precision, detections=dets)

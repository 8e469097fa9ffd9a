"""A labelled instance-segmentation data set that the project generates: shapes on photos, in COCO format.

Six classes, each a silhouette with its own texture family (colours random), 5-40 objects an image from 24 px
to half the image's height, placed at random so that they overlap, occlude each other and are cut by the
border; each annotation is the visible part (RLE). Backgrounds are crops, flips and colour jitter of photos and
textures; the val splits draw theirs from images the train split never uses.

An image depends only on (seed, split, index): any image can be made alone, and the manifest
(``data/synth_manifest.json`` in the package) holds the sha256 of every image's pixels and annotations, so the
same seed is shown to give the same bytes on any machine (pixels, not PNG bytes: a lossless encoder may
compress differently; the arithmetic here avoids transcendental array functions, whose SIMD paths differ
between CPUs).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checks import InputError, count, size

#: The generated classes, in label order: they take the first labels of the 80-class heads.
CLASSES = ("disc", "square", "triangle", "star", "ring", "cross")
VERSION = 1  # raise with any change that changes a pixel or an annotation (then regenerate the manifest)
MIN_SIDE = 24  # px: an object's smallest extent
MIN_VISIBLE = 0.2  # an object is annotated when this share of its part in the canvas (and MIN_PIXELS) is visible
MIN_PIXELS = 80

_TRAIN_BG = ("data:astronaut.jpg", "data:chelsea.jpg", "data:coffee.jpg", "data:grace_hopper.jpg",
             "data:rocket.jpg", "skimage:brick.png", "skimage:grass.png", "skimage:camera.png",
             "skimage:coins.png", "skimage:motorcycle_left.png", "skimage:hubble_deep_field.jpg")
_VAL_BG = ("skimage:gravel.png", "skimage:moon.png", "skimage:ihc.png", "skimage:retina.jpg",
           "skimage:cell.png", "skimage:page.png")


@dataclass(frozen=True)
class Split:
    name: str
    images: int
    size: tuple[int, int]  # W, H
    backgrounds: tuple[str, ...]
    objects: tuple[int, int] = (5, 40)


SPLITS = {
    "train": Split("train", 600, (1333, 800), _TRAIN_BG),
    "val": Split("val", 100, (1333, 800), _VAL_BG),
    "val_3840x2304": Split("val_3840x2304", 6, (3840, 2304), _VAL_BG),
}


def split(name: str, images: int | None = None, image_size: str | tuple[int, int] | None = None) -> Split:
    """A named split, or one of its kind with another image count or size (tests, quick looks)."""
    if name not in SPLITS:
        raise InputError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
    s = SPLITS[name]
    n = s.images if images is None else count(images, "images")
    w, h = s.size if image_size is None else size(image_size)
    if min(w, h) < 4 * MIN_SIDE:
        raise InputError(f"image size {w}x{h} is too small for objects of {MIN_SIDE} px or more "
                         f"(the shorter side must be at least {4 * MIN_SIDE} px)")
    return Split(s.name, n, (w, h), s.backgrounds, s.objects)


# -- backgrounds -----------------------------------------------------------------------------------------
_BG_CACHE: dict[str, np.ndarray] = {}


def _background_source(ref: str) -> np.ndarray:
    import cv2

    if ref not in _BG_CACHE:
        kind, name = ref.split(":", 1)
        if kind == "data":
            from .project import project_root
            path = project_root() / "data" / "images" / name
            if not path.is_file():
                path = Path(__file__).with_name("data") / name
        else:
            import skimage
            path = Path(skimage.__file__).parent / "data" / name
        with _quiet_stderr():  # libpng warns on some of scikit-image's PNGs (an iCCP profile), pixels unaffected
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"background image {path} is missing or unreadable")
        _BG_CACHE[ref] = img
    return _BG_CACHE[ref]


@contextlib.contextmanager
def _quiet_stderr():
    """Silence what C libraries write to file descriptor 2 (a notebook would show it as output)."""
    import sys

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _background(rng: np.random.Generator, s: Split) -> np.ndarray:
    import cv2

    W, H = s.size
    src = _background_source(s.backgrounds[int(rng.integers(len(s.backgrounds)))])
    sh, sw = src.shape[:2]
    frac = rng.uniform(0.35, 1.0)  # a crop of the source with the canvas's aspect
    ch = max(8, int(min(sh, sw * H / W) * frac))
    cw = max(8, int(ch * W / H))
    y, x = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    bg = cv2.resize(np.ascontiguousarray(src[y:y + ch, x:x + cw]), (W, H), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    if rng.random() < 0.3:
        bg = bg[::-1]
    gain = rng.uniform(0.6, 1.3, size=3)  # colour jitter: per-channel gain, then a brightness shift
    shift = rng.uniform(-30, 30)
    return np.clip(np.rint(bg.astype(np.float64) * gain + shift), 0, 255).astype(np.uint8)


# -- objects ---------------------------------------------------------------------------------------------
def _outline(cls: str, rng: np.random.Generator, r: float) -> list[np.ndarray]:
    """The class's silhouette as polygons around (0, 0) with radius ~r; a ring's second polygon is its hole."""
    def ring(n, rx, ry):
        return np.array([(rx * math.cos(2 * math.pi * k / n), ry * math.sin(2 * math.pi * k / n)) for k in range(n)])

    aspect = rng.uniform(0.65, 1.0)
    if cls == "disc":
        polys = [ring(64, r, r * aspect)]
    elif cls == "ring":
        polys = [ring(64, r, r * aspect), ring(48, 0.5 * r, 0.5 * r * aspect)]
    elif cls == "square":
        a, b = r * 0.75, r * 0.75 * aspect
        polys = [np.array([(-a, -b), (a, -b), (a, b), (-a, b)])]
    elif cls == "triangle":
        polys = [ring(3, r, r)]
    elif cls == "star":
        pts = [(r if k % 2 == 0 else 0.45 * r) for k in range(10)]
        polys = [np.array([(p * math.cos(math.pi * k / 5 - math.pi / 2), p * math.sin(math.pi * k / 5 - math.pi / 2))
                           for k, p in enumerate(pts)])]
    elif cls == "cross":
        a, b = r, 0.3 * r
        polys = [np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                           (-a, -b), (-b, -b)])]
    else:
        raise InputError(f"unknown class {cls!r}")
    t = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return [p @ rot.T for p in polys]


def _texture(cls: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The class's texture family on an h x w patch (float64 BGR): the classes differ in pattern, not colour."""
    c1, c2 = rng.uniform(20, 235, size=3), rng.uniform(20, 235, size=3)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    period = max(4.0, rng.uniform(0.12, 0.25) * max(h, w))
    if cls == "disc":  # radial gradient
        d = np.sqrt((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (0.5 * max(h, w))
        t = np.clip(d, 0, 1)
    elif cls == "square":  # checkerboard
        t = ((np.floor(yy / period) + np.floor(xx / period)) % 2)
    elif cls == "triangle":  # stripes at an angle
        a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
        n = math.sqrt(a * a + b * b) or 1.0
        t = ((xx * a + yy * b) / n / (0.5 * period)) % 2 >= 1
    elif cls == "star":  # flat colour, grainy
        t = np.zeros((h, w))
    elif cls == "ring":  # polka dots
        p = 0.6 * period
        dy, dx = (yy % p) - p / 2, (xx % p) - p / 2
        t = (dy * dy + dx * dx) <= (0.3 * p) ** 2
    else:  # cross: a grid of thin lines
        p = 0.5 * period
        t = ((yy % p) < 0.3 * p) | ((xx % p) < 0.3 * p)
    t = np.asarray(t, dtype=np.float64)[..., None]
    tex = c1 * (1 - t) + c2 * t
    return tex + rng.normal(0, 8 if cls == "star" else 4, size=(h, w, 1))


def render(s: Split, index: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Image ``index`` of split ``s`` (uint8 BGR, H x W x 3) and its objects: class, visible mask, box."""
    if not 0 <= index < s.images:
        raise InputError(f"image index {index} out of range for split {s.name!r} of {s.images} images")
    for attempt in range(20):  # occlusion can hide objects: draw again until enough are annotated
        img, objects = _render(s, np.random.default_rng([seed, VERSION, list(SPLITS).index(s.name), index, attempt]))
        if len(objects) >= s.objects[0]:
            break
    return img, objects


def _render(s: Split, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    import cv2

    W, H = s.size
    img = _background(rng, s).astype(np.float64)
    owner = np.full((H, W), -1, dtype=np.int32)
    objects = []
    n = int(rng.integers(s.objects[0], s.objects[1] + 1))
    for k in range(n):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        side = math.exp(rng.uniform(math.log(MIN_SIDE), math.log(H / 2)))  # log-uniform extent
        r = side / 2
        cx, cy = rng.uniform(-0.1 * W, 1.1 * W), rng.uniform(-0.1 * H, 1.1 * H)  # some cut by the border
        polys = _outline(cls, rng, r)
        x0, y0 = int(math.floor(cx - r)) - 1, int(math.floor(cy - r)) - 1
        pw = ph = int(math.ceil(2 * r)) + 3
        patch = np.zeros((ph, pw), np.uint8)
        pts = [np.rint((p + (cx - x0, cy - y0)) * 16).astype(np.int32) for p in polys]  # 4 fractional bits
        cv2.fillPoly(patch, pts[:1], 1, lineType=cv2.LINE_8, shift=4)
        if len(pts) > 1:
            cv2.fillPoly(patch, pts[1:], 0, lineType=cv2.LINE_8, shift=4)
        tex = _texture(cls, rng, ph, pw)
        # the part of the patch inside the canvas
        ya, xa, yb, xb = max(0, y0), max(0, x0), min(H, y0 + ph), min(W, x0 + pw)
        if ya >= yb or xa >= xb:
            continue
        m = patch[ya - y0:yb - y0, xa - x0:xb - x0].astype(bool)
        full = int(m.sum())  # in the canvas: an object cut by the border is judged by what is left of it
        if full == 0:
            continue
        img[ya:yb, xa:xb][m] = tex[ya - y0:yb - y0, xa - x0:xb - x0][m]
        owner[ya:yb, xa:xb][m] = len(objects)
        objects.append(dict(cls=cls, full=full))
    img = cv2.GaussianBlur(np.clip(np.rint(img), 0, 255).astype(np.uint8), (3, 3), 0.7)
    out = []
    for k, o in enumerate(objects):
        vis = owner == k
        area = int(vis.sum())
        if area < MIN_PIXELS or area < MIN_VISIBLE * o["full"]:
            continue
        ys, xs = np.nonzero(vis.any(1))[0], np.nonzero(vis.any(0))[0]
        box = [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]
        out.append(dict(cls=o["cls"], mask=vis, box=box, area=area, visible=area / o["full"]))
    return img, out


# -- COCO files ------------------------------------------------------------------------------------------
def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def annotations(objects: list[dict], image_id: int, first_id: int) -> list[dict]:
    out = []
    for k, o in enumerate(objects):
        x1, y1, x2, y2 = o["box"]
        out.append({"id": first_id + k, "image_id": image_id, "category_id": CLASSES.index(o["cls"]) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": o["area"], "iscrowd": 0,
                    "segmentation": _rle(o["mask"]), "visible": round(float(o["visible"]), 4)})
    return out


def digest(img: np.ndarray, anns: list[dict]) -> str:
    """sha256 of an image's pixels (with its shape) and its annotations (canonical JSON)."""
    h = hashlib.sha256(f"{img.shape}".encode())
    h.update(np.ascontiguousarray(img).tobytes())
    h.update(json.dumps(anns, sort_keys=True).encode())
    return h.hexdigest()


def categories() -> list[dict]:
    return [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(CLASSES)]


def cache_root() -> Path:
    """``$MMDET_SPEEDUP_DATA`` or ``${XDG_CACHE_HOME:-~/.cache}/mmdet-speedup/data``: generated, never committed."""
    env = os.environ.get("MMDET_SPEEDUP_DATA")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmdet-speedup" / "data"
    return base / f"synth-v{VERSION}"


MANIFEST = Path(__file__).with_name("data") / "synth_manifest.json"


def manifest() -> dict:
    if not MANIFEST.is_file():
        return {}
    return json.loads(MANIFEST.read_text())


def generate(name: str, root: str | os.PathLike | None = None, *, images: int | None = None,
             image_size: str | tuple[int, int] | None = None, seed: int = 0, check: bool = True,
             progress=None) -> Path:
    """Write split ``name`` as PNGs and a COCO annotation file under ``root``; return the annotation file.

    Already written splits are reused (the annotation file is written last). With ``check``, every image of a
    full-size split is checked against the manifest's digest as it is made: a mismatch stops with one line.
    """
    import cv2

    s = split(name, images, image_size)
    root = Path(root) if root is not None else cache_root()
    standard = s == SPLITS[s.name] and seed == 0
    folder = root / (s.name if standard else f"{s.name}-{s.images}-{s.size[0]}x{s.size[1]}-seed{seed}")
    ann_file = folder / "annotations.json"
    if ann_file.is_file():
        return ann_file
    (folder / "images").mkdir(parents=True, exist_ok=True)
    expected = manifest().get(s.name, {}).get("digests", []) if check and seed == 0 else []
    imgs, anns, digests = [], [], []
    for i in range(s.images):
        img, objs = render(s, i, seed)
        a = annotations(objs, i + 1, len(anns) + 1)
        d = digest(img, [{k: v for k, v in x.items() if k != "id"} for x in a])
        if i < len(expected) and s.size == SPLITS[s.name].size and expected[i] != d:
            raise InputError(f"generated image {s.name}/{i} does not match the manifest {MANIFEST} "
                             f"(sha256 {d[:12]}, expected {expected[i][:12]}): the generator or a library changed")
        digests.append(d)
        fname = f"{s.name}_{i:05d}.png"
        cv2.imwrite(str(folder / "images" / fname), img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        imgs.append({"id": i + 1, "file_name": fname, "width": s.size[0], "height": s.size[1]})
        anns += a
        if progress:
            progress(i + 1, s.images)
    doc = {"info": {"description": f"mmdet-speedup synthetic shapes v{VERSION}", "seed": seed, "split": s.name},
           "images": imgs, "annotations": anns, "categories": categories(), "digests": digests}
    tmp = ann_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, ann_file)
    return ann_file


def image_dir(ann_file: str | os.PathLike) -> Path:
    return Path(ann_file).parent / "images"


def write_manifest(seed: int = 0) -> Path:
    """Generate every full split (cached) and write the manifest of their digests into the package."""
    out = {"version": VERSION, "seed": seed}
    for name in SPLITS:
        ann = json.loads(generate(name, seed=seed, check=False).read_text())
        out[name] = {"images": len(ann["images"]), "size": list(SPLITS[name].size), "digests": ann["digests"]}
    MANIFEST.write_text(json.dumps(out, indent=0) + "\n")
    return MANIFEST


def statistics(ann_file: str | os.PathLike) -> dict:
    """Objects per image, object sizes (sqrt of visible area, px) and how much of each object is hidden."""
    doc = json.loads(Path(ann_file).read_text())
    per_image = np.bincount([a["image_id"] for a in doc["annotations"]], minlength=len(doc["images"]) + 1)[1:]
    sides = np.sqrt([a["area"] for a in doc["annotations"]])
    return dict(images=len(doc["images"]), objects=len(doc["annotations"]), per_image=per_image, sides=sides,
                visible=np.array([a["visible"] for a in doc["annotations"]]),
                classes=np.bincount([a["category_id"] - 1 for a in doc["annotations"]], minlength=len(CLASSES)))

"""The demo's state and model calls, without any HTTP: images, clicks, masks, model switching.

One :class:`DemoEngine` serves one local user. It keeps the last few uploaded images
(:class:`ImageSession`); for each it encodes the image **once per model**
(:meth:`~segblocks.interactive.protocol.InteractiveModel.encode`, cached) and runs only
:meth:`~segblocks.interactive.protocol.InteractiveModel.decode` per click, feeding back the
previous output as the evaluation harness does (:func:`segblocks.interactive.evaluate_clicks`):
the image is resized to the model's input side and padded
(:func:`~segblocks.ops.geometry.resize_longest_side_and_pad`), clicks are given in the image's own
frame (:class:`~segblocks.interactive.protocol.ClickPrompts`) and the logits are mapped back with
:func:`~segblocks.interactive.evaluation.predictions_at_original`. Undo pops the last click and its
output; switching the model replays the clicks with the new one.

Every bad input raises :class:`DemoError` with a message for the page.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from segblocks.interactive.clicker import Clicks
from segblocks.interactive.evaluation import predictions_at_original
from segblocks.interactive.protocol import ClickPrompts
from segblocks.ops.geometry import resize_longest_side_and_pad

__all__ = ["DemoEngine", "DemoError", "ImageSession", "ModelSpec", "decode_image", "encode_png"]

#: Input side of the learned tiny presets in the demo: the ``data.eval_size`` their recipes test at
#: (recipes/sam.yaml, hrsam.yaml, focsam.yaml, inter2former.yaml: 128; mst.yaml: 112).
TINY_INPUT_SIZE = {"sam_tiny": 128, "sam_hrsam_tiny": 128, "focsam_tiny": 128, "inter2former_tiny": 128, "mst_tiny": 112}
#: Input side of any other learned model (SAM's 1024).
DEFAULT_INPUT_SIZE = 1024


class DemoError(ValueError):
    """A bad request; ``str(err)`` is shown on the page."""


@dataclass
class ModelSpec:
    """A model the page can select.

    Attributes:
        label: the name shown and sent by the page (a registry name, or ``NAME@file`` for a checkpoint).
        build: builds the :class:`~segblocks.interactive.protocol.InteractiveModel` (called once, lazily).
        input_size: longest side of the model input; None for the classical baselines, which take
            the image at its own size (they bound their cost with ``max_side``).
    """

    label: str
    build: Callable[[], Any]
    input_size: int | None


@dataclass
class ImageSession:
    """One uploaded image and what was done on it."""

    image_id: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    message: str = ""
    clicks: list[tuple[int, int, int]] = field(default_factory=list)  # (y, x, label)
    outputs: list[torch.Tensor] = field(default_factory=list)  # decode output after each click
    masks: list[np.ndarray] = field(default_factory=list)  # H x W bool after each click
    model: str | None = None
    encoded: dict[str, tuple[Any, torch.Tensor, tuple[int, int]]] = field(default_factory=dict)
    encode_count: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def mask(self) -> np.ndarray:
        return self.masks[-1] if self.masks else np.zeros(self.size, dtype=bool)


def decode_image(data: bytes, *, max_side: int, max_pixels: int) -> tuple[np.ndarray, str]:
    """Uploaded bytes -> ``(H, W, 3)`` uint8 RGB and a message (empty, or what was changed).

    Images with more than ``max_pixels`` pixels are refused; a longest side above ``max_side`` is
    downscaled (Lanczos) to ``max_side``, with a message saying so.

    Raises:
        DemoError: empty data, not a decodable image, or too large.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DemoError("the upload is empty: choose an image file (PNG, JPEG, ...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise DemoError(
                        f"image too large: {width} x {height} = {width * height / 1e6:.1f} MP (limit "
                        f"{max_pixels / 1e6:.1f} MP); downscale it first"
                    )
                img.load()
                rgb = img.convert("RGB")
    except DemoError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        if isinstance(err, UnidentifiedImageError):
            raise DemoError("the upload is not an image this demo can read (PNG, JPEG, BMP, GIF, TIFF, WebP)") from err
        raise DemoError(f"the upload is not an image this demo can read ({type(err).__name__}: {err})") from err
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt files
        raise DemoError(f"the image could not be decoded ({type(err).__name__}: {err})") from err
    message = ""
    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        new = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        message = f"image downscaled from {rgb.width} x {rgb.height} to {new[0]} x {new[1]} (longest side limit {max_side})"
        rgb = rgb.resize(new, Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).copy(), message


def encode_png(array: np.ndarray) -> bytes:
    """``(H, W)`` bool/uint8 or ``(H, W, 3|4)`` uint8 -> PNG bytes."""
    from PIL import Image

    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class DemoEngine:
    """Images, clicks and models of the demo (thread-safe: one lock around every call).

    Args:
        models: the selectable models, in menu order (the first is the default).
        device: where the models run.
        max_side: longest side of stored images; larger uploads are downscaled.
        max_pixels: uploads with more pixels are refused.
        max_images: how many uploaded images are kept (least recently used dropped).
    """

    def __init__(
        self, *, models: list[ModelSpec], device: str | torch.device = "cpu", max_side: int = 1024,
        max_pixels: int = 40_000_000, max_images: int = 8,
    ) -> None:
        if not models:
            raise ValueError("DemoEngine needs at least one model")
        self.specs = {spec.label: spec for spec in models}
        self.device = torch.device(device)
        self.max_side, self.max_pixels, self.max_images = int(max_side), int(max_pixels), int(max_images)
        self._models: dict[str, Any] = {}
        self._images: OrderedDict[str, ImageSession] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def model_names(self) -> list[str]:
        return list(self.specs)

    # ------------------------------------------------------------------ helpers
    def _model(self, name: str) -> Any:
        if name not in self.specs:
            raise DemoError(f"unknown model {name!r}; available: {', '.join(self.specs)}")
        if name not in self._models:
            try:
                model = self.specs[name].build()
            except ImportError as err:
                raise DemoError(f"model {name} is not available: {err}") from err
            if isinstance(model, torch.nn.Module):
                model = model.to(self.device).eval()
            self._models[name] = model
        return self._models[name]

    def _session(self, image_id: Any) -> ImageSession:
        if not isinstance(image_id, str) or image_id not in self._images:
            raise DemoError("unknown image: upload or pick an image first")
        self._images.move_to_end(image_id)
        return self._images[image_id]

    def _encode(self, session: ImageSession, name: str) -> tuple[Any, torch.Tensor, tuple[int, int], float | None]:
        """The model's state for this image (cached), the padded input size and valid size."""
        if name in session.encoded:
            state, input_hw, valid = session.encoded[name]
            return state, input_hw, valid, None
        model = self._model(name)
        H, W = session.size
        side = self.specs[name].input_size or max(H, W)
        image = torch.from_numpy(session.image).permute(2, 0, 1).float().to(self.device)  # 3 x H x W
        padded, valid = resize_longest_side_and_pad(image, side)  # 3 x T x T
        start = time.perf_counter()
        with torch.no_grad():
            state = model.encode(padded[None], torch.tensor([valid], device=self.device))
        seconds = time.perf_counter() - start
        session.encoded[name] = (state, torch.tensor(padded.shape[-2:]), valid)
        session.encode_count += 1
        return state, torch.tensor(padded.shape[-2:]), valid, seconds

    def _decode(self, session: ImageSession, name: str, clicks: list[tuple[int, int, int]],
                previous: torch.Tensor | None) -> tuple[torch.Tensor, np.ndarray, float, float | None]:
        state, input_hw, valid, encode_s = self._encode(session, name)
        model = self._model(name)
        H, W = session.size
        prompts = ClickPrompts(
            clicks=Clicks.from_lists([clicks], device=self.device),
            frame_size=torch.tensor([[H, W]], device=self.device), input_size=torch.tensor([valid], device=self.device),
        )
        start = time.perf_counter()
        with torch.no_grad():
            out = model.decode(state, prompts, previous)
            mask = predictions_at_original(
                out, tuple(input_hw.tolist()), torch.tensor([valid]), torch.tensor([[H, W]]), (H, W)
            )[0].cpu().numpy()  # H x W
        return out, mask, time.perf_counter() - start, encode_s

    def _result(self, session: ImageSession, *, decode_s: float | None = None, encode_s: float | None = None,
                message: str = "") -> dict[str, Any]:
        mask = session.mask()
        png = encode_png(mask)
        return {
            "image_id": session.image_id, "width": session.size[1], "height": session.size[0],
            "model": session.model, "clicks": [list(c) for c in session.clicks],
            "mask_area": int(mask.sum()), "mask_sha1": hashlib.sha1(png).hexdigest()[:12],
            "mask_png": png, "decode_ms": None if decode_s is None else 1e3 * decode_s,
            "encode_ms": None if encode_s is None else 1e3 * encode_s, "encode_count": session.encode_count,
            "message": message,
        }

    # ------------------------------------------------------------------ API
    def add_image(self, data: bytes, model: str) -> dict[str, Any]:
        """Store an uploaded image and encode it with ``model``."""
        with self._lock:
            self._model(model)  # a bad model name fails before the image is stored
            image, message = decode_image(data, max_side=self.max_side, max_pixels=self.max_pixels)
            session = ImageSession(image_id=f"img{next(self._ids)}", image=image, message=message, model=model)
            self._images[session.image_id] = session
            while len(self._images) > self.max_images:
                self._images.popitem(last=False)
            *_, encode_s = self._encode(session, model)
            return self._result(session, encode_s=encode_s, message=message)

    def image_png(self, image_id: Any) -> bytes:
        """The stored (possibly downscaled) image as PNG."""
        with self._lock:
            return encode_png(self._session(image_id).image)

    def mask_png(self, image_id: Any) -> bytes:
        """The current mask (0 / 255) as PNG."""
        with self._lock:
            return encode_png(self._session(image_id).mask())

    def click(self, image_id: Any, y: Any, x: Any, positive: Any) -> dict[str, Any]:
        """Add a click at pixel ``(y, x)`` of the stored image and decode once."""
        with self._lock:
            session = self._session(image_id)
            H, W = session.size
            if isinstance(y, bool) or isinstance(x, bool) or not isinstance(y, (int, float)) or not isinstance(x, (int, float)):
                raise DemoError(f"click coordinates must be numbers, got y={y!r}, x={x!r}")
            yi, xi = int(np.floor(y)), int(np.floor(x))
            if not (0 <= yi < H and 0 <= xi < W):
                raise DemoError(f"click at (x={x}, y={y}) is outside the {W} x {H} image")
            clicks = [*session.clicks, (yi, xi, 1 if positive else 0)]
            previous = session.outputs[-1] if session.outputs else None
            out, mask, decode_s, encode_s = self._decode(session, session.model, clicks, previous)
            session.clicks, session.outputs, session.masks = clicks, [*session.outputs, out], [*session.masks, mask]
            return self._result(session, decode_s=decode_s, encode_s=encode_s)

    def undo(self, image_id: Any) -> dict[str, Any]:
        """Remove the last click (its output too)."""
        with self._lock:
            session = self._session(image_id)
            if not session.clicks:
                return self._result(session, message="nothing to undo")
            session.clicks, session.outputs, session.masks = session.clicks[:-1], session.outputs[:-1], session.masks[:-1]
            return self._result(session)

    def reset(self, image_id: Any) -> dict[str, Any]:
        """Remove every click."""
        with self._lock:
            session = self._session(image_id)
            session.clicks, session.outputs, session.masks = [], [], []
            return self._result(session)

    def set_model(self, image_id: Any, model: str) -> dict[str, Any]:
        """Switch the image to ``model`` and replay its clicks with it (one encode, one decode per click)."""
        with self._lock:
            session = self._session(image_id)
            self._model(model)
            session.model = model
            outputs, masks, decode_s, encode_s, previous = [], [], None, None, None
            _, _, _, encode_s = self._encode(session, model)
            for k in range(len(session.clicks)):
                previous, mask, decode_s, _ = self._decode(session, model, session.clicks[: k + 1], previous)
                outputs.append(previous)
                masks.append(mask)
            session.outputs, session.masks = outputs, masks
            return self._result(session, decode_s=decode_s, encode_s=encode_s,
                                message=f"{len(session.clicks)} click(s) replayed with {model}" if session.clicks else "")

"""COVID-19-like lesions painted into real healthy chest CTs, with their exact masks.

The synthetic generator's lesion model (:mod:`volseg.data.synth_lesions`: sub-pleural,
posterior and basal predominance, bilateral, ground glass with consolidated cores, crazy
paving) grows lesions inside the scan's own lung mask (:func:`volseg.data.lungs.lung_mask`)
to a target involvement of the requested CT grade, on the scan's native grid. The HU are
blended into the real image so that the anatomy, vessels, noise and texture stay the
scan's: ground glass only ever raises a voxel (vessels stay visible through it, as in
real ground glass), is at least 150 HU denser than the lung it covers, and keeps the
scan's fine-grained noise. The truth is where the blend weight passes one half; the types
map keeps ground glass (1) and consolidation (2) apart.

``volseg synth --paint HEALTHY_DIR --out DIR`` writes such a set in MosMed's layout, so
``volseg predict`` + ``volseg evaluate`` measure a model on real anatomy.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from volseg.data.synth_lesions import Lesions

log = logging.getLogger(__name__)

GGO_ABOVE_LUNG_HU = 150.0
"""The least density a ground-glass haze adds to the lung it covers (as in the synthetic
generator)."""
PAINT_CATEGORIES = ("CT-1", "CT-2", "CT-3")


@dataclass
class LungFrame:
    """A real scan's lungs in the terms of :class:`volseg.data.synth_lesions.LungGeometry`."""

    lungs: np.ndarray
    lumen: np.ndarray
    side: np.ndarray
    posterior: np.ndarray
    inferior: np.ndarray

    @classmethod
    def of(cls, lungs: np.ndarray, sides: np.ndarray, affine: np.ndarray) -> LungFrame:
        """From a lung mask, its side map (1 right, 2 left, 0 unassigned) and the affine:
        posterior and inferior from world coordinates, so any voxel order works."""
        from volseg.data.lung_fill import LEFT, RIGHT

        lungs = np.asarray(lungs) > 0
        index = np.indices(lungs.shape, dtype=np.float32)
        world = np.tensordot(affine[:3, :3].astype(np.float32), index, axes=1)
        world += affine[:3, 3].astype(np.float32)[:, None, None, None]
        side = np.zeros(lungs.shape, dtype=np.int8)
        midline = float(np.median(world[0][lungs])) if lungs.any() else 0.0
        side[lungs] = np.where(world[0][lungs] > midline, 1, -1)  # RAS: +x is the right
        side[lungs & (sides == RIGHT)] = 1
        side[lungs & (sides == LEFT)] = -1
        posterior = np.zeros(lungs.shape, dtype=np.float32)
        for s in (1, -1):
            one = lungs & (side == s)
            if one.any():
                y = world[1][one]  # RAS: +y is anterior
                lo, hi = float(y.min()), float(y.max())
                posterior[one] = 1.0 - 2.0 * (y - lo) / max(hi - lo, 1e-6)
        z = world[2]
        z_lo, z_hi = (float(z[lungs].min()), float(z[lungs].max())) if lungs.any() else (0, 1)
        inferior = np.clip((z_hi - z) / max(z_hi - z_lo, 1e-6), 0.0, 1.0).astype(np.float32)
        lumen = np.zeros(lungs.shape, dtype=np.float32)
        return cls(lungs, lumen, side, posterior, inferior)


@dataclass
class PaintedStudy:
    """A real scan with painted lesions, and their truth."""

    image: np.ndarray  # int16 HU, the input's grid
    lesion: np.ndarray  # uint8 0/1
    lesion_types: np.ndarray  # uint8 0 / 1 ground glass / 2 consolidation
    lungs: np.ndarray  # uint8 the lung mask the lesions were grown in
    involvement_pct: float


def paint_study(
    hu: np.ndarray,
    affine: np.ndarray,
    category: str,
    seed: int,
    lungs: np.ndarray | None = None,
) -> PaintedStudy:
    """Paint lesions of ``category`` (CT-1..CT-4) into the healthy CT ``hu``.

    ``lungs``: the scan's lung mask on its grid (e.g. the one ``prepare`` computed); None
    computes it (:func:`volseg.data.lungs.lung_mask`). A given mask has no side map, so the
    lungs are split at the midline.
    """
    from volseg.data.synth_lesions import TARGET_PCT, draw_lesion_model, place_to_target
    from volseg.quantify import spacing_from_affine

    if category not in TARGET_PCT:
        raise ValueError(f"category must be one of {', '.join(TARGET_PCT)}, got {category!r}")
    hu = np.asarray(hu, dtype=np.float32)
    mask, sides = _lungs_and_sides(hu, affine, lungs)
    frame = LungFrame.of(mask, sides, affine)
    spacing = spacing_from_affine(affine)
    rng = np.random.default_rng(seed)
    model = draw_lesion_model(rng, frame, spacing, category)
    n_lung = int(frame.lungs.sum())
    if n_lung == 0:
        raise ValueError("no lungs found to paint into")
    lesions, truth, achieved = place_to_target(
        model, frame, lambda lesions: (lesions.weight > 0.5) & frame.lungs, n_lung
    )
    image, _ = blend_lesions(hu, frame.lungs, lesions)
    types = truth.astype(np.uint8)
    types[truth & lesions.consolidation] = 2
    return PaintedStudy(
        image=np.clip(np.rint(image), -3024, 3071).astype(np.int16),
        lesion=truth.astype(np.uint8),
        lesion_types=types,
        lungs=mask.astype(np.uint8),
        involvement_pct=achieved,
    )


def blend_lesions(
    hu: np.ndarray, lungs: np.ndarray, lesions: Lesions
) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``lesions`` into the lungs of ``hu``: ``(image, weight)`` float32.

    Ground glass only raises a voxel and is at least :data:`GGO_ABOVE_LUNG_HU` above the
    (lightly smoothed) lung it covers; the scan's fine noise is kept, halved where a lesion
    is fully developed. ``weight`` is the blend weight, zero outside the lungs.
    """
    hu = np.asarray(hu, dtype=np.float32)
    smooth = ndimage.gaussian_filter(hu, 1.0)
    target = np.maximum(lesions.hu, np.minimum(smooth, -500.0) + GGO_ABOVE_LUNG_HU)
    w = lesions.weight * lungs
    painted = np.maximum(hu, smooth + (target - smooth) * w + (hu - smooth) * (1.0 - 0.5 * w))
    return np.where(lungs, painted, hu).astype(np.float32), w.astype(np.float32)


MIN_PATCH_LUNG_VOXELS = 8
"""A crop with fewer lung voxels is left unpainted (too little lung to place lesions in)."""
PATCH_WEIGHT_FLOOR = 0.05
"""Blend weights below this (a rise of about 20 HU or less) are left unpainted in a crop."""


def paint_patch(
    hu: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, float, float],
    category: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint lesions of ``category`` into a crop ``hu`` (its lungs ``lungs``, voxel size
    ``spacing`` in mm): ``(painted HU, weight)`` float32, weight 0 where nothing was painted.

    The same lesion model and blend as :func:`paint_study`, with the crop as the whole
    lung: the category's involvement band is the share of the crop's lung, the sub-pleural
    bias is toward the crop's lung border (its faces are not a border), and the
    posterior/basal biases follow the crop's axes (RAS). The GAN stage corrupts its
    healthy crops with it.
    """
    from volseg.data.synth_lesions import draw_lesion_model, place_lesions

    hu = np.asarray(hu, dtype=np.float32)
    lungs = np.asarray(lungs) > 0
    if int(lungs.sum()) < MIN_PATCH_LUNG_VOXELS:
        return hu.copy(), np.zeros(hu.shape, dtype=np.float32)
    affine = np.diag([*map(float, spacing), 1.0])
    frame = LungFrame.of(lungs, np.zeros(lungs.shape, dtype=np.int8), affine)
    model = draw_lesion_model(rng, frame, tuple(spacing), category)
    lesions = place_lesions(model, frame, model.target_pct)
    image, weight = blend_lesions(hu, frame.lungs, lesions)
    weight[weight < PATCH_WEIGHT_FLOOR] = 0.0
    image = np.where(weight > 0, image, hu)
    return image, weight


def _lungs_and_sides(
    hu: np.ndarray, affine: np.ndarray, lungs: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The lung mask to paint into and its side map (0 everywhere for a given mask)."""
    if lungs is None:
        from volseg.data.lungs import lung_mask

        lung = lung_mask(hu, affine)
        return lung.mask, lung.sides
    mask = np.asarray(lungs) > 0
    if mask.shape != hu.shape:
        raise ValueError(f"lung mask shape {mask.shape} is not the CT's {hu.shape}")
    return mask, np.zeros(mask.shape, dtype=np.int8)


def paint_dataset(
    healthy: str | Path,
    out_dir: str | Path,
    categories: tuple[str, ...] = PAINT_CATEGORIES,
    seed: int = 0,
) -> Path:
    """Paint every healthy CT in ``healthy`` (a NIfTI file or a folder of them) once per
    category into a MosMed-layout set at ``out_dir`` (written beside, then renamed)."""
    import os
    import shutil
    import tempfile

    from volseg.data.layout import is_scan_file
    from volseg.errors import InputError
    from volseg.io import cleanup_on_error, naming_errors

    healthy, out_dir = Path(healthy), Path(out_dir)
    if not healthy.exists():
        raise InputError(f"{healthy}: not found (--paint)")
    files = [healthy] if healthy.is_file() else sorted(filter(is_scan_file, healthy.iterdir()))
    if not files:
        raise InputError(f"{healthy}: no NIfTI CT to paint into (--paint)")
    if out_dir.exists():
        raise InputError(f"{out_dir}: exists; choose a new folder for the painted set")
    with cleanup_on_error(out_dir.parent, errors=(BaseException,)):
        with naming_errors(out_dir):
            out_dir.parent.mkdir(parents=True, exist_ok=True)
        with naming_errors(out_dir, always=True):
            staging = Path(
                tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent)
            )
        try:
            with naming_errors(out_dir, staging):
                _write_painted(staging, files, categories, seed)
                staging.chmod(0o755)
                os.replace(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write_painted(tmp: Path, files: list[Path], categories: tuple[str, ...], seed: int) -> None:
    """Paint and write every (file, category) study and the manifest into ``tmp``."""
    from volseg.data import layout
    from volseg.data.layout import study_id
    from volseg.errors import InputError
    from volseg.io import read_nifti, write_nifti, write_text_atomic

    rows = []
    for n, path in enumerate(files):
        hu, affine = read_nifti(path)
        for k, category in enumerate(categories):
            sid = f"{study_id(path)}_{category.lower().replace('-', '')}"
            try:
                study = paint_study(hu, affine, category, seed + 1000 * n + k)
            except ValueError as exc:
                raise InputError(f"{path}: cannot paint {category} ({exc})") from None
            write_nifti(layout.image_path(tmp, category, sid), study.image, affine)
            write_nifti(layout.truth_path(tmp, sid), study.lesion, affine, dtype=np.uint8)
            write_nifti(
                layout.truth_types_path(tmp, sid), study.lesion_types, affine, dtype=np.uint8
            )
            write_nifti(layout.lungs_path(tmp / "lungs", sid), study.lungs, affine)
            rows.append((sid, category, path.name, study.involvement_pct))
            log.info("%s: %s painted, %.1f %% of the lungs", sid, category, rows[-1][3])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(("study_id", "category", "source", "involvement_pct"))
    writer.writerows((r[0], r[1], r[2], f"{r[3]:.4f}") for r in rows)
    write_text_atomic(tmp / "manifest.csv", buf.getvalue())

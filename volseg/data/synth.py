"""Synthetic MosMed-like chest CT: presets, one study, and a whole dataset on disk.

Each study is a randomised chest (:mod:`volseg.data.synth_anatomy`) with COVID-19-like
lesions (:mod:`volseg.data.synth_lesions`) grown to an involvement inside its CT-0…CT-4
band, rendered on thin sub-slices and averaged into thick LAS slices like a MosMed scan.
The dataset uses MosMed's layout and numbering (CT-0 first; the labeled CT-1 studies form a
contiguous block) and adds the full truth: lung masks, every lesion mask and a manifest.
Everything is deterministic in the seed.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from volseg.data import layout
from volseg.errors import InputError

if TYPE_CHECKING:
    from volseg.data.synth_anatomy import ChestRender
    from volseg.data.synth_lesions import LesionModel, Lesions
    from volseg.data.synth_site import ScanSite

log = logging.getLogger(__name__)

SYNTH_VERSION = 2
SYNTH_JSON = "synth.json"
MANIFEST_COLUMNS = (
    "study_id",
    "category",
    "labeled",
    "involvement_pct",
    "lesion_ml",
    "lung_ml",
    "site",
    "findings",
)
MAX_ATTEMPTS = 8
GGO_ABOVE_LUNG_HU = 150.0  # the least density a ground-glass haze adds to its lung
MIN_VOXEL_MM, MAX_VOXEL_MM = 0.3, 20.0  # thinner renders need tens of GB; thicker is no CT
RENDER_BYTES_PER_VOXEL = 115.0
"""Peak memory of one study's render per sub-slice voxel (its float fields and copies):
90 B measured on a mosmed CT-3 study, 113 B on a demo one (``ru_maxrss``, 2026-12-04)."""


class Grid(NamedTuple):
    """The voxel grid of one synthetic scan."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # mm
    subslices: int  # rendered per output slice, for partial volume across it


@dataclass(frozen=True)
class SynthPreset:
    """Size and make-up of a synthetic dataset.

    ``shape``/``spacing`` are (X, Y, Z) voxels / mm; ``counts`` the studies per CT category;
    ``n_labeled`` how many CT-1 studies get a published mask; ``render_dz`` the thickest
    sub-slice (mm) used to model partial volume across the slice; ``n_sites`` how many
    scanners (:mod:`volseg.data.synth_site`) the studies are spread over (the labeled ones
    all come from the first); ``site_voxels`` the voxel sizes (mm) the sites reconstruct at,
    in turn (empty: all at ``spacing``), so that a model also sees scans it has to shrink or
    stretch to its working grid, as every real CT of another slice thickness is.
    """

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    counts: dict[str, int]
    n_labeled: int
    render_dz: float = 6.0
    center_mm: tuple[float, float, float] = (0.0, 0.0, -160.0)
    n_sites: int = 3
    site_voxels: tuple[tuple[float, float, float], ...] = ()

    def __post_init__(self) -> None:
        for voxel in self.site_voxels:
            if len(voxel) != 3 or not all(MIN_VOXEL_MM <= float(v) <= MAX_VOXEL_MM for v in voxel):
                raise ValueError(
                    f"site_voxels: {voxel!r} is not three sizes between {MIN_VOXEL_MM} and "
                    f"{MAX_VOXEL_MM} mm"
                )
        if len(self.site_voxels) > self.n_sites:
            raise ValueError(
                f"site_voxels: {len(self.site_voxels)} voxel sizes for {self.n_sites} sites"
            )

    @property
    def n_studies(self) -> int:
        return sum(self.counts.values())

    @property
    def subslices(self) -> int:
        """Sub-slices rendered per output slice."""
        return self.grid(None).subslices

    def site_voxel(self, site: int) -> tuple[float, float, float] | None:
        """Voxel size (mm) of scanner ``site``: ``site_voxels`` in turn, None = ``spacing``."""
        return self.site_voxels[site % len(self.site_voxels)] if self.site_voxels else None

    def grid(self, voxel_mm: tuple[float, float, float] | None) -> Grid:
        """The grid of a scan with ``voxel_mm`` voxels (None: the preset's own) over the
        preset's field of view (``shape`` x ``spacing`` mm, centred on ``center_mm``)."""
        spacing = tuple(float(v) for v in (voxel_mm or self.spacing))
        shape = tuple(
            max(1, round(n * d / v))
            for n, d, v in zip(self.shape, self.spacing, spacing, strict=True)
        )
        subslices = max(1, math.ceil(spacing[2] / self.render_dz - 1e-9))
        return Grid(shape, spacing, subslices)  # type: ignore[arg-type]


PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset(
        name="tiny",
        shape=(64, 64, 16),
        spacing=(5.5, 5.5, 18.0),
        counts={"CT-0": 4, "CT-1": 8, "CT-2": 2, "CT-3": 1, "CT-4": 1},
        n_labeled=4,
        n_sites=2,
    ),
    "demo": SynthPreset(
        name="demo",
        shape=(128, 128, 28),
        spacing=(2.8, 2.8, 10.0),
        counts={"CT-0": 10, "CT-1": 24, "CT-2": 6, "CT-3": 3, "CT-4": 2},
        n_labeled=12,
    ),
    "study": SynthPreset(  # the label-budget study: enough CT-2+ test scans for their stratum
        name="study",
        shape=(128, 128, 28),
        spacing=(2.8, 2.8, 10.0),
        counts={"CT-0": 20, "CT-1": 60, "CT-2": 30, "CT-3": 20, "CT-4": 10},
        n_labeled=12,
    ),
    "mosmed": SynthPreset(
        name="mosmed",
        shape=(512, 512, 40),
        spacing=(0.7, 0.7, 8.0),
        counts={"CT-0": 4, "CT-1": 8, "CT-2": 2, "CT-3": 1, "CT-4": 1},
        n_labeled=4,
        render_dz=8.0,
        n_sites=2,
    ),
}


@dataclass
class SynthStudy:
    """One synthetic study. Arrays are (X, Y, Z) in the LAS voxel order of ``affine``."""

    image: np.ndarray  # int16 HU
    lesion: np.ndarray  # uint8 0/1 true lesion mask
    lungs: np.ndarray  # uint8 0/1 true lung mask
    affine: np.ndarray  # 4×4 LAS
    involvement_pct: float  # lesion voxels inside lung / lung voxels × 100
    category: str = "CT-0"
    labels: np.ndarray | None = None  # uint8 tissue codes (synth_anatomy.TISSUE, 255 = mixed)
    lesion_types: np.ndarray | None = None  # uint8 0 none, 1 ground glass, 2 consolidation
    findings: tuple[str, ...] = ()  # non-COVID findings (synth_mimics), none a lesion

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def get_preset(preset: str | SynthPreset) -> SynthPreset:
    """A preset by name (InputError naming the choices) or the preset itself."""
    if isinstance(preset, SynthPreset):
        return preset
    if preset not in PRESETS:
        raise InputError(f"unknown synth preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def study_seed(seed: int, number: int) -> int:
    """Independent per-study seed from the dataset seed and the study number."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


def synthesize_study(
    preset: SynthPreset | str, category: str, seed: int, site: ScanSite | None = None
) -> SynthStudy:
    """Generate one study of ``category`` whose true involvement lies in that category,
    acquired at ``site`` (a scanner drawn from the seed when not given) on the grid of
    ``site.voxel_mm`` (the preset's own when None; a drawn site has none, so
    ``preset.site_voxels`` applies through the sites :func:`synthesize_dataset` makes)."""
    from scipy import ndimage

    from volseg.data.synth_anatomy import MIXED, TISSUE, render_chest, sample_anatomy
    from volseg.data.synth_grid import average_subslices, las_affine, subdivide_slices
    from volseg.data.synth_lesions import draw_lesion_model
    from volseg.data.synth_mimics import add_effusion, add_streaks, draw_mimics
    from volseg.data.synth_site import draw_patient, draw_site
    from volseg.quantify import grade_from_involvement

    preset = get_preset(preset)
    if category not in layout.CATEGORIES:
        raise ValueError(f"category must be one of {layout.CATEGORIES}, got {category!r}")
    rng = np.random.default_rng(seed)
    site = site or draw_site(np.random.default_rng([seed, 1]))
    patient = draw_patient(rng)
    shape, spacing, k = preset.grid(site.voxel_mm)
    affine = las_affine(shape, spacing, preset.center_mm)
    r_affine = subdivide_slices(affine, k)
    r_shape = (shape[0], shape[1], shape[2] * k)
    r_spacing = (spacing[0], spacing[1], spacing[2] / k)
    anat = sample_anatomy(rng, r_affine, r_shape, patient.habitus)
    chest = render_chest(anat, rng, r_affine, r_shape, patient, site)
    findings = ["effusion"] if add_effusion(rng, chest, r_spacing) else []
    lungs = average_subslices(chest.lungs, k) >= 0.5
    n_lung = int(lungs.sum())
    grade = layout.CATEGORIES.index(category)
    mimics = draw_mimics(rng, chest, r_affine, r_spacing)
    findings += mimics.names

    lesions = None
    lesion = np.zeros(shape, dtype=bool)
    for attempt in range(MAX_ATTEMPTS):
        if grade == 0:
            break
        model = draw_lesion_model(rng, chest, r_spacing, category)
        lesions, lesion = _lesions_to_target(model, chest, lungs, k)
        involvement = 100.0 * float(lesion.sum()) / n_lung
        if grade_from_involvement(involvement) == grade:
            break
        log.debug(
            "attempt %d: involvement %.2f%% outside %s, retrying", attempt, involvement, category
        )
    else:
        raise RuntimeError(f"could not synthesise a {category} study with seed {seed}")
    involvement = 100.0 * float(lesion.sum()) / n_lung

    # Composite the lung: parenchyma, non-COVID findings, lesions, vessels; then airways.
    lung_hu = chest.parenchyma + (mimics.hu - chest.parenchyma) * mimics.weight
    labels = chest.labels
    types = np.zeros(shape, dtype=np.uint8)
    if lesions is not None:
        # Ground glass is a haze over the patient's own lung: at least GGO_ABOVE_LUNG_HU
        # denser than the healthy parenchyma around it, however dense that is (expiration,
        # dependent lung), so a lesion in the truth is always one in the image.
        visible = np.maximum(lesions.hu, chest.parenchyma + GGO_ABOVE_LUNG_HU)
        lung_hu = lung_hu + (visible - lung_hu) * lesions.weight
        labels[lesions.mask] = TISSUE["ggo"]
        labels[lesions.consolidation] = TISSUE["consolidation"]
        solid = average_subslices(lesions.consolidation.astype(np.float32), k) > 0.5
        types[lesion] = 1
        types[lesion & solid] = 2
    lung_hu = lung_hu + (site.blood_hu - lung_hu) * chest.vessel
    hu = np.where(chest.lungs, lung_hu, chest.hu)
    hu += (10.0 - hu) * chest.wall
    hu += (-1000.0 - hu) * chest.lumen
    labels[(chest.vessel >= 0.5) & chest.lungs] = TISSUE["vessel"]
    labels[chest.lumen >= 0.5] = TISSUE["airway"]

    # Thick slices, the site's reconstruction kernel, its noise, streaks, padding.
    image = average_subslices(hu, k)
    blur = _blur_px(site.kernel_mm, spacing[0])
    image = ndimage.gaussian_filter(image, sigma=(blur, blur, 0.0))
    noise = ndimage.gaussian_filter(
        rng.standard_normal(image.shape).astype(np.float32), sigma=(blur, blur, 0.0)
    )
    noise *= site.noise_at(float(np.prod(spacing))) / max(float(noise.std()), 1e-6)
    image = add_streaks(rng, image + noise, spacing)
    if site.padding_hu is not None:
        image[_outside_circle(shape)] = site.padding_hu
    image = np.clip(np.rint(image), -3024, 3071).astype(np.int16)
    labels_out = _pure_labels(labels, k, MIXED)
    return SynthStudy(
        image=image,
        lesion=lesion.astype(np.uint8),
        lungs=lungs.astype(np.uint8),
        affine=affine,
        involvement_pct=involvement,
        category=category,
        labels=labels_out,
        lesion_types=types,
        findings=tuple(findings),
    )


def _blur_px(kernel_mm: float, pixel_mm: float) -> float:
    """In-plane blur (pixels) of image and noise: the kernel, plus at coarse pixels the low
    pass of reconstructing (or resampling) to them, which correlates the noise of
    neighbouring pixels (real CTs resampled to 2.8 mm: correlation 0.45-0.66 at one pixel;
    at 0.7-1 mm they show 0.13-0.39, the kernel alone)."""
    coarse = 0.8 * float(np.clip((pixel_mm - 1.0) / 1.8, 0.0, 1.0))
    return float(np.hypot(kernel_mm / pixel_mm, coarse))


def _outside_circle(shape: tuple[int, int, int]) -> np.ndarray:
    """In-plane voxels outside the reconstruction circle inscribed in the field of view."""
    nx, ny = shape[0], shape[1]
    xx, yy = np.mgrid[:nx, :ny]
    r = 0.5 * min(nx, ny)
    ring = (xx - (nx - 1) / 2.0) ** 2 + (yy - (ny - 1) / 2.0) ** 2 > r * r
    return np.broadcast_to(ring[:, :, None], shape)


def _lesions_to_target(
    model: LesionModel, chest: ChestRender, lungs: np.ndarray, k: int
) -> tuple[Lesions, np.ndarray]:
    """Place lesions so the thick-slice mask, not just the render grid, hits the target
    (averaging sub-slices shifts the involvement a little at lung and lesion borders).
    Returns the render-grid lesions and the output-grid mask."""
    from volseg.data.synth_grid import average_subslices
    from volseg.data.synth_lesions import place_to_target

    def thick_slice_mask(lesions: Lesions) -> np.ndarray:
        # Where the lesion's blend weight averages over half the voxel (a continuous field,
        # so sub-slice ties do not bias the volume).
        changed = lesions.weight * (chest.lumen < 0.5)
        return (average_subslices(changed, k) > 0.5) & lungs

    lesions, lesion, _ = place_to_target(model, chest, thick_slice_mask, int(lungs.sum()))
    return lesions, lesion


def _pure_labels(labels: np.ndarray, k: int, mixed: int) -> np.ndarray:
    """Label of each thick slice voxel where all its sub-slices agree, else ``mixed``."""
    if k == 1:
        return labels
    x, y, zr = labels.shape
    sub = labels.reshape(x, y, zr // k, k)
    pure = (sub == sub[..., :1]).all(axis=3)
    return np.where(pure, sub[..., 0], np.uint8(mixed)).astype(np.uint8)


def study_plan(preset: SynthPreset | str) -> list[tuple[str, str, bool]]:
    """``(study_id, category, labeled)`` for every study, numbered like MosMed."""
    preset = get_preset(preset)
    plan: list[tuple[str, str, bool]] = []
    number = 0
    for category in layout.CATEGORIES:
        for j in range(preset.counts.get(category, 0)):
            number += 1
            labeled = category == "CT-1" and j < preset.n_labeled
            plan.append((f"study_{number:04d}", category, labeled))
    return plan


_DATASET_ENTRIES = (
    layout.STUDIES_DIR,
    layout.MASKS_DIR,
    layout.LUNGS_DIR,
    layout.TRUTH_DIR,
    layout.TYPES_DIR,
    layout.MANIFEST,
    SYNTH_JSON,
)


def existing_dataset_entries(out_dir: str | Path) -> list[Path]:
    """Dataset files/folders already present in ``out_dir``."""
    out_dir = Path(out_dir)
    return [out_dir / name for name in _DATASET_ENTRIES if (out_dir / name).exists()]


def synthesize_dataset(
    out_dir: str | Path,
    preset: str | SynthPreset = "tiny",
    seed: int = 0,
    *,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write a whole synthetic dataset in MosMed layout into ``out_dir``; returns it.

    The studies are made in ``workers`` processes (None: as many as there are cores and
    memory; 0: this one); each is seeded on its own, so the files do not depend on it.

    Refuses (InputError) a folder that already holds a dataset unless ``overwrite``. The
    dataset is written into a hidden staging folder inside ``out_dir`` and moved into place
    once complete, so a failed run (disk full, interrupted) leaves nothing behind, and an old
    dataset being overwritten is replaced only when the new one is finished.
    """
    import tempfile

    from volseg.io import cleanup_on_error, naming_errors, replace_entries

    preset = get_preset(preset)
    if int(seed) < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    existing = existing_dataset_entries(out_dir)
    if existing and not overwrite:
        raise InputError(
            f"{out_dir}: already contains a dataset ({existing[0].name}); "
            "use --overwrite to replace it"
        )
    with cleanup_on_error(out_dir, errors=(BaseException,)):
        with naming_errors(out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
        with naming_errors(out_dir, always=True):
            staging = Path(tempfile.mkdtemp(prefix=".synth-", suffix=".tmp", dir=out_dir))
        try:
            with naming_errors(out_dir, staging):
                info = _write_dataset(staging, preset, seed, workers)
                replace_entries(staging, out_dir, _DATASET_ENTRIES)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "wrote %d %s studies (%d labeled) to %s in %.1f s (%.2f s/volume)",
        info["n_studies"],
        preset.name,
        info["n_labeled"],
        out_dir,
        info["seconds"],
        info["seconds"] / max(info["n_studies"], 1),
    )
    return out_dir


def _write_dataset(out_dir: Path, preset: SynthPreset, seed: int, workers: int | None) -> dict:
    """Every study, mask, truth file and the manifest into ``out_dir``; returns synth.json."""
    from volseg import __version__
    from volseg.data.synth_site import draw_site
    from volseg.data.workers import (
        MEMORY_SHARE,
        available_memory_bytes,
        map_ordered,
        study_peak_bytes,
        worker_count,
    )
    from volseg.io import write_json_atomic, write_text_atomic
    from volseg.progress import progress

    start = time.perf_counter()
    plan = study_plan(preset)
    sites = [
        replace(draw_site(np.random.default_rng([seed, 2, i])), voxel_mm=preset.site_voxel(i))
        for i in range(preset.n_sites)
    ]
    jobs = [  # the labeled scans all come from one scanner
        _Job(number, sid, category, labeled, 0 if labeled else (number - 1) % len(sites))
        for number, (sid, category, labeled) in enumerate(plan, start=1)
    ]
    grids = [preset.grid(site.voxel_mm) for site in sites]
    render = max(math.prod(g.shape) * g.subslices for g in grids)
    peak = study_peak_bytes(render, RENDER_BYTES_PER_VOXEL)
    memory = available_memory_bytes()
    if memory is not None and peak > memory * MEMORY_SHARE:
        voxels = "voxels (--voxels)" if preset.site_voxels else "voxels or a smaller preset"
        raise InputError(
            f"synth preset {preset.name!r}: one study at its finest voxels needs about "
            f"{peak / 1e9:.1f} GB of memory, {memory / 1e9:.1f} GB are available; "
            f"choose larger {voxels}"
        )
    count = worker_count(workers, len(jobs), peak)
    write = partial(_write_study, out_dir, preset, seed, sites)
    rows = list(progress(map_ordered(write, jobs, count, uses_torch=False), desc="synth"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / layout.MANIFEST, buffer.getvalue())
    info = {
        "preset": preset.name,
        "seed": int(seed),
        "version": SYNTH_VERSION,
        "volseg_version": __version__,
        "n_studies": len(plan),
        "n_labeled": sum(1 for _, _, lab in plan if lab),
        "params": {k: v for k, v in asdict(preset).items() if k != "name"},
        "sites": [asdict(site) for site in sites],
    }
    write_json_atomic(out_dir / SYNTH_JSON, info)
    return info | {"seconds": time.perf_counter() - start}


class _Job(NamedTuple):
    """One study of a dataset: its number (seed), id, category, published mask, site."""

    number: int
    sid: str
    category: str
    labeled: bool
    site: int


def _write_study(
    out_dir: Path, preset: SynthPreset, seed: int, sites: list[ScanSite], job: _Job
) -> dict[str, object]:
    """Synthesise study ``job``, write its files into ``out_dir``; returns its manifest row."""
    from volseg.io import write_nifti
    from volseg.quantify import quantify

    number, sid, category, labeled, site = job
    t0 = time.perf_counter()
    study = synthesize_study(preset, category, study_seed(seed, number), sites[site])
    write_nifti(layout.image_path(out_dir, category, sid), study.image, study.affine)
    write_nifti(layout.lungs_path(out_dir / layout.LUNGS_DIR, sid), study.lungs, study.affine)
    write_nifti(layout.truth_path(out_dir, sid), study.lesion, study.affine)
    write_nifti(layout.truth_types_path(out_dir, sid), study.lesion_types, study.affine)
    if labeled:
        write_nifti(layout.mask_path(out_dir, sid), study.lesion, study.affine)
    q = quantify(study.lesion, study.lungs, study.spacing)
    log.debug(
        "%s %s %.2f%% in %.2f s", sid, category, study.involvement_pct, time.perf_counter() - t0
    )
    return {
        "study_id": sid,
        "category": category,
        "labeled": int(labeled),
        "involvement_pct": f"{study.involvement_pct:.6f}",
        "lesion_ml": f"{q['lesion_volume_ml']:.4f}",
        "lung_ml": f"{q['lung_volume_ml']:.4f}",
        "site": site,
        "findings": ";".join(study.findings),
    }

"""A randomised chest for the synthetic CT: body, bones, mediastinum, lungs, airways, vessels.

All shapes are analytic functions of RAS+ world coordinates (mm), evaluated on whatever grid
the caller passes. Cross-sections use a "ray depth": the distance inward from the skin
along the ray from the body centre, so skin, fat, muscle, ribs and the pleural cavity are
concentric layers that follow the (super-elliptic, slightly irregular) body outline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from volseg.data.synth_grid import smooth_noise, world_axes
from volseg.data.synth_trees import Segment, TreeParams, grow_tree, rasterize_tubes

if TYPE_CHECKING:
    from volseg.data.synth_site import PatientState, ScanSite

# Tissue codes of the label map returned with every synthetic study.
TISSUE: dict[str, int] = {
    "air": 0,
    "table": 1,
    "fat": 2,
    "soft": 3,
    "bone": 4,
    "lung": 5,
    "vessel": 6,
    "airway": 7,
    "ggo": 8,
    "consolidation": 9,
}
MIXED = 255  # label of a voxel whose sub-slices disagree (partial volume)


@dataclass
class Anatomy:
    """Per-study random chest geometry, in world millimetres."""

    cx: float
    cy: float
    a: float
    b_ant: float
    b_post: float
    power: float
    table_top: float
    fat: float
    muscle: float
    rib_th: float
    rib_period: float
    rib_width: float
    rib_slope: float
    rib_phase: float
    med_half: float
    spine_y: float
    spine_r: float
    disc_phase: float
    z_apex: float
    z_recess: float
    z_cap0: float
    dome: dict[int, float]
    heart_c: tuple[float, float, float]
    heart_r: tuple[float, float, float]
    trachea: tuple[float, float, float]
    z_carina: float
    lung_c: dict[int, tuple[float, float]] = field(default_factory=dict)
    lung_r: tuple[float, float] = (0.0, 0.0)

    @property
    def skin(self) -> float:
        return 2.0

    @property
    def d_rib(self) -> float:
        return self.skin + self.fat + self.muscle

    @property
    def d_cavity(self) -> float:
        return self.d_rib + self.rib_th + 2.0


def sample_anatomy(
    rng: np.random.Generator, affine: np.ndarray, shape: tuple, habitus: float = 1.0
) -> Anatomy:
    """Draw a plausible adult chest that fits the field of view of ``affine``/``shape``;
    ``habitus`` scales the body's width and depth (the field of view still bounds them)."""
    xs, ys, zs = (np.ravel(c) for c in world_axes(affine, shape))
    x_ext, y_min, y_max = float(np.ptp(xs)), float(ys.min()), float(ys.max())
    z_min, z_max = float(zs.min()), float(zs.max())
    u = rng.uniform
    table_top = y_min + u(0.06, 0.10) * (y_max - y_min)
    b_post = min(u(104.0, 120.0) * habitus, 0.33 * (y_max - y_min))
    b_ant = b_post * u(1.0, 1.1)
    cy = table_top + 3.0 + b_post
    b_ant = min(b_ant, y_max - 6.0 - cy)
    a = min(u(150.0, 170.0) * habitus, 0.47 * x_ext)
    cx = u(-6.0, 6.0)
    fat, muscle, rib_th = u(5.0, 14.0), u(6.0, 10.0), u(7.0, 10.0)
    med_half = u(13.0, 19.0)
    spine_r = u(16.0, 20.0)
    spine_y = cy - b_post + u(50.0, 58.0)
    z_span = z_max - z_min
    height = min(u(0.80, 0.88) * z_span, 300.0)
    z_apex = z_max - u(0.3, 0.7) * (z_span - height)
    z_recess = z_apex - height
    dome_r = u(45.0, 60.0)
    dome = {1: dome_r, -1: dome_r - u(10.0, 20.0)}
    anat = Anatomy(
        cx=cx,
        cy=cy,
        a=a,
        b_ant=b_ant,
        b_post=b_post,
        power=u(2.2, 2.8),
        table_top=table_top,
        fat=fat,
        muscle=muscle,
        rib_th=rib_th,
        rib_period=u(26.0, 32.0),
        rib_width=u(9.0, 12.0),
        rib_slope=u(30.0, 50.0),
        rib_phase=u(0.0, 1.0),
        med_half=med_half,
        spine_y=spine_y,
        spine_r=spine_r,
        disc_phase=u(0.0, 30.0),
        z_apex=z_apex,
        z_recess=z_recess,
        z_cap0=z_apex - u(70.0, 95.0),
        dome=dome,
        heart_c=(
            cx - u(15.0, 30.0),
            cy + u(0.1, 0.2) * b_ant,
            z_recess + 25.0 + dome[-1] + u(30.0, 45.0),
        ),
        heart_r=(u(55.0, 68.0), u(42.0, 52.0), u(50.0, 60.0)),
        trachea=(cx + u(0.0, 4.0), spine_y + spine_r + u(26.0, 32.0), u(8.0, 10.0)),
        z_carina=z_apex - u(70.0, 90.0),
    )
    # Lung "boxes": half of the pleural cavity on each side of the mediastinum.
    inner_a = a - anat.d_cavity
    ra = (inner_a - med_half) / 2.0
    y_lo, y_hi = cy - b_post + anat.d_cavity, cy + b_ant - anat.d_cavity
    rb = (y_hi - y_lo) / 2.0
    anat.lung_r = (ra, rb)
    anat.lung_c = {s: (cx + s * (med_half + ra), (y_lo + y_hi) / 2.0) for s in (1, -1)}
    return anat


def body_depth(anat: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inward ray depth (mm) from the skin; negative outside the body."""
    dx, dy = x - anat.cx, y - anat.cy
    b = np.where(dy > 0, anat.b_ant, anat.b_post)
    p = anat.power
    rho = (np.abs(dx / anat.a) ** p + np.abs(dy / b) ** p) ** (1.0 / p)
    r = np.hypot(dx, dy)
    rho = np.maximum(rho, 1e-6)
    return (r * (1.0 / rho - 1.0)).astype(np.float32)


def lung_side(
    anat: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray, depth: np.ndarray
) -> np.ndarray:
    """+1 inside the right lung, −1 inside the left, 0 elsewhere (int8, broadcast shape)."""
    dx = x - anat.cx
    ra, rb = anat.lung_r
    inside_cavity = depth > anat.d_cavity
    # Mediastinum, with the spine and paravertebral tissue behind it.
    spine_zone = (np.abs(dx) < anat.spine_r + 10.0) & (y < anat.spine_y + anat.spine_r + 4.0)
    medial_ok = (np.abs(dx) > anat.med_half) & ~spine_zone
    hx, hy, hz = anat.heart_c
    hrx, hry, hrz = anat.heart_r
    heart = ((x - hx) / (hrx + 3)) ** 2 + ((y - hy) / (hry + 3)) ** 2 + ((z - hz) / (hrz + 3)) ** 2
    aorta = (x - (anat.cx - anat.spine_r - 12.0)) ** 2 + (y - anat.spine_y) ** 2 < 15.0**2
    ok = inside_cavity & medial_ok & (heart > 1.0) & ~aorta & (z <= anat.z_apex)
    side = np.zeros(np.broadcast_shapes(np.shape(ok), np.shape(x)), dtype=np.int8)
    for s in (1, -1):
        xl, yl = anat.lung_c[s]
        half = (dx * s) > 0
        post = np.clip(-(y - yl) / rb, 0.0, 1.0)
        bump = np.clip(1.0 - ((x - xl) / (1.1 * ra)) ** 2 - ((y - yl) / (1.1 * rb)) ** 2, 0, 1)
        floor = anat.z_recess + 25.0 * (1.0 - post) + anat.dome[s] * bump
        t = np.clip((z - anat.z_cap0) / (anat.z_apex - anat.z_cap0), 0.0, 1.0)
        cap = ((x - xl) / (1.05 * ra)) ** 2 + ((y - (yl - 0.2 * rb)) / (0.9 * rb)) ** 2
        in_cap = cap <= 1.0 - t**2
        side[ok & half & (z > floor) & in_cap] = s
    return side


def inside_lung_fn(anat: Anatomy, s: int):
    """Point test (world mm, noise-free) for growing trees inside lung ``s``."""

    def inside(p: np.ndarray) -> bool:
        x, y, z = (np.asarray(v, dtype=np.float64) for v in p)
        return bool(lung_side(anat, x, y, z, body_depth(anat, x, y)) == s)

    return inside


@dataclass
class ChestRender:
    """The chest on a render grid, before lesions: HU, labels and the fractions to composite."""

    hu: np.ndarray  # float32 HU of everything except lung parenchyma content
    parenchyma: np.ndarray  # float32 HU of healthy lung tissue (meaningful inside lungs)
    lungs: np.ndarray  # bool
    side: np.ndarray  # int8 +1 right lung, −1 left lung
    labels: np.ndarray  # uint8 TISSUE codes (lungs still "lung")
    vessel: np.ndarray  # float32 vessel fill fraction (inside lungs)
    lumen: np.ndarray  # float32 airway lumen fraction
    wall: np.ndarray  # float32 airway wall (lumen + wall) fraction
    posterior: np.ndarray  # float32 −1 anterior … +1 posterior, per lung
    inferior: np.ndarray  # float32 0 apex … 1 base


def render_chest(
    anat: Anatomy,
    rng: np.random.Generator,
    affine: np.ndarray,
    shape: tuple,
    patient: PatientState | None = None,
    site: ScanSite | None = None,
) -> ChestRender:
    """Evaluate the chest on a grid: body layers, bones, organs, gut gas, lungs, vessels and
    airways, with the patient's lung density and the site's blood (contrast) HU."""
    from volseg.data.synth_site import PatientState, ScanSite

    patient = patient or PatientState(-868.0, 44.0, 0.0, 12.0, 1.0, 1.0)
    site = site or ScanSite(noise_hu=30.0, kernel_mm=0.7, blood_hu=40.0, padding_hu=None)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    x, y, z = world_axes(affine, shape)
    dx, dy = x - anat.cx, y - anat.cy
    depth = body_depth(anat, x, y) + 2.5 * smooth_noise(rng, shape, spacing, 40.0)
    tex = smooth_noise(rng, shape, spacing, 8.0)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    def put(region: np.ndarray, value, label: str) -> None:
        region = np.broadcast_to(region, shape)
        hu[region] = np.broadcast_to(np.asarray(value, dtype=np.float32), shape)[region]
        labels[region] = TISSUE[label]

    # Table under the back: a curved carbon plate.
    table_y = anat.table_top + 0.0006 * dx**2
    put((y <= table_y) & (y > table_y - 7.0) & (np.abs(dx) < 210.0), 180.0 + 15 * tex, "table")
    # Skin, subcutaneous fat (thicker anteriorly), muscle.
    ant = np.clip(dy / anat.b_ant, 0.0, 1.0)
    fat_depth = anat.skin + anat.fat * (0.7 + 0.6 * ant)
    put(depth > 0, 45.0 + 6.0 * tex, "soft")
    put((depth > anat.skin) & (depth <= fat_depth), -100.0 + 10.0 * tex, "fat")
    cavity = depth > anat.d_cavity
    put(cavity, 38.0 + 5.0 * tex, "soft")
    # Below the diaphragm: liver on the right, stomach/spleen on the left.
    put(
        cavity & (z < anat.z_recess + 25.0 + np.where(dx > 0, 0.9, 0.7) * anat.dome[1] * 0.9),
        np.where(dx > 0, 58.0, 35.0) + 5.0 * tex,
        "soft",
    )
    # Mediastinal fat above the heart, in front of the trachea.
    hx, hy, hz = anat.heart_c
    hrx, hry, hrz = anat.heart_r
    fat_y0 = anat.trachea[1] + 14.0
    fat_pad = ((dx / (anat.med_half + 6.0)) ** 2 + ((y - fat_y0 - 25.0) / 30.0) ** 2 < 1.0) & (
        y > fat_y0
    )
    put(cavity & fat_pad & (z > hz + 0.5 * hrz) & (z < anat.z_apex), -90.0 + 8.0 * tex, "fat")
    heart = ((x - hx) / hrx) ** 2 + ((y - hy) / hry) ** 2 + ((z - hz) / hrz) ** 2 < 1.0
    put(heart, site.blood_hu + 4.0 * tex, "soft")
    aorta = (x - (anat.cx - anat.spine_r - 12.0)) ** 2 + (y - anat.spine_y) ** 2 < 12.5**2
    put(aorta & cavity & (z < anat.z_apex - 20.0), site.blood_hu + 3.0 * tex, "soft")
    _gut_gas(anat, rng, x, y, z, cavity, put)
    _breasts(anat, rng, x, y, z, depth, tex, put)
    _bones(anat, x, y, z, depth, put)
    # Lungs.
    side = lung_side(anat, x, y, z, depth)
    lungs = side != 0
    ra, rb = anat.lung_r
    yl = np.where(dx > 0, anat.lung_c[1][1], anat.lung_c[-1][1]).astype(np.float32)
    posterior = np.clip(-(y - yl) / rb, -1.0, 1.0).astype(np.float32)
    inferior = np.clip((anat.z_apex - z) / (anat.z_apex - anat.z_recess), 0.0, 1.0)
    inferior = np.broadcast_to(inferior, shape).astype(np.float32)
    lung_tex = smooth_noise(rng, shape, spacing, 5.0)
    # Gravity: a supine patient's dependent lung is denser, most steeply at the back.
    dependent = ((posterior + 1.0) / 2.0) ** 2
    parenchyma = (
        patient.lung_hu
        + patient.dependent_hu * dependent
        + patient.basal_hu * inferior
        + patient.texture_hu * lung_tex
        + 6.0 * tex
    )
    pv = float(min(spacing[0], spacing[1]))
    central, lumen, wall = _airways(anat, rng, affine, shape, pv)
    lungs &= central < 0.5  # trachea and main bronchi are not lung
    side[~lungs] = 0
    labels[lungs] = TISSUE["lung"]
    vessel = _vessels(anat, rng, affine, shape, pv, patient.vessel_scale) * lungs
    return ChestRender(
        hu=hu,
        parenchyma=parenchyma.astype(np.float32),
        lungs=lungs,
        side=side,
        labels=labels,
        vessel=vessel.astype(np.float32),
        lumen=lumen,
        wall=wall,
        posterior=np.broadcast_to(posterior, shape).astype(np.float32),
        inferior=inferior,
    )


def _gut_gas(anat: Anatomy, rng, x, y, z, cavity, put) -> None:
    """Stomach gas under the left dome (an air-fluid level: gas on top, anterior in a
    supine patient) and a few colon gas pockets below the lungs."""
    dx = x - anat.cx
    dome_top = anat.z_recess + 25.0 + 0.7 * anat.dome[-1] * 0.9
    if rng.random() < 0.7:
        sx, sy, sz = rng.uniform(20.0, 40.0), rng.uniform(15.0, 30.0), rng.uniform(10.0, 25.0)
        c = (anat.cx - rng.uniform(40.0, 80.0), anat.cy + rng.uniform(0.0, 40.0), dome_top - sz - 8)
        stomach = ((x - c[0]) / sx) ** 2 + ((y - c[1]) / sy) ** 2 + ((z - c[2]) / sz) ** 2 < 1
        level = c[1] + rng.uniform(-0.5, 0.3) * sy
        put(stomach & cavity & (dx < 0) & (y > level), -1000.0, "air")
    for _ in range(int(rng.poisson(1.5))):
        r = rng.uniform(6.0, 15.0)
        c = (
            anat.cx + rng.uniform(-0.7, 0.7) * anat.a,
            anat.cy + rng.uniform(0.1, 0.7) * anat.b_ant,
            anat.z_recess + rng.uniform(-40.0, 10.0),
        )
        pocket = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r * r
        put(pocket & cavity & (z < anat.z_recess + 20.0), -1000.0, "air")


def _breasts(anat: Anatomy, rng, x, y, z, depth, tex, put) -> None:
    """In 40 % of studies, breasts on the anterior chest wall: fat and glandular tissue."""
    if rng.random() >= 0.4:
        return
    r = rng.uniform(40.0, 70.0)
    zc = anat.heart_c[2] + rng.uniform(-20.0, 20.0)
    for s in (1, -1):
        c = (anat.cx + s * rng.uniform(60.0, 90.0), anat.cy + anat.b_ant - 0.45 * r, zc)
        ball = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - c[2]) / 0.8) ** 2 < r * r) & (y > anat.cy)
        put(ball & (depth <= 2.0), -60.0 + 40.0 * tex, "fat")


def _bones(anat: Anatomy, x, y, z, depth, put) -> None:
    """Ribs (oblique bands of the chest wall), sternum, and vertebrae with discs and canal."""
    dx, dy = x - anat.cx, y - anat.cy
    in_rib_layer = (depth > anat.d_rib) & (depth <= anat.d_rib + anat.rib_th)
    # Ribs descend from back to front: the band phase shifts with the AP position.
    phase = (z + anat.rib_slope * dy / anat.b_ant) / anat.rib_period + anat.rib_phase
    band = np.abs(phase - np.round(phase)) * anat.rib_period < anat.rib_width / 2.0
    z_ok = (z > anat.z_recess - 40.0) & (z < anat.z_apex + 15.0)
    ribs = in_rib_layer & band & z_ok & ~((np.abs(dx) < 28.0) & (dy > 0))
    shell = np.minimum(depth - anat.d_rib, anat.d_rib + anat.rib_th - depth) < 2.0
    put(ribs, np.where(shell, 850.0, 380.0), "bone")
    # Sternum: anterior midline plate from the manubrium to the heart.
    sternum = (
        (np.abs(dx) < 16.0)
        & (dy > 0)
        & (depth > anat.d_rib - 3.0)
        & (depth <= anat.d_rib + 11.0)
        & (z > anat.heart_c[2] - 40.0)
        & (z < anat.z_apex - 5.0)
    )
    put(sternum, np.where(np.abs(dx) > 12.0, 750.0, 320.0), "bone")
    # Vertebral body (cancellous core, cortical rim), discs every ~30 mm.
    r_body = np.hypot(dx, y - anat.spine_y)
    vbody = r_body < anat.spine_r
    disc = np.abs(((z - anat.disc_phase) % 30.0) - 15.0) > 11.5
    put(vbody, np.where(r_body > anat.spine_r - 2.5, 800.0, 260.0), "bone")
    put(vbody & disc, 90.0, "soft")
    canal_y = anat.spine_y - anat.spine_r - 10.0
    r_arch = np.hypot(dx, y - canal_y)
    put((r_arch < 15.0) & (r_arch >= 8.5), 650.0, "bone")
    put(r_arch < 8.5, 20.0, "soft")
    spinous = (np.abs(dx) < 5.0) & (y < canal_y - 12.0) & (depth > 18.0)
    put(spinous, 600.0, "bone")


# Root directions (lateral, anterior, superior) of the vessel trees at each hilum.
_VESSEL_DIRECTIONS = (
    (0.6, -0.2, 1.0),
    (0.5, 0.5, 0.8),
    (1.0, 0.3, 0.1),
    (1.0, -0.5, 0.0),
    (0.5, -0.8, -0.9),
    (0.6, 0.7, -0.8),
    (0.8, 0.0, -1.0),
)


def _vessels(anat: Anatomy, rng, affine, shape, pv: float, scale: float = 1.0) -> np.ndarray:
    """Pulmonary vessel trees from each hilum, fanning up, out, down-back and down-front."""
    params = TreeParams(min_radius=max(0.5, 0.15 * pv))
    segments: list[Segment] = []
    for s in (1, -1):
        xl, yl = anat.lung_c[s]
        inside = inside_lung_fn(anat, s)
        hilum = _hilum(anat, s, anat.z_carina - (22.0 if s == 1 else 12.0), inside)
        if hilum is None:
            continue
        for d in _VESSEL_DIRECTIONS:
            d = (s * d[0], d[1], d[2])
            jitter = rng.normal(0, 0.15, 3)
            segments += grow_tree(
                rng,
                hilum,
                np.asarray(d) + jitter,
                rng.uniform(28, 38),
                rng.uniform(4, 5.5) * scale,
                inside,
                params,
            )
    return rasterize_tubes(segments, affine, shape, pv)


def _hilum(anat: Anatomy, s: int, z: float, inside) -> np.ndarray | None:
    """The first lung point lateral to the mediastinum near height ``z`` (vessel roots)."""
    yl = anat.lung_c[s][1]
    for dz in (0.0, 10.0, 20.0, -10.0, 30.0):
        for lateral in np.arange(anat.med_half, anat.med_half + 70.0, 2.0):
            point = np.array([anat.cx + s * lateral, yl, z + dz])
            if inside(point):
                return point
    return None


def _airways(
    anat: Anatomy, rng, affine, shape, pv: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trachea, main bronchi and bronchial generations inside the lungs.

    Returns fill fractions: (trachea + main bronchi lumen, all lumens, lumens + walls).
    """
    tx, ty, tr = anat.trachea
    z_top = anat.z_apex + 200.0
    carina = np.array([tx, ty, anat.z_carina])
    segments = [Segment(np.array([tx, ty, z_top]), carina, tr, tr * 0.95, 0)]
    params = TreeParams(min_radius=max(1.2, 0.3 * pv), max_generation=4, taper=0.9)
    for s in (1, -1):
        xl, yl = anat.lung_c[s]
        drop = 18.0 if s == 1 else 28.0
        hilum = np.array([anat.cx + s * (anat.med_half + 8.0), yl + 4.0, anat.z_carina - drop])
        main_r = tr * (0.72 if s == 1 else 0.65)
        segments.append(Segment(carina, hilum, main_r, main_r * 0.9, 1))
        inside = inside_lung_fn(anat, s)
        for d in ((s * 0.4, -0.1, 1.0), (s, 0.2, -0.1), (s * 0.5, -0.5, -1.0)):
            segments += grow_tree(
                rng,
                hilum,
                np.asarray(d) + rng.normal(0, 0.1, 3),
                rng.uniform(18, 25),
                main_r * 0.7,
                inside,
                params,
                generation=2,
            )
    central = rasterize_tubes(segments[:3], affine, shape, pv)
    lumen = np.maximum(central, rasterize_tubes(segments[3:], affine, shape, pv))
    wall = rasterize_tubes(segments, affine, shape, pv, grow_mm=lambda r: max(1.0, 0.2 * r))
    return central, lumen, wall

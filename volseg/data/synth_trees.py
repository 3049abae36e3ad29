"""Branching tubes (pulmonary vessels, bronchi) for the synthetic CT: grow, then rasterise.

A tree is a list of tapered line segments grown from a root by random bifurcation, kept
inside a region by a point test. Rasterisation writes, per voxel, the fraction of the voxel
a tube fills (soft edge one voxel wide; tubes thinner than a voxel are dimmed by their area
share, as partial volume does in a real scan).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from volseg.data.synth_grid import world_axes, world_to_index


@dataclass(frozen=True)
class Segment:
    """A tube from ``start`` to ``end`` (world mm) whose radius tapers from ``r0`` to ``r1``."""

    start: np.ndarray
    end: np.ndarray
    r0: float
    r1: float
    generation: int


@dataclass(frozen=True)
class TreeParams:
    """How a tree branches: child length/radius ratios, branching angle, when to stop."""

    length_ratio: tuple[float, float] = (0.68, 0.85)
    taper: float = 0.85
    major_ratio: tuple[float, float] = (0.78, 0.92)
    minor_ratio: tuple[float, float] = (0.6, 0.8)
    angle_deg: tuple[float, float] = (22.0, 45.0)
    min_radius: float = 0.6
    max_generation: int = 7


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """A random unit vector perpendicular to ``d``."""
    v = rng.standard_normal(3)
    return _unit(v - np.dot(v, d) * d)


def grow_tree(
    rng: np.random.Generator,
    start: Sequence[float],
    direction: Sequence[float],
    length: float,
    radius: float,
    inside: Callable[[np.ndarray], bool],
    params: TreeParams,
    generation: int = 0,
) -> list[Segment]:
    """Grow a bifurcating tree from ``start``; every segment end satisfies ``inside``.

    A segment that would leave the region is retried in a jittered direction, then shortened;
    if that fails the branch ends there, so trees fill the region without crossing it.
    """
    segments: list[Segment] = []
    stack = [(np.asarray(start, float), _unit(np.asarray(direction, float)), length, radius, 0)]
    while stack:
        p, d, seg_len, r, gen = stack.pop()
        if r < params.min_radius or gen > params.max_generation:
            continue
        end = None
        for attempt in range(5):
            cand_d = d if attempt == 0 else _unit(d + 0.45 * _perpendicular(rng, d))
            cand_len = seg_len * (1.0 if attempt < 3 else 0.55)
            cand = p + cand_d * cand_len
            if inside(cand) and inside(p + 0.5 * cand_d * cand_len):
                end, d = cand, cand_d
                break
        if end is None:
            continue
        r_end = r * params.taper
        segments.append(Segment(p, end, float(r), float(r_end), generation + gen))
        perp = _perpendicular(rng, d)
        a1, a2 = np.deg2rad(rng.uniform(*params.angle_deg, size=2))
        for sign, angle, ratio in ((1.0, a1, params.major_ratio), (-1.0, a2, params.minor_ratio)):
            child_d = _unit(np.cos(angle) * d + sign * np.sin(angle) * perp)
            child_len = seg_len * rng.uniform(*params.length_ratio)
            stack.append((end, child_d, child_len, r_end * rng.uniform(*ratio), gen + 1))
    return segments


def rasterize_tubes(
    segments: Sequence[Segment],
    affine: np.ndarray,
    shape: Sequence[int],
    pv_mm: float,
    grow_mm: Callable[[float], float] | None = None,
) -> np.ndarray:
    """Fraction (0..1, float32) of each voxel filled by the tubes, maximum over segments.

    ``pv_mm`` is the in-plane voxel size: the edge ramp width and the size below which a tube
    is drawn one voxel wide but dimmed by its cross-section share. ``grow_mm(r)`` thickens
    every radius (used for bronchial walls).
    """
    out = np.zeros(tuple(shape), dtype=np.float32)
    ax_x, ax_y, ax_z = world_axes(affine, shape)
    half = pv_mm / 2.0
    for seg in segments:
        r0 = seg.r0 + (grow_mm(seg.r0) if grow_mm else 0.0)
        r1 = seg.r1 + (grow_mm(seg.r1) if grow_mm else 0.0)
        pad = max(r0, r1, half) + pv_mm
        lo = np.minimum(seg.start, seg.end) - pad
        hi = np.maximum(seg.start, seg.end) + pad
        corners = np.array([[c[0], c[1], c[2]] for c in _box_corners(lo, hi)])
        idx = world_to_index(affine, corners)
        i0 = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        i1 = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, np.asarray(shape))
        if np.any(i1 <= i0):
            continue
        sl = tuple(slice(int(a), int(b)) for a, b in zip(i0, i1, strict=True))
        px = ax_x[sl[0], :, :] - seg.start[0]
        py = ax_y[:, sl[1], :] - seg.start[1]
        pz = ax_z[:, :, sl[2]] - seg.start[2]
        u = seg.end - seg.start
        length2 = max(float(np.dot(u, u)), 1e-9)
        t = np.clip((px * u[0] + py * u[1] + pz * u[2]) / length2, 0.0, 1.0)
        dist = np.sqrt((px - t * u[0]) ** 2 + (py - t * u[1]) ** 2 + (pz - t * u[2]) ** 2)
        radius = r0 + (r1 - r0) * t
        r_eff = np.maximum(radius, half)
        frac = np.clip((r_eff - dist) / pv_mm + 0.5, 0.0, 1.0) * np.minimum(
            1.0, (radius / r_eff) ** 2
        )
        np.maximum(out[sl], frac.astype(np.float32), out=out[sl])
    return out


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> list[tuple[float, float, float]]:
    return [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]

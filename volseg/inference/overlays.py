"""PNG overlays a radiologist can glance at: axial CT slices in lung window, the lesion, the
lungs and (when given) the reference outlined, with a legend and volumes in mL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LUNG_WINDOW = (-1350.0, 150.0)  # level -600, width 1500


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel.orientations as nio

    return nio.apply_orientation(array, nio.io_orientation(affine))


def write_overlays(
    out_dir: Path,
    image: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    lungs: np.ndarray | None = None,
    max_slices: int = 6,
    reference: np.ndarray | None = None,
) -> list[Path]:
    """Write up to ``max_slices`` axial PNGs (:func:`overlay_slices`: the slices with the
    most lesion, or three through the lungs when there is none).

    Displayed in radiological convention (patient's right on the viewer's left, anterior
    up), orientation taken from the affine. ``reference`` (a mask on the same grid) is
    outlined in yellow. Each PNG is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from volseg.io import atomic_path

    view = RasView(image, affine)
    lesion = view.mask(mask)
    lung = view.mask(lungs)
    ref = view.mask(reference)
    total_ml = float(lesion.sum()) * view.voxel_ml
    order = overlay_slices(lesion, lung, max_slices)
    written = []
    for k in sorted(set(order)):
        ct = view.ct
        fig, ax = plt.subplots(figsize=(5, 5 * view.aspect * ct.shape[1] / ct.shape[0]), dpi=100)
        view.draw(ax, k, lesion, lung, ref)
        slice_ml = float(lesion[:, :, k].sum()) * view.voxel_ml
        ax.set_title(
            f"axial slice {k} (RAS): lesion {slice_ml:.1f} mL in this slice, {total_ml:.1f} mL in all",
            fontsize=8,
        )
        legend(ax, lung is not None, ref is not None)
        dest = out_dir / f"slice_{k:03d}.png"
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        plt.close(fig)
        written.append(dest)
    return written


def overlay_slices(lesion: np.ndarray, lung: np.ndarray | None, max_slices: int) -> list[int]:
    """Axial slices (last axis) to show: up to ``max_slices`` with the most lesion, most
    first; with no lesion, three spread over the lungs' extent (as the evaluation montage
    spreads them over a lesion's), so a whole-chest or chest-abdomen scan shows lung, not
    the abdomen; over the whole volume without a lung mask."""
    from volseg.evaluation.montage import montage_slices

    per_slice = lesion.sum(axis=(0, 1))
    if per_slice.max() > 0:
        return [int(k) for k in np.argsort(-per_slice) if per_slice[k] > 0][:max_slices]
    shown = lung if lung is not None else lesion
    return montage_slices(shown, shown, 3)


class RasView:
    """A CT volume turned to RAS axes for axial display, with its pixel aspect and voxel
    volume; draws one axial slice with outlines (shared by overlays and the montage)."""

    def __init__(self, image: np.ndarray, affine: np.ndarray) -> None:
        self.affine = np.asarray(affine, dtype=np.float64)
        self.ct = _to_ras(image, self.affine)
        self.voxel_ml = float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0
        spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
        ras_spacing = spacing[np.argsort(_axes_to_ras(self.affine))]
        self.aspect = float(ras_spacing[1] / ras_spacing[0])

    def mask(self, array: np.ndarray | None) -> np.ndarray | None:
        """A mask on the image's grid, turned the same way (None stays None)."""
        return None if array is None else _to_ras(array, self.affine) > 0

    def draw(
        self,
        ax: Any,
        k: int,
        lesion: np.ndarray | None,
        lung: np.ndarray | None = None,
        ref: np.ndarray | None = None,
    ) -> None:
        """Axial slice ``k`` in lung window, radiological convention (patient's right on
        the viewer's left), lungs blue, reference dashed yellow, lesion red."""

        def shown(a: np.ndarray) -> np.ndarray:
            return a[:, :, k].T[:, ::-1]

        ax.imshow(
            shown(self.ct),
            cmap="gray",
            vmin=LUNG_WINDOW[0],
            vmax=LUNG_WINDOW[1],
            origin="lower",
            aspect=self.aspect,
            interpolation="nearest",
        )
        for outline, color, width, style in (
            (lung, "deepskyblue", 0.6, "solid"),
            (ref, "yellow", 0.8, "dashed"),
            (lesion, "red", 1.0, "solid"),
        ):
            if outline is not None and outline[:, :, k].any():
                ax.contour(
                    shown(outline).astype(float),
                    levels=[0.5],
                    colors=color,
                    linewidths=width,
                    linestyles=style,
                    origin="lower",
                )
        ax.text(0.01, 0.5, "R", color="yellow", transform=ax.transAxes)
        ax.text(0.97, 0.5, "L", color="yellow", transform=ax.transAxes)
        ax.axis("off")


def legend(ax: Any, lungs: bool, reference: bool) -> None:
    """A legend naming each outline drawn."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="red", lw=1.0, label="predicted lesion")]
    if lungs:
        handles.append(Line2D([], [], color="deepskyblue", lw=0.8, label="lungs"))
    if reference:
        handles.append(Line2D([], [], color="yellow", lw=0.8, ls="--", label="reference"))
    ax.legend(handles=handles, loc="lower right", fontsize=6, framealpha=0.6)


def _axes_to_ras(affine: np.ndarray) -> np.ndarray:
    import nibabel.orientations as nio

    return nio.io_orientation(affine)[:, 0].astype(int)

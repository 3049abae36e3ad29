"""PNG overlays a radiologist can glance at: axial CT slices in lung window, the lesion, the
lungs and (when given) the reference outlined, with a legend and volumes in mL."""

from __future__ import annotations

from pathlib import Path

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
    """Write up to ``max_slices`` axial PNGs, the slices with the most lesion first.

    Displayed in radiological convention (patient's right on the viewer's left, anterior
    up), orientation taken from the affine. ``reference`` (a mask on the same grid) is
    outlined in yellow. Each PNG is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from volseg.io import atomic_path

    ct = _to_ras(image, affine)
    lesion = _to_ras(mask, affine) > 0
    lung = _to_ras(lungs, affine) > 0 if lungs is not None else None
    ref = _to_ras(reference, affine) > 0 if reference is not None else None
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    total_ml = float(lesion.sum()) * voxel_ml
    per_slice = lesion.sum(axis=(0, 1))
    if per_slice.max() > 0:
        order = [int(k) for k in np.argsort(-per_slice) if per_slice[k] > 0][:max_slices]
    else:
        order = [int(k) for k in np.linspace(0, ct.shape[2] - 1, min(3, ct.shape[2]))]
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    ras_spacing = spacing[np.argsort(_axes_to_ras(affine))]
    aspect = float(ras_spacing[1] / ras_spacing[0])
    written = []
    for k in sorted(set(order)):
        fig, ax = plt.subplots(figsize=(5, 5 * aspect * ct.shape[1] / ct.shape[0]), dpi=100)

        def view(a: np.ndarray, k: int = k) -> np.ndarray:
            return a[:, :, k].T[:, ::-1]  # radiological: patient's right on the left

        ax.imshow(
            view(ct),
            cmap="gray",
            vmin=LUNG_WINDOW[0],
            vmax=LUNG_WINDOW[1],
            origin="lower",
            aspect=aspect,
            interpolation="nearest",
        )
        for outline, color, width, style in (
            (lung, "deepskyblue", 0.6, "solid"),
            (ref, "yellow", 0.8, "dashed"),
            (lesion, "red", 1.0, "solid"),
        ):
            if outline is not None and outline[:, :, k].any():
                ax.contour(
                    view(outline).astype(float),
                    levels=[0.5],
                    colors=color,
                    linewidths=width,
                    linestyles=style,
                    origin="lower",
                )
        slice_ml = float(lesion[:, :, k].sum()) * voxel_ml
        ax.set_title(
            f"axial slice {k} (RAS): lesion {slice_ml:.1f} mL in this slice, {total_ml:.1f} mL in all",
            fontsize=8,
        )
        _legend(ax, lung is not None, ref is not None)
        ax.text(0.01, 0.5, "R", color="yellow", transform=ax.transAxes)
        ax.text(0.97, 0.5, "L", color="yellow", transform=ax.transAxes)
        ax.axis("off")
        dest = out_dir / f"slice_{k:03d}.png"
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        plt.close(fig)
        written.append(dest)
    return written


def _legend(ax: object, lungs: bool, reference: bool) -> None:
    """A legend naming each outline drawn."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="red", lw=1.0, label="predicted lesion")]
    if lungs:
        handles.append(Line2D([], [], color="deepskyblue", lw=0.8, label="lungs"))
    if reference:
        handles.append(Line2D([], [], color="yellow", lw=0.8, ls="--", label="reference"))
    ax.legend(handles=handles, loc="lower right", fontsize=6, framealpha=0.6)  # type: ignore[attr-defined]


def _axes_to_ras(affine: np.ndarray) -> np.ndarray:
    import nibabel.orientations as nio

    return nio.io_orientation(affine)[:, 0].astype(int)

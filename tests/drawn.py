"""Read back what a figure drew: lines and bands by colour, for tests that compare them with direct computations."""
import numpy as np
from matplotlib.colors import to_rgb

from analysis.frames import PALETTE


def variant_lines(ax):
    """variant -> (x, y) of the line drawn in that variant's palette colour."""
    found = {}
    for line in ax.lines:
        for variant, colour in PALETTE.items():
            if np.allclose(to_rgb(line.get_color()), to_rgb(colour)):
                assert variant not in found
                found[variant] = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
    return found


def bands(ax, colours=PALETTE):
    """name -> {x: (low, high)} read from the vertices of the band polygon drawn in that name's colour."""
    found = {}
    for patch in ax.patches:
        for name, colour in colours.items():
            if np.allclose(to_rgb(patch.get_facecolor()), to_rgb(colour)):
                xy = np.asarray(patch.get_xy())
                found[name] = {x: (xy[xy[:, 0] == x, 1].min(), xy[xy[:, 0] == x, 1].max()) for x in np.unique(xy[:, 0])}
    return found

"""Latitude cell-area weights and the latitude-band regions scores are averaged over.

Weights follow WeatherBench2 (`weatherbench2.metrics.get_lat_weights`): cell
bounds are the midpoints between grid latitudes plus the poles, and a cell's
weight is its area fraction `sin(upper) - sin(lower)`, normalised to mean 1
(`gencast_rmmd.data.grid.latitude_cell_weights`, shared with the training loss).
Regions are WeatherBench2's latitude bands under WB2's names; a region is
applied as a 0/1 mask on the latitude weights, so a regional mean is a
cell-area-weighted mean over the region's cells only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from gencast_rmmd.data.grid import latitude_cell_weights
from gencast_rmmd.errors import UserInputError

__all__ = ["REGIONS", "REGION_ALIASES", "LatitudeBand", "canonical_region", "latitude_cell_weights",
           "region_weights"]


@dataclass(frozen=True)
class LatitudeBand:
    """A region as a closed or open latitude interval in degrees north.

    A point at latitude φ belongs to the band when `south < φ < north`, or with
    `<=` on a side marked inclusive. `None` means no bound on that side.
    """

    south: float | None = None
    north: float | None = None
    south_inclusive: bool = True
    north_inclusive: bool = True
    absolute: bool = False  # apply the bounds to |φ| (tropics, extra-tropics)

    def contains(self, latitude: np.ndarray) -> np.ndarray:
        """Boolean mask of the latitudes (degrees north) inside the band."""
        values = np.abs(latitude) if self.absolute else np.asarray(latitude, dtype=float)
        inside = np.ones(values.shape, dtype=bool)
        if self.south is not None:
            inside &= values >= self.south if self.south_inclusive else values > self.south
        if self.north is not None:
            inside &= values <= self.north if self.north_inclusive else values < self.north
        return inside


# WeatherBench2's latitude bands (`scripts/evaluate.py`, `predefined_regions`): `SliceRegion`s select with
# `.sel(latitude=slice(a, b))`, inclusive at both ends, so the rows at exactly +-20 and +-60 degrees belong to
# the tropics and to the extra-tropics / hemispheres, and to the polar caps.
REGIONS: dict[str, LatitudeBand] = {
    "global": LatitudeBand(),
    "tropics": LatitudeBand(north=20.0, absolute=True),
    "extra-tropics": LatitudeBand(south=20.0, absolute=True),
    "northern-hemisphere": LatitudeBand(south=20.0),
    "southern-hemisphere": LatitudeBand(north=-20.0),
    "arctic": LatitudeBand(south=60.0),
    "antarctic": LatitudeBand(north=-60.0),
}
# Names earlier versions wrote (and configs may still say): the same regions.
REGION_ALIASES: dict[str, str] = {name.replace("-", "_"): name for name in REGIONS if "-" in name}


def canonical_region(name: str) -> str:
    """WeatherBench2's name of a region, given it or an old underscore alias (`extra_tropics`).

    Raises `UserInputError` naming the known regions for any other name.
    """
    if name in REGIONS:
        return name
    if name in REGION_ALIASES:
        return REGION_ALIASES[name]
    raise UserInputError(f"unknown region {name!r}; choose from {', '.join(REGIONS)}")


def region_weights(latitude: xr.DataArray, regions: tuple[str, ...] | list[str]) -> xr.DataArray:
    """Latitude weights masked to each region, dims `(region, latitude)`.

    Regions may be given by old alias; the `region` coordinate holds WB2's
    names. Entry (r, j) is the cell-area weight of latitude j (see
    `latitude_cell_weights`) if j lies in region r, else 0. A regional mean of a
    field f is Σ_j Σ_i w_rj f_ij / Σ_j Σ_i w_rj (i over longitude).
    """
    regions = [canonical_region(name) for name in regions]
    values = np.asarray(latitude.values, dtype=np.float64)
    weights = latitude_cell_weights(values)
    masked = np.stack([np.where(REGIONS[name].contains(values), weights, 0.0) for name in regions])
    return xr.DataArray(masked, dims=("region", "latitude"),
                        coords={"region": list(regions), "latitude": latitude.values})

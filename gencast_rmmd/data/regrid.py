"""Conservative regridding between regular latitude-longitude grids (e.g. ERA5 0.25 degree -> GenCast's 1 degree).

WeatherBench2 publishes ERA5 at 0.25, 1.5 and 5.625 degrees; GenCast 1p0 runs
on a 1-degree grid with poles (181 x 360). A conservative regridder keeps
every area integral: each target cell's value is the area-weighted mean of
the source cells it overlaps,

    v_dst(I, K) = sum_{j,k} A(I, j) B(K, k) m(j, k) v(j, k) / sum_{j,k} A(I, j) B(K, k) m(j, k),

with A(I, j) the overlap of the target's and the source's latitude bands,
measured in sin(latitude) (the area of a band is proportional to the
difference of the sines of its edges), B(K, k) the overlap of their longitude
intervals in degrees (periodic in 360), and m the validity of the source value
(NaN, e.g. sea surface temperature over land, is left out). On regular grids
the weights are separable, so a field costs two small matrix products. A
target cell whose valid source area is below `min_valid_fraction` of its area
becomes NaN (a target cell that is mostly land has no sea temperature).

Cell edges are the midpoints between centres and the poles (`data.grid.latitude_bounds`,
the bands the loss and the scores weight by), so a grid "with poles" has
half-height polar cells, and grids without poles (the WB2 equiangular ones)
cover the sphere as well. The
global area-weighted mean of a field without NaN is the same on both grids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from gencast_rmmd.data.grid import latitude_bounds
from gencast_rmmd.errors import UserInputError


def regular_grid(resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """(latitude, longitude) of the regular grid with poles at `resolution` degrees (1.0 -> 181 x 360)."""
    rows, columns = 180.0 / resolution, 360.0 / resolution
    if resolution <= 0 or not (np.isclose(rows, round(rows)) and np.isclose(columns, round(columns))):
        raise UserInputError(f"--resolution {resolution:g}: give a spacing in degrees that divides 180, "
                             "e.g. 1.0 (GenCast 1p0: 181 x 360) or 0.25")
    return np.linspace(-90.0, 90.0, int(round(rows)) + 1), np.arange(int(round(columns))) * float(resolution)


def latitude_edges(latitude: np.ndarray) -> np.ndarray:
    """Band edges [n + 1] (degrees) of ascending centres: the bands `latitude_cell_weights` weights by."""
    latitude = np.asarray(latitude, np.float64)
    if latitude.size < 2 or np.any(np.diff(latitude) <= 0):
        raise UserInputError("latitudes must be at least two, strictly ascending")
    return latitude_bounds(latitude)


def longitude_edges(longitude: np.ndarray) -> np.ndarray:
    """Interval edges [n + 1] (degrees) of ascending, evenly spaced centres covering 360 degrees."""
    longitude = np.asarray(longitude, np.float64)
    spacing = 360.0 / longitude.size
    if not np.allclose(np.diff(longitude), spacing):
        raise UserInputError(f"longitudes must be evenly spaced around the globe ({longitude.size} points, "
                             f"{spacing:g} degrees apart)")
    return np.append(longitude - spacing / 2, longitude[-1] + spacing / 2)


def _overlaps(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """[n_target, n_source] lengths of the overlaps of intervals given by their edges (1-D, same measure)."""
    low = np.maximum(target[:-1, None], source[None, :-1])
    high = np.minimum(target[1:, None], source[None, 1:])
    return np.maximum(high - low, 0.0)


def latitude_weights(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A [n_target, n_source]: band overlaps measured in sin(latitude), i.e. proportional to area."""
    sines = [np.sin(np.deg2rad(latitude_edges(latitudes))) for latitudes in (target, source)]
    return _overlaps(*sines)


def longitude_weights(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """B [n_target, n_source]: interval overlaps in degrees, periodic (source shifted by -360, 0, +360)."""
    target_edges, source_edges = longitude_edges(target), longitude_edges(source)
    return sum(_overlaps(target_edges, source_edges + shift) for shift in (-360.0, 0.0, 360.0))


def regrid_array(values: np.ndarray, rows: np.ndarray, columns: np.ndarray,
                 min_valid_fraction: float = 0.5) -> np.ndarray:
    """values [..., lat, lon] -> [..., lat', lon'] with weights A (rows) and B (columns): module docstring."""
    values = np.asarray(values, np.float64)
    valid = np.isfinite(values)
    weighted = np.einsum("ij,...jk,lk->...il", rows, np.where(valid, values, 0.0), columns, optimize=True)
    covered = np.einsum("ij,...jk,lk->...il", rows, valid.astype(np.float64), columns, optimize=True)
    area = rows.sum(axis=1)[:, None] * columns.sum(axis=1)[None, :]
    enough = covered >= min_valid_fraction * area
    return np.where(enough, weighted / np.where(enough, covered, 1.0), np.nan)


def regrid_dataset(dataset: xr.Dataset, latitude: np.ndarray, longitude: np.ndarray,
                   min_valid_fraction: float = 0.5) -> xr.Dataset:
    """Every variable with latitude and longitude dims regridded conservatively (lazily with dask); float32.

    `dataset` as `data.stores.open_dataset` returns it (latitude ascending, longitude in [0, 360));
    variables without both dims are kept as they are.
    """
    rows = latitude_weights(dataset["latitude"].values, latitude)
    columns = longitude_weights(dataset["longitude"].values, longitude)
    regridded = {}
    for name, variable in dataset.data_vars.items():
        if not {"latitude", "longitude"} <= set(variable.dims):
            regridded[name] = variable
            continue
        if variable.chunks is not None:              # one block per field: the weights span the whole grid
            variable = variable.chunk({"latitude": -1, "longitude": -1})
        out = xr.apply_ufunc(
            regrid_array, variable, input_core_dims=[["latitude", "longitude"]],
            output_core_dims=[["latitude", "longitude"]], exclude_dims={"latitude", "longitude"},
            kwargs={"rows": rows, "columns": columns, "min_valid_fraction": min_valid_fraction},
            dask="parallelized", output_dtypes=[np.float64],
            dask_gufunc_kwargs={"output_sizes": {"latitude": latitude.size, "longitude": longitude.size}})
        regridded[name] = out.astype(np.float32).assign_attrs(variable.attrs)
    result = xr.Dataset(regridded, attrs=dataset.attrs)
    return result.assign_coords(latitude=("latitude", latitude, dataset["latitude"].attrs),
                                longitude=("longitude", longitude, dataset["longitude"].attrs))


def write_regridded(source: str, out: str | Path, resolution: float, variables: list[str] | None = None,
                    levels: list[int] | None = None, min_valid_fraction: float = 0.5) -> xr.Dataset:
    """Regrid the store at `source` to the regular grid with poles at `resolution` degrees; write `out`.

    `out` is a zarr store (format 2, consolidated, one time per chunk) in the WB2 layout, written to a
    temporary sibling and renamed when complete (an interrupted run leaves no partial store).
    `variables` / `levels` keep only those (a data config's); the source's time axis is kept whole.
    Returns the written dataset (lazy).
    """
    from gencast_rmmd.data.schema import DERIVABLE
    from gencast_rmmd.data.stores import describe_location, open_dataset
    from gencast_rmmd.io_utils import atomic_path

    latitude, longitude = regular_grid(resolution)
    dataset = open_dataset(source)
    if variables is not None:    # a variable the loader derives is regridded as the one it comes from
        variables = list(dict.fromkeys(name if name in dataset.data_vars else DERIVABLE.get(name, name)
                                       for name in variables))
        missing = [name for name in variables if name not in dataset.data_vars]
        if missing:
            raise UserInputError(f"{describe_location(source)} has no variable {missing[0]}; regrid the variables "
                                 "the store holds (check the data config's variables)")
        dataset = dataset[variables]
    if levels is not None and "level" in dataset.dims:
        absent = sorted(set(levels) - set(int(level) for level in dataset["level"].values))
        if absent:
            raise UserInputError(f"{describe_location(source)} has no level {absent[0]} hPa")
        dataset = dataset.sel(level=list(levels))
    result = regrid_dataset(dataset, latitude, longitude, min_valid_fraction)
    result.attrs = {**dataset.attrs, "regridding": f"conservative from {describe_location(source)} to "
                                                  f"{resolution:g} degree with poles (gencast-rmmd data regrid)"}
    if "time" in result.dims:
        result = result.chunk({"time": 1})
    for name in result.variables:
        result[name].encoding = {}
    if "time" in dataset.variables:
        result["time"].encoding = {key: value for key, value in dataset["time"].encoding.items()
                                   if key in ("units", "calendar", "dtype")}
    with atomic_path(out) as temporary:
        result.to_zarr(temporary, mode="w", zarr_format=2, consolidated=True)
    return result

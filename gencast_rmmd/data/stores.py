"""Open zarr stores (local, file://, gs://, any fsspec URL) in one internal convention.

WeatherBench2 stores differ in dim order (`(time, level, longitude, latitude)`
for the 64x32 store, `(time, level, latitude, longitude)` for 0.25 deg), in
latitude direction (ascending vs descending) and in coordinate names
(`lat`/`lon`). `open_dataset` hides all of that: latitude ascending, longitude
in [0, 360) ascending, `level` in hPa, every variable transposed to
`(time, level, latitude, longitude)`. Everything stays lazy (dask).

`open_file` reads single files (e.g. a published checkpoint) from the same
places with the same anonymous access and fast offline failure.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import numpy as np
import xarray as xr
from zarr.storage import FsspecStore, LocalStore

from gencast_rmmd.data.chunks import CheckedStore
from gencast_rmmd.data.variables import COORDINATE_ALIASES
from gencast_rmmd.errors import UserInputError

CANONICAL_DIMS: tuple[str, ...] = ("time", "level", "latitude", "longitude")

# Hosts to resolve before touching a remote store: an offline open otherwise
# takes ~50 s to fail.
_REMOTE_HOSTS: dict[str, str] = {
    "gs": "storage.googleapis.com",
    "gcs": "storage.googleapis.com",
    "s3": "s3.amazonaws.com",
}
_DNS_TIMEOUT_S = 3.0


def _scheme(url: str) -> str:
    parsed = urlparse(url)
    # A Windows drive letter or a bare path has no real scheme.
    return parsed.scheme if len(parsed.scheme) > 1 else ""


def _local_path(url: str) -> Path:
    return Path(urlparse(url).path if url.startswith("file://") else url).expanduser()


def _check_host_reachable(url: str, remedy: str = "copy the store locally and pass its path with --data") -> None:
    """Resolve the host of `url` within a few seconds, or raise UserInputError ending with `remedy`."""
    scheme = _scheme(url)
    host = _REMOTE_HOSTS.get(scheme) or urlparse(url).hostname
    if not host:
        return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, 443).result(timeout=_DNS_TIMEOUT_S)
    except (OSError, concurrent.futures.TimeoutError) as error:
        raise UserInputError(
            f"cannot reach {url}: host {host} is unreachable (DNS lookup failed: "
            f"{type(error).__name__}); check the network, or {remedy}") from None
    finally:
        pool.shutdown(wait=False)


def _storage_options(url: str) -> dict:
    return {"token": "anon"} if _scheme(url) in ("gs", "gcs") else {}


def is_local(location: str) -> bool:
    """True for a local path or a `file://` URL; False for `gs://` and other fsspec URLs."""
    return _scheme(str(location)) in ("", "file")


def join_location(directory: str, name: str) -> str:
    """`name` inside `directory`, a local path or a URL (`gs://bucket/dir` + `f.nc` -> `gs://bucket/dir/f.nc`)."""
    directory = str(directory)
    return str(_local_path(directory) / name) if is_local(directory) else f"{directory.rstrip('/')}/{name}"


def open_file(location: str) -> BinaryIO:
    """A single file opened for binary reading (seekable): a local path, `file://`, `gs://` or any fsspec URL.

    Remote files are read as stores are: `gs://` anonymously, and a host that does not
    resolve is a `UserInputError` within seconds instead of a minute of retries. A missing
    file raises `FileNotFoundError` (remote: as fsspec reports it) for the caller to name.
    """
    location = str(location)
    if is_local(location):
        return open(_local_path(location), "rb")
    import fsspec

    _check_host_reachable(location, remedy=f"download {location} and give its local path")
    return fsspec.open(location, "rb", **_storage_options(location)).open()


def file_fingerprint(location: str) -> str:
    """A digest of a file's content that changes when the file does: `sha256:HEX` of a local file's bytes;
    for a remote one, the content hash its object store keeps (`md5:`/`crc32c:` on GCS, else the ETag),
    so that a pipeline can name a multi-gigabyte remote checkpoint without downloading it to hash it."""
    location = str(location)
    if is_local(location):
        digest = hashlib.sha256()
        with open_file(location) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return f"sha256:{digest.hexdigest()}"
    import fsspec

    _check_host_reachable(location, remedy=f"download {location} and give its local path")
    filesystem, path = fsspec.core.url_to_fs(location, **_storage_options(location))
    try:
        info = filesystem.info(path)
    except FileNotFoundError:
        raise UserInputError(f"no file at {location}; check the URL") from None
    for key, label in (("md5Hash", "md5"), ("crc32c", "crc32c"), ("ETag", "etag"), ("etag", "etag")):
        if info.get(key):
            return f"{label}:{info[key]}"
    raise UserInputError(f"{location}: its store gives no content hash; download it and give its local path")


def checked_store(url: str) -> CheckedStore:
    """The zarr store at `url`, read-only, wrapped so that every chunk read is checked.

    `url`: a local path, `file://`, `gs://` (anonymous) or any fsspec URL; see
    `gencast_rmmd.data.chunks` for the checks. Raises `UserInputError` for a missing path, a directory that is not a zarr
    store, or an unreachable host.
    """
    url = str(url)
    if is_local(url):
        path = _local_path(url)
        if not path.exists():
            raise UserInputError(
                f"no store at {path}: the path does not exist; give an existing zarr store with --data")
        if not path.is_dir():
            raise UserInputError(f"{path} is a file, not a zarr store (a directory); give the store's root directory")
        if not any((path / marker).exists() for marker in (".zgroup", "zarr.json", ".zmetadata")):
            raise UserInputError(
                f"{path} is not a zarr store (no .zgroup or zarr.json inside); give the store's root directory")
        store = LocalStore(path, read_only=True)
    else:
        _check_host_reachable(url)
        store = FsspecStore.from_url(url, storage_options=_storage_options(url) or None, read_only=True)
    return CheckedStore(store, describe_location(url))


def open_store(url: str, use_dask: bool = True) -> xr.Dataset:
    """Open a zarr store lazily as it is stored (no renaming or reordering).

    With `use_dask` (the default) variables are dask arrays on the store's
    chunks; without, they are xarray's lazily indexed backend arrays, which
    read selected frames directly and much faster for many small chunks.

    Accepts a local path, `file://`, `gs://` (anonymous gcsfs) or any fsspec
    URL; zarr v2 or v3; consolidated metadata or not. Raises `UserInputError`
    for a missing path, a directory that is not a zarr store, or an unreachable
    host.
    """
    url = str(url)
    # Every chunk read passes through CheckedStore: a truncated or undecodable chunk is one
    # named error, never a blosc traceback or wrong numbers.
    checked = checked_store(url)
    last_error: Exception | None = None
    for consolidated in (True, False):
        try:
            return xr.open_dataset(checked, engine="zarr", consolidated=consolidated,
                                   chunks={} if use_dask else None, cache=False, decode_timedelta=True)
        except (KeyError, FileNotFoundError, ValueError) as error:
            last_error = error
        except OSError as error:
            raise UserInputError(f"cannot read {url}: {type(error).__name__}: {error}") from None
    raise UserInputError(
        f"cannot open {url} as a zarr store ({type(last_error).__name__}: {last_error}); "
        "give the path of a zarr v2 or v3 store")


def normalize_coordinates(dataset: xr.Dataset, transpose: bool = True) -> xr.Dataset:
    """Return `dataset` in the internal convention, lazily.

    Renames coordinate aliases (`lat`, `lon`, `pressure_level`, ...), converts
    levels given in Pa to hPa, makes latitude ascending and longitude ascending
    in [0, 360), and transposes variables to `(time, level, latitude, longitude)`
    (other dims, e.g. an ensemble member dim, come first) unless `transpose` is
    False (a lazy transpose of non-dask arrays makes later selections slow).
    Checks nothing else: see `gencast_rmmd.data.schema` for validation.
    """
    renames = {alias: name for alias, name in COORDINATE_ALIASES.items()
               if alias in dataset.variables and name not in dataset.variables}
    if renames:
        dataset = dataset.rename(renames)
    if "level" in dataset.coords:
        levels = np.asarray(dataset["level"].values, dtype=float)
        if levels.size and np.nanmax(levels) > 1100.0:  # stored in Pa
            levels = levels / 100.0
        if np.allclose(levels, np.round(levels)):
            levels = np.round(levels).astype(np.int64)
        dataset = dataset.assign_coords(level=("level", levels, {"units": "hPa", "long_name": "pressure level"}))
    if "latitude" in dataset.coords and dataset.sizes.get("latitude", 0) > 1:
        if dataset["latitude"].values[0] > dataset["latitude"].values[-1]:
            dataset = dataset.isel(latitude=slice(None, None, -1))
    if "longitude" in dataset.coords:
        longitudes = np.mod(np.asarray(dataset["longitude"].values, dtype=float), 360.0)
        dataset = dataset.assign_coords(longitude=("longitude", longitudes, dataset["longitude"].attrs))
        if dataset.sizes.get("longitude", 0) > 1 and np.any(np.diff(longitudes) < 0):
            dataset = dataset.sortby("longitude")
    if not transpose:
        return dataset
    canonical = [dim for dim in CANONICAL_DIMS if dim in dataset.dims]
    return dataset.transpose(..., *canonical)


def open_dataset(url: str, use_dask: bool = True) -> xr.Dataset:
    """Open a store and bring it to the internal convention (see `normalize_coordinates`).

    Without dask, variables keep their stored dim order (transpose after reading).
    """
    return normalize_coordinates(open_store(url, use_dask), transpose=use_dask)


def describe_location(url: str) -> str:
    """A short, stable description of a store location for provenance attributes."""
    if _scheme(url) in ("", "file"):
        return os.path.abspath(_local_path(url))
    return url

"""A few numbers that say whether the simulated climate is Earth-like (printed after `simulate`).

Held & Suarez (1994) climate, for orientation: zonal-mean jets of about
30 m/s near 250 hPa at about 45 degrees latitude, temperatures from about
200 K aloft to about 315 K at the equatorial surface, 500 hPa geopotential
height between about 5000 and 5900 m.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

GRAVITY = 9.80616  # m s-2, dinosaur's value


def climate_summary(dataset: xr.Dataset, max_times: int = 120) -> list[str]:
    """Summary lines of a simulated store in the internal convention (`stores.open_dataset`).

    Uses at most `max_times` evenly spaced times. Reports the strongest
    time- and zonal-mean zonal wind (m/s, with its level and latitude), the
    temperature range (K), the 500 hPa geopotential height range (m) and the
    RMS of the 12 h change of z500 (m) and t850 (K) when those levels exist.
    """
    stride = max(1, dataset.sizes["time"] // max_times)
    sample = dataset.isel(time=slice(None, None, stride))
    zonal_wind = sample["u_component_of_wind"].mean(("time", "longitude")).values  # (level, latitude)
    level_index, latitude_index = np.unravel_index(np.argmax(np.abs(zonal_wind)), zonal_wind.shape)
    temperature = sample["temperature"].values
    lines = [
        f"climate: strongest zonal-mean wind {zonal_wind[level_index, latitude_index]:.1f} m/s at "
        f"{int(dataset['level'].values[level_index])} hPa, {dataset['latitude'].values[latitude_index]:.1f} deg",
        f"climate: temperature {temperature.min():.0f} .. {temperature.max():.0f} K",
    ]
    levels = set(int(level) for level in dataset["level"].values)
    if 500 in levels:
        height = sample["geopotential"].sel(level=500).values / GRAVITY
        lines.append(f"climate: z500 height {height.min():.0f} .. {height.max():.0f} m (mean {height.mean():.0f})")
    step = dataset["time"].values[1] - dataset["time"].values[0] if dataset.sizes["time"] > 1 else None
    if step is not None and np.timedelta64(12, "h") % step == np.timedelta64(0, "h"):
        lag = int(np.timedelta64(12, "h") // step)
        weights = np.cos(np.deg2rad(dataset["latitude"].values))[:, None]
        weights = weights / weights.mean()
        for name, level, unit, scale in (("geopotential", 500, "m", GRAVITY), ("temperature", 850, "K", 1.0)):
            if level in levels and dataset.sizes["time"] > lag:
                field = dataset[name].sel(level=level).isel(time=slice(None, max_times * lag)).values / scale
                change = np.sqrt(np.mean((field[lag:] - field[:-lag]) ** 2 * weights))
                lines.append(f"climate: RMS 12 h change of {name} at {level} hPa {change:.2f} {unit}")
    return lines

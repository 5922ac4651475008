"""Write a model forecast step by step, in the forecast file format of `gencast_rmmd.data.forecast_io`.

Long rollouts never hold the whole forecast in memory: each 12 h step is
written as soon as it is computed. The file (NetCDF, or a zarr store for an
`--out` ending in `.zarr`) appears at its path only when complete. Layout,
attributes and encodings are those of every other forecast writer
(`forecast_io.forecast_template`), so the model's files and the baselines'
agree on dims, time encoding, member dtype and CF attributes.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import pandas as pd

from gencast_rmmd.data.forecast_io import ForecastFileWriter, forecast_template
from gencast_rmmd.data.layout import ChannelLayout


class ForecastWriter(ForecastFileWriter):
    """Context manager: `with ForecastWriter(...) as writer: writer.write_step(lead_index, fields)`.

    `fields[name]` of `write_step` is `[n_init, member, lat, lon]` or
    `[n_init, member, level, lat, lon]`, for the model's surface, target-only
    and atmospheric variables of `layout`.
    """

    def __init__(self, path: str | os.PathLike, *, init_times: pd.DatetimeIndex, leads: pd.TimedeltaIndex,
                 members: int, layout: ChannelLayout, latitude: np.ndarray, longitude: np.ndarray,
                 attrs: Mapping[str, object] | None = None):
        attrs = dict(attrs or {})
        attrs.setdefault("title", f"gencast-rmmd {attrs.get('model_kind', 'model')} ensemble forecast")
        template = forecast_template(
            pd.DatetimeIndex(init_times), pd.TimedeltaIndex(leads), members, np.asarray(latitude),
            np.asarray(longitude), surface=(*layout.surface, *layout.target_only), atmospheric=layout.atmospheric,
            levels=layout.levels, attrs=attrs)
        super().__init__(path, template)

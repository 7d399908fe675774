"""Doctest collection: smoothce.dask needs the optional `dask` extra."""

import importlib.util

if importlib.util.find_spec("dask") is None or importlib.util.find_spec("distributed") is None:
    collect_ignore = ["smoothce/dask"]

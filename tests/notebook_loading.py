"""The published notebooks' loading code, run by tests/test_notebook_env.py in side environments.

Usage: ``python notebook_loading.py EXPORT.h5 [SITE_DIR]``. SITE_DIR, when given, is added
as a site directory (the project's packages behind the side environment's own). Prints one
JSON object: the versions, what ``pd.read_hdf`` gave, and the filters that the notebooks'
code selects. Written for Python 3.8 (the notebooks' interpreter) as well as today's.
"""

import json
import math
import site
import sys

if len(sys.argv) > 2:
    site.addsitedir(sys.argv[2])

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tables  # noqa: E402


def plain(value):
    """A JSON value for one cell: NaN as null, a Python None (never wanted) as "<None>"."""
    if value is None:
        return "<None>"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def main(path):
    # As in the robustness paper's notebooks (pca.ipynb, main.ipynb):
    with h5py.File(path, "r") as f:
        dX = f["filters"][...].reshape(-1, 9)
    df_meta = pd.read_hdf(path, "meta")
    report = {
        "versions": {
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "pandas": pd.__version__,
            "numpy": np.__version__,
            "tables": tables.__version__,
            "h5py": h5py.__version__,
        },
        "n_filters": len(dX),
        "index_names": list(df_meta.index.names),
        "index": [[plain(level) for level in key] for key in df_meta.index],
        "columns": list(df_meta.columns),
        "rows": [[plain(cell) for cell in row] for row in df_meta.itertuples(index=False)],
    }
    df_meta["filter_ids"] = df_meta["filter_ids"].apply(
        lambda s: list(np.arange(int(s.split(":")[0]), 1 + int(s.split(":")[1])))
    )
    df_meta.Robust = df_meta.Robust.apply(bool)
    robust_ids = list(np.hstack(df_meta[df_meta.Robust].filter_ids))
    normal_ids = list(np.hstack(df_meta[~df_meta.Robust].filter_ids))
    report["robust_names"] = sorted(set(df_meta[df_meta.Robust].Name))
    report["robust_bits"] = dX[robust_ids].view(np.uint32).tolist()
    report["normal_bits"] = dX[normal_ids].view(np.uint32).tolist()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'


@pytest.fixture(scope='session', autouse=True)
def _cache(tmp_path_factory):
    "Synthetic data goes to FAIRNB_CACHE (the Makefile points it into the repo); a temporary one otherwise."
    if 'FAIRNB_CACHE' not in os.environ:
        os.environ['FAIRNB_CACHE'] = str(tmp_path_factory.mktemp('fairnb-cache'))
    yield


def run_notebook(name, dest, **params):
    "Execute nbs/<name> with papermill into the folder dest (also the kernel's cwd); params as papermill's -p."
    import papermill as pm
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(str(NBS / name), str(dest / name), parameters=params,
                               cwd=str(dest), progress_bar=False, kernel_name='python3')

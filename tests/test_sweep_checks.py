"""Pre-flight checks that stop a sweep or the findings report before any run starts: a bad image of a manifest (checked
once, in the sweep's own process) and findings parameters that could only fail, or give no verdict, after the runs."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fairnb.manifest import write_synthetic_manifest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
BIN = Path(sys.executable).parent


def run_folders(out:Path):
    "Every run folder under a sweep's output (`<out>/<preset>/<run name>/`)."
    return sorted(p for p in out.glob('*/*') if p.is_dir()) if out.exists() else []


def test_a_zero_byte_image_stops_the_sweep_before_any_run(tmp_path):
    "The real command line over a user's manifest with one image cut to zero bytes: exit 2, the file named, no run."
    study = write_synthetic_manifest(tmp_path / 'study', n_images=120, seed=3)
    files = pd.read_csv(study / 'manifest.csv').path
    cut = study / files[7]
    cut.write_bytes(b'')
    sets = [f'--set=manifest={study / "manifest.csv"}', '--set=labels=[disc, ring, bar]', '--set=attributes=[sex]',
            '--set=cluster=subject', '--set=min_group=10']
    out = tmp_path / 'runs'
    r = subprocess.run([str(BIN / 'fairnb-sweep'), 'images', '--preset', 'smoke', '--seeds', '1', '--out', str(out),
                        *sets], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = r.stderr
    assert f'fairnb-sweep: 1 bad image(s) in manifest {study / "manifest.csv"}' in err, err
    assert f'{cut}: cannot be decoded' in err and 'each of the 9 run(s)' in err, err
    assert 'No run was started' in err and '--set on_bad_image=skip' in err, err
    assert run_folders(out) == [], run_folders(out)


def _findings(tmp_path, **params):
    "papermill of the findings report on smoke runs into tmp_path, with `params` as -p."
    cmd = [sys.executable, '-m', 'papermill', str(NBS / 'findings.ipynb'), str(tmp_path / 'findings.ipynb'),
           '--log-level', 'WARNING', '-r', 'runs_dir', str(tmp_path / 'runs'), '-r', 'preset', 'smoke',
           '-r', 'world', 'default', '-p', 'resamples', '50']
    for k, v in params.items(): cmd += ['-p', k, str(v)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.mark.parametrize('params, message', [
    ({'seeds': 1}, "seeds must be at least 2, got 1: each finding is a paired test across the confirmation seeds"),
    ({'tune_seeds': 0}, 'tune_seeds must be at least 1, got 0: the tuning seeds (100, 101, ...) choose each knob'),
])
def test_findings_refuses_too_few_seeds_before_any_run(tmp_path, params, message):
    "seeds 1 ran every tuning run for no verdict; tune_seeds 0 failed with the sweep's message: both now stop at once."
    r = _findings(tmp_path, **params)
    assert r.returncode != 0
    assert message in r.stderr + r.stdout, r.stderr[-3000:]
    assert run_folders(tmp_path / 'runs') == []

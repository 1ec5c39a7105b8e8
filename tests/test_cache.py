"A cache entry is built once when several processes ask for it cold at the same time (sweeps, torchrun, parallel tests)."
import subprocess
import sys
import time

SCRIPT = '''
import os, sys, time
from pathlib import Path
from fairnb.core import build_once
root, marks = Path(sys.argv[1]), Path(sys.argv[2])
def build(folder, n:int=3):
    (marks / str(os.getpid())).touch()      # one mark per process that built
    time.sleep(1.0)                          # long enough for the others to arrive meanwhile
    folder.mkdir(parents=True)
    for i in range(n): (folder / f'{i}.txt').write_text(str(i))
while time.time() < float(sys.argv[3]): time.sleep(0.01)   # start together
entry = build_once('race-v1', build, 'data', root)
assert sorted(p.name for p in entry.iterdir()) == ['0.txt', '1.txt', '2.txt'], list(entry.iterdir())
print(entry)
'''


def test_processes_asking_for_one_cold_entry_get_it_built_once(tmp_path):
    root, marks = tmp_path / 'cache', tmp_path / 'marks'
    marks.mkdir()
    start = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, '-c', SCRIPT, str(root), str(marks), start], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1            # the same folder for all
    assert len(list(marks.iterdir())) == 1                   # built by one process only
    assert sorted(p.name for p in root.iterdir()) == [outs[0][0].strip().split('/')[-2]]   # no lock or temporary left

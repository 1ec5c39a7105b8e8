"""Why `preload=True` for small data: one pass over the synthetic CheXpert training split, reading
JPEGs from disk each time (baseline) against decoding once and keeping uint8 tensors in memory.
Prints seconds and the ratio, both measured in this run."""
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from fairnb.chexpert import chexpert_datasets, chexpert_frames, synthetic_chexpert


def one_pass(ds, batch_size=64):
    t = time.perf_counter()
    for _ in DataLoader(ds, batch_size=batch_size):
        pass
    return time.perf_counter() - t


def main(n_train=2000, img_size=64, repeats=3):
    with tempfile.TemporaryDirectory() as d:
        root = synthetic_chexpert(Path(d), n_train=n_train, n_test=200, img_size=img_size)
        frames = chexpert_frames(root)
        lazy = chexpert_datasets(frames, img_size, preload=False)['train']
        t0 = time.perf_counter(); eager = chexpert_datasets(frames, img_size, preload=True)['train']
        t_load = time.perf_counter() - t0
        base = min(one_pass(lazy) for _ in range(repeats))
        fast = min(one_pass(eager) for _ in range(repeats))
    print(f'{len(lazy)} training images at {img_size}px, best of {repeats} passes (augmentation included)')
    print(f'read from disk every pass : {base:.2f} s/epoch (baseline)')
    print(f'preloaded uint8 in memory : {fast:.2f} s/epoch   ratio {base / fast:.2f}x  (one-off preload {t_load:.2f} s)')


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""A real asset's sparse structure for the TRELLIS benchmarks: the Gaussian centres of a 3DGS
PLY (binary little-endian, `x y z` float properties) voxelised into an R³ grid, written as the
structure file `splatforge generate --image … --structure FILE` and
`tools/trellis_reference.py --structure FILE` read (safetensors, `coords` int32 [N, 4]
`(0, x, y, z)`, lexicographic, each voxel once).

Why: a random-weight structure decoder scatters its voxels over the whole grid, so stage 2's 2×
downsampling merges few of them (about 17,000 tokens from 20,000 voxels), while a real object's
voxels lie on its surface (a few thousand tokens): stage 2's attention costs what the token count
squared says. Stage 2 on an asset's voxels measures the work a real image gives.

The centres are centred on their bounding box and scaled so that its longest side spans
`--fill` of the grid (TRELLIS' assets fill its [-0.5, 0.5]³ cube; voxel i covers
[i/R − 0.5, (i+1)/R − 0.5)); the axes are taken as they are. The voxel count is printed.

    python3 tools/voxelize_splat.py ../shared/fixtures/hamburger.ply /tmp/hamburger-structure.safetensors [--resolution 64] [--fill 0.95]
"""
import argparse
import sys

import numpy as np
from safetensors.numpy import save_file

PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "uchar": "u1", "uint8": "u1",
             "int": "<i4", "int32": "<i4", "uint": "<u4", "short": "<i2", "ushort": "<u2"}


def read_centres(path):
    """The `x y z` of every vertex of a binary little-endian PLY, [N, 3] float64."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            sys.exit(f"{path}: not a PLY file")
        count, fields, in_vertex = None, [], False
        while True:
            line = f.readline()
            if not line:
                sys.exit(f"{path}: the header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "format" and words[1] != "binary_little_endian":
                sys.exit(f"{path}: format {words[1]}, only binary_little_endian is read")
            elif words[0] == "element":
                in_vertex = words[1] == "vertex"
                if in_vertex:
                    count = int(words[2])
            elif words[0] == "property" and in_vertex:
                if words[1] == "list" or words[1] not in PLY_TYPES:
                    sys.exit(f"{path}: vertex property {' '.join(words[1:])} is not read here")
                fields.append((words[2], PLY_TYPES[words[1]]))
            elif words[0] == "end_header":
                break
        if count is None or not {"x", "y", "z"} <= {n for n, _ in fields}:
            sys.exit(f"{path}: no vertex element with x, y, z")
        data = np.fromfile(f, dtype=np.dtype(fields), count=count)
    if len(data) != count:
        sys.exit(f"{path}: {len(data)} of {count} vertices")
    xyz = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float64)
    return xyz[np.isfinite(xyz).all(axis=1)]


def voxelize(xyz, resolution, fill):
    """Sorted unique (x, y, z) voxels of the centres, normalised as the module docs say."""
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    extent = float((hi - lo).max())
    if extent <= 0:
        sys.exit("the centres span no volume")
    unit = (xyz - (lo + hi) / 2) / extent * fill  # in [-fill/2, fill/2]
    idx = np.floor((unit + 0.5) * resolution).astype(np.int64).clip(0, resolution - 1)
    return np.unique(idx, axis=0)  # lexicographic rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ply")
    ap.add_argument("out")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--fill", type=float, default=0.95)
    a = ap.parse_args()
    if not (0 < a.fill <= 1) or a.resolution < 1:
        sys.exit("--fill in (0, 1], --resolution ≥ 1")
    xyz = read_centres(a.ply)
    if len(xyz) == 0:
        sys.exit(f"{a.ply}: no finite centre")
    voxels = voxelize(xyz, a.resolution, a.fill)
    coords = np.concatenate([np.zeros((len(voxels), 1), np.int64), voxels], axis=1).astype(np.int32)
    save_file({"coords": np.ascontiguousarray(coords)}, a.out)
    print(f"{a.ply}: {len(xyz)} centres → {len(coords)} voxels of {a.resolution}³ → {a.out}")


if __name__ == "__main__":
    main()

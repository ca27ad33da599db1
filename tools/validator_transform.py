#!/usr/bin/env python3
"""Applies the 404-GEN validator's pre-render transform to a 3DGS PLY with
numpy, independently of splatforge, and writes the result as a PLY.

The transform is `transform_gs_data` (with `recenter_gs_points`) of
404-Repo/three-gen-subnet, validation/engine/rendering/gaussian_splatting/
gs_utils.py, as `Renderer.render_gs` calls it (ref_bbox_size 1.5):

    scaling    = ref_bbox_size / max(bounding-box extent of the points)   (f64)
    points     = (points - points.mean()) * scaling   # mean of ALL coordinates
    scales     = exp(log-scales) * scaling
    opacities  = clip(sigmoid(logits) / scaling, 0, 1)

The PLY stores log-scales and opacity logits, so the result is written back
in those terms; an opacity clipped to 1 is stored as logit(1 - 1e-7), the
largest finite logit splatforge writes.

Used by crates/cli/tests/cli.rs (validator_transform_render_matches_numpy);
reads and writes binary little-endian PLY whose vertex properties are all
float32, as 3DGS writes.

    python3 tools/validator_transform.py IN.ply OUT.ply [--ref-bbox-size 1.5]
"""

import argparse
import sys

import numpy as np


def read_ply(path):
    """Returns (header lines up to end_header, structured vertex array)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        sys.exit(f"{path}: not a PLY file")
    header = data[: end + len(b"end_header\n")].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        sys.exit(f"{path}: only binary little-endian PLY is supported")
    count, names = None, []
    for line in header:
        words = line.split()
        if words[:2] == ["element", "vertex"]:
            count = int(words[2])
        elif words[:1] == ["element"]:
            sys.exit(f"{path}: only a vertex element is supported")
        elif words[:1] == ["property"]:
            if words[1] != "float":
                sys.exit(f"{path}: property {words[-1]} is not float32")
            names.append(words[2])
    dtype = np.dtype([(n, "<f4") for n in names])
    body = data[end + len(b"end_header\n") :]
    vertices = np.frombuffer(body, dtype=dtype, count=count).copy()
    return header, vertices


def validator_transform(v, ref_bbox_size):
    points = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    extent = points.astype(np.float64).max(axis=0) - points.astype(np.float64).min(axis=0)
    scaling = ref_bbox_size / np.max(extent)
    centred = (points - points.mean()).astype(np.float32) * np.float32(scaling)
    v["x"], v["y"], v["z"] = centred[:, 0], centred[:, 1], centred[:, 2]
    for axis in range(3):
        name = f"scale_{axis}"
        v[name] = np.log(np.exp(v[name].astype(np.float64)) * scaling).astype(np.float32)
    opacity = 1.0 / (1.0 + np.exp(-v["opacity"].astype(np.float64)))
    opacity = np.clip(opacity / scaling, 0.0, 1.0)
    opacity = np.clip(opacity, 1e-7, 1.0 - 1e-7)
    v["opacity"] = np.log(opacity / (1.0 - opacity)).astype(np.float32)
    return v


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--ref-bbox-size", type=float, default=1.5)
    args = parser.parse_args()
    header, vertices = read_ply(args.input)
    vertices = validator_transform(vertices, args.ref_bbox_size)
    with open(args.output, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertices.tobytes())


if __name__ == "__main__":
    main()

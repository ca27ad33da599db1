#!/usr/bin/env python3
"""End-to-end parity of our TRELLIS image → Gaussians with the official pipeline given the same
noise (issue 12: same seed noise → same voxels; Gaussians within tolerance, f32 ≤ 1e-3, half
precision ≤ 2e-2 relative).

Inputs: the official run's dump (`tools/trellis_reference.py --dump-noise NOISE.safetensors
--dump-ply OFFICIAL.ply`: `ss_noise`, `slat_noise`, `coords`, `ss_latent`, `slat`, and its
`save_ply`), and ours on the same folder and image with that noise (`splatforge generate --image
… --noise NOISE.safetensors --save-latents OURS.safetensors -o OURS.ply`).

Checks, in order (any failure: FAIL, exit status 1):
1. Voxels: the official `coords` against ours (`coords` of --ours-latents): counts and the size of
   the symmetric difference; the sets must be equal. Without --ours-latents our voxels are taken
   to be the official ones (ours refuses noise whose voxels are not its own, see `generate
   --noise`), and only the Gaussian counts are compared.
2. With --ours-latents: the noise ours used equals the official draws bit for bit (`ss_noise`;
   `slat_noise` row by row, matched by voxel); the latents `ss_latent` and `slat` (rows matched by
   voxel) are reported for information (where a divergence starts), not bounded.
3. Gaussians: both sides write voxel after voxel, K Gaussians each (TRELLIS-image-large: 32), in
   the order of their voxels, which is lexicographic (batch, x, y, z) on both sides
   (`torch.argwhere` on the official side, `occupied_coords` on ours); each side's rows are still
   sorted by its own voxel list, so another order could not pair the wrong Gaussians. Per PLY
   property (x, y, z, f_dc_*, opacity, scale_*, rot_*; normals are zeros on both sides): relative
   L2 ‖ours − official‖₂ / ‖official‖₂ and relative max max|ours − official| / max|official|, as
   the stage parity scripts report them; PASS when every property's relative L2 ≤ --bound
   (default 2e-2, the published fp16 torsos; 1e-3 for f32 runs).

Reads PLY (binary little-endian floats, as ours and plyfile write) or the `.npy` that
official_shims' plyfile stand-in writes (OFFICIAL.ply.npy), and safetensors with numpy alone.

Usage:
    python3 tools/trellis_e2e_parity.py --official NOISE.safetensors --official-ply OFFICIAL.ply \\
        --ours OURS.ply [--ours-latents OURS.safetensors] [--bound 2e-2] [--json OUT.json]
"""
import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

SAFETENSORS_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I32": "<i4", "I64": "<i8", "U8": "u1"}
PLY_FLOATS = {"float", "float32"}


def read_safetensors(path):
    """{name: ndarray} of a safetensors file (the dtypes of SAFETENSORS_DTYPES)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: {name} is {entry['dtype']}, not one of {sorted(SAFETENSORS_DTYPES)}")
        start, end = entry["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(entry["shape"])
    return out


def read_ply(path):
    """(property names, [N, P] float32) of a binary little-endian PLY of float vertex properties, or
    of the stand-in's structured array (PATH.npy, or PATH itself when it ends in .npy)."""
    path = Path(path)
    npy = path if path.suffix == ".npy" else Path(str(path) + ".npy")
    if npy.is_file() and (npy == path or not path.is_file()):
        data = np.load(npy)
        return list(data.dtype.names), np.stack([data[k] for k in data.dtype.names], axis=1).astype(np.float32)
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    names, count, element = [], None, None
    for line in raw[:end].decode("ascii").splitlines():
        words = line.split()
        if words[:1] == ["format"] and words[1] != "binary_little_endian":
            raise ValueError(f"{path}: format {words[1]}, expected binary_little_endian")
        if words[:1] == ["element"]:
            element = words[1]
            if element == "vertex":
                count = int(words[2])
        if words[:1] == ["property"] and element == "vertex":
            if words[1] not in PLY_FLOATS:
                raise ValueError(f"{path}: property {words[-1]} is {words[1]}, expected float")
            names.append(words[2])
    if count is None:
        raise ValueError(f"{path}: no vertex element")
    rows = np.frombuffer(raw[end:end + 4 * len(names) * count], dtype="<f4").reshape(count, len(names))
    return names, rows


def relative(ours, ref):
    """(‖Δ‖₂ / ‖ref‖₂, max|Δ| / max|ref|) in f64."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    diff = ours - ref
    return (float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)),
            float(np.abs(diff).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-30)))


def lexicographic(coords):
    """The row order that sorts [N, 4] voxels by (batch, x, y, z)."""
    return np.lexsort(tuple(coords[:, i] for i in reversed(range(coords.shape[1]))))


def rows_by_voxel(coords, values):
    """values' rows (one per voxel of coords) sorted by voxel."""
    return values[lexicographic(coords)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="trellis_reference.py --dump-noise output")
    ap.add_argument("--official-ply", type=Path, required=True, help="trellis_reference.py --dump-ply output")
    ap.add_argument("--ours", type=Path, required=True, help="our PLY, generated with --noise from --official")
    ap.add_argument("--ours-latents", type=Path, help="our --save-latents output of that run")
    ap.add_argument("--bound", type=float, default=2e-2, help="relative L2 bound per PLY property")
    ap.add_argument("--json", type=Path, help="write the report here")
    a = ap.parse_args()

    failures = []
    report = {"bound": a.bound}
    official = read_safetensors(a.official)
    theirs_coords = official["coords"].astype(np.int64)
    report["official_voxels"] = int(theirs_coords.shape[0])

    ours_latents = read_safetensors(a.ours_latents) if a.ours_latents else None
    ours_coords = ours_latents["coords"].astype(np.int64) if ours_latents else theirs_coords
    theirs_set = set(map(tuple, theirs_coords.tolist()))
    ours_set = set(map(tuple, ours_coords.tolist()))
    report["ours_voxels"] = int(ours_coords.shape[0])
    report["voxel_symmetric_difference"] = len(theirs_set ^ ours_set)
    voxels_equal = theirs_set == ours_set and len(ours_set) == ours_coords.shape[0]
    report["voxels_equal"] = voxels_equal if ours_latents else None
    print(f"voxels: official {report['official_voxels']}, ours {report['ours_voxels']}"
          + (f", |symmetric difference| {report['voxel_symmetric_difference']}" if ours_latents
             else " (taken from the official dump: no --ours-latents)"))
    if not voxels_equal:
        failures.append("the voxel sets differ")

    latents = []
    if ours_latents and voxels_equal:
        def same(name):
            return bool(np.array_equal(official[name], ours_latents[name]))

        slat_noise_same = bool(np.array_equal(rows_by_voxel(theirs_coords, official["slat_noise"]),
                                              rows_by_voxel(ours_coords, ours_latents["slat_noise"])))
        report["noise_identical"] = {"ss_noise": same("ss_noise"), "slat_noise": slat_noise_same}
        print(f"noise identical: {report['noise_identical']}")
        if not all(report["noise_identical"].values()):
            failures.append("ours did not start from the official noise")
        for name, ours_values, theirs_values in [
                ("ss_latent", ours_latents["ss_latent"], official["ss_latent"]),
                ("slat", rows_by_voxel(ours_coords, ours_latents["slat"]), rows_by_voxel(theirs_coords, official["slat"]))]:
            l2, mx = relative(ours_values, theirs_values)
            latents.append({"what": name, "rel_l2": l2, "rel_max": mx})
        report["latents"] = latents

    properties = []
    their_names, theirs = read_ply(a.official_ply)
    our_names, ours = read_ply(a.ours)
    report["official_gaussians"], report["ours_gaussians"] = int(theirs.shape[0]), int(ours.shape[0])
    print(f"Gaussians: official {theirs.shape[0]}, ours {ours.shape[0]}")
    if their_names != our_names:
        failures.append(f"PLY properties differ: official {their_names}, ours {our_names}")
    elif theirs.shape[0] != ours.shape[0]:
        failures.append("the Gaussian counts differ")
    elif voxels_equal:
        per_voxel, rest = divmod(theirs.shape[0], theirs_coords.shape[0])
        if rest or per_voxel == 0:
            failures.append(f"{theirs.shape[0]} Gaussians are not a whole number per voxel of {theirs_coords.shape[0]}")
        else:
            report["gaussians_per_voxel"] = per_voxel
            # Each side's Gaussians voxel by voxel in its own voxel order → both in sorted voxel order.
            def by_voxel(coords, rows):
                grouped = rows.reshape(coords.shape[0], per_voxel, -1)
                return rows_by_voxel(coords, grouped).reshape(rows.shape)
            theirs, ours = by_voxel(theirs_coords, theirs), by_voxel(ours_coords, ours)
            for i, name in enumerate(their_names):
                if name in ("nx", "ny", "nz"):
                    continue
                l2, mx = relative(ours[:, i], theirs[:, i])
                properties.append({"property": name, "rel_l2": l2, "rel_max": mx, "passed": l2 <= a.bound})
            worse = [p["property"] for p in properties if not p["passed"]]
            if worse:
                failures.append(f"relative L2 above {a.bound:g}: {', '.join(worse)}")
    report["properties"] = properties

    if latents:
        print("\n| latent (information) | rel L2 | rel max |\n|---|---:|---:|")
        for line in latents:
            print(f"| {line['what']} | {line['rel_l2']:.2e} | {line['rel_max']:.2e} |")
    if properties:
        print(f"\n| PLY property | rel L2 | rel max | ≤ {a.bound:g} |\n|---|---:|---:|---|")
        for p in properties:
            print(f"| {p['property']} | {p['rel_l2']:.2e} | {p['rel_max']:.2e} | {'yes' if p['passed'] else 'NO'} |")
    report["failures"] = failures
    report["passed"] = not failures
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    print(f"\nend-to-end parity: {'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())

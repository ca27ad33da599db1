"""CPU check of our PLY against save_ply's arithmetic with the real utils3d (numpy only, no torch).

Usage: python3 save_ply_check.py DIR UTILS3D_SRC
DIR: written by `gs_decoder_parity write DIR` then `gs_decoder_parity run DIR --dtype f32`;
UTILS3D_SRC: EasternJournalist/utils3d at 9a4eb15e (the commit TRELLIS' setup.sh pins), the folder
holding `utils3d/`. The torch part of `to_representation` and `Gaussian` (get_xyz, get_scaling,
get_opacity, the biases) is written here in numpy f32 from the official formulas; the rotation goes
through utils3d's own quaternion_to_matrix / matrix_to_quaternion, with save_ply's transform.
Prints, per PLY property, the largest |ours − save_ply| and the fraction of bit-equal values; exits
1 when a property differs by more than 1e-5.
"""
import json
import struct
import sys

import numpy as np

D, UTILS3D = sys.argv[1], sys.argv[2]
sys.path.insert(0, UTILS3D)
import utils3d  # noqa: E402


def load_st(p):
    raw = open(p, 'rb').read()
    n = struct.unpack('<Q', raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == '__metadata__':
            continue
        dt = {'F32': '<f4', 'I64': '<i8'}[v['dtype']]
        s, e = v['data_offsets']
        out[k] = np.frombuffer(raw[8 + n + s:8 + n + e], dtype=dt).reshape(v['shape'])
    return out


cfg = json.load(open(f'{D}/decoder.json'))['args']
rc = cfg['representation_config']
lr = rc['lr']
f32 = np.float32
G, res = rc['num_gaussians'], cfg['resolution']
feats = load_st(f'{D}/ours_f32.safetensors')['feats']
coords = load_st(f'{D}/latent.safetensors')['coords']
pert = load_st(f'{D}/decoder.safetensors')['offset_perturbation'].astype(f32)
# Batch item 0, the one our PLY holds.
x, c = feats[coords[:, 0] == 0], coords[coords[:, 0] == 0]

# to_representation: channel blocks _xyz, _features_dc, _scaling, _rotation, _opacity.
centre = (c[:, 1:].astype(f32) + f32(0.5)) / f32(res)
offset = x[:, 0:3 * G].reshape(-1, G, 3) * f32(lr['_xyz'])
if rc['perturb_offset']:
    offset = offset + pert
offset = np.tanh(offset) / f32(res) * f32(0.5) * f32(rc['voxel_size'])
_xyz = (centre[:, None, :] + offset).reshape(-1, 3)
features_dc = (x[:, 3 * G:6 * G].reshape(-1, G, 1, 3) * f32(lr['_features_dc'])).reshape(-1, 1, 3)
_scaling = (x[:, 6 * G:9 * G].reshape(-1, G, 3) * f32(lr['_scaling'])).reshape(-1, 3)
_rotation = (x[:, 9 * G:13 * G].reshape(-1, G, 4) * f32(lr['_rotation'])).reshape(-1, 4)
_opacity = (x[:, 13 * G:14 * G].reshape(-1, G, 1) * f32(lr['_opacity'])).reshape(-1, 1)

# Gaussian: biases (softplus scaling), get_xyz, get_scaling, get_opacity.
sb = f32(rc['scaling_bias'])
scale_bias = sb + np.log(-np.expm1(-sb))
ob = f32(rc['opacity_bias'])
opacity_bias = np.log(ob / (f32(1) - ob))
xyz = _xyz * f32(1) + f32(-0.5)
s = _scaling + scale_bias
s = np.where(s > 20, s, np.log1p(np.exp(s))).astype(f32)
scaling = np.sqrt(np.square(s) + f32(rc['3d_filter_kernel_size'] ** 2))
p = f32(1) / (f32(1) + np.exp(-(_opacity + opacity_bias)))

# save_ply with its default transform.
T = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
xyz = np.matmul(xyz, T.T)
rotation = utils3d.numpy.quaternion_to_matrix(_rotation + np.array([1, 0, 0, 0], dtype=f32))
rotation = utils3d.numpy.matrix_to_quaternion(np.matmul(T, rotation))
f_dc = features_dc.transpose(0, 2, 1).reshape(-1, 3)
opacity = np.log(p / (f32(1) - p))
want = np.concatenate([xyz, np.zeros_like(xyz), f_dc, opacity, np.log(scaling), rotation], axis=1).astype(f32)

raw = open(f'{D}/ours_f32.ply', 'rb').read()
end = raw.index(b'end_header\n') + len(b'end_header\n')
ours = np.frombuffer(raw[end:], '<f4').reshape(-1, 17)
assert ours.shape == want.shape, (ours.shape, want.shape)
d = np.abs(ours.astype(np.float64) - want)
names = 'x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3'.split()
for i, n in enumerate(names):
    print(f'{n}: max |diff| {d[:, i].max():.3e}, bit-equal {np.mean(ours[:, i] == want[:, i]):.3f}')
sys.exit(0 if d.max() <= 1e-5 else 1)

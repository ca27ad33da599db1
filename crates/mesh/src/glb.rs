//! glTF 2.0 binary (GLB) output, through the `gltf` crate (gltf-rs: its
//! `gltf-json` types for the JSON, its `Glb` for the container; the same
//! crate reads and validates files, which the tests use).
//!
//! One mesh, one primitive of indexed triangles: `POSITION` (with the
//! bounds glTF requires), `NORMAL`, `COLOR_0` or `TEXCOORD_0`, and `u32`
//! indices, and one material: PBR metallic-roughness with a white
//! baseColor factor (so the vertex colours, or the baseColor texture, a PNG
//! in the binary chunk, are the colour), not metallic, fully rough, with
//! `KHR_materials_unlit`: a splat's colours already contain its lighting,
//! and a viewer that honours the extension shows them as the splat looks
//! (one that does not falls back to the PBR material). glTF is Y-up and
//! right-handed with metres as units, as our splats (scene units are
//! written as metres).
//!
//! glTF's `COLOR_0` is linear, our colours are display (sRGB) values: they
//! are converted with the sRGB transfer function.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use gltf::json;
use json::validation::Checked::Valid;
use json::validation::USize64;

use crate::texture::Texture;
use crate::{Mesh, MeshError};

/// The sRGB electro-optical transfer function: display value → linear.
pub fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// Checks that the mesh can be written: triangles, attributes of matching
/// lengths, indices in range, finite positions.
fn check_mesh(mesh: &Mesh) -> Result<(), MeshError> {
    let n = mesh.positions.len();
    if mesh.triangles.is_empty() {
        return Err(MeshError::invalid("the mesh has no triangles"));
    }
    if mesh.uvs.is_empty() != mesh.texture.is_none() {
        return Err(MeshError::invalid(
            "texture coordinates without a texture, or the reverse",
        ));
    }
    if let Some(t) = &mesh.texture {
        if t.rgb.len() != t.size as usize * t.size as usize * 3 {
            return Err(MeshError::invalid(
                "the texture's pixels do not match its size",
            ));
        }
    }
    for (name, len) in [
        ("normals", mesh.normals.len()),
        ("colors", mesh.colors.len()),
        ("uvs", mesh.uvs.len()),
    ] {
        if len != 0 && len != n {
            return Err(MeshError::invalid(format!("{len} {name} for {n} vertices")));
        }
    }
    if mesh.triangles.iter().flatten().any(|&i| i as usize >= n) {
        return Err(MeshError::invalid("a triangle refers to a missing vertex"));
    }
    if !mesh.positions.iter().flatten().all(|v| v.is_finite()) {
        return Err(MeshError::invalid("a vertex position is NaN or infinite"));
    }
    Ok(())
}

/// Appends `bytes` to the binary chunk as one buffer view (4-byte aligned,
/// as accessors of 4-byte components need) and returns the view.
fn push_view(
    root: &mut json::Root,
    bin: &mut Vec<u8>,
    bytes: &[u8],
    target: Option<json::buffer::Target>,
) -> json::Index<json::buffer::View> {
    let offset = bin.len();
    bin.extend_from_slice(bytes);
    while !bin.len().is_multiple_of(4) {
        bin.push(0);
    }
    root.push(json::buffer::View {
        buffer: json::Index::new(0),
        byte_length: USize64::from(bytes.len()),
        byte_offset: Some(USize64::from(offset)),
        byte_stride: None,
        extensions: None,
        extras: Default::default(),
        target: target.map(Valid),
    })
}

/// An accessor of `count` elements of `type_` with `component` components
/// over the whole of `view`.
fn push_accessor(
    root: &mut json::Root,
    view: json::Index<json::buffer::View>,
    count: usize,
    component: json::accessor::ComponentType,
    type_: json::accessor::Type,
    bounds: Option<([f32; 3], [f32; 3])>,
) -> json::Index<json::Accessor> {
    root.push(json::Accessor {
        buffer_view: Some(view),
        byte_offset: Some(USize64(0)),
        count: USize64::from(count),
        component_type: Valid(json::accessor::GenericComponentType(component)),
        extensions: None,
        extras: Default::default(),
        type_: Valid(type_),
        min: bounds.map(|(lo, _)| json::Value::from(lo.to_vec())),
        max: bounds.map(|(_, hi)| json::Value::from(hi.to_vec())),
        normalized: false,
        sparse: None,
    })
}

/// The material extensions with `KHR_materials_unlit` alone. Set field by
/// field: which fields the struct has depends on the gltf features enabled
/// anywhere in the build, so a struct literal would not always compile.
#[allow(clippy::field_reassign_with_default)]
fn unlit_extension() -> json::extensions::material::Material {
    let mut extensions = json::extensions::material::Material::default();
    extensions.unlit = Some(json::extensions::material::Unlit {});
    extensions
}

/// The texture as PNG (8-bit sRGB RGB, as glTF's baseColor).
fn encode_png(texture: &Texture) -> Result<Vec<u8>, MeshError> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            &texture.rgb,
            texture.size,
            texture.size,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| MeshError::Glb(format!("encoding the texture: {e}")))?;
    Ok(out)
}

fn vec3_bytes(v: &[[f32; 3]]) -> Vec<u8> {
    v.iter().flatten().flat_map(|x| x.to_le_bytes()).collect()
}

/// Encodes `mesh` as a GLB file (see the module docs). Normals and colours
/// are written when present.
pub fn encode_glb(mesh: &Mesh) -> Result<Vec<u8>, MeshError> {
    use json::accessor::{ComponentType, Type};
    use json::buffer::Target;
    check_mesh(mesh)?;
    let mut root = json::Root {
        asset: json::Asset {
            generator: Some(format!("splatforge {}", env!("CARGO_PKG_VERSION"))),
            ..Default::default()
        },
        extensions_used: vec!["KHR_materials_unlit".into()],
        ..Default::default()
    };
    let mut bin = Vec::new();
    let n = mesh.positions.len();
    let mut attributes = BTreeMap::new();

    let view = push_view(
        &mut root,
        &mut bin,
        &vec3_bytes(&mesh.positions),
        Some(Target::ArrayBuffer),
    );
    let positions = push_accessor(
        &mut root,
        view,
        n,
        ComponentType::F32,
        Type::Vec3,
        mesh.bounds(),
    );
    attributes.insert(Valid(json::mesh::Semantic::Positions), positions);
    if !mesh.normals.is_empty() {
        let view = push_view(
            &mut root,
            &mut bin,
            &vec3_bytes(&mesh.normals),
            Some(Target::ArrayBuffer),
        );
        let normals = push_accessor(&mut root, view, n, ComponentType::F32, Type::Vec3, None);
        attributes.insert(Valid(json::mesh::Semantic::Normals), normals);
    }
    if !mesh.colors.is_empty() {
        let linear: Vec<[f32; 3]> = mesh
            .colors
            .iter()
            .map(|c| c.map(|v| srgb_to_linear(v.clamp(0.0, 1.0))))
            .collect();
        let view = push_view(
            &mut root,
            &mut bin,
            &vec3_bytes(&linear),
            Some(Target::ArrayBuffer),
        );
        let colors = push_accessor(&mut root, view, n, ComponentType::F32, Type::Vec3, None);
        attributes.insert(Valid(json::mesh::Semantic::Colors(0)), colors);
    }
    if !mesh.uvs.is_empty() {
        let bytes: Vec<u8> = mesh
            .uvs
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let view = push_view(&mut root, &mut bin, &bytes, Some(Target::ArrayBuffer));
        let uvs = push_accessor(&mut root, view, n, ComponentType::F32, Type::Vec2, None);
        attributes.insert(Valid(json::mesh::Semantic::TexCoords(0)), uvs);
    }
    let base_color_texture = match &mesh.texture {
        Some(texture) => {
            let png = encode_png(texture)?;
            let view = push_view(&mut root, &mut bin, &png, None);
            let image = root.push(json::Image {
                buffer_view: Some(view),
                mime_type: Some(json::image::MimeType("image/png".into())),
                uri: None,
                extensions: None,
                extras: Default::default(),
            });
            let sampler = root.push(json::texture::Sampler {
                mag_filter: Some(Valid(json::texture::MagFilter::Linear)),
                min_filter: Some(Valid(json::texture::MinFilter::Linear)),
                wrap_s: Valid(json::texture::WrappingMode::ClampToEdge),
                wrap_t: Valid(json::texture::WrappingMode::ClampToEdge),
                extensions: None,
                extras: Default::default(),
            });
            let texture = root.push(json::Texture {
                sampler: Some(sampler),
                source: image,
                extensions: None,
                extras: Default::default(),
            });
            Some(json::texture::Info {
                index: texture,
                tex_coord: 0,
                extensions: None,
                extras: Default::default(),
            })
        }
        None => None,
    };
    let index_bytes: Vec<u8> = mesh
        .triangles
        .iter()
        .flatten()
        .flat_map(|i| i.to_le_bytes())
        .collect();
    let view = push_view(
        &mut root,
        &mut bin,
        &index_bytes,
        Some(Target::ElementArrayBuffer),
    );
    let indices = push_accessor(
        &mut root,
        view,
        mesh.triangles.len() * 3,
        ComponentType::U32,
        Type::Scalar,
        None,
    );
    if bin.len() > u32::MAX as usize - (1 << 20) {
        return Err(MeshError::Glb(format!(
            "{} bytes of geometry exceed GLB's 4 GiB limit",
            bin.len()
        )));
    }
    root.push(json::Buffer {
        byte_length: USize64::from(bin.len()),
        extensions: None,
        extras: Default::default(),
        uri: None,
    });

    let material = root.push(json::Material {
        pbr_metallic_roughness: json::material::PbrMetallicRoughness {
            base_color_factor: json::material::PbrBaseColorFactor([1.0; 4]),
            metallic_factor: json::material::StrengthFactor(0.0),
            roughness_factor: json::material::StrengthFactor(1.0),
            base_color_texture,
            ..Default::default()
        },
        extensions: Some(unlit_extension()),
        ..Default::default()
    });
    let primitive = json::mesh::Primitive {
        attributes,
        extensions: None,
        extras: Default::default(),
        indices: Some(indices),
        material: Some(material),
        mode: Valid(json::mesh::Mode::Triangles),
        targets: None,
    };
    let mesh_index = root.push(json::Mesh {
        extensions: None,
        extras: Default::default(),
        primitives: vec![primitive],
        weights: None,
    });
    let node = root.push(json::Node {
        mesh: Some(mesh_index),
        ..Default::default()
    });
    let scene = root.push(json::Scene {
        extensions: None,
        extras: Default::default(),
        nodes: vec![node],
    });
    root.scene = Some(scene);

    let json_text = json::serialize::to_vec(&root).map_err(|e| MeshError::Glb(e.to_string()))?;
    let glb = gltf::binary::Glb {
        header: gltf::binary::Header {
            magic: *b"glTF",
            version: 2,
            // `to_writer` computes the length itself.
            length: 0,
        },
        json: Cow::Owned(json_text),
        bin: Some(Cow::Owned(bin)),
    };
    let mut out = Vec::new();
    glb.to_writer(&mut out)
        .map_err(|e| MeshError::Glb(e.to_string()))?;
    Ok(out)
}

/// Encodes `mesh` and writes it to `path` atomically (a temporary file
/// beside it, then a rename: [`splatforge_splat::write_atomic`]).
pub fn write_glb(path: &Path, mesh: &Mesh) -> Result<(), MeshError> {
    let bytes = encode_glb(mesh)?;
    Ok(splatforge_splat::write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tetrahedron() -> Mesh {
        let mut mesh = Mesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 2.0, 0.0],
                [0.0, 0.0, 3.0],
            ],
            triangles: vec![[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]],
            colors: vec![
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
                [0.5, 0.5, 0.5],
            ],
            ..Default::default()
        };
        crate::normals::compute_smooth_normals(&mut mesh);
        mesh
    }

    #[test]
    fn the_gltf_crate_reads_back_what_we_wrote() {
        let mesh = tetrahedron();
        let bytes = encode_glb(&mesh).unwrap();
        // `from_slice` validates the document as well as parsing it.
        let gltf = gltf::Gltf::from_slice(&bytes).unwrap();
        let blob = gltf.blob.as_deref().unwrap();
        assert_eq!(gltf.meshes().count(), 1);
        let scene = gltf.default_scene().unwrap();
        assert_eq!(scene.nodes().count(), 1);
        let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
        assert_eq!(primitive.mode(), gltf::mesh::Mode::Triangles);
        let bounds = primitive.bounding_box();
        assert_eq!((bounds.min, bounds.max), ([0.0; 3], [1.0, 2.0, 3.0]));
        let reader = primitive.reader(|_| Some(blob));
        let positions: Vec<[f32; 3]> = reader.read_positions().unwrap().collect();
        assert_eq!(positions, mesh.positions);
        let normals: Vec<[f32; 3]> = reader.read_normals().unwrap().collect();
        assert_eq!(normals, mesh.normals);
        let colors: Vec<[f32; 3]> = reader.read_colors(0).unwrap().into_rgb_f32().collect();
        assert_eq!(colors[0], [1.0, 0.0, 0.0]);
        assert!((colors[3][0] - 0.214_041).abs() < 1e-5, "{:?}", colors[3]);
        let indices: Vec<u32> = reader.read_indices().unwrap().into_u32().collect();
        assert_eq!(
            indices,
            mesh.triangles.iter().flatten().copied().collect::<Vec<_>>()
        );
        let material = primitive.material();
        assert_eq!(
            material.pbr_metallic_roughness().base_color_factor(),
            [1.0; 4]
        );
        assert!(material.unlit());
        for accessor in gltf.accessors() {
            assert_eq!(accessor.offset(), 0);
        }
    }

    #[test]
    fn a_texture_and_its_coordinates_read_back() {
        let mut mesh = tetrahedron();
        mesh.colors.clear();
        mesh.uvs = vec![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]];
        mesh.texture = Some(Texture {
            size: 2,
            rgb: vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9],
        });
        let bytes = encode_glb(&mesh).unwrap();
        let gltf = gltf::Gltf::from_slice(&bytes).unwrap();
        let blob = gltf.blob.as_deref().unwrap();
        let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
        let reader = primitive.reader(|_| Some(blob));
        assert!(reader.read_colors(0).is_none());
        let uvs: Vec<[f32; 2]> = reader.read_tex_coords(0).unwrap().into_f32().collect();
        assert_eq!(uvs, mesh.uvs);
        let info = primitive
            .material()
            .pbr_metallic_roughness()
            .base_color_texture()
            .unwrap();
        assert_eq!(info.tex_coord(), 0);
        let gltf::image::Source::View { view, mime_type } = info.texture().source().source() else {
            panic!("the image is not in the binary chunk");
        };
        assert_eq!(mime_type, "image/png");
        let png = &blob[view.offset()..view.offset() + view.length()];
        let decoded = image::load_from_memory(png).unwrap().into_rgb8();
        assert_eq!(decoded.into_raw(), mesh.texture.as_ref().unwrap().rgb);
        mesh.uvs.clear();
        assert!(encode_glb(&mesh).is_err());
    }

    #[test]
    fn meshes_that_cannot_be_written_are_refused() {
        assert!(encode_glb(&Mesh::default()).is_err());
        let mut mesh = tetrahedron();
        mesh.triangles.push([0, 1, 9]);
        assert!(encode_glb(&mesh)
            .unwrap_err()
            .to_string()
            .contains("missing vertex"));
        let mut mesh = tetrahedron();
        mesh.colors.pop();
        assert!(encode_glb(&mesh).is_err());
    }

    #[test]
    fn writing_is_atomic_and_a_failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.glb");
        write_glb(&path, &tetrahedron()).unwrap();
        assert!(gltf::Gltf::from_slice(&std::fs::read(&path).unwrap()).is_ok());
        let bad = dir.path().join("bad.glb");
        assert!(write_glb(&bad, &Mesh::default()).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("t.glb")]);
    }
}

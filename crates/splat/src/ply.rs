//! The 3DGS PLY format.
//!
//! Reading accepts what real tools write: ASCII or binary (either byte
//! order), properties in any order, `float` or `double` Gaussian
//! properties, optional normals, unknown extra properties and other
//! elements (skipped). The SH degree follows from the number of
//! `f_rest_*` properties (0, 9, 24 or 45).
//!
//! Writing produces what 3DGS, DreamGaussian and the 404-GEN miners write:
//! binary little-endian float32 in the order
//! `x y z [nx ny nz] f_dc_0..2 f_rest_0.. opacity scale_0..2 rot_0..3`,
//! with `f_rest` channel-major (all R coefficients, then G, then B).

use crate::gaussians::sh_coeffs_per_channel;
use crate::{Gaussians, SplatError};

const FORMAT: &str = "PLY";
/// Longest header we accept; real 3DGS headers are about 1.5 KiB.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Options for [`write_ply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlyWriteOptions {
    /// Write the `nx ny nz` properties (zeros), as 3DGS does. Without them
    /// the layout is the 404 validator samples' 14 floats per splat (SH 0).
    pub normals: bool,
}

impl Default for PlyWriteOptions {
    fn default() -> Self {
        PlyWriteOptions { normals: true }
    }
}

/// True when `bytes` starts like a PLY file.
pub fn is_ply(bytes: &[u8]) -> bool {
    bytes.starts_with(b"ply\n") || bytes.starts_with(b"ply\r\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Ascii,
    BinaryLe,
    BinaryBe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl Scalar {
    fn parse(name: &str) -> Option<Scalar> {
        Some(match name {
            "char" | "int8" => Scalar::I8,
            "uchar" | "uint8" => Scalar::U8,
            "short" | "int16" => Scalar::I16,
            "ushort" | "uint16" => Scalar::U16,
            "int" | "int32" => Scalar::I32,
            "uint" | "uint32" => Scalar::U32,
            "float" | "float32" => Scalar::F32,
            "double" | "float64" => Scalar::F64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Scalar::I8 | Scalar::U8 => 1,
            Scalar::I16 | Scalar::U16 => 2,
            Scalar::I32 | Scalar::U32 | Scalar::F32 => 4,
            Scalar::F64 => 8,
        }
    }

    /// Reads one binary value. `bytes` holds at least `self.size()` bytes.
    fn read(self, bytes: &[u8], enc: Encoding) -> f64 {
        macro_rules! num {
            ($t:ty, $n:expr) => {{
                let b: [u8; $n] = bytes[..$n].try_into().expect("length checked by caller");
                if enc == Encoding::BinaryBe {
                    <$t>::from_be_bytes(b) as f64
                } else {
                    <$t>::from_le_bytes(b) as f64
                }
            }};
        }
        match self {
            Scalar::I8 => bytes[0] as i8 as f64,
            Scalar::U8 => bytes[0] as f64,
            Scalar::I16 => num!(i16, 2),
            Scalar::U16 => num!(u16, 2),
            Scalar::I32 => num!(i32, 4),
            Scalar::U32 => num!(u32, 4),
            Scalar::F32 => num!(f32, 4),
            Scalar::F64 => num!(f64, 8),
        }
    }
}

#[derive(Debug, Clone)]
enum PropertyType {
    Scalar(Scalar),
    List { count: Scalar, item: Scalar },
}

#[derive(Debug, Clone)]
struct Property {
    name: String,
    ty: PropertyType,
}

#[derive(Debug, Clone)]
struct Element {
    name: String,
    count: u64,
    properties: Vec<Property>,
}

struct Header {
    encoding: Encoding,
    elements: Vec<Element>,
    /// Offset of the first byte after `end_header\n`.
    body_start: usize,
}

fn parse_header(bytes: &[u8]) -> Result<Header, SplatError> {
    if !is_ply(bytes) {
        return Err(SplatError::malformed(
            FORMAT,
            "missing the 'ply' magic line",
        ));
    }
    let limit = bytes.len().min(MAX_HEADER_BYTES);
    let mut pos = 0;
    let mut encoding = None;
    let mut elements: Vec<Element> = Vec::new();
    let mut first = true;
    loop {
        let rest = &bytes[pos..limit];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(if limit < bytes.len() {
                SplatError::malformed(FORMAT, "header longer than 1 MiB")
            } else {
                SplatError::truncated(FORMAT, "the header has no 'end_header' line")
            });
        };
        let line = std::str::from_utf8(&rest[..nl])
            .map_err(|_| SplatError::malformed(FORMAT, "header is not UTF-8 text"))?
            .trim_end_matches('\r');
        pos += nl + 1;
        if first {
            first = false;
            continue;
        }
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("format") => {
                encoding = Some(match (words.next(), words.next()) {
                    (Some("ascii"), Some("1.0")) => Encoding::Ascii,
                    (Some("binary_little_endian"), Some("1.0")) => Encoding::BinaryLe,
                    (Some("binary_big_endian"), Some("1.0")) => Encoding::BinaryBe,
                    _ => {
                        return Err(SplatError::malformed(
                            FORMAT,
                            format!("unsupported format line '{line}'"),
                        ))
                    }
                })
            }
            Some("element") => {
                let (Some(name), Some(count)) = (words.next(), words.next()) else {
                    return Err(SplatError::malformed(
                        FORMAT,
                        format!("bad element line '{line}'"),
                    ));
                };
                let count = count.parse::<u64>().map_err(|_| {
                    SplatError::malformed(FORMAT, format!("bad element count in '{line}'"))
                })?;
                elements.push(Element {
                    name: name.to_string(),
                    count,
                    properties: Vec::new(),
                });
            }
            Some("property") => {
                let Some(element) = elements.last_mut() else {
                    return Err(SplatError::malformed(FORMAT, "property before any element"));
                };
                let words: Vec<&str> = words.collect();
                let bad = || SplatError::malformed(FORMAT, format!("bad property line '{line}'"));
                let (ty, name) = match words.as_slice() {
                    ["list", count, item, name] => (
                        PropertyType::List {
                            count: Scalar::parse(count).ok_or_else(bad)?,
                            item: Scalar::parse(item).ok_or_else(bad)?,
                        },
                        name,
                    ),
                    [ty, name] => (
                        PropertyType::Scalar(Scalar::parse(ty).ok_or_else(bad)?),
                        name,
                    ),
                    _ => return Err(bad()),
                };
                element.properties.push(Property {
                    name: name.to_string(),
                    ty,
                });
            }
            Some("end_header") => break,
            Some("comment") | Some("obj_info") | None => {}
            Some(other) => {
                return Err(SplatError::malformed(
                    FORMAT,
                    format!("unknown header keyword '{other}'"),
                ))
            }
        }
    }
    let encoding = encoding.ok_or_else(|| SplatError::malformed(FORMAT, "no 'format' line"))?;
    Ok(Header {
        encoding,
        elements,
        body_start: pos,
    })
}

/// Where one vertex property goes in [`Gaussians`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Mean(usize),
    Dc(usize),
    /// Index into the PLY's channel-major `f_rest_*` list.
    Rest(usize),
    Opacity,
    LogScale(usize),
    Rotation(usize),
    Ignore,
}

fn slot_of(name: &str) -> Slot {
    let indexed = |prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|s| s.parse::<usize>().ok())
    };
    match name {
        "x" => Slot::Mean(0),
        "y" => Slot::Mean(1),
        "z" => Slot::Mean(2),
        "opacity" => Slot::Opacity,
        _ => {
            if let Some(i) = indexed("f_dc_").filter(|&i| i < 3) {
                Slot::Dc(i)
            } else if let Some(i) = indexed("f_rest_") {
                Slot::Rest(i)
            } else if let Some(i) = indexed("scale_").filter(|&i| i < 3) {
                Slot::LogScale(i)
            } else if let Some(i) = indexed("rot_").filter(|&i| i < 4) {
                Slot::Rotation(i)
            } else {
                Slot::Ignore
            }
        }
    }
}

/// The vertex layout resolved against the Gaussian fields.
struct VertexLayout {
    /// One slot per vertex property, in file order.
    slots: Vec<Slot>,
    sh_degree: u8,
    rest_per_channel: usize,
}

fn resolve_vertex_layout(element: &Element) -> Result<VertexLayout, SplatError> {
    let mut slots = Vec::with_capacity(element.properties.len());
    let mut seen = std::collections::HashSet::new();
    let mut rest_count = 0;
    for p in &element.properties {
        let slot = slot_of(&p.name);
        if slot != Slot::Ignore {
            match p.ty {
                PropertyType::Scalar(Scalar::F32 | Scalar::F64) => {}
                PropertyType::Scalar(_) | PropertyType::List { .. } => {
                    return Err(SplatError::malformed(
                        FORMAT,
                        format!("vertex property '{}' must be float or double", p.name),
                    ))
                }
            }
            if !seen.insert(slot) {
                return Err(SplatError::malformed(
                    FORMAT,
                    format!("vertex property '{}' appears twice", p.name),
                ));
            }
            if let Slot::Rest(_) = slot {
                rest_count += 1;
            }
        }
        slots.push(slot);
    }
    let sh_degree = match rest_count {
        0 => 0,
        9 => 1,
        24 => 2,
        45 => 3,
        n => {
            return Err(SplatError::malformed(
                FORMAT,
                format!("{n} f_rest properties; expected 0, 9, 24 or 45 (SH degree 0 to 3)"),
            ))
        }
    };
    let mut required: Vec<(Slot, String)> = vec![(Slot::Opacity, "opacity".into())];
    required.extend((0..3).map(|i| (Slot::Mean(i), ["x", "y", "z"][i].to_string())));
    required.extend((0..3).map(|i| (Slot::Dc(i), format!("f_dc_{i}"))));
    required.extend((0..rest_count).map(|i| (Slot::Rest(i), format!("f_rest_{i}"))));
    required.extend((0..3).map(|i| (Slot::LogScale(i), format!("scale_{i}"))));
    required.extend((0..4).map(|i| (Slot::Rotation(i), format!("rot_{i}"))));
    for (slot, name) in required {
        if !seen.contains(&slot) {
            return Err(SplatError::malformed(
                FORMAT,
                format!("missing vertex property '{name}'"),
            ));
        }
    }
    Ok(VertexLayout {
        slots,
        sh_degree,
        rest_per_channel: rest_count / 3,
    })
}

/// Accumulates decoded vertices into [`Gaussians`].
struct VertexSink {
    g: Gaussians,
    rest_per_channel: usize,
    row: Vec<f32>,
}

impl VertexSink {
    fn new(layout: &VertexLayout, capacity: usize) -> Self {
        VertexSink {
            g: Gaussians::with_capacity(capacity, layout.sh_degree),
            rest_per_channel: layout.rest_per_channel,
            row: vec![0.0; 3 * layout.rest_per_channel],
        }
    }

    fn start(&mut self) {
        self.g.means.push([0.0; 3]);
        self.g.log_scales.push([0.0; 3]);
        self.g.rotations.push([0.0; 4]);
        self.g.opacity_logits.push(0.0);
        self.g.sh_dc.push([0.0; 3]);
    }

    /// Stores one property value of the vertex begun by [`start`](Self::start).
    fn set(&mut self, slot: Slot, v: f32) {
        let i = self.g.means.len() - 1;
        match slot {
            Slot::Mean(a) => self.g.means[i][a] = v,
            Slot::Dc(c) => self.g.sh_dc[i][c] = v,
            Slot::Rest(j) => {
                // PLY is channel-major; we store [coefficient][channel].
                let (c, k) = (j / self.rest_per_channel, j % self.rest_per_channel);
                self.row[k * 3 + c] = v;
            }
            Slot::Opacity => self.g.opacity_logits[i] = v,
            Slot::LogScale(a) => self.g.log_scales[i][a] = v,
            Slot::Rotation(a) => self.g.rotations[i][a] = v,
            Slot::Ignore => {}
        }
    }

    fn finish(&mut self) {
        self.g.sh_rest.extend_from_slice(&self.row);
    }
}

/// Reads a 3DGS PLY file from memory.
pub fn read_ply(bytes: &[u8]) -> Result<Gaussians, SplatError> {
    let header = parse_header(bytes)?;
    let vertex_index = header
        .elements
        .iter()
        .position(|e| e.name == "vertex")
        .ok_or_else(|| SplatError::malformed(FORMAT, "no 'vertex' element"))?;
    let vertex = &header.elements[vertex_index];
    let layout = resolve_vertex_layout(vertex)?;
    let body = &bytes[header.body_start..];
    match header.encoding {
        Encoding::Ascii => read_ascii(body, &header.elements, vertex_index, &layout),
        enc => read_binary(body, enc, &header.elements, vertex_index, &layout),
    }
}

fn read_binary(
    body: &[u8],
    enc: Encoding,
    elements: &[Element],
    vertex_index: usize,
    layout: &VertexLayout,
) -> Result<Gaussians, SplatError> {
    let mut pos = 0usize;
    for e in &elements[..vertex_index] {
        pos = skip_binary_element(body, pos, e, enc)?;
    }
    let vertex = &elements[vertex_index];
    let scalars: Vec<Scalar> = vertex
        .properties
        .iter()
        .map(|p| match p.ty {
            PropertyType::Scalar(s) => Ok(s),
            PropertyType::List { .. } => Err(SplatError::malformed(
                FORMAT,
                format!(
                    "list property '{}' in the vertex element is not supported",
                    p.name
                ),
            )),
        })
        .collect::<Result<_, _>>()?;
    let row_size: usize = scalars.iter().map(|s| s.size()).sum();
    let available = body.len() - pos;
    let needed = usize::try_from(vertex.count)
        .ok()
        .and_then(|n| n.checked_mul(row_size))
        .filter(|&n| n <= available)
        .ok_or_else(|| {
            SplatError::truncated(
                FORMAT,
                format!(
                    "the header announces {} vertices of {row_size} bytes, but only {available} bytes follow",
                    vertex.count
                ),
            )
        })?;
    let count = needed.checked_div(row_size).unwrap_or(0);
    let mut sink = VertexSink::new(layout, count);
    if row_size > 0 {
        for row in body[pos..pos + needed].chunks_exact(row_size) {
            sink.start();
            let mut off = 0;
            for (s, &slot) in scalars.iter().zip(&layout.slots) {
                if slot != Slot::Ignore {
                    sink.set(slot, s.read(&row[off..], enc) as f32);
                }
                off += s.size();
            }
            sink.finish();
        }
    }
    Ok(sink.g)
}

/// Returns the offset just past element `e`, which starts at `pos`.
fn skip_binary_element(
    body: &[u8],
    mut pos: usize,
    e: &Element,
    enc: Encoding,
) -> Result<usize, SplatError> {
    let truncated =
        || SplatError::truncated(FORMAT, format!("element '{}' runs past the end", e.name));
    let fixed: Option<usize> = e
        .properties
        .iter()
        .map(|p| match p.ty {
            PropertyType::Scalar(s) => Some(s.size()),
            PropertyType::List { .. } => None,
        })
        .sum();
    if let Some(row) = fixed {
        let len = usize::try_from(e.count)
            .ok()
            .and_then(|n| n.checked_mul(row))
            .ok_or_else(truncated)?;
        let end = pos
            .checked_add(len)
            .filter(|&end| end <= body.len())
            .ok_or_else(truncated)?;
        return Ok(end);
    }
    for _ in 0..e.count {
        for p in &e.properties {
            match p.ty {
                PropertyType::Scalar(s) => pos += s.size(),
                PropertyType::List { count, item } => {
                    if pos + count.size() > body.len() {
                        return Err(truncated());
                    }
                    let n = count.read(&body[pos..], enc);
                    if !(0.0..=body.len() as f64).contains(&n) {
                        return Err(SplatError::malformed(
                            FORMAT,
                            format!("bad list length {n}"),
                        ));
                    }
                    pos += count.size() + n as usize * item.size();
                }
            }
            if pos > body.len() {
                return Err(truncated());
            }
        }
    }
    Ok(pos)
}

fn read_ascii(
    body: &[u8],
    elements: &[Element],
    vertex_index: usize,
    layout: &VertexLayout,
) -> Result<Gaussians, SplatError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| SplatError::malformed(FORMAT, "ASCII body is not UTF-8 text"))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    for e in &elements[..vertex_index] {
        for _ in 0..e.count {
            lines.next().ok_or_else(|| {
                SplatError::truncated(FORMAT, format!("element '{}' runs past the end", e.name))
            })?;
        }
    }
    let vertex = &elements[vertex_index];
    // Each vertex line holds at least one character and a separator per property.
    let max_possible = text.len() / (2 * layout.slots.len().max(1)) + 1;
    let mut sink = VertexSink::new(layout, (vertex.count as usize).min(max_possible));
    for v in 0..vertex.count {
        let (line_no, line) = lines.next().ok_or_else(|| {
            SplatError::truncated(
                FORMAT,
                format!(
                    "the header announces {} vertices, the body ends after {v}",
                    vertex.count
                ),
            )
        })?;
        sink.start();
        let mut words = line.split_ascii_whitespace();
        for (p, &slot) in vertex.properties.iter().zip(&layout.slots) {
            if let PropertyType::List { .. } = p.ty {
                return Err(SplatError::malformed(
                    FORMAT,
                    format!(
                        "list property '{}' in the vertex element is not supported",
                        p.name
                    ),
                ));
            }
            let word = words.next().ok_or_else(|| {
                SplatError::malformed(FORMAT, format!("line {}: too few values", line_no + 1))
            })?;
            let value: f32 = word.parse().map_err(|_| {
                SplatError::malformed(
                    FORMAT,
                    format!("line {}: '{word}' is not a number", line_no + 1),
                )
            })?;
            sink.set(slot, value);
        }
        sink.finish();
    }
    Ok(sink.g)
}

/// Property names of the 3DGS layout for `g`, in write order.
fn property_names(sh_degree: u8, normals: bool) -> Vec<String> {
    let mut names: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
    if normals {
        names.extend(["nx", "ny", "nz"].map(String::from));
    }
    names.extend((0..3).map(|i| format!("f_dc_{i}")));
    names.extend((0..3 * (sh_coeffs_per_channel(sh_degree) - 1)).map(|i| format!("f_rest_{i}")));
    names.push("opacity".into());
    names.extend((0..3).map(|i| format!("scale_{i}")));
    names.extend((0..4).map(|i| format!("rot_{i}")));
    names
}

/// Encodes `g` as a binary little-endian 3DGS PLY.
pub fn write_ply(g: &Gaussians, options: PlyWriteOptions) -> Result<Vec<u8>, SplatError> {
    g.check_consistent()?;
    let names = property_names(g.sh_degree, options.normals);
    let mut out = format!(
        "ply\nformat binary_little_endian 1.0\nelement vertex {}\n",
        g.len()
    );
    for name in &names {
        out.push_str("property float ");
        out.push_str(name);
        out.push('\n');
    }
    out.push_str("end_header\n");
    let mut out = out.into_bytes();
    out.reserve(g.len() * names.len() * 4);
    let rest = g.rest_coeffs();
    let put = |out: &mut Vec<u8>, v: f32| out.extend_from_slice(&v.to_le_bytes());
    for i in 0..g.len() {
        g.means[i].iter().for_each(|&v| put(&mut out, v));
        if options.normals {
            (0..3).for_each(|_| put(&mut out, 0.0));
        }
        g.sh_dc[i].iter().for_each(|&v| put(&mut out, v));
        let sh = g.sh_rest_of(i);
        for c in 0..3 {
            for k in 0..rest {
                put(&mut out, sh[k * 3 + c]);
            }
        }
        put(&mut out, g.opacity_logits[i]);
        g.log_scales[i].iter().for_each(|&v| put(&mut out, v));
        g.rotations[i].iter().for_each(|&v| put(&mut out, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaussians::sample;

    fn fixture(name: &str) -> Option<Vec<u8>> {
        let path = format!(
            "{}/../../../shared/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(_) => {
                eprintln!("skipping: fixture {path} not found");
                None
            }
        }
    }

    #[test]
    fn binary_round_trip_is_bit_exact_for_every_degree() {
        for degree in 0..=3 {
            for normals in [true, false] {
                let g = sample(37, degree);
                let bytes = write_ply(&g, PlyWriteOptions { normals }).unwrap();
                let back = read_ply(&bytes).unwrap();
                assert_eq!(back, g, "degree {degree} normals {normals}");
                assert_eq!(
                    write_ply(&back, PlyWriteOptions { normals }).unwrap(),
                    bytes
                );
            }
        }
    }

    #[test]
    fn header_layout_matches_3dgs() {
        let g = sample(2, 1);
        let bytes = write_ply(&g, PlyWriteOptions { normals: false }).unwrap();
        let text = String::from_utf8_lossy(
            &bytes[..bytes
                .windows(11)
                .position(|w| w == b"end_header\n")
                .unwrap()],
        );
        let props: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("property float "))
            .collect();
        assert_eq!(props[..6], ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"]);
        assert_eq!(props[6], "f_rest_0");
        assert_eq!(props[14], "f_rest_8");
        assert_eq!(
            props[15..],
            ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
        );
    }

    #[test]
    fn f_rest_is_channel_major_in_the_file() {
        let mut g = sample(1, 1);
        // coefficient k, channel c holds 10*c + k
        for k in 0..3 {
            for c in 0..3 {
                g.sh_rest[k * 3 + c] = (10 * c + k) as f32;
            }
        }
        let bytes = write_ply(&g, PlyWriteOptions { normals: false }).unwrap();
        let body = &bytes[bytes.len() - 4 * (6 + 9 + 8)..];
        let f = |i: usize| f32::from_le_bytes(body[4 * i..4 * i + 4].try_into().unwrap());
        let rest: Vec<f32> = (6..15).map(f).collect();
        assert_eq!(rest, [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 20.0, 21.0, 22.0]);
    }

    /// Writes `g` as a PLY with the given encoding, shuffled property order,
    /// double precision for the means, and extra properties and elements.
    fn exotic_ply(g: &Gaussians, enc: Encoding) -> Vec<u8> {
        let format = match enc {
            Encoding::Ascii => "ascii",
            Encoding::BinaryLe => "binary_little_endian",
            Encoding::BinaryBe => "binary_big_endian",
        };
        let mut names = property_names(g.sh_degree, true);
        names.reverse();
        names.push("red".into());
        let ty = |n: &str| match n {
            "x" | "y" | "z" => "double",
            "red" => "uchar",
            _ => "float",
        };
        let mut h = format!("ply\r\nformat {format} 1.0\r\ncomment made by a test\r\nelement camera 1\r\nproperty float fov\r\nproperty list uchar int ids\r\nelement vertex {}\r\n", g.len());
        for n in &names {
            h.push_str(&format!("property {} {n}\r\n", ty(n)));
        }
        h.push_str("element face 1\r\nproperty list uchar int vertex_indices\r\nend_header\r\n");
        let mut out = h.into_bytes();
        let value = |i: usize, n: &str| -> f64 {
            let k = g.rest_coeffs();
            match slot_of(n) {
                Slot::Mean(a) => g.means[i][a] as f64,
                Slot::Dc(c) => g.sh_dc[i][c] as f64,
                Slot::Rest(j) => g.sh_rest_of(i)[(j % k) * 3 + j / k] as f64,
                Slot::Opacity => g.opacity_logits[i] as f64,
                Slot::LogScale(a) => g.log_scales[i][a] as f64,
                Slot::Rotation(a) => g.rotations[i][a] as f64,
                Slot::Ignore => 7.0,
            }
        };
        let be = enc == Encoding::BinaryBe;
        match enc {
            Encoding::Ascii => out.extend_from_slice(b"0.8 2 5 6\n"),
            _ => {
                out.extend_from_slice(&if be {
                    0.8f32.to_be_bytes()
                } else {
                    0.8f32.to_le_bytes()
                });
                out.push(2);
                for v in [5i32, 6] {
                    out.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() });
                }
            }
        }
        for i in 0..g.len() {
            let mut line = Vec::new();
            for n in &names {
                let v = value(i, n);
                match (enc, ty(n)) {
                    (Encoding::Ascii, "uchar") => line.push(format!("{}", v as u8)),
                    (Encoding::Ascii, "double") => line.push(format!("{}", v)),
                    (Encoding::Ascii, _) => line.push(format!("{}", v as f32)),
                    (_, "double") => {
                        out.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() })
                    }
                    (_, "uchar") => out.push(v as u8),
                    (_, _) => out.extend_from_slice(&if be {
                        (v as f32).to_be_bytes()
                    } else {
                        (v as f32).to_le_bytes()
                    }),
                }
            }
            if enc == Encoding::Ascii {
                out.extend_from_slice(line.join(" ").as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(if enc == Encoding::Ascii {
            b"3 0 1 2\n"
        } else {
            &[3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]
        });
        out
    }

    #[test]
    fn reads_ascii_big_endian_doubles_any_order_and_extras() {
        let g = sample(9, 2);
        for enc in [Encoding::Ascii, Encoding::BinaryLe, Encoding::BinaryBe] {
            let back = read_ply(&exotic_ply(&g, enc)).unwrap_or_else(|e| panic!("{enc:?}: {e}"));
            assert_eq!(back, g, "{enc:?}");
        }
    }

    #[test]
    fn rejects_bad_f_rest_counts_and_types() {
        let g = sample(3, 1);
        let bytes = write_ply(&g, PlyWriteOptions { normals: false }).unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let e = read_ply(text.replacen("property float f_rest_8\n", "", 1).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("8 f_rest properties"), "{e}");
        let e = read_ply(
            text.replacen("property float opacity", "property uchar opacity", 1)
                .as_bytes(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("'opacity' must be float or double"),
            "{e}"
        );
        let e = read_ply(text.replacen("property float rot_3\n", "", 1).as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("missing vertex property 'rot_3'"),
            "{e}"
        );
    }

    #[test]
    fn truncation_and_huge_counts_are_errors_not_allocations() {
        let g = sample(50, 0);
        let bytes = write_ply(&g, PlyWriteOptions { normals: false }).unwrap();
        for cut in [0, 3, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_ply(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for count in ["18446744073709551615", "4000000000000"] {
            let huge = text.replacen("element vertex 50", &format!("element vertex {count}"), 1);
            let e = read_ply(huge.as_bytes()).unwrap_err();
            assert!(matches!(e, SplatError::Truncated { .. }), "{e}");
        }
        let ascii =
            "ply\nformat ascii 1.0\nelement vertex 99999999999\nproperty float x\nend_header\n1\n";
        assert!(read_ply(ascii.as_bytes()).is_err());
    }

    #[test]
    fn garbage_headers_are_errors() {
        for bad in [
            &b"not a ply"[..],
            b"ply\n",
            b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty floot x\nend_header\n",
            b"ply\nformat binary_middle_endian 1.0\nend_header\n",
            b"ply\nproperty float x\nend_header\n",
            b"ply\nformat ascii 1.0\nend_header\n",
            b"ply\nformat ascii 1.0\nelement vertex 1\nproperty list uchar float x\nend_header\n",
        ] {
            assert!(read_ply(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hamburger_fixture_reads_and_round_trips() {
        let Some(bytes) = fixture("hamburger.ply") else {
            return;
        };
        let g = read_ply(&bytes).unwrap();
        assert_eq!(g.len(), 52_709);
        assert_eq!(g.sh_degree, 0);
        let out = write_ply(&g, PlyWriteOptions { normals: false }).unwrap();
        assert_eq!(read_ply(&out).unwrap(), g);
        assert_eq!(
            out.len() - out.windows(11).position(|w| w == b"end_header\n").unwrap() - 11,
            52_709 * 14 * 4
        );
    }
}

//! Any bytes into the format-detecting reader that every command uses: PLY,
//! SPZ of every flavour, and base64 text of either. An error is fine, a
//! panic or an allocation beyond the input's size is a bug. A decoded
//! splat must survive writing and reading back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splatforge_splat::ply::{write_ply, PlyWriteOptions};
use splatforge_splat::read_splat_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = read_splat_bytes(data) {
        let bytes = write_ply(&g, PlyWriteOptions::default()).expect("a decoded splat is consistent");
        let back = read_splat_bytes(&bytes).expect("our own output reads back");
        assert_eq!(back.len(), g.len());
    }
});

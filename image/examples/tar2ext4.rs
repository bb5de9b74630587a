//! Converts uncompressed layer tarballs (bottom first) into one ext4 image with hk's writer:
//! the entry point of scripts/bench-ext4.
//!
//!   cargo run --release -p hk-image --example tar2ext4 -- out.img layer1.tar [layer2.tar...]

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::process::ExitCode;

use hk_image::ext4::{convert, Layer, Options};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, tars)) = args.split_first().filter(|(_, t)| !t.is_empty()) else {
        eprintln!("usage: tar2ext4 OUT.img LAYER.tar [LAYER.tar...]");
        return ExitCode::from(2);
    };
    let mut layers = Vec::new();
    for (i, path) in tars.iter().enumerate() {
        match File::open(path) {
            Ok(f) => layers.push(Layer {
                name: format!("{path} (layer {}/{})", i + 1, tars.len()),
                tar: BufReader::with_capacity(1 << 20, f),
            }),
            Err(e) => {
                eprintln!("tar2ext4: {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match convert(layers, Path::new(out), &Options::default()) {
        Ok(stats) => {
            println!("{stats:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tar2ext4: {e}");
            ExitCode::FAILURE
        }
    }
}

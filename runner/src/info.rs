//! `hk info`, in the spirit of `docker info`: what a person checks first when a VM will not
//! start.

use crate::host::{self, Kvm};
use serde::Serialize;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Output format: `text`, or `json` for scripts
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

#[derive(Serialize)]
struct Info {
    version: &'static str,
    kvm: Kvm,
    kvm_detail: &'static str,
    kernel: Option<String>,
    cache_dir: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let kvm = Kvm::detect();
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        kvm,
        kvm_detail: kvm.explain(),
        kernel: host::guest_kernel().map(|p| p.display().to_string()),
        cache_dir: host::cache_dir().display().to_string(),
    };
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("Version:     {}", info.version);
        println!("KVM:         {}", info.kvm_detail);
        match &info.kernel {
            Some(k) => println!("Kernel:      {k}"),
            None => println!("Kernel:      not built yet: run kernel/build.sh guest"),
        }
        println!("Cache:       {}", info.cache_dir);
    }
    Ok(ExitCode::SUCCESS)
}

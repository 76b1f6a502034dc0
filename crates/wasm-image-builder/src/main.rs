//! `wasm-oci`: builds OCI image tarballs (`ctr images import`-able) from wasm
//! files, in the two formats users publish, and turns core modules into
//! components.
//!
//! ```text
//! wasm-oci image     --name REF [--platform linux/amd64|wasip1/wasm] [--entrypoint PATH]...
//!                    [--env K=V]... --file SRC:DEST... -o OUT.tar
//! wasm-oci artifact  --name REF --wasm FILE -o OUT.tar
//! wasm-oci componentize CORE.wasm -o COMPONENT.wasm
//! wasm-oci wat TEXT.wat -o MODULE.wasm
//! ```
//!
//! `image` is "wasm in a scratch image": the files in one regular tar layer,
//! entrypoint in the image config. `artifact` is the CNCF TAG-Runtime wasm
//! OCI artifact: config `application/vnd.wasm.config.v0+json`, one
//! `application/wasm` layer. Output is byte-for-byte reproducible.

mod layout;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use layout::{Blob, ImageLayout};
use serde_json::json;

const USAGE: &str = "usage:
  wasm-oci image --name REF [--platform OS/ARCH] [--entrypoint ARG]... [--env K=V]... --file SRC:DEST... -o OUT.tar
  wasm-oci artifact --name REF --wasm FILE -o OUT.tar
  wasm-oci componentize CORE.wasm -o COMPONENT.wasm
  wasm-oci wat TEXT.wat -o MODULE.wasm";

#[derive(Default)]
struct Options {
    name: Option<String>,
    platform: Option<String>,
    entrypoint: Vec<String>,
    env: Vec<String>,
    files: Vec<(PathBuf, String)>,
    wasm: Option<PathBuf>,
    output: Option<PathBuf>,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .with_context(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--name" => options.name = Some(value()?),
            "--platform" => options.platform = Some(value()?),
            "--entrypoint" => options.entrypoint.push(value()?),
            "--env" => options.env.push(value()?),
            "--wasm" => options.wasm = Some(value()?.into()),
            "-o" | "--output" => options.output = Some(value()?.into()),
            "--file" => {
                let spec = value()?;
                let (src, dest) = spec
                    .split_once(':')
                    .with_context(|| format!("--file {spec}: expected SRC:DEST"))?;
                options.files.push((src.into(), dest.to_string()));
            }
            flag if flag.starts_with('-') => bail!("unknown option {flag}\n{USAGE}"),
            _ => options.positional.push(arg.clone()),
        }
    }
    Ok(options)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        bail!("{USAGE}")
    };
    let options = parse(rest)?;
    let output = options.output.clone().context("-o OUT is required")?;
    match command.as_str() {
        "image" => image(&options)?.write(&output),
        "artifact" => artifact(&options)?.write(&output),
        "componentize" => {
            let input = options
                .positional
                .first()
                .context("componentize needs CORE.wasm")?;
            let core = std::fs::read(input).with_context(|| format!("reading {input}"))?;
            std::fs::write(&output, componentize(&core)?)
                .with_context(|| format!("writing {}", output.display()))
        }
        "wat" => {
            let input = options.positional.first().context("wat needs TEXT.wat")?;
            let wasm = wat::parse_file(input).with_context(|| format!("parsing {input}"))?;
            std::fs::write(&output, wasm).with_context(|| format!("writing {}", output.display()))
        }
        _ => bail!("unknown command {command}\n{USAGE}"),
    }
}

fn image(options: &Options) -> Result<ImageLayout> {
    let name = options.name.clone().context("--name is required")?;
    let platform = options.platform.as_deref().unwrap_or("linux/amd64");
    let (os, arch) = platform.split_once('/').context("--platform is OS/ARCH")?;
    if options.files.is_empty() {
        bail!("an image needs at least one --file SRC:DEST");
    }
    let mut files = Vec::new();
    for (src, dest) in &options.files {
        let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        files.push((dest.trim_start_matches('/').to_string(), bytes));
    }
    let layer = Blob::new(
        "application/vnd.oci.image.layer.v1.tar",
        layout::tar(&files)?,
    );
    let config = json!({
        "architecture": arch,
        "os": os,
        "config": {
            "Entrypoint": options.entrypoint,
            "Env": options.env,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer.digest()] },
    });
    let config = Blob::json("application/vnd.oci.image.config.v1+json", &config)?;
    Ok(ImageLayout::new(
        name,
        config,
        vec![layer],
        Some((os, arch)),
    ))
}

fn artifact(options: &Options) -> Result<ImageLayout> {
    let name = options.name.clone().context("--name is required")?;
    let path = options.wasm.as_ref().context("--wasm is required")?;
    let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let layer = Blob::new("application/wasm", wasm);
    let config = json!({
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [layer.digest()],
    });
    let config = Blob::json("application/vnd.wasm.config.v0+json", &config)?;
    Ok(ImageLayout::new(name, config, vec![layer], None))
}

/// Wraps a WASI preview 1 core module into a WASI 0.2 component with the
/// preview-1 adapter shipped for this wasmtime version.
fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    let adapter = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER;
    wit_component::ComponentEncoder::default()
        .module(core)
        .context("the module cannot be componentized")?
        .adapter("wasi_snapshot_preview1", adapter)
        .context("the preview-1 adapter was rejected")?
        .validate(true)
        .encode()
        .context("encoding the component")
}

//! `wasm-oci`: builds OCI image tarballs (`ctr images import`-able) from wasm
//! files, in the two formats users publish, and turns core modules into
//! components.
//!
//! ```text
//! wasm-oci image     --name REF [--platform linux/amd64|wasip1/wasm] [--entrypoint PATH]...
//!                    [--env K=V]... --file SRC:DEST... -o OUT.tar
//! wasm-oci artifact  --name REF --wasm FILE -o OUT.tar
//! wasm-oci componentize CORE.wasm [--wit DIR --world WORLD] [--adapter command|proxy] -o COMPONENT.wasm
//! wasm-oci wat TEXT.wat -o MODULE.wasm
//! ```
//!
//! `image` is "wasm in a scratch image": the files in one regular tar layer,
//! entrypoint in the image config. `artifact` is the CNCF TAG-Runtime wasm
//! OCI artifact: config `application/vnd.wasm.config.v0+json`, one
//! `application/wasm` layer. Output is byte-for-byte reproducible.
//!
//! `componentize` wraps a preview-1 core module into a WASI 0.2 component.
//! A module that calls component-model interfaces directly (the HTTP test
//! guest) names the WIT world it was written against with `--wit`/`--world`;
//! that world is embedded before encoding, as wit-bindgen would have done.
//!
//! The image formats are built by the crate's library (src/lib.rs); this file
//! is the command line and the component tooling.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use wasm_image_builder::{Entry, Image, ImageLayout};

const USAGE: &str = "usage:
  wasm-oci image --name REF [--platform OS/ARCH] [--entrypoint ARG]... [--env K=V]... --file SRC:DEST... -o OUT.tar
  wasm-oci artifact --name REF --wasm FILE -o OUT.tar
  wasm-oci componentize CORE.wasm [--wit DIR --world WORLD] [--adapter command|proxy] -o COMPONENT.wasm
  wasm-oci wat TEXT.wat -o MODULE.wasm";

#[derive(Default)]
struct Options {
    name: Option<String>,
    platform: Option<String>,
    entrypoint: Vec<String>,
    env: Vec<String>,
    files: Vec<(PathBuf, String)>,
    wasm: Option<PathBuf>,
    wit: Option<PathBuf>,
    world: Option<String>,
    adapter: Option<String>,
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
            "--wit" => options.wit = Some(value()?.into()),
            "--world" => options.world = Some(value()?),
            "--adapter" => options.adapter = Some(value()?),
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
            std::fs::write(&output, componentize(core, &options)?)
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
    let mut image = Image::new(&name);
    image.platform = (os.to_string(), arch.to_string());
    image.entrypoint = options.entrypoint.clone();
    image.env = options.env.clone();
    for (src, dest) in &options.files {
        let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        image.entries.push(Entry::file(dest, bytes));
    }
    image.layout()
}

fn artifact(options: &Options) -> Result<ImageLayout> {
    let name = options.name.clone().context("--name is required")?;
    let path = options.wasm.as_ref().context("--wasm is required")?;
    let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    wasm_image_builder::artifact(&name, wasm)
}

/// Wraps a WASI preview 1 core module into a WASI 0.2 component with the
/// preview-1 adapter shipped for this wasmtime version (the `command` adapter
/// for programs with `_start`, the `proxy` one for HTTP handlers).
fn componentize(mut core: Vec<u8>, options: &Options) -> Result<Vec<u8>> {
    use wasi_preview1_component_adapter_provider as adapters;
    let adapter = match options.adapter.as_deref().unwrap_or("command") {
        "command" => adapters::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        "proxy" => adapters::WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
        other => bail!("unknown adapter {other:?} (command or proxy)"),
    };
    match (&options.wit, &options.world) {
        (Some(dir), Some(world)) => embed_world(&mut core, dir, world)?,
        (None, None) => {}
        _ => bail!("--wit and --world go together"),
    }
    wit_component::ComponentEncoder::default()
        .module(&core)
        .context("the module cannot be componentized")?
        .adapter(adapters::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)
        .context("the preview-1 adapter was rejected")?
        .validate(true)
        .encode()
        .context("encoding the component")
}

/// Appends the `component-type` section describing `world` (from the WIT
/// package in `dir`, with its `deps/`) to a core module.
fn embed_world(core: &mut Vec<u8>, dir: &std::path::Path, world: &str) -> Result<()> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(dir)
        .with_context(|| format!("reading WIT from {}", dir.display()))?;
    let world = resolve
        .select_world(&[package], Some(world))
        .with_context(|| format!("no world {world} in {}", dir.display()))?;
    wit_component::embed_component_metadata(
        core,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
}

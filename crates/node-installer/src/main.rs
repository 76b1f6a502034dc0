//! `containerd-wasmtime-installer`: the DaemonSet's entrypoint.
//!
//! ```text
//! containerd-wasmtime-installer install [--stay] [OPTIONS]
//! containerd-wasmtime-installer uninstall [OPTIONS]
//! ```
//!
//! `install --stay` keeps the process (and so the pod) running after a
//! successful install, so the DaemonSet's preStop hook can run `uninstall`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use node_installer::{install, uninstall, Options};

const USAGE: &str = "usage: containerd-wasmtime-installer install|uninstall [options]
  --host-root DIR         where the host's / is mounted (default /host)
  --shim FILE             the shim binary to install (default: next to this binary)
  --bin-dir DIR           host directory for the shim, on containerd's PATH (default /usr/local/bin)
  --flavour NAME          containerd, k3s, rke2, microk8s or k0s, instead of detecting it
  --restart-command CMD   run `sh -c CMD` (UNIT set) instead of restarting through the host's init
  --cri-socket PATH       the CRI socket as seen from here (default: the flavour's, under --host-root)
  --state-dir DIR         host directory of the state file (default /var/lib/containerd-wasmtime-installer)
  --verify-timeout SECS   how long to wait for the CRI after a restart (default 120)
  --no-verify             do not ask the CRI (for hosts whose containerd is not running)
  --stay                  install: keep running afterwards (the DaemonSet's container)
environment: INSTALLER_LOG=debug for more detail";

fn main() {
    Logger::init();
    if let Err(e) = run() {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        bail!("{USAGE}")
    };
    let (options, stay) = parse(rest)?;
    match command.as_str() {
        "install" => {
            let outcome = install(&options)?;
            log::info!(
                "install done: binary {}, config {}, {}",
                if outcome.binary_changed {
                    "installed"
                } else {
                    "unchanged"
                },
                if outcome.config_changed {
                    "changed"
                } else {
                    "unchanged"
                },
                if outcome.restarted {
                    "restarted"
                } else {
                    "not restarted"
                }
            );
            if stay {
                log::info!("staying up; `uninstall` (the preStop hook) reverses the install");
                // With hostPID this process is not PID 1 of its namespace, so
                // SIGTERM's default action ends it: no handler needed.
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Ok(())
        }
        "uninstall" => {
            let outcome = uninstall(&options)?;
            log::info!(
                "uninstall done: config {}, {}",
                if outcome.config_changed {
                    "restored"
                } else {
                    "unchanged"
                },
                if outcome.restarted {
                    "restarted"
                } else {
                    "not restarted"
                }
            );
            Ok(())
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

fn parse(args: &[String]) -> Result<(Options, bool)> {
    let mut options = Options::default();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.to_path_buf()))
    {
        options.shim = dir.join(node_installer::install::SHIM);
    }
    let mut stay = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .with_context(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--host-root" => options.host_root = value()?.into(),
            "--shim" => options.shim = value()?.into(),
            "--bin-dir" => options.bin_dir = absolute(value()?, "--bin-dir")?,
            "--flavour" => options.flavour = Some(value()?.parse().map_err(anyhow::Error::msg)?),
            "--restart-command" => options.restart_command = Some(value()?),
            "--cri-socket" => options.cri_socket = Some(value()?.into()),
            "--state-dir" => options.state_dir = absolute(value()?, "--state-dir")?,
            "--verify-timeout" => {
                let v = value()?;
                let secs: u64 = v.parse().with_context(|| {
                    format!("--verify-timeout {v:?} is not a number of seconds")
                })?;
                options.verify_timeout = Duration::from_secs(secs);
            }
            "--no-verify" => options.verify = false,
            "--stay" => stay = true,
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    Ok((options, stay))
}

/// Host paths must be absolute: they are joined onto the host root.
fn absolute(value: String, flag: &str) -> Result<PathBuf> {
    let path = PathBuf::from(&value);
    if !path.is_absolute() {
        bail!("{flag} {value:?} must be an absolute path on the host");
    }
    Ok(path)
}

/// One line per record on stderr (what `kubectl logs` shows).
struct Logger {
    level: log::LevelFilter,
}

impl Logger {
    fn init() {
        let level = match std::env::var("INSTALLER_LOG").as_deref() {
            Ok("debug") => log::LevelFilter::Debug,
            _ => log::LevelFilter::Info,
        };
        let logger = Box::leak(Box::new(Logger { level }));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }
    fn log(&self, record: &log::Record) {
        let ours = record.target().starts_with("node_installer")
            || record.target().starts_with("containerd_wasmtime_installer");
        if ours && self.enabled(record.metadata()) {
            eprintln!("{:<5} {}", record.level(), record.args());
        }
    }
    fn flush(&self) {}
}

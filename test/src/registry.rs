//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on loopback, with its storage in a private temp dir,
//! and `oras` to push wasm the way users publish it.
//!
//! For a CRI node it runs inside the node's network namespace, where its
//! containerd pulls from. Dropping it stops it (by PID) and removes its dir.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    dir: PathBuf,
    child: Option<Child>,
    netns: Option<String>,
    /// `127.0.0.1:<port>`, the registry's host as image references name it.
    pub host: String,
}

/// The `oras` binary: fetched by `test/fetch-debs.sh` (`make deps`), else PATH.
pub fn oras_binary() -> PathBuf {
    let fetched = crate::workspace().join("target/debs/oras/usr/bin/oras");
    if fetched.is_file() {
        fetched
    } else {
        PathBuf::from("oras")
    }
}

impl Registry {
    /// Starts a registry on a free loopback port, inside network namespace
    /// `netns` if given, and waits until it answers.
    pub fn start(netns: Option<&str>) -> Self {
        let dir = crate::daemon::tempdir();
        let port = free_port(netns);
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.join("data").display()
        );
        fs::write(dir.join("config.yml"), config).expect("write registry config");
        let log = fs::File::create(dir.join("registry.log")).expect("registry log");
        let child = in_netns(netns, "docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry; `make deps`)");
        let mut registry = Self {
            dir,
            child: Some(child),
            netns: netns.map(str::to_string),
            host,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let up = in_netns(self.netns.as_deref(), "curl")
                .args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    &format!("http://{}/v2/", self.host),
                ])
                .status()
                .is_ok_and(|s| s.success());
            if up {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("docker-registry exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not come up in 20s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// `repository:tag` on this registry.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// Runs `oras <args>` in the registry's network namespace, from `cwd`
    /// (oras names pushed files by relative path). The caller says how to
    /// reach the loopback registry: `--plain-http` for push and pull,
    /// `--to-plain-http` for `cp`.
    pub fn oras(&self, cwd: &Path, args: &[&str]) -> Output {
        let output = in_netns(self.netns.as_deref(), &oras_binary().to_string_lossy())
            .args(args)
            .current_dir(cwd)
            .env("HOME", &self.dir)
            .output()
            .expect("run oras (`make deps` fetches it)");
        assert!(
            output.status.success(),
            "oras {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Pushes `layers` (file, media type) with a config blob of media type
    /// `config_type` as `name`, as `oras push` users do. Files are copied into
    /// the registry's dir so the layer titles are their bare names.
    pub fn push(&self, name: &str, config_type: &str, config: &str, layers: &[(&Path, &str)]) {
        let work = self.dir.join("push").join(name.replace([':', '/'], "_"));
        fs::create_dir_all(&work).expect("push dir");
        fs::write(work.join("config.json"), config).expect("write config");
        let mut args: Vec<String> = vec![
            "push".into(),
            self.reference(name),
            "--config".into(),
            format!("{}:{config_type}", work.join("config.json").display()),
        ];
        for (n, (file, media_type)) in layers.iter().enumerate() {
            let base = file
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .to_string();
            // Two layers of one push need distinct names.
            let dest = work.join(if n == 0 { base } else { format!("{n}-{base}") });
            fs::copy(file, &dest).expect("copy a layer");
            let title = dest.file_name().unwrap().to_string_lossy().to_string();
            args.push(format!("{title}:{media_type}"));
        }
        args.push("--plain-http".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.oras(&work, &args);
    }

    /// Pushes an OCI image layout tarball (what `wasm-oci image` writes, like
    /// `docker buildx --output type=oci`) as `name`.
    pub fn push_layout(&self, tarball: &Path, name: &str) {
        let layout = self.dir.join("layouts").join(name.replace([':', '/'], "_"));
        fs::create_dir_all(&layout).expect("layout dir");
        wasm_image_builder::unpack(tarball, &layout)
            .unwrap_or_else(|e| panic!("cannot unpack {}: {e:#}", tarball.display()));
        let tag = layout_tag(&layout);
        self.oras(
            &self.dir,
            &[
                "cp",
                "--from-oci-layout",
                &format!("{}:{tag}", layout.display()),
                &self.reference(name),
                "--to-plain-http",
            ],
        );
    }
}

/// The tag of the single image in an OCI layout (its `ref.name` annotation's tag).
fn layout_tag(layout: &Path) -> String {
    let index: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("index.json")).expect("the layout's index.json"),
    )
    .expect("index.json is JSON");
    let name = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("the layout names its image")
        .to_string();
    // `localhost/x/y:latest` or a bare tag.
    name.rsplit_once(':')
        .map_or(name.clone(), |(_, tag)| tag.to_string())
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A command that runs in `netns` when given (`nsenter --net`), else here.
fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net=/run/netns/{netns}"))
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// A loopback port nothing listens on (in `netns`, where ports are free
/// unless this test took them: any port above the ephemeral range start).
fn free_port(netns: Option<&str>) -> u16 {
    match netns {
        None => TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port"),
        // A fresh namespace has nothing listening; the registry is alone there.
        Some(_) => 5000,
    }
}

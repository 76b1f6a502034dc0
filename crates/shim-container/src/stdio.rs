//! The guest's stdio: the helper's stdin (the shim's pipe) and containerd's
//! output fifos or log file, handed to libcontainer for fds 0, 1 and 2.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::request::Outputs;

/// The guest's stdio: the helper's stdin and containerd's output fifos.
pub(crate) fn stdio(outputs: &Outputs) -> Result<[OwnedFd; 3], String> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate stdin: {e}"))?;
    let stdout =
        open_output(outputs.stdout.as_deref()).map_err(|e| format!("cannot open stdout: {e}"))?;
    let stderr =
        open_output(outputs.stderr.as_deref()).map_err(|e| format!("cannot open stderr: {e}"))?;
    Ok([stdin, stdout, stderr])
}

/// Opens one of containerd's output fifos for writing without ever blocking:
/// when no reader is attached (yet), it is opened read-write so the guest's
/// output waits in the pipe instead of killing it with SIGPIPE.
///
/// A `file://` log URI (`ctr run --log-uri file:///path`) is the file itself,
/// appended to by the guest directly, stdout and stderr alike (the runc
/// shim's behaviour, without a copy through the shim); `binary://` loggers
/// are not supported.
pub fn open_output(path: Option<&Path>) -> std::io::Result<OwnedFd> {
    let Some(path) = path else {
        return Ok(OpenOptions::new().write(true).open("/dev/null")?.into());
    };
    if let Some(uri) = path.to_str().filter(|p| p.contains("://")) {
        let Some(file) = uri.strip_prefix("file://") else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("log URI {uri}: only file:// log URIs are supported"),
            ));
        };
        return Ok(OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(file)?
            .into());
    }
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            OpenOptions::new().read(true).write(true).open(path)?
        }
        Err(e) => return Err(e),
    };
    let fd = file.as_raw_fd();
    let mut flags =
        nix::fcntl::OFlag::from_bits_retain(nix::fcntl::fcntl(fd, nix::fcntl::F_GETFL)?);
    flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
    nix::fcntl::fcntl(fd, nix::fcntl::F_SETFL(flags))?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::path::PathBuf;

    #[test]
    fn a_file_log_uri_is_appended_to_and_other_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        std::fs::write(&log, "before\n").unwrap();
        let uri = PathBuf::from(format!("file://{}", log.display()));
        File::from(open_output(Some(&uri)).unwrap())
            .write_all(b"after\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nafter\n");
        let err = open_output(Some(Path::new("binary:///usr/bin/logger"))).unwrap_err();
        assert!(err.to_string().contains("only file://"), "{err}");
    }
}

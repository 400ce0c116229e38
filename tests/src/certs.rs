//! Test keys and certificates, made with the `openssl` command: key pairs
//! for signing tokens, and a private CA with a server certificate for
//! 127.0.0.1 for the TLS listener and the JWKS URL tests. It must not be used for anything but tests (keys are throw-away,
//! valid for two days).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs an openssl step, failing the test with openssl's message if it fails.
pub fn run_openssl(command: &mut Command) {
    let output = command.stdin(Stdio::null()).output().expect("openssl runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A key pair made by `openssl genpkey` with `args`, written into `dir` as
/// `<name>.pem` (private) and `<name>.pub` (public).
pub fn key_pair(dir: &Path, name: &str, args: &[&str]) {
    let private = dir.join(format!("{name}.pem"));
    run_openssl(
        Command::new("openssl")
            .arg("genpkey")
            .args(args)
            .arg("-out")
            .arg(&private),
    );
    run_openssl(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(dir.join(format!("{name}.pub"))),
    );
}

/// A CA called `ca_name` and a server certificate for 127.0.0.1 signed by
/// it, written into `dir` with `ca_name` as their prefix:
/// `(ca.pem, server.pem, server.key)`.
pub fn test_ca_and_server_certificate(dir: &Path, ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(format!("{ca_name}-{name}"));
    run_openssl(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", &format!("/CN={ca_name}"), "-keyout"])
            .arg(path("ca.key"))
            .arg("-out")
            .arg(path("ca.pem")),
    );
    run_openssl(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(path("server.key"))
            .arg("-out")
            .arg(path("server.csr")),
    );
    std::fs::write(path("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext file");
    run_openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(path("server.csr"))
            .arg("-CA")
            .arg(path("ca.pem"))
            .arg("-CAkey")
            .arg(path("ca.key"))
            .arg("-extfile")
            .arg(path("san.ext"))
            .arg("-out")
            .arg(path("server.pem")),
    );
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

//! Throwaway certificates for the TLS tests, made with the `openssl`
//! command (`.ci/run` installs it when missing): a CA, a server certificate
//! for `localhost` and 127.0.0.1, a client certificate for the user
//! [`CLIENT_USER`], and a second CA that signed neither.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The common name of the client certificate: the user EXTERNAL logs in as.
pub const CLIENT_USER: &str = "eda-client";

/// PEM files in a directory of their own.
pub struct Certificates {
    dir: PathBuf,
    /// Removed on drop (the generated set; copies live in a node's directory).
    owned: bool,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here: trusting only it must fail.
    pub other_ca: PathBuf,
    /// The server's certificate.
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// The client's certificate (CN [`CLIENT_USER`]).
    pub client_cert: PathBuf,
    /// The client's key.
    pub client_key: PathBuf,
}

impl Certificates {
    /// Generates a fresh set under a temporary directory named after `label`.
    pub fn generate(label: &str) -> Certificates {
        let dir = std::env::temp_dir().join(format!("eda-certs-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let certificates = Certificates::at(&dir, true);
        let file = |name: &str| dir.join(name).display().to_string();
        for (name, subject) in [("ca", "eda test CA"), ("other-ca", "eda unrelated CA")] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={subject}"),
                "-keyout",
                &file(&format!("{name}.key")),
                "-out",
                &file(&format!("{name}.pem")),
            ]);
        }
        let server_extensions =
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
        let client_extensions = "extendedKeyUsage=clientAuth\n";
        for (name, subject, extensions) in [
            ("server", "localhost", server_extensions),
            ("client", CLIENT_USER, client_extensions),
        ] {
            let extensions_file = file(&format!("{name}.ext"));
            std::fs::write(&extensions_file, extensions).expect("extensions file");
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={subject}"),
                "-keyout",
                &file(&format!("{name}.key")),
                "-out",
                &file(&format!("{name}.csr")),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &file(&format!("{name}.csr")),
                "-CA",
                &file("ca.pem"),
                "-CAkey",
                &file("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &extensions_file,
                "-out",
                &file(&format!("{name}.pem")),
            ]);
        }
        certificates
    }

    /// Copies the files into `dir` (e.g. a node's directory, which the node
    /// owns and removes).
    pub fn copy_to(&self, dir: &Path) -> Certificates {
        std::fs::create_dir_all(dir).expect("certificate copy directory");
        for entry in std::fs::read_dir(&self.dir).expect("certificate directory") {
            let entry = entry.expect("directory entry");
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy certificate");
        }
        Certificates::at(dir, false)
    }

    fn at(dir: &Path, owned: bool) -> Certificates {
        Certificates {
            dir: dir.to_owned(),
            owned,
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (.ci/run installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

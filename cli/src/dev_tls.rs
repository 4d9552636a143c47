//! `outpost dev --https`: a local certificate authority and a certificate
//! for `localhost`, made once and kept under the data directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// The files `--https` uses.
pub struct DevCertificate {
    /// The CA to trust, PEM.
    pub ca_path: PathBuf,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Whether they were made just now.
    pub created: bool,
}

/// The names the development certificate covers.
pub const DEV_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Loads the development CA and certificate from `dir`, or makes them.
pub fn ensure(dir: &Path) -> anyhow::Result<DevCertificate> {
    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join("localhost.pem");
    let key_path = dir.join("localhost-key.pem");
    if ca_path.is_file() && cert_path.is_file() && key_path.is_file() {
        let read = |path: &Path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
        return Ok(DevCertificate { cert_pem: read(&cert_path)?, key_pem: read(&key_path)?, ca_path, created: false });
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let ca_key = KeyPair::generate().context("cannot make a key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Outpost local development CA");
    name.push(DnType::OrganizationName, "Outpost");
    ca_params.distinguished_name = name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = ca_params.self_signed(&ca_key).context("cannot sign the CA")?;

    let key = KeyPair::generate().context("cannot make a key")?;
    let mut params = CertificateParams::new(DEV_HOSTS.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .context("certificate parameters")?;
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key).context("cannot sign the certificate")?;

    write(&ca_path, ca.pem().as_bytes(), false)?;
    write(&dir.join("ca-key.pem"), ca_key.serialize_pem().as_bytes(), true)?;
    write(&cert_path, cert.pem().as_bytes(), false)?;
    write(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok(DevCertificate {
        ca_path,
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
        created: true,
    })
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// How to trust the CA, for the terminal.
pub fn trust_hint(ca_path: &Path) -> String {
    let ca = ca_path.display();
    format!(
        "the certificate is signed by a local CA made for this machine: {ca}\n  \
         trust it per client:   curl --cacert {ca} https://localhost:<port>/\n  \
         or system-wide (Debian/Ubuntu): sudo cp {ca} /usr/local/share/ca-certificates/outpost-dev.crt && sudo update-ca-certificates"
    )
}

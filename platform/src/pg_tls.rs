//! PostgreSQL connection strings with libpq's TLS settings, over rustls.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and no `sslrootcert`.
//! These are taken out of the URL (or `key=value` string) here and honoured as libpq does:
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it | no |
//! | `require` | always | no; as `verify-ca` when `sslrootcert` is given |
//! | `verify-ca` | always | chain to a trusted CA |
//! | `verify-full` | always | chain, and the server's name is the host connected to |
//!
//! Trusted CAs: the PEM file `sslrootcert`, or the Mozilla root bundle when it is absent or
//! `system` (managed databases whose CA is public).

use std::sync::Arc;

use anyhow::{bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::str::FromStr for TlsMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "disable" => TlsMode::Disable,
            // libpq's `allow` tries without TLS first; taking TLS when offered is stricter.
            "allow" | "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => bail!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
        })
    }
}

/// A connection string split into what tokio-postgres reads and the TLS settings.
#[derive(Debug)]
pub struct PgTarget {
    pub config: tokio_postgres::Config,
    pub mode: TlsMode,
    pub root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL or a `key=value` string.
pub fn parse(url: &str) -> anyhow::Result<PgTarget> {
    let (mut mode, mut root_cert) = (None, None);
    let mut take = |k: &str, v: &str| -> anyhow::Result<bool> {
        match k {
            "sslmode" => mode = Some(v.parse::<TlsMode>()?),
            "sslrootcert" => root_cert = Some(v.to_string()),
            "sslcert" | "sslkey" => bail!(
                "{k} (a client certificate for PostgreSQL) is not supported; authenticate with a password"
            ),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let v = percent_decode(v);
                    if !take(k, &v)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((k, v)) if take(k.trim(), v.trim_matches('\'').trim())? => {}
                _ => kept.push(word),
            }
        }
        kept.join(" ")
    };
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| anyhow::anyhow!("the PostgreSQL connection string is not valid: {e}"))?;
    let mode = mode.unwrap_or(TlsMode::Prefer);
    config.ssl_mode(match mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    });
    Ok(PgTarget {
        config,
        mode,
        root_cert,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    // Only `%XX` with two hex digits is decoded; anything else is kept as it is.
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl PgTarget {
    /// Where it connects, for messages: `host:port` of the first host.
    pub fn host(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    /// The rustls configuration `mode` asks for; none for `disable`.
    pub fn tls(&self) -> anyhow::Result<Option<rustls::ClientConfig>> {
        let verify = match (self.mode, &self.root_cert) {
            (TlsMode::Disable, _) => return Ok(None),
            (TlsMode::Prefer, _) | (TlsMode::Require, None) => None,
            (TlsMode::Require, Some(_)) | (TlsMode::VerifyCa, _) => Some(false),
            (TlsMode::VerifyFull, _) => Some(true),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            None => Arc::new(EncryptOnly(provider)),
            Some(names) => {
                let roots = Arc::new(self.roots()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .context("building the certificate verifier")?;
                if names {
                    webpki
                } else {
                    Arc::new(AnyName(webpki))
                }
            }
        };
        Ok(Some(
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        ))
    }

    fn roots(&self) -> anyhow::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match self.root_cert.as_deref() {
            None | Some("system") => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("sslrootcert {path}: cannot be read"))?
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("sslrootcert {path}: not PEM certificates"))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    bail!("sslrootcert {path} holds no usable CA certificate");
                }
            }
        }
        Ok(roots)
    }
}

/// `prefer` and `require` without a CA: encrypted, the certificate taken as it comes (libpq's
/// behaviour; the handshake signature is still checked).
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_urls_and_key_value_strings() {
        let t = parse("postgres://u:pw@db.example:6432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x").unwrap();
        assert_eq!(t.mode, TlsMode::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(t.host(), "db.example:6432");
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);

        let t =
            parse("host=10.0.0.5 user=u sslmode=verify-ca sslrootcert=/ca.pem dbname=app").unwrap();
        assert_eq!(
            (t.mode, t.root_cert.as_deref()),
            (TlsMode::VerifyCa, Some("/ca.pem"))
        );
        assert_eq!(t.config.get_dbname(), Some("app"));

        let t = parse("postgres://u@h/app").unwrap();
        assert_eq!(t.mode, TlsMode::Prefer);
        assert!(parse("postgres://u@h/app?sslmode=sometimes").is_err());
        let e = parse("postgres://u@h/app?sslcert=/c.pem").unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        assert!(parse("postgres://u@h/app?sslmode=disable")
            .unwrap()
            .tls()
            .unwrap()
            .is_none());
        let e = parse("postgres://u@h/app?sslmode=verify-full&sslrootcert=/no/such.pem")
            .unwrap()
            .tls()
            .unwrap_err();
        assert!(format!("{e:#}").contains("/no/such.pem"), "{e:#}");
    }
}

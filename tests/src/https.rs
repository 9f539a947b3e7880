//! An HTTPS client for the agent's operator page, from a namespace, that
//! trusts exactly one certificate (the one the agent made or was given) and
//! keeps the cookies it is sent, as a browser would for one site.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

use crate::netns::in_netns;

/// An answer: status, head (lowercased), body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// Every `Set-Cookie` line, as sent (lowercased with the head).
    pub fn set_cookies(&self) -> Vec<String> {
        self.head
            .lines()
            .filter_map(|l| l.strip_prefix("set-cookie: "))
            .map(str::to_string)
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let p = format!("{}: ", name.to_ascii_lowercase());
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&p))
            .map(str::to_string)
    }
}

/// Trusts one certificate, byte for byte, whatever its name.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One site's client: its address, the certificate it trusts, its cookies.
pub struct Site {
    ns: String,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub cookies: Vec<(String, String)>,
}

impl Site {
    /// A client from namespace `ns` of `addr`, trusting the PEM certificate at `cert`.
    pub fn https(ns: &str, addr: SocketAddr, cert: &Path) -> Site {
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = CertificateDer::from_pem_file(cert)
            .unwrap_or_else(|e| panic!("{}: {e}", cert.display()));
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
            .with_no_client_auth();
        Site {
            ns: ns.into(),
            addr,
            tls: Some(Arc::new(cfg)),
            cookies: Vec::new(),
        }
    }

    /// A plain-HTTP client (for a loopback listener, or to see a TLS one refuse it).
    pub fn plain(ns: &str, addr: SocketAddr) -> Site {
        Site {
            ns: ns.into(),
            addr,
            tls: None,
            cookies: Vec::new(),
        }
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let s = in_netns(&self.ns, || {
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(3))
        })?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    }

    /// Whether a TCP connection opens at all (within 3 s).
    pub fn reachable(&self) -> bool {
        self.connect().is_ok()
    }

    /// `METHOD path` with `headers` and a form `body`; keeps the cookies set.
    pub fn send(&mut self, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        let tcp = self
            .connect()
            .unwrap_or_else(|e| panic!("connect {} from {}: {e}", self.addr, self.ns));
        let raw = match &self.tls {
            Some(cfg) => {
                let name = ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                s.write_all(req.as_bytes()).expect("TLS write");
                let mut out = Vec::new();
                // The server closes after its answer (`Connection: close`),
                // with or without close_notify.
                let _ = s.read_to_end(&mut out);
                out
            }
            None => {
                let mut s = tcp;
                s.write_all(req.as_bytes()).expect("write");
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                out
            }
        };
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let a = Answer {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_string(),
        };
        for c in a.set_cookies() {
            // The head is lowercased; the cookie's value is hex.
            let pair = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                self.cookies.retain(|(n, _)| n != k);
                if !v.is_empty() {
                    self.cookies.push((k.to_string(), v.to_string()));
                }
            }
        }
        a
    }

    pub fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, &[], "")
    }

    pub fn post(&mut self, path: &str, body: &str) -> Answer {
        self.send("POST", path, &[], body)
    }
}

/// `s` in a form body.
pub fn form_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The CSRF token of the first form of a page.
pub fn csrf_of(page: &str) -> Option<String> {
    let at = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(page[at..].split('"').next()?.to_string())
}

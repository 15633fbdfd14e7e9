//! What both HTTP clients share: how they are built (timeouts, user agent), URL joining,
//! `Retry-After`, and transport errors described with their causes but without URLs.

use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use crate::config::NevisTls;

/// A client with an overall request timeout and a connect timeout of at most 10 s.
pub(crate) fn build(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    builder(timeout).build()
}

fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("nexudus-nevis-sync/", env!("CARGO_PKG_VERSION")))
}

/// Like [`build`], with nevisIDM's TLS options: a private CA added to the platform's roots, a
/// client certificate for mutual TLS, and (only when asked, loudly) no verification at all.
/// A bad PEM is an error naming the key, never a panic.
pub(crate) fn build_tls(timeout: Duration, tls: &NevisTls) -> Result<reqwest::Client, String> {
    let mut builder = builder(timeout);
    if let Some(ca) = &tls.ca_cert {
        let roots = reqwest::Certificate::from_pem_bundle(ca.as_bytes()).map_err(|e| {
            format!(
                "nevis.ca_cert is not a usable PEM certificate: {}",
                describe(e)
            )
        })?;
        if roots.is_empty() {
            return Err("nevis.ca_cert holds no certificate".into());
        }
        builder = builder.tls_certs_merge(roots);
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let mut pem = Vec::with_capacity(cert.len() + key.expose_secret().len() + 1);
        pem.extend_from_slice(cert.as_bytes());
        pem.push(b'\n');
        pem.extend_from_slice(key.expose_secret().as_bytes());
        // The error text of a bad key could quote it: say only which keys to check.
        let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
            "nevis.client_cert / nevis.client_key are not a usable PEM certificate and private key"
                .to_string()
        })?;
        builder = builder.identity(identity);
    }
    if tls.insecure_skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the nevisIDM HTTP client: {}", describe(e)))
}

/// The TLS failure in a transport error's causes, if it is one: a certificate that does not
/// verify, or a handshake the server refused (no or a wrong client certificate).
pub(crate) fn tls_failure(e: &reqwest::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // An io::Error hides the error it wraps from `source()`; look inside.
        if let Some(tls) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        // The connector reports certificate failures as text in an io::Error of its own; these
        // are rustls's own wordings for "the certificate did not verify".
        let text = cause.to_string();
        if text.contains("invalid peer certificate") || text.contains("received fatal alert") {
            return Some(text);
        }
        source = cause.source();
    }
    None
}

/// A transport error with its causes ("error sending request: … Connection refused"), without the
/// URL (query strings stay out of messages; reqwest never includes auth headers).
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Reads `Retry-After` given in seconds (the form both APIs use). HTTP dates are ignored.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Appends a path to a base URL, keeping any path prefix the base already has.
pub(crate) fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{prefix}/{}", path.trim_start_matches('/')));
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_base_path_prefix() {
        let base = Url::parse("https://proxy.example.com/nexudus/").unwrap();
        assert_eq!(
            join(&base, "api/sys/users").as_str(),
            "https://proxy.example.com/nexudus/api/sys/users"
        );
        let base = Url::parse("https://spaces.nexudus.com").unwrap();
        assert_eq!(
            join(&base, "/api/sys/users").as_str(),
            "https://spaces.nexudus.com/api/sys/users"
        );
    }
}

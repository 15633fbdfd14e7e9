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
    // Both APIs answer JSON; saying so up front keeps content negotiation (and WAF pages that
    // honour it) from choosing HTML for us.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::ACCEPT,
        reqwest::header::HeaderValue::from_static("application/json"),
    );
    reqwest::Client::builder()
        // A redirect from an API is never a success: behind a login proxy, following it turns a
        // POST into a GET of the login page. Each client reports the 3xx itself.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("nexudus-nevis-sync/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
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
    // A key that is PEM but not a usable key is only found out here.
    let check = if tls.client_cert.is_some() {
        "; check nevis.client_cert / nevis.client_key (a PEM certificate and its private key) \
         and nevis.ca_cert"
    } else {
        "; check nevis.ca_cert"
    };
    builder.build().map_err(|e| {
        format!(
            "cannot build the nevisIDM HTTP client: {}{check}",
            describe(e)
        )
    })
}

/// A TLS failure found in a transport error's causes, sorted by whose certificate it is about,
/// so the fatal message can name the one setting to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The server's certificate did not verify (unknown issuer, expired, wrong name, …).
    ServerCertificate(String),
    /// The server ended the handshake with an alert about our client certificate: it wanted one
    /// and got none (`CertificateRequired`), or did not accept the one sent (`BadCertificate`,
    /// `UnknownCA`, …).
    ClientCertificate(String),
    /// Any other refused handshake (`HandshakeFailure`, no common protocol version, …).
    Other(String),
}

/// Alerts a server sends about the client's certificate (rustls's names for them).
const CLIENT_CERTIFICATE_ALERTS: &[rustls::AlertDescription] = &[
    rustls::AlertDescription::CertificateRequired,
    rustls::AlertDescription::NoCertificate,
    rustls::AlertDescription::BadCertificate,
    rustls::AlertDescription::UnsupportedCertificate,
    rustls::AlertDescription::CertificateRevoked,
    rustls::AlertDescription::CertificateExpired,
    rustls::AlertDescription::CertificateUnknown,
    rustls::AlertDescription::UnknownCA,
    rustls::AlertDescription::AccessDenied,
];

/// The TLS failure in a transport error's causes, if it is one.
pub(crate) fn tls_failure(e: &reqwest::Error) -> Option<TlsFailure> {
    std::error::Error::source(e).and_then(tls_failure_in)
}

/// Walks `error` and its causes for a TLS failure.
fn tls_failure_in(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(from_rustls(tls));
        }
        // An io::Error hides the error it wraps from `source()`; look inside.
        if let Some(tls) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(from_rustls(tls));
        }
        // The connector may report the failure as text in an io::Error of its own; these are
        // rustls's own wordings (its `Display` of the two errors above).
        if let Some(failure) = from_text(&cause.to_string()) {
            return Some(failure);
        }
        source = cause.source();
    }
    None
}

fn from_rustls(e: &rustls::Error) -> TlsFailure {
    match e {
        rustls::Error::InvalidCertificate(_) => TlsFailure::ServerCertificate(e.to_string()),
        rustls::Error::AlertReceived(alert) if CLIENT_CERTIFICATE_ALERTS.contains(alert) => {
            TlsFailure::ClientCertificate(e.to_string())
        }
        _ => TlsFailure::Other(e.to_string()),
    }
}

fn from_text(text: &str) -> Option<TlsFailure> {
    if let Some(at) = text.find("invalid peer certificate") {
        return Some(TlsFailure::ServerCertificate(text[at..].to_string()));
    }
    let at = text.find("received fatal alert: ")?;
    let message = &text[at..];
    let alert = message["received fatal alert: ".len()..]
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    let about_client_certificate = CLIENT_CERTIFICATE_ALERTS
        .iter()
        .any(|a| format!("{a:?}") == alert);
    Some(if about_client_certificate {
        TlsFailure::ClientCertificate(message.to_string())
    } else {
        TlsFailure::Other(message.to_string())
    })
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

/// Reads `Retry-After`: whole seconds (the documented form), seconds with a fraction (`0.7`,
/// seen from Nexudus), or an HTTP date (RFC 9110; a date already past means "now"). Anything
/// else is ignored, as if absent.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    retry_after_value(value, std::time::SystemTime::now())
}

/// The wait a `Retry-After` value asks for, with dates measured from `now`.
pub(crate) fn retry_after_value(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Duration::try_from_secs_f64 refuses negatives, NaN and overflow; digits and dots only
        // cannot be negative, and "1.2.3" does not parse.
        let secs: f64 = value.parse().ok()?;
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a content type announces JSON (`application/json`, `text/json`, `…+json`), the only
/// answers either API documents; anything else is not decoded.
pub(crate) fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || mime == "text/json" || mime.ends_with("+json")
}

/// The `Location` of a redirect, shortened for a message, or a note that there is none.
pub(crate) fn location(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || "(no Location header)".into(),
            |l| l.chars().take(300).collect(),
        )
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

    fn in_io(e: rustls::Error) -> std::io::Error {
        std::io::Error::other(e)
    }

    #[test]
    fn tls_failures_are_told_apart_by_whose_certificate_failed() {
        use rustls::{AlertDescription, CertificateError, Error};
        let missing = in_io(Error::AlertReceived(AlertDescription::CertificateRequired));
        assert_eq!(
            tls_failure_in(&missing),
            Some(TlsFailure::ClientCertificate(
                "received fatal alert: CertificateRequired".into()
            ))
        );
        let refused = Error::AlertReceived(AlertDescription::UnknownCA);
        assert!(matches!(
            tls_failure_in(&refused),
            Some(TlsFailure::ClientCertificate(_))
        ));
        let untrusted = in_io(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!(
            tls_failure_in(&untrusted),
            Some(TlsFailure::ServerCertificate(
                "invalid peer certificate: UnknownIssuer".into()
            ))
        );
        let other = Error::AlertReceived(AlertDescription::HandshakeFailure);
        assert!(matches!(tls_failure_in(&other), Some(TlsFailure::Other(_))));
        // Reported as text by the connector, wrapped in an io::Error of its own.
        let text = std::io::Error::other("tls: received fatal alert: BadCertificate");
        assert_eq!(
            tls_failure_in(&text),
            Some(TlsFailure::ClientCertificate(
                "received fatal alert: BadCertificate".into()
            ))
        );
        let text = std::io::Error::other("invalid peer certificate: Expired");
        assert!(matches!(
            tls_failure_in(&text),
            Some(TlsFailure::ServerCertificate(_))
        ));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_failure_in(&refused), None);
    }

    #[test]
    fn retry_after_takes_seconds_fractions_and_http_dates() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |v: &str| retry_after_value(v, now);
        assert_eq!(at("1"), Some(Duration::from_secs(1)));
        assert_eq!(at(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(at("0.7"), Some(Duration::from_millis(700)));
        assert_eq!(at("1.25"), Some(Duration::from_millis(1250)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(3));
        assert_eq!(at(&later), Some(Duration::from_secs(3)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(at(&earlier), Some(Duration::ZERO), "a past date: now");
        for junk in ["", "-1", "soon", "1.2.3", "1e9999", "NaN"] {
            assert_eq!(at(junk), None, "{junk:?}");
        }
    }

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

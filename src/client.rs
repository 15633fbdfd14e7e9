//! What both HTTP clients share: how they are built (timeouts, user agent), URL joining,
//! `Retry-After`, and transport errors described with their causes but without URLs.

use std::time::Duration;

use url::Url;

/// A client with an overall request timeout and a connect timeout of at most 10 s.
pub(crate) fn build(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("nexudus-nevis-sync/", env!("CARGO_PKG_VERSION")))
        .build()
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

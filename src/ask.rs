//! Asks the running daemon over its HTTP port, with the bearer token of `http.auth_token_file`
//! when one is configured: `--status` does when the daemon holds the store (sled lets one process
//! open it). Answers the body as text (the caller parses it), or says what to fix — above all
//! which side of the token is wrong when the daemon answers 401.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::Config;

/// How long the daemon may take to answer (it reads its store to build `/status`).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the daemon gave no answer to use. The messages name the config key to change.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(
        "the daemon listens on a port of its choosing (http.listen {listen}): its log names it \
         (\"serving /healthz …\" listen=); set http.listen to that address"
    )]
    PortOfItsChoosing { listen: SocketAddr },
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
    #[error("the daemon's {url} did not answer: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the daemon's {url} needs a bearer token (401): set http.auth_token_file to a file \
         holding the token the daemon was given"
    )]
    TokenNeeded { url: String },
    #[error(
        "the daemon's {url} refused the bearer token from http.auth_token_file (401): it is not \
         the token the daemon was started with"
    )]
    TokenRefused { url: String },
    #[error("the daemon's {url} answered {status}")]
    Status { url: String, status: u16 },
}

/// GETs `path_and_query` (`/status`, `/status?x=1`) from the daemon at `http.listen`, sending
/// `Authorization: Bearer` when `http.auth_token_file` is set; the body of a 2xx answer.
pub async fn ask_daemon(config: &Config, path_and_query: &str) -> Result<String, AskError> {
    let url = format!(
        "http://{}{path_and_query}",
        daemon_address(config.http.listen)?
    );
    let client = crate::client::build(TIMEOUT).map_err(|e| AskError::Client(e.to_string()))?;
    let mut request = client.get(&url);
    if let Some(token) = &config.http.auth_token {
        request = request.bearer_auth(token.expose_secret());
    }
    let unreachable = |e: reqwest::Error| AskError::Unreachable {
        url: url.clone(),
        reason: crate::client::describe(e),
    };
    let response = request.send().await.map_err(unreachable)?;
    match response.status().as_u16() {
        200..=299 => response.text().await.map_err(unreachable),
        401 if config.http.auth_token.is_some() => Err(AskError::TokenRefused { url }),
        401 => Err(AskError::TokenNeeded { url }),
        status => Err(AskError::Status { url, status }),
    }
}

/// Where to reach a daemon listening on `listen`: its own address, loopback for an unspecified
/// one (`0.0.0.0`, `::`); an error for port 0, which only the daemon's log can resolve.
fn daemon_address(listen: SocketAddr) -> Result<SocketAddr, AskError> {
    if listen.port() == 0 {
        return Err(AskError::PortOfItsChoosing { listen });
    }
    let mut addr = listen;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_is_asked_on_loopback_when_it_listens_everywhere() {
        let at = |text: &str| daemon_address(text.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(at("0.0.0.0:9464").unwrap(), "127.0.0.1:9464");
        assert_eq!(at("[::]:9464").unwrap(), "[::1]:9464");
        assert_eq!(at("10.1.2.3:9464").unwrap(), "10.1.2.3:9464");
        let e = at("127.0.0.1:0").unwrap_err().to_string();
        assert!(e.contains("port of its choosing"), "{e}");
    }
}

//! OAuth2 client credentials for nevisIDM: short-lived access tokens from the deployment's token
//! endpoint (`POST …/oauth/token`, `grant_type=client_credentials`, client authenticated with
//! HTTP Basic), cached and renewed before they expire by the rule the Nexudus tokens follow
//! ([`renew_after`]), or once when nevisIDM answers 401. A token answered without `expires_in`
//! is renewed on a 401 only.
//!
//! The client secret and the tokens live in [`SecretString`]s and never reach a message or a log.

use std::time::Instant;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::TargetError;
use crate::client::{describe, retry_after};
use crate::config::NevisOAuth;
use crate::nexudus::auth::renew_after;
use crate::retry::RetryPolicy;

/// An access token in use.
struct Cached {
    token: SecretString,
    /// `None`: the answer had no `expires_in`; renewed when nevisIDM answers 401.
    renew_at: Option<Instant>,
    /// Counts the tokens fetched, so that a 401 renews only the token it was answered for.
    generation: u64,
}

/// A token handed to a request, with the generation to name on a 401.
pub(crate) struct Bearer {
    pub(crate) token: SecretString,
    pub(crate) generation: u64,
}

pub(crate) struct OAuth {
    cfg: NevisOAuth,
    /// One renewal at a time; requests wait for it rather than each fetching a token.
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl OAuth {
    pub(crate) fn new(cfg: NevisOAuth) -> OAuth {
        OAuth {
            cfg,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A usable token: the cached one while it is not due for renewal, else a new one.
    pub(crate) async fn bearer(
        &self,
        http: &reqwest::Client,
        retry: &RetryPolicy,
    ) -> Result<Bearer, TargetError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(Bearer {
                token: c.token.clone(),
                generation: c.generation,
            });
        }
        let generation = cached.as_ref().map_or(1, |c| c.generation + 1);
        let fresh = self.fetch(http, retry, generation).await?;
        let bearer = Bearer {
            token: fresh.token.clone(),
            generation,
        };
        *cached = Some(fresh);
        Ok(bearer)
    }

    /// nevisIDM answered 401 to the token of `generation`: forget it (unless another request
    /// already renewed it), so the next [`OAuth::bearer`] fetches a new one.
    pub(crate) async fn refused(&self, generation: u64) {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_mut()
            && c.generation == generation
        {
            c.renew_at = Some(Instant::now());
        }
    }

    /// One token grant, paced and retried by the same policy as every nevisIDM request.
    async fn fetch(
        &self,
        http: &reqwest::Client,
        retry: &RetryPolicy,
        generation: u64,
    ) -> Result<Cached, TargetError> {
        let answer = retry
            .run("get a nevisIDM access token", || self.grant(http))
            .await?;
        tracing::debug!(
            expires_in = ?answer.1,
            "nevisIDM access token issued"
        );
        Ok(Cached {
            token: answer.0,
            renew_at: answer
                .1
                .map(|lifetime| Instant::now() + renew_after(lifetime)),
            generation,
        })
    }

    async fn grant(
        &self,
        http: &reqwest::Client,
    ) -> Result<(SecretString, Option<std::time::Duration>), TargetError> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.cfg.scope {
            form.push(("scope", scope.as_str()));
        }
        let response = http
            .post(self.cfg.token_url.clone())
            .basic_auth(
                &self.cfg.client_id,
                Some(self.cfg.client_secret.expose_secret()),
            )
            .form(&form)
            .send()
            .await
            .map_err(|e| TargetError::Unavailable {
                status: None,
                detail: format!("token endpoint: {}", describe(e)),
                retry_after: None,
            })?;
        let status = response.status();
        let wait = retry_after(response.headers());
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| l.chars().take(300).collect::<String>());
        let body = response
            .bytes()
            .await
            .map_err(|e| TargetError::Unavailable {
                status: Some(status.as_u16()),
                detail: format!("token endpoint: {}", describe(e)),
                retry_after: None,
            })?;
        if status.is_redirection() {
            return Err(TargetError::Redirect {
                status: status.as_u16(),
                location: location.unwrap_or_else(|| "(no Location header)".into()),
            });
        }
        let doc: Option<Value> = serde_json::from_slice(&body).ok();
        if status == StatusCode::OK {
            return token_of(doc.as_ref());
        }
        if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            return Err(TargetError::Unavailable {
                status: Some(status.as_u16()),
                detail: format!("token endpoint answered HTTP {}", status.as_u16()),
                retry_after: wait,
            });
        }
        // Only the OAuth2 error code is quoted: descriptions are free text.
        let code = doc
            .as_ref()
            .and_then(|d| d.get("error"))
            .and_then(Value::as_str)
            .map(|c| {
                c.chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(60)
                    .collect()
            })
            .unwrap_or_else(|| "no OAuth2 error code".to_string());
        let hint = match code.as_str() {
            "invalid_client" | "unauthorized_client" => {
                "check nevis.oauth_client_id and nevis.oauth_client_secret (or \
                 nevis.oauth_client_secret_file), and that the client may use the \
                 client_credentials grant"
            }
            "invalid_scope" => "check nevis.oauth_scope",
            _ => {
                "check nevis.oauth_token_url, nevis.oauth_client_id, nevis.oauth_client_secret \
                 and nevis.oauth_scope"
            }
        };
        Err(TargetError::OAuth {
            detail: format!(
                "the token endpoint refused the client credentials grant (HTTP {} {code}); {hint}",
                status.as_u16()
            ),
        })
    }
}

/// `access_token` and `expires_in` (seconds, a number or a numeric string) of a grant's answer.
fn token_of(
    doc: Option<&Value>,
) -> Result<(SecretString, Option<std::time::Duration>), TargetError> {
    let token = doc
        .and_then(|d| d.get("access_token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TargetError::OAuth {
            detail: "the token endpoint answered without an access_token; check \
                     nevis.oauth_token_url"
                .into(),
        })?;
    let expires_in = doc.and_then(|d| d.get("expires_in")).and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    });
    Ok((
        SecretString::from(token.to_string()),
        expires_in.map(std::time::Duration::from_secs),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_with_and_without_expires_in() {
        let (token, lifetime) =
            token_of(Some(&json!({"access_token": "at", "expires_in": 3600}))).unwrap();
        assert_eq!(
            (token.expose_secret(), lifetime),
            ("at", Some(std::time::Duration::from_secs(3600)))
        );
        let (_, lifetime) =
            token_of(Some(&json!({"access_token": "at", "expires_in": "60"}))).unwrap();
        assert_eq!(lifetime, Some(std::time::Duration::from_secs(60)));
        let (_, lifetime) = token_of(Some(&json!({"access_token": "at"}))).unwrap();
        assert_eq!(lifetime, None, "renewed on a 401 only");
        assert!(matches!(
            token_of(Some(&json!({"token_type": "bearer"}))),
            Err(TargetError::OAuth { .. })
        ));
        assert!(matches!(token_of(None), Err(TargetError::OAuth { .. })));
    }
}

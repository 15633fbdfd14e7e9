//! How the Nexudus client authenticates: HTTP Basic on every request, or bearer tokens from
//! `POST /api/token` (`nexudus.auth = "token"`).
//!
//! Token flow, as the API notes describe it: the password grant (form-encoded
//! `grant_type=password&username=…&password=…`, plus `totp=…` for 2FA accounts) answers an
//! `access_token`, its `expires_in` and a `refresh_token`; the refresh grant
//! (`grant_type=refresh_token&refresh_token=…`, with the same `client_id` header as at sign-in)
//! answers new ones and retires the refresh token used. The access token is renewed before it
//! expires — one minute before, or at 90 % of its lifetime when that is later (tokens shorter
//! than ten minutes), see [`renew_after`] — or when a request is answered 401. The rotating
//! refresh token is kept in the store, so a restart does not need the password; when Nexudus
//! refuses it, it is forgotten (in the store too) and the client signs in with the password again.
//!
//! Token requests are not retried here: a transient failure ends the caller's attempt, and the
//! caller's one retry policy decides whether to try again (see `NexudusClient::bearer`).

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::retry::{Classify, Verdict};
use crate::store::Store;

/// Store key of the refresh token (meta tree).
const REFRESH_TOKEN_KEY: &str = "nexudus_refresh_token";

/// What a token request came to.
#[derive(Debug)]
pub enum GrantError {
    /// Nexudus refused the grant (400 `invalid_grant` and the like, 401): the credentials or the
    /// refresh token are not accepted. `error` is the OAuth error code, `description` its
    /// `error_description` (both escaped).
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// The password grant was refused: the run cannot sign in. `hint` tells the operator what to
    /// fix (a fresh `nexudus.totp` when one is configured).
    SignIn {
        status: u16,
        error: String,
        hint: String,
    },
    /// Anything transient (throttling, 5xx, transport): retried by the caller's policy.
    Transient(super::SourceError),
    /// The store could not keep the rotated refresh token.
    Store(String),
}

impl std::fmt::Display for GrantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantError::Refused { status, error, .. } => {
                write!(f, "Nexudus refused the token grant (HTTP {status} {error})")
            }
            GrantError::SignIn {
                status,
                error,
                hint,
            } => write!(
                f,
                "Nexudus refused the sign-in (HTTP {status} {error}); {hint}"
            ),
            GrantError::Transient(e) => write!(f, "{e}"),
            GrantError::Store(e) => write!(f, "cannot keep the refresh token: {e}"),
        }
    }
}

impl Classify for GrantError {
    fn verdict(&self) -> Verdict {
        match self {
            GrantError::Transient(e) => e.verdict(),
            GrantError::Refused { .. } | GrantError::SignIn { .. } | GrantError::Store(_) => {
                Verdict::Final
            }
        }
    }

    fn label(&self) -> String {
        match self {
            GrantError::Refused { status, .. } | GrantError::SignIn { status, .. } => {
                status.to_string()
            }
            GrantError::Transient(e) => e.label(),
            GrantError::Store(_) => "store".into(),
        }
    }
}

/// A token answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// An access token in use, with when to renew it.
#[derive(Clone)]
pub struct Access {
    pub token: SecretString,
    renew_at: Instant,
}

impl Access {
    fn fresh(&self) -> bool {
        Instant::now() < self.renew_at
    }
}

/// The token half of the client's state: the current access token and the refresh token.
pub struct TokenAuth {
    pub(super) username: String,
    pub(super) password: SecretString,
    pub(super) totp: Option<SecretString>,
    pub(super) client_id: String,
    store: Option<Store>,
    state: Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    access: Option<Access>,
    /// The refresh token in memory (also in the store, when there is one).
    refresh: Option<SecretString>,
    loaded: bool,
}

/// Which grant to ask for.
pub enum Grant {
    Password,
    Refresh(SecretString),
}

impl Grant {
    pub fn name(&self) -> &'static str {
        match self {
            Grant::Password => "password",
            Grant::Refresh(_) => "refresh_token",
        }
    }
}

impl TokenAuth {
    pub fn new(
        username: String,
        password: SecretString,
        totp: Option<SecretString>,
        client_id: String,
        store: Option<Store>,
    ) -> TokenAuth {
        TokenAuth {
            username,
            password,
            totp,
            client_id,
            store,
            state: Mutex::new(TokenState::default()),
        }
    }

    /// The form fields of `grant` (secrets exposed only into the request body).
    pub fn form(&self, grant: &Grant) -> Vec<(&'static str, String)> {
        match grant {
            Grant::Password => {
                let mut form = vec![
                    ("grant_type", "password".to_string()),
                    ("username", self.username.clone()),
                    ("password", self.password.expose_secret().to_string()),
                ];
                if let Some(totp) = &self.totp {
                    form.push(("totp", totp.expose_secret().to_string()));
                }
                form
            }
            Grant::Refresh(token) => vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", token.expose_secret().to_string()),
            ],
        }
    }

    /// A usable access token, renewing it through `request` when there is none or it is due.
    /// `request` sends one token request and is not retried here: a transient failure is
    /// returned, and the caller's retry policy decides. `stale` is a token the server just
    /// answered 401 to: it is not handed out again.
    pub async fn bearer<F, Fut>(
        &self,
        stale: Option<&SecretString>,
        request: F,
    ) -> Result<SecretString, GrantError>
    where
        F: Fn(Grant) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, GrantError>>,
    {
        let mut state = self.state.lock().await;
        if !state.loaded {
            state.loaded = true;
            if state.refresh.is_none()
                && let Some(store) = &self.store
            {
                // An empty value is a refresh token that was refused and forgotten.
                state.refresh = store
                    .secret(REFRESH_TOKEN_KEY)
                    .map_err(|e| GrantError::Store(e.to_string()))?
                    .filter(|token| !token.is_empty())
                    .map(SecretString::from);
            }
        }
        if let Some(access) = &state.access {
            let same_as_stale =
                stale.is_some_and(|s| s.expose_secret() == access.token.expose_secret());
            if access.fresh() && !same_as_stale {
                return Ok(access.token.clone());
            }
        }
        state.access = None;
        let mut refresh_refused = false;
        let answer = match state.refresh.clone() {
            Some(refresh) => match request(Grant::Refresh(refresh)).await {
                Ok(body) => Ok(body),
                Err(GrantError::Refused { status, error, .. }) => {
                    tracing::warn!(
                        status,
                        %error,
                        "Nexudus refused the stored refresh token; signing in with the password"
                    );
                    // Forgotten in the store too, so the next start does not present it again.
                    state.refresh = None;
                    self.forget_refresh_token().await?;
                    refresh_refused = true;
                    request(Grant::Password).await
                }
                Err(e) => Err(e),
            },
            None => request(Grant::Password).await,
        };
        let answer = answer.map_err(|e| match e {
            GrantError::Refused {
                status,
                error,
                description,
            } => GrantError::SignIn {
                status,
                hint: self.sign_in_hint(&error, description.as_deref(), refresh_refused),
                error,
            },
            e => e,
        })?;
        let answer: TokenAnswer = serde_json::from_slice(&answer).map_err(|e| {
            GrantError::Transient(super::SourceError::Unavailable {
                status: 200,
                content_type: "application/json".into(),
                why: format!("not a token answer: {e}"),
                excerpt: "(not shown: it may hold a token)".into(),
                retry_after: None,
            })
        })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let access = Access {
            token: SecretString::from(answer.access_token),
            renew_at: Instant::now() + renew_after(lifetime),
        };
        if let Some(refresh) = answer.refresh_token.filter(|r| !r.is_empty()) {
            if let Some(store) = &self.store {
                store
                    .set_secret(REFRESH_TOKEN_KEY, &refresh)
                    .map_err(|e| GrantError::Store(e.to_string()))?;
                store
                    .flush()
                    .await
                    .map_err(|e| GrantError::Store(e.to_string()))?;
            }
            state.refresh = Some(SecretString::from(refresh));
        }
        tracing::debug!(
            expires_in = lifetime.as_secs(),
            "Nexudus access token obtained"
        );
        state.access = Some(access.clone());
        Ok(access.token)
    }

    /// Overwrites the stored refresh token with an empty value (read back as none). The store
    /// has no delete for secrets; an empty refresh token is never a valid one anyway.
    async fn forget_refresh_token(&self) -> Result<(), GrantError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        store
            .set_secret(REFRESH_TOKEN_KEY, "")
            .map_err(|e| GrantError::Store(e.to_string()))?;
        store
            .flush()
            .await
            .map_err(|e| GrantError::Store(e.to_string()))
    }

    /// What to tell the operator when the password grant is refused, by Nexudus's error code:
    /// each refusal needs a different fix. A `nexudus.totp` in the config is a one-time code that
    /// goes stale within a minute: it only serves the first sign-in, and is needed again only
    /// when the stored refresh token is refused.
    fn sign_in_hint(
        &self,
        error: &str,
        description: Option<&str>,
        refresh_refused: bool,
    ) -> String {
        let why = if refresh_refused {
            "the stored refresh token was refused (expired, revoked or issued to another \
             nexudus.client_id), so the password grant was needed again and was refused too; "
        } else {
            ""
        };
        let what = match error {
            "two_factor_auth_check" if self.totp.is_some() => {
                "the account signs in with a second factor and the code in nexudus.totp was not \
                 accepted (a code is valid for about 30 seconds): put a fresh code in \
                 nexudus.totp (or nexudus.totp_file) from the authenticator app and start again; \
                 only this sign-in needs it, the refresh token kept in the store carries on after it"
                    .to_string()
            }
            "two_factor_auth_check" => {
                "the account signs in with a second factor: set nexudus.totp (or \
                 nexudus.totp_file) to a fresh code from the authenticator app and start again \
                 with nexudus.auth = \"token\"; only this sign-in needs it, the refresh token \
                 kept in the store carries on after it"
                    .to_string()
            }
            "must_reset_password" => format!(
                "Nexudus wants the API user {:?} to reset its password before the API lets it \
                 in: sign in to Nexudus as that user, choose a new password, and put it in \
                 nexudus.password (or nexudus.password_file)",
                self.username
            ),
            "invalid_grant" if self.totp.is_some() => {
                "wrong username or password, or a stale code: check nexudus.username and \
                 nexudus.password, and put a fresh code in nexudus.totp (a code is valid for \
                 about 30 seconds and is only needed for this sign-in: the refresh token kept in \
                 the store carries on after it)"
                    .to_string()
            }
            "invalid_grant" => "wrong username or password: check nexudus.username and \
                 nexudus.password (and nexudus.totp if the account signs in with a second factor)"
                .to_string(),
            other => format!(
                "Nexudus gave the reason {:?}{}; check the API user in Nexudus (API access \
                 enabled, account active) and nexudus.username / nexudus.password",
                other,
                description.map(|d| format!(" ({d})")).unwrap_or_default()
            ),
        };
        format!("{why}{what}")
    }
}

/// How long after it was issued an access token of `lifetime` is renewed: one minute before it
/// expires, or at 90 % of its lifetime when that is later. A week-long token is thus used for all
/// but its last minute, and a token shorter than ten minutes is not renewed on every request.
pub fn renew_after(lifetime: Duration) -> Duration {
    let early = (lifetime / 10).min(Duration::from_secs(60));
    lifetime.saturating_sub(early)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_one_minute_early_or_at_ninety_percent_whichever_is_later() {
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(renew_after(week), week - Duration::from_secs(60));
        assert_eq!(
            renew_after(Duration::from_secs(600)),
            Duration::from_secs(540)
        );
        assert_eq!(
            renew_after(Duration::from_secs(100)),
            Duration::from_secs(90)
        );
        assert_eq!(
            renew_after(Duration::from_secs(2)),
            Duration::from_millis(1800)
        );
        assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_refused_sign_in_with_a_totp_asks_for_a_fresh_code() {
        let auth = |totp: Option<&str>| {
            TokenAuth::new(
                "u@example.com".into(),
                SecretString::from("pw"),
                totp.map(SecretString::from),
                "u@example.com".into(),
                None,
            )
        };
        let hint = auth(Some("123456")).sign_in_hint("invalid_grant", None, true);
        assert!(hint.contains("stored refresh token was refused"), "{hint}");
        assert!(hint.contains("fresh code in nexudus.totp"), "{hint}");
        assert!(!hint.contains("123456"), "{hint}");
        let hint = auth(None).sign_in_hint("invalid_grant", None, false);
        assert!(!hint.contains("fresh code"), "{hint}");
        assert!(hint.contains("wrong username or password"), "{hint}");
    }

    #[test]
    fn each_refusal_code_says_what_to_do() {
        let auth = TokenAuth::new(
            "u@example.com".into(),
            SecretString::from("pw"),
            None,
            "u@example.com".into(),
            None,
        );
        let hint = |code, d| auth.sign_in_hint(code, d, false);
        assert!(hint("two_factor_auth_check", None).contains("set nexudus.totp"));
        let reset = hint("must_reset_password", None);
        assert!(
            reset.contains("reset its password") && reset.contains("u@example.com"),
            "{reset}"
        );
        let other = hint("account_locked", Some("Too many attempts"));
        assert!(
            other.contains("\"account_locked\" (Too many attempts)"),
            "{other}"
        );
    }
}

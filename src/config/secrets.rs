//! Secrets in the configuration: read inline or from `*_file` into [`SecretString`] (whose
//! `Debug` prints `[REDACTED]`), PEM files checked to hold a PEM block, and the warning for a
//! config file others may read that holds a secret inline.

use std::path::Path;

use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, invalid};

/// Secrets written inline in the file itself (not `*_file`, not the environment).
#[derive(Deserialize, Default)]
struct SecretProbe {
    #[serde(default)]
    nexudus: SecretProbeSection,
    #[serde(default)]
    nevis: SecretProbeSection,
}

#[derive(Deserialize, Default)]
struct SecretProbeSection {
    password: Option<toml_value::Ignored>,
    totp: Option<toml_value::Ignored>,
    token: Option<toml_value::Ignored>,
    oauth_client_secret: Option<toml_value::Ignored>,
}

mod toml_value {
    /// Any value: only its presence matters.
    pub struct Ignored;
    impl<'de> serde::Deserialize<'de> for Ignored {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde::de::IgnoredAny::deserialize(d).map(|_| Ignored)
        }
    }
}

/// A warning naming the config file when others may read it and it holds a secret inline.
#[cfg(unix)]
pub(super) fn exposed_secrets(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o004 == 0 {
        return None;
    }
    let probe: SecretProbe = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_default();
    let mut inline = Vec::new();
    for (section, s) in [("nexudus", &probe.nexudus), ("nevis", &probe.nevis)] {
        for (key, present) in [
            ("password", s.password.is_some()),
            ("totp", s.totp.is_some()),
            ("token", s.token.is_some()),
            ("oauth_client_secret", s.oauth_client_secret.is_some()),
        ] {
            if present {
                inline.push(format!("{section}.{key}"));
            }
        }
    }
    if inline.is_empty() {
        return None;
    }
    Some(format!(
        "config file {} is readable by every user (mode {:o}) and holds {} inline: \
         chmod 600 it, or move the secret to a *_file (systemd credentials, Kubernetes secrets)",
        path.display(),
        mode & 0o777,
        inline.join(", ")
    ))
}

#[cfg(not(unix))]
pub(super) fn exposed_secrets(_path: &Path) -> Option<String> {
    None
}

/// A PEM file's text; checked to hold a PEM block, so a wrong path fails at start-up.
pub(super) fn read_pem(key: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    if !text.contains("-----BEGIN ") {
        return Err(invalid(
            key,
            format!("{} holds no PEM block", path.display()),
        ));
    }
    Ok(text)
}

/// Like [`secret`], but absent is allowed.
pub(super) fn optional_secret(
    key: &str,
    inline: Option<String>,
    file: Option<&Path>,
) -> Result<Option<SecretString>, ConfigError> {
    if inline.is_none() && file.is_none() {
        return Ok(None);
    }
    secret(key, inline, file).map(Some)
}

/// Reads a secret given inline (`key`) or from a file (`key_file`), never both.
pub(super) fn secret(
    key: &str,
    inline: Option<String>,
    file: Option<&Path>,
) -> Result<SecretString, ConfigError> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key,
                format!("set either {key} or {key}_file, not both"),
            ));
        }
        (Some(v), None) => v,
        (None, Some(path)) => read_secret_file(&format!("{key}_file"), path)?,
        (None, None) => {
            return Err(invalid(key, format!("missing: set {key} or {key}_file")));
        }
    };
    if value.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    Ok(SecretString::from(value))
}

/// A `*_file` key's file, without the trailing newline that `echo` and editors add.
fn read_secret_file(file_key: &str, path: &Path) -> Result<String, ConfigError> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| invalid(file_key, format!("cannot read {}: {e}", path.display())))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// A bearer token the daemon wants from its HTTP clients, read from `path` (the value of
/// `file_key`, which every error names). Refused when empty, and when it holds anything but
/// visible ASCII: the token travels in an `Authorization` header, where a space, a control
/// character or a non-ASCII byte would not arrive as written (RFC 6750's token characters are
/// all visible ASCII). The error never quotes the file's text.
pub(super) fn bearer_token_file(file_key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let token = read_secret_file(file_key, path)?;
    if token.is_empty() {
        return Err(invalid(
            file_key,
            format!(
                "{} is empty: put the bearer token in it (or remove {file_key} to leave the \
                 endpoints open)",
                path.display()
            ),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            file_key,
            format!(
                "{} holds a space, a line break or a character outside visible ASCII (after \
                 its one trailing newline): a bearer token must be one word of visible ASCII",
                path.display()
            ),
        ));
    }
    Ok(SecretString::from(token))
}

#[cfg(test)]
mod tests {
    use super::super::testing::MINIMAL;
    use crate::config::Config;
    use secrecy::ExposeSecret;

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2-nexudus"), "{dbg}");
        assert!(!dbg.contains("tok-secret-nevis"), "{dbg}");
    }

    #[test]
    fn secrets_come_from_files_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file-token\n").unwrap();
        let toml = MINIMAL.replace(
            "token = \"tok-secret-nevis\"",
            &format!("token_file = {:?}", file.display().to_string()),
        );
        let c = Config::from_toml_str(&toml).unwrap();
        assert_eq!(
            c.nevis.token.as_ref().unwrap().expose_secret(),
            "from-file-token"
        );
    }

    #[test]
    fn the_daemons_bearer_token_comes_from_its_file_and_an_empty_one_is_refused() {
        use super::super::testing::err;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("http-auth-token");
        let with = |text: &str| {
            std::fs::write(&file, text).unwrap();
            format!(
                "{MINIMAL}\n[http]\nauth_token_file = {:?}\n",
                file.display().to_string()
            )
        };
        let off = Config::from_toml_str(MINIMAL).unwrap();
        assert!(
            off.http.auth_token.is_none(),
            "no token unless the key is set"
        );
        for (text, token) in [
            ("Zm9v.YmFy-42_~+/=\n", "Zm9v.YmFy-42_~+/="),
            ("crlf-token\r\n", "crlf-token"),
            ("no-newline", "no-newline"),
        ] {
            let c = Config::from_toml_str(&with(text)).unwrap();
            assert_eq!(c.http.auth_token.as_ref().unwrap().expose_secret(), token);
            assert!(!format!("{c:?}").contains(token), "redacted in Debug");
        }
        for (text, why) in [
            ("", "is empty"),
            ("\n", "is empty"),
            ("\r\n", "is empty"),
            ("two words-secret\n", "one word of visible ASCII"),
            ("line-secret\n\n", "one word of visible ASCII"),
            ("tab\tsecret", "one word of visible ASCII"),
            ("caf\u{e9}-secret", "one word of visible ASCII"),
        ] {
            let e = err(&with(text));
            assert!(
                e.contains("`http.auth_token_file`") && e.contains(why),
                "{text:?}: {e}"
            );
            assert!(!e.contains("secret"), "the error quotes no token: {e}");
        }
        let missing = MINIMAL.to_string() + "\n[http]\nauth_token_file = \"/nonexistent/token\"\n";
        let e = err(&missing);
        assert!(
            e.contains("`http.auth_token_file`") && e.contains("cannot read /nonexistent/token"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_config_with_an_inline_secret_is_named_in_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert!(w.contains(&path.display().to_string()), "{w}");
        assert!(
            w.contains("nexudus.password") && w.contains("nevis.token"),
            "{w}"
        );
        assert!(!w.contains("hunter2") && !w.contains("tok-secret"), "{w}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&path).unwrap().warnings.is_empty());
        // World-readable but every secret in a file: nothing to warn about.
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "x").unwrap();
        let text = MINIMAL
            .replace(
                "password = \"hunter2-nexudus\"",
                &format!("password_file = {:?}", secret.display().to_string()),
            )
            .replace(
                "token = \"tok-secret-nevis\"",
                &format!("token_file = {:?}", secret.display().to_string()),
            );
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Config::load(&path).unwrap().warnings.is_empty());
    }
}

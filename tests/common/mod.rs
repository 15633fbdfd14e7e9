//! Shared set-up for the integration tests: both sandbox fakes on 127.0.0.1, a config file in a
//! temporary directory, and a way to run the real binary against them with a time limit.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use nexudus_nevis_sync::sandbox::{
    FakeNevis, FakeNexudus, FakeOAuth, NevisFakeConfig, NexudusFakeConfig, NexudusUserSpec,
};
use tempfile::TempDir;
use tokio::process::Command;

pub mod tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_nexudus-nevis-sync");
/// No single run in these tests may take longer than this.
pub const RUN_LIMIT: Duration = Duration::from_secs(90);

pub struct Env {
    pub nexudus: FakeNexudus,
    pub nevis: FakeNevis,
    pub dir: TempDir,
    pub config: PathBuf,
    keys: Mutex<BTreeMap<String, String>>,
}

pub fn quote(s: &str) -> String {
    format!("{s:?}")
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The value of `key=` in the summary line.
    pub fn count(&self, key: &str) -> u64 {
        let line = self
            .stdout
            .lines()
            .find(|l| l.contains("summary:"))
            .unwrap_or_else(|| {
                panic!(
                    "no summary line in stdout:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            });
        let prefix = format!("{key}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .parse()
            .unwrap_or_else(|_| panic!("{key} not a number in {line}"))
    }

    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Env {
    /// Fakes with default settings and a config that retries quickly.
    pub async fn start() -> Env {
        let (nexudus, nevis) = nexudus_nevis_sync::sandbox::start_both()
            .await
            .expect("start the fakes");
        Env::with_fakes(nexudus, nevis).await
    }

    /// Like [`Env::start`], with fakes the test configured itself.
    pub async fn with_fakes(nexudus: FakeNexudus, nevis: FakeNevis) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.toml");
        let nx = NexudusFakeConfig::default();
        let nv = NevisFakeConfig::default();
        let store = dir.path().join("store").display().to_string();
        let mut keys = BTreeMap::new();
        for (k, v) in [
            ("nexudus.base_url", quote(&nexudus.base_url())),
            ("nexudus.username", quote(&nx.username)),
            ("nexudus.password", quote(&nx.password)),
            ("nexudus.page_size", "100".into()),
            ("nevis.base_url", quote(&nevis.base_url())),
            ("nevis.client_ext_id", quote(&nv.client_ext_id)),
            ("nevis.token", quote(&nv.token)),
            ("sync.concurrency", "4".into()),
            ("retry.initial_delay", quote("20ms")),
            ("retry.max_delay", quote("200ms")),
            ("retry.max_elapsed", quote("10s")),
            ("retry.max_attempts", "5".into()),
            ("store.path", quote(&store)),
        ] {
            keys.insert(k.to_string(), v);
        }
        let env = Env {
            nexudus,
            nevis,
            config,
            dir,
            keys: Mutex::new(keys),
        };
        env.write_config();
        env
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Sets `section.key` to a TOML literal (`"\"text\""`, `3`, `true`) and rewrites the file.
    pub fn set(&self, key: &str, toml_value: &str) {
        self.keys
            .lock()
            .unwrap()
            .insert(key.to_string(), toml_value.to_string());
        self.write_config();
    }

    /// Removes `section.key` and rewrites the file.
    pub fn unset(&self, key: &str) {
        self.keys.lock().unwrap().remove(key);
        self.write_config();
    }

    /// Authenticates to nevisIDM with OAuth2 client credentials from the fake's token endpoint
    /// (instead of the static token), turning the endpoint on with `oauth`.
    pub fn use_oauth(&self, oauth: FakeOAuth) {
        self.unset("nevis.token");
        self.set("nevis.oauth_token_url", &quote(&self.nevis.token_url()));
        self.set("nevis.oauth_client_id", &quote(&oauth.client_id));
        self.set("nevis.oauth_client_secret", &quote(&oauth.client_secret));
        self.nevis.enable_oauth(oauth);
    }

    fn write_config(&self) {
        let keys = self.keys.lock().unwrap();
        let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (k, v) in keys.iter() {
            let (section, key) = k.split_once('.').expect("keys are section.key");
            sections
                .entry(section)
                .or_default()
                .push(format!("{key} = {v}"));
        }
        let text: String = sections
            .iter()
            .map(|(s, lines)| format!("[{s}]\n{}\n", lines.join("\n")))
            .collect();
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("RUST_LOG");
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs `--sync-now` with extra args to completion.
    pub async fn sync(&self, args: &[&str]) -> Run {
        let mut all = vec!["--sync-now"];
        all.extend_from_slice(args);
        run_cmd(self.command(&all)).await
    }

    /// Adds `n` valid users named "First{i} Last{i}" and returns their Ids.
    pub fn seed(&self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| {
                self.nexudus.insert_user(NexudusUserSpec::new(
                    format!("First{i} Last{i}"),
                    format!("User.{i}@Example.com"),
                ))
            })
            .collect()
    }

    pub fn writes(&self) -> u64 {
        let s = self.nevis.stats();
        s.creates + s.patches
    }
}

pub async fn run_cmd(mut cmd: Command) -> Run {
    let out = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .expect("run finished within the limit")
        .expect("binary started");
    Run::from(out)
}

/// A PATCH body without its `version` (every PATCH carries one; `tests/nevis_field.rs` checks
/// which), so that the fields can be compared.
pub fn without_version(mut body: serde_json::Value) -> serde_json::Value {
    let version = body.as_object_mut().and_then(|b| b.remove("version"));
    assert!(
        version.as_ref().is_some_and(serde_json::Value::is_i64),
        "a PATCH carries the version: {body}"
    );
    body
}

//! Shared set-up for the integration tests: both sandbox fakes on 127.0.0.1, a config file in a
//! temporary directory, a way to run the real binary against them with a time limit, and the
//! daemon on a port of its own choosing.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexudus_nevis_sync::clock::Clock;
use nexudus_nevis_sync::config::Config;
use nexudus_nevis_sync::metrics::Metrics;
use nexudus_nevis_sync::nevis::NevisClient;
use nexudus_nevis_sync::nexudus::NexudusClient;
use nexudus_nevis_sync::report::RunReport;
use nexudus_nevis_sync::sandbox::{
    FakeNevis, FakeNexudus, FakeOAuth, NevisFakeConfig, NexudusFakeConfig, NexudusUserSpec,
};
use nexudus_nevis_sync::store::Store;
use nexudus_nevis_sync::sync::{RunOptions, run_once};
use tempfile::TempDir;
use tokio::process::{Child, Command};

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

/// A pre-existing nevisIDM user this tool did not create (adoption's candidates).
pub fn legacy(ext_id: &str, login: &str, email: &str) -> serde_json::Value {
    serde_json::json!({
        "extId": ext_id,
        "loginId": login,
        "userState": "active",
        "languageCode": "de",
        "name": { "firstName": "Legacy", "familyName": "Account" },
        "contacts": { "email": email },
    })
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

/// The fake Nexudus with its short windows off (no limit a second or a minute, no gap between
/// requests); the hour and the day keep their documented limits, which no test reaches by
/// accident. Pacing is not what most tests are about, and paced as documented a listing of 30
/// pages takes 15 s: a test of pacing opts back in with [`Env::start_paced`] or
/// [`Env::pace_as_documented`].
pub fn loose_nexudus() -> NexudusFakeConfig {
    NexudusFakeConfig {
        per_second_limit: None,
        per_minute_limit: None,
        min_gap: None,
        ..NexudusFakeConfig::default()
    }
}

/// The client's pacing keys [`Env`] loosens to match [`loose_nexudus`], with their loose values.
const LOOSE_PACING: [(&str, &str); 2] = [
    ("nexudus.min_request_interval", "\"0s\""),
    ("nexudus.max_requests_per_minute", "1000000"),
];

impl Env {
    /// Fakes with default settings but loose pacing ([`loose_nexudus`]), and a config that
    /// retries quickly and paces as loosely.
    pub async fn start() -> Env {
        Env::with_nexudus(loose_nexudus()).await
    }

    /// Fakes enforcing Nexudus's documented limits and a client pacing by its defaults: for the
    /// tests of pacing.
    pub async fn start_paced() -> Env {
        let (nexudus, nevis) = nexudus_nevis_sync::sandbox::start_both()
            .await
            .expect("start the fakes");
        let env = Env::with_fakes(nexudus, nevis).await;
        env.pace_as_documented();
        env
    }

    /// A fake Nexudus configured by the test (start from [`loose_nexudus`] unless pacing is
    /// tested) and a default fake nevisIDM; the client paces loosely.
    pub async fn with_nexudus(cfg: NexudusFakeConfig) -> Env {
        let nexudus = FakeNexudus::start(cfg)
            .await
            .expect("start the fake Nexudus");
        let nevis = FakeNevis::start(NevisFakeConfig::default())
            .await
            .expect("start the fake nevisIDM");
        Env::with_fakes(nexudus, nevis).await
    }

    /// Back to the client's default pacing (Nexudus's documented limits with a margin).
    pub fn pace_as_documented(&self) {
        for (key, _) in LOOSE_PACING {
            self.unset(key);
        }
    }

    /// Like [`Env::start`], with fakes the test configured itself; the client paces loosely.
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
        for (k, v) in LOOSE_PACING {
            keys.insert(k.to_string(), v.to_string());
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

    /// One full run through the library instead of the binary, with the store keeping time by
    /// `clock`: for what depends on the store's clock (a test moves it instead of waiting). The
    /// same config, store and real HTTP clients as `--sync-now`.
    pub async fn run_in_process(&self, clock: &Clock) -> RunReport {
        self.run_in_process_with(clock, RunOptions::default()).await
    }

    /// An incremental run (`--sync-now --incremental`) through the library, as
    /// [`Env::run_in_process`].
    pub async fn run_incremental_in_process(&self, clock: &Clock) -> RunReport {
        let opts = RunOptions {
            incremental: true,
            ..RunOptions::default()
        };
        self.run_in_process_with(clock, opts).await
    }

    /// A run with `opts` (a reconcile, say) through the library, as [`Env::run_in_process`].
    pub async fn run_in_process_with(&self, clock: &Clock, opts: RunOptions) -> RunReport {
        let config = Config::load(&self.config).expect("the test config loads");
        let store = open_when_free(&config.store.path, config.store.cache_capacity_bytes)
            .await
            .with_clock(clock.clone());
        let metrics = Arc::new(Metrics::new());
        let source = NexudusClient::new(
            &config.nexudus,
            config.retry.clone(),
            Arc::clone(&metrics),
            Some(store.clone()),
        )
        .expect("Nexudus client");
        let target =
            NevisClient::new(&config.nevis, config.retry.clone(), metrics).expect("nevis client");
        let report = tokio::time::timeout(
            RUN_LIMIT,
            run_once(&config, Arc::new(source), Arc::new(target), &store, &opts),
        )
        .await
        .expect("run finished within the limit")
        .expect("the run is not fatal");
        store.flush().await.expect("flush the store");
        drop(store);
        store_released(&config.store.path).await;
        report
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

/// Upper bound for anything a test waits on from the daemon.
pub const DAEMON_WAIT: Duration = Duration::from_secs(40);

/// The address in the daemon's start-up line (`serving /healthz …`), pretty (`listen=ADDR`) or
/// JSON (`"listen":"ADDR"`).
pub fn logged_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("serving /healthz"))
        .find_map(|line| {
            let pretty = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("listen="));
            let json = line
                .split_once("\"listen\":\"")
                .and_then(|(_, rest)| rest.split('"').next());
            pretty.or(json)?.parse().ok()
        })
}

/// Waits until the daemon `child`, logging to `log`, names the address it bound (`http.listen`
/// with port 0); fails at once if it exits, and after [`DAEMON_WAIT`].
pub async fn bound_address(child: &mut Child, log: &Path) -> SocketAddr {
    let deadline = Instant::now() + DAEMON_WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = logged_address(&text) {
            return addr;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the daemon exited ({status}) before it listened:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "the daemon named no address within {DAEMON_WAIT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the daemon answered to [`Daemon::get_authorized`].
#[derive(Debug, Default)]
pub struct Answer {
    pub status: u16,
    /// `WWW-Authenticate`, if any.
    pub challenge: Option<String>,
    pub body: String,
}

/// The real daemon against an [`Env`]: on a one-second schedule unless told otherwise, its HTTP
/// endpoints on a port it chose itself (`http.listen` port 0, the address read from its log), its
/// log in `daemon.log` next to the config.
pub struct Daemon {
    child: Mutex<Child>,
    /// `http://ADDR`, the endpoints' base.
    pub base: String,
    /// Where the endpoints listen.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    pub async fn start(env: &Env) -> Daemon {
        Daemon::start_on(env, "*/1 * * * * *").await
    }

    /// Starts the daemon on `schedule` and waits until `/healthz` answers.
    pub async fn start_on(env: &Env, schedule: &str) -> Daemon {
        env.set("http.listen", &quote("127.0.0.1:0"));
        env.set("sync.schedule", &quote(schedule));
        // The daemon's logs go to a file, so test output stays readable.
        let log = env.dir.path().join("daemon.log");
        let mut child = env
            .command(&[])
            .stderr(std::fs::File::create(&log).expect("log file"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start daemon");
        let addr = bound_address(&mut child, &log).await;
        let daemon = Daemon {
            child: Mutex::new(child),
            base: format!("http://{addr}"),
            addr,
            log,
        };
        daemon
            .wait_for("the daemon to answer /healthz", |d| async move {
                d.get("/healthz").await.0 == 200
            })
            .await;
        daemon
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`: status and body, `(0, "")` when nothing answered.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let answer = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// GET `path` with `authorization` as the `Authorization` header (none when `None`): the
    /// status, the `WWW-Authenticate` challenge and the body; status 0 when nothing answered.
    pub async fn get_authorized(&self, path: &str, authorization: Option<&str>) -> Answer {
        let mut request = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(5));
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let Ok(response) = request.send().await else {
            return Answer::default();
        };
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        Answer {
            status: response.status().as_u16(),
            challenge,
            body: response.text().await.unwrap_or_default(),
        }
    }

    /// Polls `check` every 50 ms until it holds; fails (with the daemon's log) if the daemon
    /// exits, and after [`DAEMON_WAIT`].
    pub async fn wait_for<'a, F, Fut>(&'a self, what: &str, check: F)
    where
        F: Fn(&'a Daemon) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + DAEMON_WAIT;
        while Instant::now() < deadline {
            if check(self).await {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "the daemon exited ({status}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}; the daemon's log:\n{}",
            self.log()
        );
    }

    /// Polls `path` until its body satisfies `check`, and answers that body.
    pub async fn wait_for_body(&self, path: &str, check: impl Fn(&str) -> bool) -> String {
        let found = Mutex::new(String::new());
        self.wait_for(path, |d| {
            let (check, found) = (&check, &found);
            async move {
                let (_, body) = d.get(path).await;
                let ok = check(&body);
                *found.lock().unwrap() = body;
                ok
            }
        })
        .await;
        found.into_inner().unwrap()
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    pub fn sigterm(&self) {
        let pid = self
            .child
            .lock()
            .unwrap()
            .id()
            .expect("daemon still running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {pid}");
    }

    /// Waits for the daemon to exit (after [`Daemon::sigterm`]) and answers its exit code.
    pub async fn exit_code(self, within: Duration) -> i32 {
        let mut child = self.child.into_inner().unwrap();
        let status = tokio::time::timeout(within, child.wait())
            .await
            .expect("daemon exited in time")
            .expect("wait for daemon");
        status.code().unwrap_or(-1)
    }

    /// SIGTERM, then waits (bounded) for the daemon to be gone, and answers its whole log; the
    /// exit code is not checked.
    pub async fn stop(self) -> String {
        if self.exited().is_none() {
            self.sigterm();
        }
        let mut child = self.child.into_inner().unwrap();
        let _ = tokio::time::timeout(DAEMON_WAIT, child.wait()).await;
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Opens the store at `path` once the run before (in this process) let go of it: sled releases
/// its file lock when its background threads drop the database, a moment after the store is
/// dropped. Bounded: 5 s, then the error.
pub async fn open_when_free(path: &std::path::Path, cache: u64) -> Store {
    for _ in 0..250 {
        match Store::open(path, cache) {
            Ok(store) => return store,
            Err(nexudus_nevis_sync::store::StoreError::InUse { .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open the store: {e}"),
        }
    }
    Store::open(path, cache).expect("the store is free within 5 s")
}

/// Waits until no handle of this process holds the store at `path` any more (sled lets go of its
/// file lock a moment after the last handle is dropped), so that the binary run next can open
/// it. Bounded: 5 s, then a failure.
pub async fn store_released(path: &std::path::Path) {
    let db = path.join("db");
    for _ in 0..250 {
        let free = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db)
            .map_or(true, |file| file.try_lock().is_ok());
        if free {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the store at {} is still held after 5 s", path.display());
}

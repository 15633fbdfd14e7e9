//! The floor of the fakes: a trivial client sending the requests the sync sends — the Nexudus
//! pages (paced like the sync, 110 ms apart), a create for each user as its page arrives, then a
//! PATCH with a version for each — at the same concurrency, against a fresh nevisIDM fake with the
//! same latency, in the same benchmark run, from a process of its own (as the sync's). What no sync can beat on these fakes and this machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexudus_nevis_sync::sandbox::{FakeNevis, FakeNexudus, NevisFakeConfig, NexudusFakeConfig};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Default)]
pub struct Floor {
    pub import: Duration,
    pub mass_update: Duration,
}

/// Runs the trivial client in a process of its own (this benchmark's binary with
/// `--floor-client`), as the sync runs in one, against a fresh nevisIDM fake.
pub async fn measure(
    nexudus: &FakeNexudus,
    latency: Duration,
    concurrency: usize,
    page_size: u32,
) -> Floor {
    let nevis = FakeNevis::start(NevisFakeConfig::default())
        .await
        .expect("start a fresh nevisIDM fake");
    nevis.set_request_log(false);
    nevis.set_latency(latency);
    nevis.set_version_required(true);
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let args = [
        "--floor-client".to_string(),
        nexudus.base_url(),
        nevis.base_url(),
        concurrency.to_string(),
        page_size.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(args)
            .stderr(std::process::Stdio::inherit())
            .output()
    })
    .await
    .expect("floor client runner")
    .expect("start the floor client");
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(secs.len(), 2, "floor client said: {text}");
    assert_eq!(
        nevis.stats().creates,
        nevis.stats().patches,
        "the trivial client's creates and PATCHes all landed"
    );
    Floor {
        import: Duration::from_secs_f64(secs[0]),
        mass_update: Duration::from_secs_f64(secs[1]),
    }
}

/// The child's side (`--floor-client NEXUDUS_URL NEVIS_URL CONCURRENCY PAGE_SIZE`): prints the
/// import's and the mass update's seconds.
pub fn client_main(args: &[String]) {
    let [nexudus, nevis, concurrency, page_size] = args else {
        panic!("--floor-client NEXUDUS_URL NEVIS_URL CONCURRENCY PAGE_SIZE");
    };
    let concurrency: usize = concurrency.parse().expect("concurrency");
    let page_size: u32 = page_size.parse().expect("page size");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (import, mass_update) = runtime.block_on(client(nexudus, nevis, concurrency, page_size));
    println!(
        "{:.3} {:.3}",
        import.as_secs_f64(),
        mass_update.as_secs_f64()
    );
}

async fn client(
    nexudus: &str,
    nevis: &str,
    concurrency: usize,
    page_size: u32,
) -> (Duration, Duration) {
    let cfg = NevisFakeConfig::default();
    let users_url = format!("{nevis}/nevisidm/api/core/v1/{}/users", cfg.client_ext_id);
    let http = reqwest::Client::new();
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut ext_ids = Vec::new();

    let started = Instant::now();
    // Pages are read ahead (two at most) while the creates of the current one go out, as the
    // sync does.
    let (pages_tx, mut pages) = tokio::sync::mpsc::channel::<Vec<Value>>(2);
    let reader = {
        let (http, nexudus) = (http.clone(), nexudus.to_string());
        tokio::spawn(async move {
            for page in 1u32.. {
                let (records, more) = nexudus_page(&http, &nexudus, page, page_size).await;
                if pages_tx.send(records).await.is_err() || !more {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(110)).await;
            }
        })
    };
    while let Some(records) = pages.recv().await {
        for record in records {
            let body = create_body(&record);
            ext_ids.push(body["extId"].as_str().unwrap_or_default().to_string());
            let request = http.post(&users_url).bearer_auth(&cfg.token).json(&body);
            spawn(&mut tasks, &permits, request).await;
        }
    }
    let _ = reader.await;
    while tasks.join_next().await.is_some() {}
    let import = started.elapsed();

    let started = Instant::now();
    for ext_id in &ext_ids {
        let body = json!({"version": 0, "properties": {"source": "nexudus"}});
        let request = http
            .patch(format!("{users_url}/{ext_id}"))
            .bearer_auth(&cfg.token)
            .json(&body);
        spawn(&mut tasks, &permits, request).await;
    }
    while tasks.join_next().await.is_some() {}
    (import, started.elapsed())
}

async fn spawn(
    tasks: &mut JoinSet<()>,
    permits: &Arc<Semaphore>,
    request: reqwest::RequestBuilder,
) {
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .expect("never closed");
    tasks.spawn(async move {
        let _ = request.send().await.and_then(|r| r.error_for_status());
        drop(permit);
    });
}

async fn nexudus_page(
    http: &reqwest::Client,
    nexudus: &str,
    page: u32,
    size: u32,
) -> (Vec<Value>, bool) {
    let nx = NexudusFakeConfig::default();
    let mut throttles = 0;
    let answer = loop {
        let answer = http
            .get(format!("{nexudus}/api/sys/users"))
            .query(&[("page", page.to_string()), ("size", size.to_string())])
            .query(&[("orderBy", "Id")])
            .basic_auth(&nx.username, Some(&nx.password))
            .send()
            .await
            .expect("a Nexudus page");
        // A throttle (the fake enforces Nexudus's limits): wait as told, a bounded number of times.
        if answer.status().as_u16() == 409 && throttles < 120 {
            throttles += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        break answer;
    };
    let doc: Value = answer
        .error_for_status()
        .expect("a Nexudus page")
        .json()
        .await
        .expect("a Nexudus page as JSON");
    let records = doc["Records"].as_array().cloned().unwrap_or_default();
    (records, doc["HasNextPage"].as_bool().unwrap_or(false))
}

fn create_body(record: &Value) -> Value {
    let email = record["Email"].as_str().unwrap_or_default().trim();
    let name = record["FullName"].as_str().unwrap_or_default();
    let (first, last) = name.rsplit_once(' ').unwrap_or((name, name));
    json!({
        "extId": format!("nexudus-{}", record["Id"]),
        "loginId": email.to_lowercase(),
        "name": {"firstName": first, "familyName": last},
        "contacts": {"email": email},
        "languageCode": "en",
        "userState": if record["Active"] == json!(false) { "disabled" } else { "active" },
    })
}

//! The floor of the fakes: a trivial client sending the requests the sync sends — the Nexudus
//! pages (paced like the sync, 110 ms apart), a create for each user as its page arrives, then a
//! PATCH with a version for each — at the same concurrency, against a fresh nevisIDM fake with the
//! same latency, in the same process run. What no sync can beat on these fakes and this machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexudus_nevis_sync::sandbox::{FakeNevis, FakeNexudus, NevisFakeConfig, NexudusFakeConfig};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub struct Floor {
    pub import: Duration,
    pub mass_update: Duration,
}

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
    let cfg = NevisFakeConfig::default();
    let users_url = format!(
        "{}/nevisidm/api/core/v1/{}/users",
        nevis.base_url(),
        cfg.client_ext_id
    );
    let http = reqwest::Client::new();
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut ext_ids = Vec::new();

    let started = Instant::now();
    for page in 1u32.. {
        let (records, more) = nexudus_page(&http, nexudus, page, page_size).await;
        for record in records {
            let body = create_body(&record);
            ext_ids.push(body["extId"].as_str().unwrap_or_default().to_string());
            let request = http.post(&users_url).bearer_auth(&cfg.token).json(&body);
            spawn(&mut tasks, &permits, request).await;
        }
        if !more {
            break;
        }
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
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
    let mass_update = started.elapsed();
    assert_eq!(
        nevis.stats().patches as usize,
        ext_ids.len(),
        "the trivial client's PATCHes all landed"
    );
    Floor {
        import,
        mass_update,
    }
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
    nexudus: &FakeNexudus,
    page: u32,
    size: u32,
) -> (Vec<Value>, bool) {
    let nx = NexudusFakeConfig::default();
    let mut throttles = 0;
    let answer = loop {
        let answer = http
            .get(format!("{}/api/sys/users", nexudus.base_url()))
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

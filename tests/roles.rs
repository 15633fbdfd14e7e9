//! Roles (issue 21) over HTTP: the real binary against the fakes. The sync owns exactly the
//! mapped roleExtIds: it grants what Nexudus UserRoles imply, revokes what they no longer imply,
//! and leaves hand grants and the profile policy's default roles alone.

mod common;

use common::{Env, Run, run_cmd};
use nexudus_nevis_sync::clock::Clock;

/// Roles that exist in the fake nevisIDM: two owned, one granted by hand, one the policy's.
const ROLES: [&str; 4] = ["frontdesk", "finance", "vip", "basic"];

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

fn all(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// Three users, a "Receptionist" UserRole holding the first two, `frontdesk` and `finance`
/// mapped, a policy default role `basic`; nothing synced yet.
async fn env() -> (Env, Vec<u64>, u64) {
    let env = Env::start().await;
    env.nevis.add_roles(&ROLES);
    env.nevis.set_policy_default_role(Some("basic"));
    env.nevis.set_request_log(true);
    let ids = env.seed(3);
    let role = env
        .nexudus
        .add_user_role(1, "Main Street", "Receptionist", &ids[..2]);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}, {nexudus = "Finance Admin", nevis = ["finance"]}]"#,
    );
    env.nexudus
        .add_user_role(1, "Main Street", "Finance Admin", &[]);
    // Three users: one losing a role is a third of them; the percentage is not under test here.
    env.set("roles.max_revoke_percent", "100");
    (env, ids, role)
}

fn nevis_role_requests(env: &Env) -> Vec<String> {
    env.nevis
        .request_log()
        .into_iter()
        .filter(|r| {
            r.path.contains("/profiles")
                || r.path.contains("/roles/")
                || r.path.contains("/permissions")
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn without_a_map_no_request_about_roles_reaches_either_api() {
    let (env, _, _) = env().await;
    env.unset("roles.map");
    env.sync(&[]).await.assert_code(0);
    env.sync(&["--incremental"]).await.assert_code(0);
    let nexudus: Vec<_> = env
        .nexudus
        .request_log()
        .into_iter()
        .filter(|r| r.path.contains("userroles"))
        .collect();
    assert!(nexudus.is_empty(), "{nexudus:?}");
    assert_eq!(nevis_role_requests(&env), Vec::<String>::new());
}

#[tokio::test]
async fn members_are_granted_leavers_revoked_foreign_and_policy_roles_untouched() {
    let (env, ids, role) = env().await;
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("granted"), run.count("revoked")), (2, 0));
    assert_eq!(env.nevis.user_roles(&ext(ids[0])), ["basic", "frontdesk"]);
    assert_eq!(env.nevis.user_roles(&ext(ids[2])), ["basic"]);
    env.nevis.grant_by_hand(&ext(ids[0]), "vip");

    env.nexudus.set_role_members(role, &[ids[0]]);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("granted"), run.count("revoked")), (0, 1));
    assert_eq!(
        env.nevis.user_roles(&ext(ids[1])),
        ["basic"],
        "revoked, the policy's stays"
    );
    assert_eq!(
        env.nevis.user_roles(&ext(ids[0])),
        ["basic", "frontdesk", "vip"],
        "a hand grant is not the sync's"
    );

    // Nothing changed: nothing written, and no authorization read from nevisIDM.
    env.nevis.clear_request_log();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!((run.count("granted"), run.count("revoked")), (0, 0));
    let reads: Vec<_> = nevis_role_requests(&env)
        .into_iter()
        .filter(|r| r.contains("authorizations") || r.contains("/profiles"))
        .collect();
    assert!(reads.is_empty(), "{reads:?}");
}

#[tokio::test]
async fn a_name_held_by_several_userroles_or_by_none_is_fatal_naming_the_candidates() {
    let (env, _, _) = env().await;
    let other = env.nexudus.add_user_role(2, "Harbour", "Receptionist", &[]);
    let run = env.sync(&[]).await;
    run.assert_code(2);
    let text = all(&run);
    assert!(
        text.contains("\"Receptionist\"") && text.contains(&format!("id:{other}")),
        "{text}"
    );
    assert!(text.contains("Harbour") && text.contains("id:"), "{text}");
    assert!(env.nevis.user_roles(&ext(1)).is_empty());

    env.set(
        "roles.map",
        r#"[{nexudus = "Janitor", nevis = ["frontdesk"]}]"#,
    );
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(all(&run).contains("\"Janitor\""), "{}", all(&run));

    // id: picks one of the two.
    env.set(
        "roles.map",
        &format!(r#"[{{nexudus = "id:{other}", nevis = ["frontdesk"]}}]"#),
    );
    env.sync(&[]).await.assert_code(0);
}

#[tokio::test]
async fn an_unknown_role_ext_id_or_a_missing_permission_is_fatal_naming_it() {
    let (env, _, _) = env().await;
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["nosuchrole"]}]"#,
    );
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(all(&run).contains("nosuchrole"), "{}", all(&run));

    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}]"#,
    );
    env.nevis.set_permissions(Some(&[
        "AccessControl.AuthorizationView",
        "AccessControl.AuthorizationCreate",
        "AccessControl.ProfileView",
    ]));
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(
        all(&run).contains("AccessControl.AuthorizationDelete"),
        "{}",
        all(&run)
    );
}

#[tokio::test]
async fn without_the_permissions_endpoint_it_says_so_once_and_goes_on() {
    let (env, ids, _) = env().await;
    env.nevis.set_permissions(None);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("granted"), 2);
    assert_eq!(
        all(&run).matches("/principal/v1/permissions").count(),
        1,
        "{}",
        all(&run)
    );
    assert_eq!(env.nevis.user_roles(&ext(ids[1])), ["basic", "frontdesk"]);
}

#[tokio::test]
async fn a_user_without_a_profile_fails_naming_the_key_or_gets_one_in_the_unit() {
    let (env, ids, _) = env().await;
    env.nevis.set_default_profile(false);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert!(
        run.stdout.contains("roles.profile_unit_ext_id"),
        "{}",
        run.stdout
    );
    assert_eq!(run.count("granted"), 0);

    env.set("roles.profile_unit_ext_id", "\"members\"");
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("granted"), 2);
    let profiles = env.nevis.profiles_of(&ext(ids[0]));
    assert_eq!(profiles.len(), 1, "{profiles:?}");
    assert_eq!(profiles[0].1, "members");
    assert_eq!(env.nevis.user_roles(&ext(ids[0])), ["basic", "frontdesk"]);
}

#[tokio::test]
async fn a_duplicate_grant_counts_as_granted_whether_refused_or_accepted() {
    for accept in [false, true] {
        let (env, ids, _) = env().await;
        env.nevis.set_accept_duplicate_grants(accept);
        env.sync(&["--dry-run"]).await.assert_code(0);
        // Users exist after a first run without the map; then the role is granted by hand.
        env.unset("roles.map");
        env.sync(&[]).await.assert_code(0);
        env.nevis.grant_by_hand(&ext(ids[0]), "frontdesk");
        env.set(
            "roles.map",
            r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}]"#,
        );
        let run = env.sync(&[]).await;
        run.assert_code(0);
        assert_eq!(run.count("granted"), 2, "accept={accept}");
        assert_eq!(
            env.nevis.user_roles(&ext(ids[0])),
            ["basic", "frontdesk"],
            "accept={accept}"
        );
    }
}

#[tokio::test]
async fn mass_revocation_is_held_until_approved_for_one_run() {
    let (env, ids, role) = env().await;
    env.set("roles.max_revokes", "1");
    env.sync(&[]).await.assert_code(0);
    // Two of three users losing a role is beyond max_revokes = 1 (and 10 % of 3 users).
    env.set("roles.max_revoke_percent", "10");
    env.nexudus.set_role_members(role, &[]);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!((run.count("revoked"), run.count("held_revokes")), (0, 2));
    assert!(
        run.stdout.contains("--allow-mass-disable"),
        "{}",
        run.stdout
    );
    assert_eq!(env.nevis.user_roles(&ext(ids[0])), ["basic", "frontdesk"]);

    let run = env.sync(&["--allow-mass-disable"]).await;
    run.assert_code(0);
    assert_eq!((run.count("revoked"), run.count("held_revokes")), (2, 0));
    assert_eq!(env.nevis.user_roles(&ext(ids[0])), ["basic"]);
}

#[tokio::test]
async fn reconcile_repairs_owned_roles_only() {
    let (env, ids, _) = env().await;
    env.sync(&[]).await.assert_code(0);
    env.nevis.revoke_by_hand(&ext(ids[0]), "frontdesk");
    env.nevis.grant_by_hand(&ext(ids[2]), "vip");
    env.nevis.grant_by_hand(&ext(ids[2]), "finance");
    // An ordinary run trusts its checkpoint.
    let run = env.sync(&[]).await;
    assert_eq!((run.count("granted"), run.count("revoked")), (0, 0));

    let run = env.sync(&["--reconcile"]).await;
    run.assert_code(0);
    assert_eq!((run.count("granted"), run.count("revoked")), (1, 1));
    assert_eq!(env.nevis.user_roles(&ext(ids[0])), ["basic", "frontdesk"]);
    assert_eq!(
        env.nevis.user_roles(&ext(ids[2])),
        ["basic", "vip"],
        "the owned finance goes, vip stays"
    );
}

#[tokio::test]
async fn dry_run_prints_the_role_plan_and_writes_nothing() {
    let (env, ids, _) = env().await;
    env.unset("roles.map");
    env.sync(&[]).await.assert_code(0);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}]"#,
    );
    let run = env.sync(&["--dry-run"]).await;
    run.assert_code(0);
    let line = format!(
        r#"{{"extId":"{}","op":"grant","roleExtId":"frontdesk"}}"#,
        ext(ids[0])
    );
    assert!(run.stdout.contains(&line), "{}", run.stdout);
    assert_eq!(env.nevis.user_roles(&ext(ids[0])), ["basic"]);
}

#[tokio::test]
async fn an_incremental_tick_reads_changed_userroles_with_one_request() {
    let (env, ids, role) = env().await;
    env.sync(&[]).await.assert_code(0);
    let before = env.nexudus.request_log().len();
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    let asked: Vec<_> = env.nexudus.request_log()[before..]
        .iter()
        .filter(|r| r.path.contains("userroles"))
        .map(|r| format!("{}?{}", r.path, r.query))
        .collect();
    // Both UserRoles are within the listing's overlap, but their `UpdatedOn` is the one read.
    assert_eq!(asked.len(), 1, "only the listing: {asked:?}");
    assert!(asked[0].contains("from_UserRole_UpdatedOn"), "{asked:?}");

    env.nexudus.set_clock(Some(fake_time(1)));
    env.nexudus.set_role_members(role, &ids);
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert_eq!(run.count("granted"), 1);
    assert_eq!(env.nevis.user_roles(&ext(ids[2])), ["basic", "frontdesk"]);
}

#[tokio::test]
async fn full_administrators_are_mapped_from_is_admin() {
    let (env, ids, _) = env().await;
    env.nexudus.update_user(ids[2], |u| {
        u.insert("IsAdmin".into(), true.into());
    });
    env.set(
        "roles.map",
        r#"[{nexudus = "@admin", nevis = ["finance"]}]"#,
    );
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("granted"), 1);
    assert_eq!(env.nevis.user_roles(&ext(ids[2])), ["basic", "finance"]);
}

#[tokio::test]
async fn a_failed_membership_read_revokes_nothing() {
    let (env, ids, role) = env().await;
    env.sync(&[]).await.assert_code(0);
    env.nexudus.set_role_members(role, &[]);
    // Every retry of the membership read meets an HTML error page.
    env.nexudus
        .push_html_at(&format!("/api/security/userroles/{role}"), 20, 503);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(run.count("revoked"), 0, "{}", all(&run));
    assert_eq!(env.nevis.user_roles(&ext(ids[0])), ["basic", "frontdesk"]);
    assert!(run.stdout.contains("no role was revoked"), "{}", run.stdout);
}

#[tokio::test]
async fn status_shows_role_failures() {
    let (env, _, _) = env().await;
    env.nevis.set_default_profile(false);
    env.sync(&[]).await.assert_code(1);
    let status = run_cmd(env.command(&["--status"])).await;
    assert!(status.stdout.contains("Roles"), "{}", status.stdout);
    assert!(
        status.stdout.contains("roles.profile_unit_ext_id"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("frontdesk"), "{}", status.stdout);
}

/// The fake's own time, moved by hand so that a membership change's `UpdatedOn` differs from the
/// one read before it (the fake stamps whole seconds).
fn fake_time(minutes: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::minutes(minutes)
}

fn userrole_reads(env: &Env) -> usize {
    env.nexudus
        .request_log()
        .iter()
        .filter(|r| r.path.starts_with("/api/security/userroles/"))
        .count()
}

/// Incremental runs through the library, the store's clock moved by hand: a membership change
/// that moves the UserRole's `UpdatedOn` is applied by the next incremental run; one that does
/// not is not (an idle tick re-reads no UserRole whose `UpdatedOn` it has read) until the full
/// read of every mapped UserRole (`roles.full_read_every`) comes due.
#[tokio::test]
async fn a_change_moving_updated_on_arrives_at_the_next_tick_one_not_moving_it_at_the_full_read() {
    let (env, ids, role) = env().await;
    env.set("roles.full_read_every", "\"10m\"");
    let clock = Clock::manual(Clock::system().now());
    env.run_in_process(&clock).await;
    assert_eq!(env.nevis.user_roles(&ext(ids[2])), ["basic"]);

    env.nexudus.set_clock(Some(fake_time(2)));
    env.nexudus.set_role_members(role, &ids);
    let run = env.run_incremental_in_process(&clock).await;
    assert_eq!((run.counts().granted, run.counts().revoked), (1, 0));
    assert_eq!(env.nevis.user_roles(&ext(ids[2])), ["basic", "frontdesk"]);

    // Idle: the changed UserRole is still within the overlap of the listing, but read already.
    let reads = userrole_reads(&env);
    let run = env.run_incremental_in_process(&clock).await;
    assert_eq!((run.counts().granted, run.counts().revoked), (0, 0));
    assert_eq!(userrole_reads(&env), reads, "nothing re-read");

    env.nexudus.set_role_updates_move_updated_on(false);
    env.nexudus.set_clock(Some(fake_time(3)));
    env.nexudus.set_role_members(role, &[ids[0], ids[2]]);
    let run = env.run_incremental_in_process(&clock).await;
    assert_eq!(
        (run.counts().granted, run.counts().revoked),
        (0, 0),
        "not seen yet"
    );
    assert_eq!(env.nevis.user_roles(&ext(ids[1])), ["basic", "frontdesk"]);

    clock.advance(std::time::Duration::from_secs(599));
    let run = env.run_incremental_in_process(&clock).await;
    assert_eq!(
        run.counts().revoked,
        0,
        "the full read is not due before 10 minutes"
    );
    clock.advance(std::time::Duration::from_secs(1));
    let run = env.run_incremental_in_process(&clock).await;
    assert_eq!(
        (run.counts().granted, run.counts().revoked),
        (0, 1),
        "the full read found it"
    );
    assert_eq!(env.nevis.user_roles(&ext(ids[1])), ["basic"]);
}

/// Grants for many users go `sync.concurrency` users at a time, never more.
#[tokio::test]
async fn grants_for_many_users_are_written_concurrently_within_sync_concurrency() {
    let env = Env::start().await;
    env.nevis.add_roles(&ROLES);
    env.set("sync.concurrency", "4");
    let ids = env.seed(12);
    env.sync(&[]).await.assert_code(0);
    env.nexudus
        .add_user_role(1, "Main Street", "Receptionist", &ids);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}]"#,
    );
    env.nevis.set_latency(std::time::Duration::from_millis(100));
    env.nevis.reset_stats();
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("granted"), 12);
    let peak = env.nevis.max_in_flight();
    assert!((2..=4).contains(&peak), "max in flight {peak}");
}

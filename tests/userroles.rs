//! The start of the role sync over HTTP, the real binary against the fakes: the UserRole listing
//! is read to its end and judged complete by the users' listing's rule (a listing that cannot be
//! known complete fails no name and revokes nothing), and the permissions nevisIDM is asked for
//! include the one that reads roles.

mod common;

use common::{Env, Run};

/// Roles that exist in the fake nevisIDM.
const ROLES: [&str; 2] = ["frontdesk", "finance"];

/// Every permission the role sync needs but `AccessControl.RoleView`.
const ALL_BUT_ROLE_VIEW: [&str; 5] = [
    "AccessControl.AuthorizationView",
    "AccessControl.AuthorizationCreate",
    "AccessControl.AuthorizationDelete",
    "AccessControl.ProfileView",
    "AccessControl.ProfileCreate",
];

fn ext(id: u64) -> String {
    format!("nexudus-{id}")
}

fn all(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// Three users; `others` unmapped UserRoles first, then "Receptionist" holding the first two
/// and an empty "Finance Admin", both mapped. Answers the users and Receptionist's Id.
async fn env(others: usize) -> (Env, Vec<u64>, u64) {
    let env = Env::start().await;
    env.nevis.add_roles(&ROLES);
    let ids = env.seed(3);
    for n in 0..others {
        env.nexudus
            .add_user_role(1, "Main Street", &format!("Team {n}"), &[]);
    }
    let role = env
        .nexudus
        .add_user_role(1, "Main Street", "Receptionist", &ids[..2]);
    env.nexudus
        .add_user_role(1, "Main Street", "Finance Admin", &[]);
    env.set(
        "roles.map",
        r#"[{nexudus = "Receptionist", nevis = ["frontdesk"]}, {nexudus = "Finance Admin", nevis = ["finance"]}]"#,
    );
    // Three users: one losing a role is a third of them; the percentage is not under test here.
    env.set("roles.max_revoke_percent", "100");
    (env, ids, role)
}

/// Regression: the UserRole listing took a missing `HasNextPage` for "no more pages", so a
/// mapped UserRole on page 2 was "not found" and the start failed (exit 2).
#[tokio::test]
async fn a_userrole_listing_without_has_next_page_is_read_to_its_last_page() {
    // 1,000 UserRoles fill the first page (1,000 a page): the mapped ones are on page 2.
    let (env, ids, role) = env(1000).await;
    env.nexudus.set_role_listing_without_has_next_page(true);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("granted"), 2);
    assert_eq!(env.nevis.user_roles(&ext(ids[1])), ["frontdesk"]);

    // CurrentPage/TotalPages said where it ends: the listing was complete, a leaver is revoked.
    env.nexudus.set_role_members(role, &[ids[0]]);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("revoked"), 1);
    assert!(env.nevis.user_roles(&ext(ids[1])).is_empty());
}

/// Regression: a UserRole listing with fewer records than `TotalItems` was taken as complete: a
/// mapped name it left out failed the start as "not found" (exit 2), and a listing of changed
/// UserRoles that missed one let revocations go on as if nothing were missing.
#[tokio::test]
async fn a_userrole_listing_short_of_total_items_fails_no_name_and_revokes_nothing() {
    let (env, ids, role) = env(0).await;
    // Each page leaves out its last record: "Finance Admin" is never listed.
    env.nexudus.set_role_listing_short_pages(true);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    let text = all(&run);
    assert!(text.contains("UserRoles is incomplete"), "{text}");
    assert!(text.contains("roles incomplete"), "{text}");
    assert!(!text.contains("no Nexudus UserRole is named"), "{text}");
    assert_eq!(run.count("granted"), 2, "a name it shows still resolves");

    // A leaver is not revoked while the listing stays incomplete, and is once it is complete.
    env.nexudus.set_role_members(role, &[ids[0]]);
    let run = env.sync(&[]).await;
    run.assert_code(1);
    assert_eq!(run.count("revoked"), 0);
    assert_eq!(env.nevis.user_roles(&ext(ids[1])), ["frontdesk"]);
    env.nexudus.set_role_listing_short_pages(false);
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("revoked"), 1);

    // An incremental run reads only the changed UserRoles; that listing short too (it leaves
    // out "Finance Admin", also changed within the overlap): nothing is revoked, and it says so.
    env.nexudus.set_role_listing_short_pages(true);
    // A second after the last read's `UpdatedOn`: Nexudus stamps to the second, and a change
    // stamped in the same second as the read is only seen by the next full membership read.
    let later = chrono::Utc::now() + chrono::Duration::seconds(2);
    env.nexudus.set_clock(Some(later));
    env.nexudus.set_role_members(role, &[]);
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(1);
    assert!(
        all(&run).contains("changed UserRoles is incomplete"),
        "{}",
        all(&run)
    );
    assert_eq!(run.count("revoked"), 0);
    assert_eq!(env.nevis.user_roles(&ext(ids[0])), ["frontdesk"]);
    env.nexudus.set_role_listing_short_pages(false);
    let run = env.sync(&["--incremental"]).await;
    run.assert_code(0);
    assert_eq!(run.count("revoked"), 1);
    assert!(env.nevis.user_roles(&ext(ids[0])).is_empty());
}

/// Regression: `AccessControl.RoleView` (to read a role, `GET /core/v1/roles/{extId}`) was not
/// among the permissions checked at start; without it the start failed on nevisIDM's 403 instead
/// of naming the permission.
#[tokio::test]
async fn without_role_view_the_start_fails_naming_it() {
    let (env, ids, _) = env(0).await;
    env.nevis.set_permissions(Some(&ALL_BUT_ROLE_VIEW));
    let run = env.sync(&[]).await;
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("lacks the permission(s) AccessControl.RoleView"),
        "{}",
        all(&run)
    );
    assert!(env.nevis.user_roles(&ext(ids[0])).is_empty());

    let mut granted = ALL_BUT_ROLE_VIEW.to_vec();
    granted.push("AccessControl.RoleView");
    env.nevis.set_permissions(Some(&granted));
    let run = env.sync(&[]).await;
    run.assert_code(0);
    assert_eq!(run.count("granted"), 2);
}

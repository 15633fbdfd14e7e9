//! nexudus-nevis-sync keeps a nevisIDM user directory in step with the users of a Nexudus account.
//!
//! The pipeline, one module per stage:
//!
//! - [`client`]   what both HTTP clients share: construction, URL joining, `Retry-After`
//! - [`config`]   TOML file + env overrides: the raw file format and its defaults -> validated
//!   [`config::Config`] (a check per section, URLs parsed, cron checked), secrets read and wrapped
//! - [`nexudus`]  the source: paced, paged HTTP client for `GET /api/sys/users` (and the languages
//!   listing), its pacer under Nexudus's four limits, and its wire types
//! - [`mapper`]   pure: one Nexudus record -> the desired nevisIDM user, or the reason it is invalid
//! - [`limits`]   pure: nevisIDM's documented limits, checked on every mapped user before a request
//! - [`diff`]     pure: desired user + checkpoint -> create / update (changed fields) / disable / nothing;
//!   the one home of the equivalence rules (how a directory compares values)
//! - [`forms`]    pure: the directory's own forms, learned when a difference survives a write and
//!   is a normalisation of the value sent (else the value was not taken)
//! - [`refusal`]  pure: when a user nevisIDM refused is asked again (a backoff across runs)
//! - [`store`]    the sled checkpoint store; the only module that imports sled (its `audit` file
//!   keys the provisioning log's tree)
//! - [`clock`]    the wall clock the store and the Nexudus pacer read: the system's, or one a
//!   test moves by hand
//! - [`nevis`]    the target: nevisIDM Core REST client (OAuth2 or static token), HTTP status -> outcome classification
//! - [`retry`]    when to retry (backoff, `Retry-After`, caps); the only module that imports backon
//! - [`directory`] nevisIDM's user listing, read at most once per run and shared by the reconcile,
//!   adoption and versions
//! - [`ownership`] who owns a nevisIDM extId (adoption link, checkpoint, prefix): the one rule
//! - [`dispatch`] applies operations with bounded concurrency and checkpoints each confirmed write,
//!   its provisioning-log entry first
//! - [`audit`]    the provisioning log: an entry per write made or decided against (fields before
//!   and after, outcome, cause), `audit.values`, and the queries behind `--history` and `/history`
//! - [`roles`]    Nexudus UserRoles -> owned nevisIDM roles: resolution, memberships per UserRole,
//!   the pure per-user plan, the revocation safety, grants and revocations checkpointed
//! - [`versions`] nevisIDM versions in bulk from the run's user listing, when many updates lack one
//! - [`schedule`] the daemon loop: cron schedule, no overlapping runs, graceful stop; its leaf
//!   [`schedule::cron`] parses cron expressions and imports nothing of ours, so `config` uses it
//!   without a loop
//! - [`http`]     the daemon's `/healthz`, `/readyz`, `/metrics`, `/status` and `/history` (the
//!   routes with personal data behind a bearer token when `http.auth_token_file` is set)
//! - [`ask`]      asks the running daemon over its HTTP port, with the bearer token when configured
//!   (`--status` and `--history` while the daemon holds the store)
//! - [`metrics`]  Prometheus metrics shared by the clients, the pipeline and `/metrics`
//! - [`status`]   the status document behind `/status` and `--status`
//! - [`terminal`] text for a person's terminal: control characters escaped, columns aligned
//! - [`sync`]     `run_once` (shared by `--sync-now` and the daemon): listing census -> planner -> dispatcher -> settlement -> commit
//! - [`watermark`] incremental polling: the `UpdatedOn` watermark and its overlap
//! - [`report`]   what a run did: one outcome per user, the counts and problem lines derived from them
//! - [`progress`] the run in flight: counters, a live terminal line or periodic log lines, `/status`
//! - [`sandbox`]  stateful fakes of both APIs, used by `--demo`, the tests and the benchmark
//! - [`demo`]     `--demo`: both fakes in-process, sample users, one real sync
//! - [`packaging`] the man page and shell completions, generated from the CLI for the packages
//!
//! Imports flow one way: there is no loop between these modules (`tests/module_graph.rs` fails on
//! one and names it).

pub mod ask;
pub mod audit;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod diff;
pub mod directory;
pub mod dispatch;
pub mod forms;
pub mod http;
pub mod limits;
pub mod mapper;
pub mod metrics;
pub mod nevis;
pub mod nexudus;
pub mod ownership;
pub mod packaging;
pub mod progress;
pub mod refusal;
pub mod report;
pub mod retry;
pub mod roles;
pub mod sandbox;
pub mod schedule;
pub mod status;
pub mod store;
pub mod sync;
pub mod terminal;
pub mod versions;
pub mod watermark;

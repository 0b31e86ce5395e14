//! Every command run as a process against memory, the file store and a throwaway
//! Redis: what each prints, what it changes, and its exit code.

mod common;

use common::{Backend, RedisServer, chatstate, chatstate_env, json};
use serde_json::Value;
use std::path::Path;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

/// `demo --json` for one scenario, short.
fn demo(dir: &Path, backend: Backend<'_>, scenario: &str, users: &str) -> Value {
    json(&chatstate(
        dir,
        backend,
        &[
            "--json",
            "demo",
            "--scenario",
            scenario,
            "--users",
            users,
            "--duration",
            "0.3",
        ],
    ))
}

fn op<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["operations"]
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o["name"] == name))
        .unwrap_or_else(|| panic!("no operation {name} in {report}"))
}

fn check_demo(report: &Value, redis: bool) {
    let scenarios = report.as_array().expect("a list of scenarios");
    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["scenario"].as_str())
        .collect();
    assert_eq!(names, ["luni", "lia", "saas", "whatsapp", "streaming"]);
    for s in scenarios {
        let ops = s["operations"].as_array().expect("operations");
        assert!(!ops.is_empty(), "{s}");
        let (mut ours, mut naive) = (0, 0);
        for o in ops {
            assert!(o["count"].as_u64().unwrap_or(0) > 0, "{o}");
            assert!(o["p99_us"].as_f64() >= o["p50_us"].as_f64(), "{o}");
            naive += o["naive_round_trips"].as_u64().unwrap_or(0);
            match o["round_trips"].as_u64() {
                Some(n) => ours += n,
                None => assert!(!redis, "round trips are counted on Redis: {o}"),
            }
        }
        if redis {
            assert!(
                ours > 0 && ours < naive,
                "chatstate {ours} vs naive {naive} in {s}"
            );
        }
    }
    // The LIA scenario flushes every user's counters once at the end.
    let lia = &scenarios[1];
    assert!(lia["counter_batches_flushed"].as_u64() >= Some(1), "{lia}");
    assert!(
        lia["cache_hit_rate"]
            .as_f64()
            .is_some_and(|h| h > 0.0 && h <= 1.0)
    );
}

#[test]
fn demo_runs_every_scenario_on_memory() {
    let d = dir();
    check_demo(&demo(d.path(), Backend::Memory, "all", "2"), false);
}

#[test]
fn demo_runs_every_scenario_on_file_and_its_counters_are_stored_exactly() {
    let d = dir();
    let report = demo(d.path(), Backend::File, "all", "2");
    check_demo(&report, false);
    assert!(
        d.path().join("chatstate-data").is_dir(),
        "the default folder is ./chatstate-data"
    );
    // Every count_usage call counted one message; after the flush the store has them all.
    let counted = op(&report[1], "lia.count_usage")["count"].as_u64();
    let stats = json(&chatstate(d.path(), Backend::File, &["--json", "stats"]));
    let stored: u64 = stats
        .as_array()
        .expect("counters")
        .iter()
        .filter(|c| c["name"] == "messages")
        .filter_map(|c| c["value"].as_u64())
        .sum();
    assert_eq!(Some(stored), counted);
}

#[test]
fn demo_on_redis_counts_fewer_round_trips_than_the_naive_client() {
    let d = dir();
    let redis = RedisServer::start(&[]);
    let report = demo(d.path(), Backend::Redis(&redis), "all", "2");
    check_demo(&report, true);
    // A turn's commit is one round trip per call (a script), against 5 commands.
    let commit = op(&report[0], "luni.commit_turn");
    let calls = commit["count"].as_u64().expect("count");
    let rt = commit["round_trips"].as_u64().expect("round trips");
    assert!(rt >= calls && rt <= calls + 2, "{commit}");
    assert_eq!(commit["naive_round_trips"].as_u64(), Some(5 * calls));
}

#[test]
fn status_reports_each_backend() {
    let d = dir();
    let redis = RedisServer::start(&[]);
    let memory = json(&chatstate(d.path(), Backend::Memory, &["--json", "status"]));
    assert_eq!(memory["backend"], "memory");
    assert_eq!(memory["reachable"], true);

    demo(d.path(), Backend::File, "luni", "3");
    let file = json(&chatstate(d.path(), Backend::File, &["--json", "status"]));
    assert_eq!(file["backend"], "file");
    assert_eq!(file["counts"]["session"], 3);
    assert!(file["verify"]["files"].as_u64() > Some(0));
    assert_eq!(file["verify"]["corrupt"].as_array().map(Vec::len), Some(0));

    let r = json(&chatstate(
        d.path(),
        Backend::Redis(&redis),
        &["--json", "status"],
    ));
    assert_eq!(r["backend"], "redis");
    assert_eq!(r["tls"], false);
    assert!(
        r["redis_version"]
            .as_str()
            .is_some_and(|v| v.starts_with('7')),
        "{r}"
    );
    // Variables are listed by name, never with their values.
    let text =
        String::from_utf8_lossy(&chatstate(d.path(), Backend::Redis(&redis), &["status"]).stdout)
            .into_owned();
    assert!(
        text.contains("USE_REDIS") && text.contains("Redis 7"),
        "{text}"
    );
}

/// Purge counts in a dry run, then removes exactly those and nothing else.
fn purge_round(d: &Path, backend: Backend<'_>) {
    demo(d, backend, "luni", "3");
    demo(d, backend, "whatsapp", "2");
    let list = |tenant: &str| {
        json(&chatstate(
            d,
            backend,
            &["--json", "list", "sessions", "--tenant", tenant],
        ))
        .as_array()
        .map_or(0, Vec::len)
    };
    assert_eq!(list("luni"), 3);
    let dry = json(&chatstate(
        d,
        backend,
        &["--json", "purge", "--tenant", "luni"],
    ));
    assert_eq!(
        (
            dry["dry_run"].as_bool(),
            dry["matched"].as_u64(),
            dry["removed"].as_u64()
        ),
        (Some(true), Some(3), Some(0))
    );
    assert_eq!(list("luni"), 3, "a dry run removes nothing");
    let done = json(&chatstate(
        d,
        backend,
        &["--json", "purge", "--tenant", "luni", "--yes"],
    ));
    assert_eq!(
        (done["matched"].as_u64(), done["removed"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(list("luni"), 0);

    let count = |args: &[&str]| {
        let mut all = vec!["--json", "purge", "--namespace", "customers"];
        all.extend_from_slice(args);
        json(&chatstate(d, backend, &all))
    };
    let everything = count(&[])["matched"].as_u64().expect("matched");
    let ones = count(&["--prefix", "1"])["matched"]
        .as_u64()
        .expect("matched");
    assert!(ones > 0 && ones < everything, "{ones} of {everything}");
    let removed = count(&["--prefix", "1", "--yes"]);
    assert_eq!(removed["removed"].as_u64(), Some(ones));
    assert_eq!(count(&["--prefix", "1"])["matched"].as_u64(), Some(0));
    assert_eq!(
        count(&[])["matched"].as_u64(),
        Some(everything - ones),
        "other keys stay"
    );
}

#[test]
fn purge_dry_run_counts_and_yes_removes_exactly_those_on_file() {
    let d = dir();
    purge_round(d.path(), Backend::File);
}

#[test]
fn purge_dry_run_counts_and_yes_removes_exactly_those_on_redis() {
    let d = dir();
    let redis = RedisServer::start(&[]);
    purge_round(d.path(), Backend::Redis(&redis));
}

#[test]
fn inspect_shows_what_the_demo_stored() {
    let d = dir();
    demo(d.path(), Backend::File, "luni", "1");
    demo(d.path(), Backend::File, "whatsapp", "1");
    let s = json(&chatstate(
        d.path(),
        Backend::File,
        &[
            "--json",
            "inspect",
            "session",
            "--tenant",
            "luni",
            "--channel",
            "whatsapp",
            "--user",
            "+5511900000000",
        ],
    ));
    assert!(s["message_count"].as_u64() > Some(0));
    let window = s["messages"].as_array().map_or(0, Vec::len);
    assert!(window > 0 && window <= 20, "the window keeps 20: {window}");
    let c = json(&chatstate(
        d.path(),
        Backend::File,
        &[
            "--json",
            "inspect",
            "cache",
            "--namespace",
            "customers",
            "--key",
            "0",
        ],
    ));
    assert!(c["bytes"].as_u64() > Some(0));
    assert!(
        c["ttl_seconds"].as_u64() <= Some(300),
        "customers live 5 minutes: {c}"
    );
    // A contact of the messaging SaaS shows its phone alias.
    demo(d.path(), Backend::File, "saas", "1");
    let contact = json(&chatstate(
        d.path(),
        Backend::File,
        &[
            "--json",
            "inspect",
            "cache",
            "--namespace",
            "contacts",
            "--key",
            "1:7",
        ],
    ));
    assert_eq!(
        contact["aliases"],
        serde_json::json!(["contact-phones:1%3A+5521900000007"]),
        "{contact}"
    );
    let missing = chatstate(
        d.path(),
        Backend::File,
        &["inspect", "focus", "--scope", "nobody", "--name", "flow"],
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("chatstate: ") && err.contains("no such focus document"),
        "{err}"
    );
}

/// The records of an export, without the header and the TTLs (which run on).
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the export");
    let mut out: Vec<Value> = text
        .lines()
        .skip(1)
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("a JSON line");
            if let Some(o) = v.as_object_mut() {
                o.remove("ttl_ms");
            }
            v
        })
        .collect();
    out.sort_by_key(|v| v.to_string());
    out
}

#[test]
fn export_import_round_trip_and_migrate_to_redis() {
    let d = dir();
    let redis = RedisServer::start(&[]);
    demo(d.path(), Backend::File, "luni", "2");
    demo(d.path(), Backend::File, "lia", "1");
    let a = d.path().join("a.jsonl");
    let a_str = a.to_str().expect("utf-8 path");
    let out = json(&chatstate(
        d.path(),
        Backend::File,
        &["--json", "export", "--out", a_str, "--include-cache"],
    ));
    assert!(out["kinds"]["session"][0].as_u64() == Some(2), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a)
            .expect("the export")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "an export holds conversations: owner only"
        );
    }

    // Into an empty folder, then out again: the same records.
    let other = d.path().join("other");
    let other_env = [("CHATSTATE_FILE_DIR", other.to_str().expect("utf-8"))];
    let dry = json(&chatstate_env(
        d.path(),
        Backend::File,
        &other_env,
        &["--json", "import", "--in", a_str, "--dry-run"],
    ));
    assert_eq!(dry["dry_run"], true);
    let imported = json(&chatstate_env(
        d.path(),
        Backend::File,
        &other_env,
        &["--json", "import", "--in", a_str],
    ));
    assert_eq!(
        imported["kinds"]["session"][1].as_u64(),
        Some(2),
        "{imported}"
    );
    let b = d.path().join("b.jsonl");
    json(&chatstate_env(
        d.path(),
        Backend::File,
        &other_env,
        &[
            "--json",
            "export",
            "--out",
            b.to_str().expect("utf-8"),
            "--include-cache",
        ],
    ));
    assert_eq!(records(&a), records(&b));
    // Again: everything is already there.
    let again = json(&chatstate_env(
        d.path(),
        Backend::File,
        &other_env,
        &["--json", "import", "--in", a_str],
    ));
    assert_eq!(again["kinds"]["session"][1].as_u64(), Some(0), "{again}");

    // File to Redis with migrate, then Redis exported: the same records.
    let env = [("REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let moved = json(&chatstate_env(
        d.path(),
        Backend::File,
        &env,
        &["--json", "migrate", "--to", "redis", "--include-cache"],
    ));
    assert_eq!(moved["kinds"]["session"][1].as_u64(), Some(2), "{moved}");
    let c = d.path().join("c.jsonl");
    json(&chatstate(
        d.path(),
        Backend::Redis(&redis),
        &[
            "--json",
            "export",
            "--out",
            c.to_str().expect("utf-8"),
            "--include-cache",
        ],
    ));
    assert_eq!(records(&a), records(&c));
}

#[test]
fn sweep_on_each_backend() {
    let d = dir();
    let redis = RedisServer::start(&[]);
    demo(d.path(), Backend::File, "luni", "1");
    let f = json(&chatstate(d.path(), Backend::File, &["--json", "sweep"]));
    assert!(f["scanned"].as_u64() > Some(0), "{f}");
    assert_eq!(f["removed"], 0, "nothing has expired");
    let r = json(&chatstate(
        d.path(),
        Backend::Redis(&redis),
        &["--json", "sweep"],
    ));
    assert_eq!(r["scanned"], 0);
    let m = json(&chatstate(d.path(), Backend::Memory, &["--json", "sweep"]));
    assert_eq!(m["backend"], "memory");
}

fn conformance(d: &Path, backend: Backend<'_>, only: Option<&str>) -> Value {
    let mut args = vec!["--json", "conformance"];
    if let Some(o) = only {
        args.extend(["--only", o]);
    }
    let v = json(&chatstate(d, backend, &args));
    assert_eq!(v["failed"], 0, "{v}");
    assert!(v["passed"].as_u64() > Some(0));
    v
}

#[test]
fn conformance_passes_on_memory_and_on_redis_and_removes_what_it_wrote() {
    let d = dir();
    let all = chatstate_conformance::runner::all_cases().len() as u64;
    let m = conformance(d.path(), Backend::Memory, None);
    assert_eq!(
        m["passed"]
            .as_u64()
            .zip(m["skipped"].as_u64())
            .map(|(p, s)| p + s),
        Some(all)
    );
    assert!(
        m["skipped"].as_u64() >= Some(1),
        "memory does not persist: the reopen case is skipped"
    );

    let redis = RedisServer::start(&[]);
    redis.cli(&["SET", "someone-elses-key", "1"]);
    let r = conformance(d.path(), Backend::Redis(&redis), None);
    assert_eq!(r["passed"].as_u64(), Some(all));
    assert_eq!(
        redis.cli(&["DBSIZE"]).trim(),
        "1",
        "only the key it did not write is left"
    );
}

#[test]
fn conformance_on_file_runs_in_a_subfolder_it_removes() {
    let d = dir();
    // The cache cases (the whole suite takes ~30 s with fsync on this box).
    let v = conformance(d.path(), Backend::File, Some("kv_"));
    assert!(v["passed"].as_u64() >= Some(10), "{v}");
    assert!(
        !d.path().join("chatstate-data").exists(),
        "the folder it made is gone"
    );
    let text = String::from_utf8_lossy(
        &chatstate(
            d.path(),
            Backend::File,
            &["conformance", "--only", "kv_get_missing"],
        )
        .stdout,
    )
    .into_owned();
    assert!(text.contains("passed   kv_get_missing_is_none"), "{text}");
    assert!(text.contains("1 passed, 0 skipped, 0 failed"), "{text}");
}

/// Variables, arguments, and a text the error line must contain.
type BadCase<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);

#[test]
fn bad_input_is_one_line_and_a_non_zero_exit() {
    let d = dir();
    let cases: [BadCase<'_>; 4] = [
        (
            &[("REDIS_TTL_SECONDS", "soon")],
            &["status"],
            "REDIS_TTL_SECONDS",
        ),
        (
            &[],
            &[
                "inspect",
                "session",
                "--tenant",
                "",
                "--channel",
                "c",
                "--user",
                "u",
            ],
            "chatstate: ",
        ),
        (&[], &["demo", "--users", "0"], "--users"),
        (
            &[],
            &["conformance", "--only", "no-such-case"],
            "no conformance case",
        ),
    ];
    for (env, args, needle) in cases {
        let out = chatstate_env(d.path(), Backend::Memory, env, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    // Redis that cannot be reached, with fail-fast: a clear error, exit 1.
    let out = chatstate_env(
        d.path(),
        Backend::File,
        &[
            ("USE_REDIS", "1"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("CHATSTATE_REDIS_FAIL_FAST", "1"),
        ],
        &["status"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.starts_with("chatstate: "),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

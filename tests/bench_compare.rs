//! `bench/compare`'s results file, rendered from a saved run (`--from-json`)
//! with known figures: where a throughput target is missed, the file says what
//! the machine's cores allow per message at 1.5× NATS's rate and what broker
//! and load generator spent; where it is met, only what they spent. The
//! summary (the README's copy) says in one sentence what was met and what not.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::Command;

/// The repository root (bench/compare lives there).
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// One saved repetition of a throughput workload.
fn run(workload: &str, target: &str, msgs_per_s: f64, broker: f64, generator: f64) -> Value {
    json!({
        "workload_name": workload,
        "workload": workload,
        "target": target,
        "rep": 0,
        "delivered_per_s": msgs_per_s,
        "publish_per_s": msgs_per_s,
        "mb_per_s": 1.0,
        "lost": 0,
        "errors": 0,
        "latency_us": {"p50": 100.0, "p99": 200.0, "p999": 300.0},
        "broker": {"cpu_s_per_million": broker, "hwm_kib": 1000},
        "generator": {"cpu_s_per_million": generator},
    })
}

/// `r` with the spread over the shards coremq-bench reports for fan-out and
/// 4×4 runs (only the label is read).
fn spread(mut r: Value, label: &str) -> Value {
    r["spread"] = json!({"label": label});
    r
}

fn render(saved: &Value) -> String {
    let dir = unique_dir("compare");
    let path = dir.join("saved.json");
    fs::write(&path, serde_json::to_vec(saved).expect("JSON")).expect("write saved run");
    let out = Command::new("python3")
        .arg(Path::new(REPO).join("bench/compare"))
        .arg("--from-json")
        .arg(&path)
        .output()
        .expect("run bench/compare (python3)");
    assert!(
        out.status.success(),
        "bench/compare --from-json failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read_to_string(dir.join("saved.md")).expect("results file written next to the JSON")
}

/// The bullet of *Against the target* for `workload` and its sub-bullets.
fn target_lines<'a>(md: &'a str, workload: &str) -> Vec<&'a str> {
    let head = format!("- {workload}: throughput");
    let mut lines = md.lines().skip_while(|l| !l.starts_with(&head));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no line for {workload}:\n{md}"));
    std::iter::once(first)
        .chain(lines.take_while(|l| l.starts_with("  - ")))
        .collect()
}

#[test]
fn results_file_says_where_the_time_goes_when_a_target_is_missed() {
    let runs = vec![
        // Met: 3.0 / 1.8 M = 1.67×.
        run("1to1", "coremq", 3.0e6, 0.30, 0.20),
        run("1to1", "nats", 1.8e6, 0.70, 0.13),
        // Missed: 3.0 / 2.8 M. 1.5× NATS = 4.2 M msg/s; 2 cores at that rate
        // give 2 / 4.2 = 0.476 CPU-µs per message; CoreMQ spent 0.40 + 0.22.
        spread(
            run("4x4", "coremq", 3.0e6, 0.40, 0.22),
            "publishers 3+1, subscribers 2+2, queues 1+3",
        ),
        run("4x4", "nats", 2.8e6, 0.50, 0.15),
        // Missed without the cores being the limit: 0.10 + 0.10 < 2 / 1.5 M.
        run("1to1-16KiB", "coremq", 0.9e6, 0.10, 0.10),
        run("1to1-16KiB", "nats", 1.0e6, 0.10, 0.10),
        // Missed by a hair: 2.996 / 2.0 M = 1.498×, which two decimals would
        // print as the target itself.
        run("1to1-16B", "coremq", 2.996e6, 0.10, 0.10),
        run("1to1-16B", "nats", 2.0e6, 0.20, 0.10),
    ];
    let saved = json!({
        "command": "bench/compare --reps 1",
        "machine": {"nproc": "2"},
        "names": ["coremq", "nats"],
        "ncpu": 2,
        "reps": 1,
        "notes": [],
        "elapsed": 60,
        "runs": runs,
        "shards": {"1": [], "2": []},
    });
    let md = render(&saved);

    let met = target_lines(&md, "1to1");
    assert!(met[0].contains("1.67× (met)"), "{met:?}");
    assert_eq!(met.len(), 2, "a met target gets only the CPU line: {met:?}");
    assert!(
        met[1].contains("CoreMQ 0.30 + 0.20 = 0.50; NATS 0.70 + 0.13 = 0.83"),
        "{met:?}"
    );

    let missed = target_lines(&md, "4x4");
    assert!(missed[0].contains("1.07× (NOT met)"), "{missed:?}");
    assert!(
        missed[0].contains(
            "CoreMQ's repetitions by placement: 3.00 M (publishers 3+1, subscribers 2+2, queues 1+3)"
        ),
        "{missed:?}"
    );
    assert_eq!(missed.len(), 3, "{missed:?}");
    assert!(
        missed[1].contains("CoreMQ 0.40 + 0.22 = 0.62; NATS 0.50 + 0.15 = 0.65"),
        "{missed:?}"
    );
    for want in [
        "1.5× NATS is 4.20 M msg/s",
        "2 cores give broker and load generator together at most 0.48 CPU-µs",
        "spent 0.62",
        "shed 0.14 µs (23%) per message",
        "[ANALYSIS.md](ANALYSIS.md)",
    ] {
        assert!(missed[2].contains(want), "{want:?} not in {:?}", missed[2]);
    }

    let hair = target_lines(&md, "1to1-16B");
    assert!(hair[0].contains("1.498× (NOT met)"), "{hair:?}");

    let idle_cores = target_lines(&md, "1to1-16KiB");
    assert!(idle_cores[0].contains("0.90× (NOT met)"), "{idle_cores:?}");
    assert!(
        idle_cores[2].contains("at most 1.33 CPU-µs")
            && idle_cores[2].contains("spent 0.20 (15% of it), so CPU alone does not explain"),
        "{idle_cores:?}"
    );

    // The details tables carry the generator's CPU per message too.
    assert!(md.contains("| gen CPU s/M |"), "{md}");

    // The summary (which `--readme` copies into the README) adds it up in
    // one sentence: what was met, what was not.
    let verdict = md
        .lines()
        .find(|l| l.starts_with("**Against the target**"))
        .unwrap_or_else(|| panic!("no verdict in the summary:\n{md}"));
    assert!(
        md.find(verdict) < md.find("## Against the target"),
        "the verdict belongs to the summary"
    );
    for want in [
        "met — 1to1 1.67×, broker CPU per message 0.43×–1.00× of NATS's;",
        "**not met** — 4x4 1.07×, 1to1-16B 1.498×, 1to1-16KiB 0.90× (where the time goes",
    ] {
        assert!(verdict.contains(want), "{want:?} not in {verdict:?}");
    }
}

#[test]
fn runs_saved_without_the_generator_figure_still_render() {
    let mut runs = vec![
        run("4x4", "coremq", 3.0e6, 0.40, 0.0),
        run("4x4", "nats", 2.8e6, 0.50, 0.0),
    ];
    for r in &mut runs {
        r.as_object_mut().expect("object").remove("generator");
    }
    let saved = json!({
        "command": "bench/compare",
        "machine": {"nproc": "2"},
        "names": ["coremq", "nats"],
        "ncpu": 2,
        "runs": runs,
        "shards": {"1": [], "2": []},
    });
    let md = render(&saved);
    let missed = target_lines(&md, "4x4");
    assert!(
        missed[1].contains("broker (medians): CoreMQ 0.40; NATS 0.50")
            && missed[1].contains("not recorded"),
        "{missed:?}"
    );
    assert!(
        missed[2].contains("at most 0.48 CPU-µs") && !missed[2].contains("spent"),
        "{missed:?}"
    );
}

/// The rows of the summary table in `md` whose label starts with `label`,
/// split into cells.
fn summary_row<'a>(md: &'a str, label: &str) -> Vec<&'a str> {
    let line = md
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no summary row {label:?}:\n{md}"));
    line.trim_matches('|').split(" | ").map(str::trim).collect()
}

#[test]
fn baseline_ratios_flag_rows_more_than_3_percent_worse() {
    let runs = vec![
        // Throughput: 2.9 / 3.0 = 0.967, more than 3 % fewer msg/s: flagged.
        run("1to1", "coremq", 2.9e6, 0.30, 0.20),
        run("1to1", "coremq-base", 3.0e6, 0.30, 0.20),
        // 2.95 / 3.0 = 0.983: within 3 %.
        run("1to1", "coremq-noack", 2.95e6, 0.30, 0.20),
        run("1to1", "coremq-base-noack", 3.0e6, 0.30, 0.20),
        // Latency, lower is better: 210 / 200 µs p99 = 1.05, flagged; the
        // noack pair is faster than its baseline, which is no flag.
        json!({"workload_name": "pingpong", "target": "coremq", "rep": 0,
               "latency_us": {"p50": 100.0, "p99": 210.0, "p999": 300.0}}),
        json!({"workload_name": "pingpong", "target": "coremq-base", "rep": 0,
               "latency_us": {"p50": 100.0, "p99": 200.0, "p999": 300.0}}),
        json!({"workload_name": "pingpong", "target": "coremq-noack", "rep": 0,
               "latency_us": {"p50": 90.0, "p99": 150.0, "p999": 250.0}}),
        json!({"workload_name": "pingpong", "target": "coremq-base-noack", "rep": 0,
               "latency_us": {"p50": 100.0, "p99": 200.0, "p999": 300.0}}),
    ];
    let saved = json!({
        "command": "bench/compare --no-peers --baseline /tmp/coremq-old --workloads 1to1,pingpong",
        "machine": {"nproc": "2"},
        "names": ["coremq", "coremq-noack", "coremq-base", "coremq-base-noack"],
        "ncpu": 2,
        "runs": runs,
        "shards": {"1": [], "2": []},
        "no_peers": true,
        "workloads": ["1to1", "pingpong"],
    });
    let md = render(&saved);

    assert_eq!(
        summary_row(&md, "workload"),
        [
            "workload",
            "coremq",
            "coremq-noack",
            "coremq-base",
            "coremq-base-noack",
            "new/base",
            "noack new/base"
        ],
        "--no-peers: no NATS/Redis ratio columns"
    );
    // Three decimals where two would print the threshold itself.
    assert_eq!(summary_row(&md, "1to1 msg/s")[5..], ["**0.967×**", "0.98×"]);
    assert_eq!(
        summary_row(&md, "pingpong p99 µs")[5..],
        ["**1.05×**", "0.75×"]
    );
    assert_eq!(summary_row(&md, "pingpong p50 µs")[5..], ["1.00×", "0.90×"]);
    // Only the workloads run: no rows, sections or shards line for the others.
    for absent in [
        "| 4x4 msg/s",
        "### fanout1x10",
        "shards=1",
        "## Against the target",
    ] {
        assert!(!md.contains(absent), "{absent:?} in:\n{md}");
    }
    let verdict = md
        .lines()
        .find(|l| l.starts_with("**Against the baseline**"))
        .unwrap_or_else(|| panic!("no baseline verdict in the summary:\n{md}"));
    assert!(
        verdict.contains("**worse** — 1to1 0.967×, pingpong p99 1.05×; the other 8 within 3%"),
        "{verdict}"
    );
}

/// A real quick run with the same coremq binary as its own baseline (only the
/// ping-pong workload, to stay short): both run, and the summary has the
/// new/base columns with figures in them.
#[test]
fn quick_run_against_a_baseline_binary() {
    let bin_dir = built_bin_dir();
    let md = run_compare(
        "compare-live",
        &[
            "--quick",
            "--no-peers",
            "--no-install",
            "--workloads",
            "pingpong",
            "--bin-dir",
            &bin_dir.to_string_lossy(),
            "--baseline",
            BIN,
        ],
        "-quick-vs-base.md",
    );
    assert_eq!(
        summary_row(&md, "workload")[1..],
        [
            "coremq",
            "coremq-noack",
            "coremq-base",
            "coremq-base-noack",
            "new/base",
            "noack new/base"
        ]
    );
    for row in ["pingpong p50 µs", "pingpong p99 µs"] {
        let cells = summary_row(&md, row);
        for c in &cells[1..] {
            assert!(*c != "–", "no figure in {row}: {cells:?}\n{md}");
        }
        assert!(cells[5].trim_matches('*').ends_with('×'), "{cells:?}");
    }
    assert!(md.contains("**Against the baseline**"), "{md}");
    assert!(md.contains("Lost messages over all runs: 0 "), "{md}");
}

/// One saved repetition of an unwindowed workload.
fn unwin_run(workload: &str, target: &str, rep: u64, lost: u64, disconnected: u64) -> Value {
    json!({
        "workload_name": workload,
        "workload": "1to1",
        "target": target,
        "rep": rep,
        "unwindowed": true,
        "published": 600000,
        "expected": 600000,
        "delivered": 600000 - lost,
        "delivered_per_s": 1.0e6,
        "publish_per_s": 1.2e6,
        "mb_per_s": 1000.0,
        "lost": lost,
        "disconnected": disconnected,
        "errors": disconnected,
        "first_error": if disconnected > 0 { json!("{\"response\": \"ERROR: slow consumer\"}") } else { Value::Null },
        "latency_us": {"p50": 100.0, "p99": 200.0, "p999": 300.0},
        "broker": {"cpu_s_per_million": 0.3, "hwm_kib": 1000},
        "generator": {"cpu_s_per_million": 0.2},
    })
}

/// A saved `--unwindowed-only` run in which `coremq` lost `lost[rep]` messages
/// of its 1 KiB runs (a disconnect each time), and nobody anything else.
fn unwindowed_saved(lost: [u64; 3]) -> Value {
    let names = ["coremq", "coremq-noack", "nats", "redis"];
    let mut runs = Vec::new();
    for rep in 0..3 {
        for w in ["1to1-unwin", "1to1-1KiB-unwin", "1to1-16KiB-unwin"] {
            for n in names {
                let l = if n == "coremq" && w == "1to1-1KiB-unwin" {
                    lost[rep as usize]
                } else {
                    0
                };
                runs.push(unwin_run(w, n, rep, l, (l > 0) as u64));
            }
        }
    }
    json!({
        "command": "bench/compare --unwindowed-only --reps 3",
        "machine": {"nproc": "2"},
        "names": names,
        "ncpu": 2,
        "reps": 3,
        "runs": runs,
        "shards": {"1": [], "2": []},
        "workloads": ["1to1-unwin", "1to1-1KiB-unwin", "1to1-16KiB-unwin"],
    })
}

#[test]
fn unwindowed_losses_are_shown_per_repetition_and_called_out() {
    let md = render(&unwindowed_saved([0, 250_000, 0]));
    assert_eq!(
        summary_row(&md, "unwindowed"),
        ["unwindowed", "coremq", "coremq-noack", "nats", "redis"]
    );
    assert_eq!(
        summary_row(&md, "1→1 1 KiB msg/s")[1..],
        ["1.00 M", "1.00 M", "1.00 M", "1.00 M"]
    );
    assert_eq!(
        summary_row(&md, "1→1 1 KiB lost")[1..],
        ["**0, 250,000, 0**", "0", "0", "0"]
    );
    assert_eq!(
        summary_row(&md, "1→1 1 KiB disconnects")[1..],
        ["**1**", "0", "0", "0"]
    );
    assert_eq!(
        summary_row(&md, "1→1 128 B lost")[1..],
        ["0", "0", "0", "0"]
    );
    let verdict = md
        .lines()
        .find(|l| l.starts_with("**Unwindowed:"))
        .unwrap_or_else(|| panic!("no unwindowed verdict:\n{md}"));
    for want in [
        "**Unwindowed: CoreMQ LOST MESSAGES** — coremq lost 250,000 of 5,400,000 deliveries, 1 subscriber(s) disconnected, in 1to1-1KiB-unwin 1 of 3 repetitions",
        "nats 0 lost, 0 disconnects in 9 runs",
        "redis 0 lost, 0 disconnects in 9 runs",
    ] {
        assert!(verdict.contains(want), "{want:?} not in {verdict:?}");
    }
    assert!(!verdict.contains("coremq-noack lost"), "{verdict}");
    // Only the unwindowed tables: no windowed summary, target or sweep.
    for absent in [
        "| workload |",
        "## Against the target",
        "Payload sweep",
        "end-to-end window of 4 MiB",
    ] {
        assert!(!md.contains(absent), "{absent:?} in:\n{md}");
    }
    assert!(md.contains("### 1to1-1KiB-unwin (unwindowed)"), "{md}");
    assert!(
        md.contains("- coremq, repetition 2: {\"response\": \"ERROR: slow consumer\"}"),
        "{md}"
    );

    let md = render(&unwindowed_saved([0, 0, 0]));
    let verdict = md
        .lines()
        .find(|l| l.starts_with("**Unwindowed:"))
        .unwrap_or_else(|| panic!("no unwindowed verdict:\n{md}"));
    assert!(
        verdict.starts_with(
            "**Unwindowed: CoreMQ lost nothing** — 0 messages lost and 0 subscribers disconnected \
             in all 18 runs of coremq, coremq-noack; nats 0 lost"
        ),
        "{verdict}"
    );
}

/// A real quick `--unwindowed-only` run (CoreMQ only): the unwindowed table and
/// its verdict (what the broker lost is bench/compare's and flow_control's
/// business; this checks the harness).
#[test]
fn quick_unwindowed_only_run() {
    let bin_dir = built_bin_dir();
    let md = run_compare(
        "compare-unwin",
        &[
            "--quick",
            "--no-peers",
            "--no-install",
            "--unwindowed-only",
            "--bin-dir",
            &bin_dir.to_string_lossy(),
        ],
        "-quick-unwindowed.md",
    );
    assert_eq!(
        summary_row(&md, "unwindowed")[1..],
        ["coremq", "coremq-noack"]
    );
    for label in ["1→1 128 B", "1→1 1 KiB", "1→1 16 KiB"] {
        let cells = summary_row(&md, &format!("{label} msg/s"));
        for c in &cells[1..] {
            assert!(*c != "–", "no figure in {label}: {cells:?}\n{md}");
        }
        summary_row(&md, &format!("{label} lost"));
        summary_row(&md, &format!("{label} disconnects"));
    }
    assert!(
        md.lines().any(|l| l.starts_with("**Unwindowed: CoreMQ ")),
        "{md}"
    );
    assert!(!md.contains("| workload |"), "{md}");
}

/// Runs bench/compare with `args` (and `--out`, a fresh directory tagged
/// `tag`), checks that it succeeded, and returns the results file whose name
/// ends with `suffix`.
fn run_compare(tag: &str, args: &[&str], suffix: &str) -> String {
    let out_dir = unique_dir(tag);
    let out = Command::new("python3")
        .arg(Path::new(REPO).join("bench/compare"))
        .args(args)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("run bench/compare (python3)");
    assert!(
        out.status.success(),
        "bench/compare failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let md_path = fs::read_dir(&out_dir)
        .expect("results directory")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no <date>{suffix} in {}", out_dir.display()));
    let md = fs::read_to_string(md_path).expect("results file");
    fs::remove_dir_all(&out_dir).ok();
    md
}

/// Where the debug `coremq` and `coremq-bench` are, checking that the load
/// generator was built too.
fn built_bin_dir() -> &'static Path {
    let bin_dir = Path::new(BIN).parent().expect("binary directory");
    assert!(
        bin_dir.join("coremq-bench").exists(),
        "{} not built: run `cargo build -p coremq-bench` (or `./test`, which builds it)",
        bin_dir.join("coremq-bench").display()
    );
    bin_dir
}

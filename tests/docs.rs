//! The docs cannot drift from the program: every metric name that README.md, docs/*.md or the
//! Grafana dashboard names is served by a running node's `/metrics`, and every `--flag` they
//! name is in the `--help` of `syncnode` (any subcommand) or of `syncnode-bench`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syncnode_e2e::node::{Node, http_get};
use syncnode_e2e::*;

/// The repository root (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

/// README.md, every Markdown file of docs/, and the dashboard, with their paths.
fn doc_texts() -> Vec<(String, String)> {
    let mut paths = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("md" | "json")))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read doc");
            (p.display().to_string(), text)
        })
        .collect()
}

/// Words of `text` made of `[a-z0-9_*-]` that start with `start` (`*` ends a wildcard).
fn words_from<'a>(text: &'a str, start: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.match_indices(start).filter_map(move |(i, _)| {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return None;
        }
        let rest = &text[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_-*".contains(c)))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        // `syncnode_node::run_with` is a Rust path, not a metric.
        (!rest[end..].starts_with("::")).then_some(word)
    })
}

/// Metric names in the docs: `syncnode_*`, `gossipsub_*` and `libp2p_*` words.
fn doc_metrics(docs: &[(String, String)]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, text) in docs {
        for prefix in ["syncnode_", "gossipsub_", "libp2p_"] {
            for word in words_from(text, prefix) {
                out.insert((path.clone(), word.trim_end_matches(['-', '_']).to_owned()));
            }
        }
    }
    out
}

/// `--flag` words in the docs.
fn doc_flags(docs: &[(String, String)]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, text) in docs {
        // Cargo's command lines (`cargo build --release`, up to the closing backtick) name its flags.
        let ours: String = text
            .lines()
            .map(|l| match l.split_once("cargo ") {
                Some((before, after)) => {
                    format!("{before}{}", after.split_once('`').map_or("", |(_, rest)| rest))
                }
                None => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        for word in words_from(&ours, "--") {
            let flag = word.trim_end_matches(['-', '_', '*']);
            if flag.len() > 2 && flag.as_bytes()[2].is_ascii_lowercase() {
                out.insert((path.clone(), flag.to_owned()));
            }
        }
    }
    out
}

/// Every sample name a scrape can return: what `/metrics` shows, and for each declared metric
/// the names its type exposes even before its first series (a counter's `_total`, ...).
fn served_metric_names(body: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in body.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Every `--flag` in the usage text of `scripts/lab.py` (its module docstring, from `Usage:` on),
/// which the docs name when they say how a lab figure was produced.
fn lab_script_flags() -> BTreeSet<String> {
    let script = std::fs::read_to_string(repo().join("scripts/lab.py")).expect("scripts/lab.py");
    let usage = script
        .split_once("Usage:")
        .and_then(|(_, rest)| rest.split_once("\"\"\""))
        .map_or("", |(usage, _)| usage);
    words_from(usage, "--").map(str::to_owned).collect()
}

/// Every `--flag` in the help of `syncnode` and each of its subcommands, of `syncnode-bench`, and
/// in the lab script's usage.
fn help_flags() -> BTreeSet<String> {
    let mut flags = lab_script_flags();
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = String::from_utf8_lossy(&run_ok(&args).stdout).into_owned();
        flags.extend(words_from(&help, "--").map(str::to_owned));
        let commands = help
            .split_once("Commands:\n")
            .map(|(_, rest)| rest.split("\n\n").next().unwrap_or(""));
        for line in commands.unwrap_or("").lines() {
            match line.split_whitespace().next() {
                Some(name) if name != "help" => {
                    pending.push(path.iter().cloned().chain([name.to_owned()]).collect());
                }
                _ => {}
            }
        }
    }
    let bench = syncnode_bin().with_file_name("syncnode-bench");
    let out = std::process::Command::new(&bench)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build it: `cargo build --workspace --bins`)",
                bench.display()
            )
        });
    flags.extend(words_from(&String::from_utf8_lossy(&out.stdout), "--").map(str::to_owned));
    flags
}

#[test]
fn every_metric_the_docs_name_is_served() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(dir.path(), "docs", 1, &[]);
    let node = Node::start("docs", &spec, &dir.path().join("node"), &[]);
    let (code, body) = http_get(node.http, "/metrics").expect("/metrics");
    assert_eq!(code, 200);
    let served = served_metric_names(&body);
    let docs = doc_texts();
    let named = doc_metrics(&docs);
    assert!(
        named.len() >= 20,
        "too few metric names found in the docs: {named:?}"
    );
    let missing: Vec<_> = named
        .iter()
        .filter(|(_, name)| match name.strip_suffix('*') {
            Some(prefix) => !served.iter().any(|s| s.starts_with(prefix)),
            None => !served.contains(name),
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metrics the docs name that /metrics does not serve: {missing:?}\nserved: {served:?}"
    );
}

#[test]
fn every_flag_the_docs_name_is_in_the_help() {
    let known = help_flags();
    assert!(known.contains("--history-blocks") && known.contains("--cursor-file"));
    let named = doc_flags(&doc_texts());
    assert!(named.len() >= 20, "too few flags found in the docs: {named:?}");
    let missing: Vec<_> = named.iter().filter(|(_, flag)| !known.contains(flag)).collect();
    assert!(
        missing.is_empty(),
        "flags the docs name that no --help lists: {missing:?}\nknown: {known:?}"
    );
}

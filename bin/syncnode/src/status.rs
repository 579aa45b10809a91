//! `syncnode status`: a readable summary of a running node's `/status` and `/peers`.

use std::process::ExitCode;

use crate::cli::StatusArgs;
use crate::http_client::get_json;

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.health {
        return Ok(health(args.http));
    }
    let status = get_json(args.http, "/status")?;
    let peers = get_json(args.http, "/peers")?;
    if args.json {
        println!("{}", serde_json::json!({ "status": status, "peers": peers }));
        return Ok(ExitCode::SUCCESS);
    }
    let field = |k: &str| {
        status.get(k).map_or("?".to_owned(), |v| {
            v.as_str().map_or(v.to_string(), str::to_owned)
        })
    };
    println!("peer id      {}", field("peer_id"));
    println!("state        {}", field("sync_state"));
    println!("head         {} {}", field("head_height"), field("head_hash"));
    println!(
        "finalized    {} {}",
        field("finalized_height"),
        field("finalized_hash")
    );
    println!(
        "earliest     {} (backfill complete: {})",
        field("earliest_height"),
        field("backfill_complete")
    );
    println!("target       {}", field("target_height"));
    println!("genesis      {}", field("genesis_hash"));
    if let Some(addrs) = status["listen_addrs"].as_array() {
        for a in addrs {
            println!("listening    {}", a.as_str().unwrap_or("?"));
        }
    }
    let list = peers.as_array().cloned().unwrap_or_default();
    println!("peers        {} connected, {} known", field("peers"), list.len());
    if !list.is_empty() {
        println!();
        println!(
            "{:<54} {:>9} {:>8} {:>6} {:>10} {:>10}  agent",
            "peer", "connected", "score", "banned", "head", "earliest"
        );
        for p in &list {
            let num = |k: &str| p[k].as_u64().map_or("-".to_owned(), |v| v.to_string());
            println!(
                "{:<54} {:>9} {:>8.2} {:>6} {:>10} {:>10}  {}",
                p["peer_id"].as_str().unwrap_or("?"),
                p["connected"].as_bool().unwrap_or(false),
                p["score"].as_f64().unwrap_or(0.0),
                p["banned"].as_bool().unwrap_or(false),
                num("head_height"),
                num("earliest_height"),
                p["agent"].as_str().unwrap_or("-"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `syncnode status --health`: whether the node answers `/status` and is neither stalled nor
/// paused by a full disk. A scratch image has no curl: its health check is this.
fn health(http: std::net::SocketAddr) -> ExitCode {
    let verdict = get_json(http, "/status").and_then(|status| judge(&status));
    match verdict {
        Ok(line) => {
            println!("healthy: {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("unhealthy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The one-line summary of a healthy `/status`, or why it is not healthy.
fn judge(status: &serde_json::Value) -> anyhow::Result<String> {
    let state = status["sync_state"].as_str().unwrap_or("?");
    let disk = status["disk"]["state"].as_str().unwrap_or("ok");
    anyhow::ensure!(
        state != "stalled",
        "sync stalled at head {}",
        status["head_height"]
    );
    anyhow::ensure!(disk != "disk_full", "imports paused: the disk is full");
    anyhow::ensure!(status["head_height"].is_u64(), "/status has no head height");
    Ok(format!(
        "{state}, head {}, {} peers",
        status["head_height"], status["peers"]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_or_disk_full_is_unhealthy() {
        let ok = serde_json::json!({"sync_state": "syncing", "head_height": 7, "peers": 2, "disk": {"state": "ok"}});
        assert_eq!(judge(&ok).expect("healthy"), "syncing, head 7, 2 peers");
        let mut stalled = ok.clone();
        stalled["sync_state"] = "stalled".into();
        assert!(judge(&stalled).is_err());
        let mut full = ok.clone();
        full["disk"]["state"] = "disk_full".into();
        assert!(judge(&full).is_err());
        assert!(judge(&serde_json::json!({"error": "x"})).is_err());
    }

    #[test]
    fn a_node_that_does_not_answer_is_unhealthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert_eq!(health(addr), ExitCode::FAILURE);
    }
}

//! `syncnode status`: a readable summary of a running node's `/status` and `/peers`.

use std::process::ExitCode;

use crate::cli::StatusArgs;
use crate::http_client::get_json;

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
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

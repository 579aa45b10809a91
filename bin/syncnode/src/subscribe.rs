//! `syncnode subscribe`: canonical blocks as JSON lines, resumable through a cursor file.
//!
//! It reads a node's `/blocks/stream` (Server-Sent Events) and, for each block, first prints it as
//! one JSON line on stdout, then records its height in the cursor file (written to a temporary
//! file and renamed over it, so the file always holds a whole height). Restarted at any moment, it
//! continues from the height after the cursor: every height is printed, in order, and a height is
//! printed twice only when the previous run stopped between printing it and recording it. A reorg
//! prints `{"reorg":{"rewind_to":H}}` and moves the cursor back to H. When the node goes away it
//! reconnects, backing off, until it is stopped (or `--until` is reached). A start the node refuses
//! for good (a pruned node's history below its floor) ends it with the node's reason, non-zero.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{Start, SubscribeArgs};
use crate::http_client::get_json;

fn read_cursor(path: &Path) -> anyhow::Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let h = text
                .trim()
                .parse()
                .with_context(|| format!("cursor file {} does not hold a height", path.display()))?;
            Ok(Some(h))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading cursor file {}", path.display())),
    }
}

fn write_cursor(path: &Path, height: u64) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{height}\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What one connection ended with.
enum Outcome {
    /// `--until` reached.
    Done,
    /// The stream ended or failed; reconnect.
    Reconnect(String),
    /// The node refuses this start for good (a 4xx answer): its reason.
    Refused(String),
}

/// The height to stream from: after the cursor, else `--from`.
fn start_height(args: &SubscribeArgs, cursor: Option<u64>) -> anyhow::Result<u64> {
    Ok(match (cursor, args.from) {
        (Some(h), _) => h + 1,
        (None, Some(Start::Height(h))) => h,
        (None, None) => 0,
        (None, Some(Start::Earliest)) => get_json(args.http, "/status")?["earliest_height"]
            .as_u64()
            .context("/status has no earliest_height")?,
    })
}

pub fn subscribe(args: SubscribeArgs) -> anyhow::Result<ExitCode> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let cursor = read_cursor(&args.cursor_file)?;
        let outcome = start_height(&args, cursor).and_then(|start| {
            if args.until.is_some_and(|u| start > u) {
                return Ok(Outcome::Done);
            }
            stream_once(&args, start).map_err(|e| e.context(format!("streaming from {start}")))
        });
        match outcome {
            Ok(Outcome::Done) => return Ok(ExitCode::SUCCESS),
            Ok(Outcome::Reconnect(why)) => {
                tracing::info!("stream ended ({why}); reconnecting");
                backoff = Duration::from_millis(200);
            }
            // The node pruned past its earliest height between /status and the stream.
            Ok(Outcome::Refused(why)) if cursor.is_none() && args.from == Some(Start::Earliest) => {
                tracing::info!("{why}; asking for the earliest height again in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Ok(Outcome::Refused(why)) => {
                let hint = match cursor {
                    Some(h) => format!(
                        "the cursor file {} says {h} was printed last; the node no longer holds what follows",
                        args.cursor_file.display()
                    ),
                    None => "`--from earliest` starts at the lowest height it holds".to_owned(),
                };
                anyhow::bail!("the node at {} refuses the stream: {why}\n({hint})", args.http);
            }
            Err(e) => {
                tracing::info!("cannot stream from {}: {e:#}; retrying in {backoff:?}", args.http);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Most bytes of a refusal's body read.
const MAX_REFUSAL_BYTES: u64 = 4096;

/// The reason in a refusal's body: its `error` field when it is JSON, else the text itself.
fn refusal_reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

fn stream_once(args: &SubscribeArgs, start: u64) -> anyhow::Result<Outcome> {
    let mut stream = TcpStream::connect_timeout(&args.http, Duration::from_secs(2))?;
    // HTTP/1.0: the body comes unchunked and ends when the server closes.
    write!(
        stream,
        "GET /blocks/stream?from={start} HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        args.http
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let code = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let status_line = line.trim().to_owned();
    loop {
        line.clear();
        anyhow::ensure!(reader.read_line(&mut line)? > 0, "stream closed in its headers");
        if line.trim().is_empty() {
            break;
        }
    }
    if code != "200" {
        let mut body = String::new();
        let _ = reader.take(MAX_REFUSAL_BYTES).read_to_string(&mut body);
        if code.starts_with('4') {
            return Ok(Outcome::Refused(refusal_reason(&body)));
        }
        anyhow::bail!("stream answered {status_line}: {}", body.trim());
    }
    let stdout = std::io::stdout();
    let mut next = start;
    let (mut event, mut data) = (String::new(), String::new());
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(Outcome::Reconnect("the node closed the stream".into()));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if l.is_empty() && !event.is_empty() {
            match event.as_str() {
                "block" => {
                    let block: serde_json::Value =
                        serde_json::from_str(&data).context("block event is not JSON")?;
                    let height = block["height"].as_u64().context("block event has no height")?;
                    anyhow::ensure!(height == next, "stream skipped from {next} to {height}");
                    let mut out = stdout.lock();
                    writeln!(out, "{data}")?;
                    out.flush()?;
                    drop(out);
                    write_cursor(&args.cursor_file, height)?;
                    next = height + 1;
                    if args.until.is_some_and(|u| height >= u) {
                        return Ok(Outcome::Done);
                    }
                }
                "reorg" => {
                    let v: serde_json::Value =
                        serde_json::from_str(&data).context("reorg event is not JSON")?;
                    let rewind_to = v["rewind_to"].as_u64().context("reorg event has no rewind_to")?;
                    let mut out = stdout.lock();
                    writeln!(out, "{{\"reorg\":{{\"rewind_to\":{rewind_to}}}}}")?;
                    out.flush()?;
                    drop(out);
                    write_cursor(&args.cursor_file, rewind_to)?;
                    next = rewind_to + 1;
                }
                "end" => return Ok(Outcome::Reconnect(format!("the node ended the stream: {data}"))),
                _ => {}
            }
            event.clear();
            data.clear();
        }
    }
}

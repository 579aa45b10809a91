//! `/blocks/stream` under a crowd: clients that open a stream from genesis and never read it do
//! not take the node's memory nor its API, and a start below what a pruned node keeps is refused.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use syncnode_e2e::client::memory_kib;
use syncnode_e2e::node::{Node, chain_with_history, http_get};

const BLOCKS: u64 = 3_000;
const PAYLOAD: u64 = 64 * 1024;
const CLIENTS: usize = 100;
/// The node's resident memory with every client connected must stay below this.
const RSS_BOUND_KIB: u64 = 512 * 1024;
/// `/status` must answer within this while the streams are open.
const STATUS_WITHIN: Duration = Duration::from_secs(2);

/// Opens `/blocks/stream?from=0` and never reads the answer.
fn open_unread_stream(node: &Node) -> TcpStream {
    let mut socket = TcpStream::connect(node.http).expect("connect");
    let request = format!(
        "GET /blocks/stream?from=0 HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        node.http
    );
    socket.write_all(request.as_bytes()).expect("request");
    socket
}

#[test]
fn a_hundred_unread_streams_from_genesis_stay_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, data) = chain_with_history(dir.path(), "node", BLOCKS, PAYLOAD);
    let node = Node::start("node", &spec, &data, &[]);
    let pid = node.child.0.id();
    let (_, rss_before) = memory_kib(pid).expect("memory");

    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| open_unread_stream(&node)).collect();
    // Let every stream read ahead as far as it will and fill what it buffers.
    std::thread::sleep(Duration::from_secs(5));
    let started = Instant::now();
    let (code, _) = http_get(node.http, "/status").expect("/status answers");
    let status_took = started.elapsed();
    let (peak, rss) = memory_kib(pid).expect("memory");
    let open = node
        .metric("syncnode_http_block_streams")
        .expect("streams metric");
    let refused = node
        .metric("syncnode_http_block_streams_refused_total")
        .expect("refused metric");
    eprintln!(
        "{CLIENTS} unread streams of {BLOCKS} blocks of {PAYLOAD} B: RSS {} → {} MiB (peak {} MiB), \
         /status in {status_took:?}, streams open {open}, refused {refused}",
        rss_before / 1024,
        rss / 1024,
        peak / 1024
    );
    assert_eq!(code, 200);
    assert!(status_took < STATUS_WITHIN, "/status took {status_took:?}");
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB with {CLIENTS} streams");
    assert!(open >= 1.0, "streams are served");
    assert_eq!(open + refused, CLIENTS as f64, "every stream open or refused");
    drop(clients);
}

#[test]
fn a_start_below_what_a_pruned_node_keeps_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, data) = chain_with_history(dir.path(), "node", 2_000, 64);
    let node = Node::start("node", &spec, &data, &["--history-blocks".into(), "500".into()]);
    let earliest = node.status_u64("earliest_height").expect("earliest");
    assert!(earliest > 1_000, "pruned at start: earliest {earliest}");
    let started = Instant::now();
    let (code, body) = http_get(node.http, "/blocks/stream?from=5").expect("an answer");
    assert_eq!(code, 410, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["earliest_height"].as_u64(), Some(earliest), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at once");
    assert!(http_get(node.http, "/blocks/stream?from=junk").is_some_and(|(c, _)| c == 400));
}
